"""The independent naive baseline (issue 19, deliverable 5): consumer deletion as a cron script.

Why a separate module: the issue's point is that the old "naive loop" reused the product's own
resolve / erase / scrub engine, so its 254x was only the scaling figure again. The script here
shares no code with the product under test: the functions from `connect_pg` to
`naive_request` import nothing from `compliance` (psycopg2, boto3 and the standard library
only). They know the demo CRM the way a cron script's author would: tables, columns, buckets and
the log line format are written out by hand after reading `dev/compliance_dev/world/schema.py`,
`config/datamap.yaml` and a sample log object (`tests/unit/test_naive_baseline.py` checks the
hand-written lists still cover the data map). Only the harness side (`run`) uses the benchmark
plumbing (`_common`: cloned world, fresh consumers, stage processes, log restore).

One request, on its own (`naive_request`), as an independent job:

1. SQL (own psycopg2 connection, one transaction, committed at the end): find the consumer's
   contact ids in the tenant (`client_id`) by the request's identity, e-mail compared
   lower-case, phone, or the client's contact id (`external_id`), in `contacts` and, for
   e-mail and phone, `contact_aliases`; collect the identity strings the logs may carry
   (e-mails and phones of the contacts and their aliases, contact ids); then the obvious
   deletes, children first: attachments, messages, ticket comments, tickets, e-mail events,
   web visits, call recordings (by contact or by caller phone), leads, portal accounts,
   aliases; payments keep their row for the client's books with the card, bank and contact
   link nulled (R19 transaction, as the map says); the contacts last (R16.1).
2. Logs: one full pass over every log object of every log store and day (listed with boto3,
   own client): GET, gzip decompress, drop the lines holding any of the identity strings
   (e-mails case-insensitively; contact ids as the logs write them, `"contact_id":<id>,`),
   and only where a line was dropped, gzip (Python's `gzip`, level 6) and PUT back.
   Generous to the baseline: an object is first searched whole (one lower-cased copy, a
   substring search per identity string) and only split into lines when something matched,
   and objects with nothing dropped are not rewritten. It keeps no tenant scope (a line of
   another client with the same e-mail goes too) and, like independent cron jobs, two
   requests rewriting one object at the same moment can undo each other's drop: the figure
   times the work; the oracle in `run` checks the SQL rows are gone and that lines were
   dropped.

Out of scope (the batch does them, so leaving them out favours the baseline): recording audio
objects, old versions of rewritten log objects, a verification pass, backup tombstones,
sub-processor notices, the ledger and receipts.

Measurement (`run`): `k` requests (fresh consumers no other section uses, identities from
`C.identity`) as independent jobs on `workers` processes in one stage on a fresh CRM copy, the
log stores restored before and after. The extrapolation to 1,000 requests is linear: the
stage's wall time divided by `k` (the mean cost per request at `workers` processes, the
parallelism the batch's log stage has) times 1,000. No request's cost depends on the others:
each pays a full log pass.
"""

from __future__ import annotations

import gzip
import statistics
import time
from typing import Any

from benchmarks.sections import _common as C

IMPORTS = ["psycopg2", "psycopg2.extensions", "boto3", "botocore.config", "gzip"]
SECTION = "deletion"

# -- the cron script (no `compliance` import below this line, up to `run`) -----------------------

# Where the logs are: (bucket, prefix) of each log store, by hand from config/datamap.yaml.
LOG_LOCATIONS = [("cj-app-logs", "app/"), ("cj-app-logs", "mail/")]
GZIP_LEVEL = 6

# The deletes, children before parents, each for the contact ids `%(ids)s` in the tenant
# `%(client)s`. By hand from the demo CRM's schema.
MINE = "client_id = %(client)s AND contact_id = ANY(%(ids)s::bigint[])"
DELETES = [
    (
        "message_attachments",
        f"DELETE FROM message_attachments WHERE message_id IN "
        f"(SELECT message_id FROM messages WHERE {MINE})",
    ),
    ("messages", f"DELETE FROM messages WHERE {MINE}"),
    (
        "ticket_comments",
        f"DELETE FROM ticket_comments WHERE ticket_id IN "
        f"(SELECT ticket_id FROM support_tickets WHERE {MINE})",
    ),
    ("support_tickets", f"DELETE FROM support_tickets WHERE {MINE}"),
    ("email_events", f"DELETE FROM email_events WHERE {MINE}"),
    ("web_visits", f"DELETE FROM web_visits WHERE {MINE}"),
    (
        "call_recordings",
        "DELETE FROM call_recordings WHERE client_id = %(client)s AND "
        "(contact_id = ANY(%(ids)s::bigint[]) OR caller_phone = ANY(%(phones)s::text[]))",
    ),
    ("leads", f"DELETE FROM leads WHERE {MINE}"),
    ("portal_accounts", f"DELETE FROM portal_accounts WHERE {MINE}"),
    ("contact_aliases", f"DELETE FROM contact_aliases WHERE {MINE}"),
    (
        "payments",
        "UPDATE payments SET contact_id = NULL, card_token = NULL, card_last4 = NULL, "
        f"bank_account = NULL WHERE {MINE}",
    ),
    ("contacts", f"DELETE FROM contacts WHERE {MINE}"),
]

# How the request's identity finds contact ids in the tenant.
LOOKUPS = {
    "email": (
        "SELECT contact_id FROM contacts WHERE client_id = %(client)s "
        "AND lower(email) = lower(%(value)s) "
        "UNION SELECT contact_id FROM contact_aliases WHERE client_id = %(client)s "
        "AND lower(email) = lower(%(value)s)"
    ),
    "phone": (
        "SELECT contact_id FROM contacts WHERE client_id = %(client)s AND phone = %(value)s "
        "UNION SELECT contact_id FROM contact_aliases WHERE client_id = %(client)s "
        "AND phone = %(value)s"
    ),
    "contact_id": (
        "SELECT contact_id FROM contacts WHERE client_id = %(client)s AND external_id = %(value)s"
    ),
}
IDENTITIES = (
    "SELECT email, phone FROM contacts WHERE contact_id = ANY(%(ids)s::bigint[]) "
    "UNION SELECT email, phone FROM contact_aliases WHERE contact_id = ANY(%(ids)s::bigint[])"
)


def pg_dsn(sqlalchemy_url: str) -> str:
    """`postgresql+psycopg2://...` (the harness's form) as a libpq URI."""
    scheme, rest = sqlalchemy_url.split("://", 1)
    return f"{scheme.split('+', 1)[0]}://{rest}"


def connect_s3(endpoint_url: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5}),
    )


def delete_sql(dsn: str, client_id: int, kind: str, value: str) -> dict[str, Any]:
    """Step 1: the consumer's rows, one transaction. Returns the contact ids, the identity
    strings the logs may hold (lower-cased e-mails, phones), and rows affected per table."""
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:  # `with conn`: commit on success, roll back on error
            cur.execute(LOOKUPS[kind], {"client": client_id, "value": value})
            ids = sorted(int(r[0]) for r in cur.fetchall())
            emails: set[str] = set()
            phones: set[str] = set()
            if kind == "email":
                emails.add(value.lower())
            elif kind == "phone":
                phones.add(value)
            if ids:
                cur.execute(IDENTITIES, {"ids": ids})
                for email, phone in cur.fetchall():
                    if email:
                        emails.add(str(email).lower())
                    if phone:
                        phones.add(str(phone))
            affected: dict[str, int] = {}
            params = {"client": client_id, "ids": ids, "phones": sorted(phones)}
            for table, sql in DELETES:
                cur.execute(sql, params)
                affected[table] = cur.rowcount
    finally:
        conn.close()
    return {"ids": ids, "emails": sorted(emails), "phones": sorted(phones), "rows": affected}


def needles(ids: list[int], emails: list[str], phones: list[str]) -> list[bytes]:
    """The strings a log line of this consumer holds, lower-cased, as the logs write them
    (JSON string values in quotes; the contact id as a bare number followed by a comma or the
    closing brace), so a phone does not match inside a longer number."""
    out = [f'"{e.lower()}"'.encode() for e in emails]
    out += [f'"{p.lower()}"'.encode() for p in phones]
    for i in ids:
        out += [f'"contact_id":{i},'.encode(), f'"contact_id":{i}}}'.encode()]
    return out


def scrub_object(data: bytes, wanted: list[bytes]) -> tuple[bytes | None, int]:
    """(the kept lines, or None when nothing is dropped; lines dropped) of one raw object."""
    low = data.lower()
    if not any(n in low for n in wanted):
        return None, 0
    kept = []
    dropped = 0
    for line in data.split(b"\n"):  # JSON lines: a raw newline only ends a line
        lowered = line.lower()
        if any(n in lowered for n in wanted):
            dropped += 1
        else:
            kept.append(line)
    return (b"\n".join(kept), dropped) if dropped else (None, 0)


def scrub_logs(s3: Any, wanted: list[bytes]) -> dict[str, int]:
    """Step 2: one full pass over every log object; rewrite those that lost a line."""
    objects = gz_bytes = rewritten = dropped = 0
    for bucket, prefix in LOG_LOCATIONS:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                if not key.endswith(".gz"):
                    continue
                body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                objects += 1
                gz_bytes += len(body)
                kept, n = scrub_object(gzip.decompress(body), wanted)
                if kept is None:
                    continue
                s3.put_object(
                    Bucket=bucket, Key=key, Body=gzip.compress(kept, compresslevel=GZIP_LEVEL)
                )
                rewritten += 1
                dropped += n
    return {"objects": objects, "gz_bytes": gz_bytes, "rewritten": rewritten, "lines": dropped}


def naive_request(dsn: str, s3_url: str, client_id: int, kind: str, value: str) -> dict[str, Any]:
    """One deletion request as an independent cron job: the SQL deletes, then a log pass.
    Returns counts only (no identity value leaves the function)."""
    started = time.perf_counter()
    sql = delete_sql(dsn, client_id, kind, value)
    sql_s = time.perf_counter() - started
    logs = scrub_logs(connect_s3(s3_url), needles(sql["ids"], sql["emails"], sql["phones"]))
    return {
        "contacts": len(sql["ids"]),
        "rows": sum(max(0, n) for n in sql["rows"].values()),
        "sql_s": sql_s,
        "logs_s": time.perf_counter() - started - sql_s,
        **logs,
    }


# -- the measurement (harness side) ---------------------------------------------------------------


def run_naive(bench: C.Bench, k: int, workers: int) -> dict[str, Any]:
    """`k` independent requests on `workers` processes, on a fresh CRM copy and fresh logs;
    then the oracle: the consumers' contacts rows are gone, lines were dropped."""
    crm, _ = bench.clone_world("naive")
    bench.restore_logs()  # earlier sections may have rewritten the logs
    consumers = bench.consumers(k)
    dsn = pg_dsn(bench.env.url(crm))
    calls = []
    for i, c in enumerate(consumers):
        kind, value = C.identity(i, c)
        calls.append((dsn, bench.env.s3_url, c.client_id, kind, value))
    try:
        st = bench.stage("naive.requests", naive_request, calls, workers, baseline=True)
        ids = [c.contact_id for c in consumers]
        with bench.connect(crm) as conn:
            left = conn.exec_driver_sql(
                "SELECT count(*) FROM contacts WHERE contact_id = ANY(%(ids)s)", {"ids": ids}
            ).scalar_one()
    finally:
        bench.drop_db(crm)
        bench.restore_logs()  # the sections after this one start from the seeded logs
    return {"stage": st, "k": k, "contacts_left": int(left), "consumers": len(consumers)}


def run(
    bench: C.Bench, k: int, workers: int, batch_size: int, batch_seconds: float | None
) -> list[C.Row]:
    """Rows: the naive request alone (info) and the batch of `batch_size` (its total,
    `batch_seconds`, from the deletion section) against the naive loop scaled to that size."""
    if k <= 0:
        return []
    if batch_seconds is None:  # what the deletion section left, when it ran first
        batch = bench.results.get("deletion_batch") or {}
        if batch.get("n") == batch_size and batch.get("total") is not None:
            batch_seconds = float(batch["total"])
    out = run_naive(bench, k, workers)
    st: C.Stage = out["stage"]
    res = st.results
    calls = st.call_seconds
    mean = statistics.fmean(calls)
    per_request = st.seconds / k  # wall time per request at `workers` processes
    lines = sum(r["lines"] for r in res)
    found = sum(r["contacts"] for r in res)
    ok = out["contacts_left"] == 0 and lines > 0 and all(r["contacts"] > 0 for r in res)
    oracle = (
        f"oracle: {found} contacts rows found for {k} requests, "
        f"{out['contacts_left']} of the {k} consumers' rows left in SQL, "
        f"{sum(r['rows'] for r in res):,} rows deleted or masked, {lines:,} log lines dropped, "
        f"{sum(r['rewritten'] for r in res):,} objects rewritten"
        + ("" if ok else " (ORACLE FAILED: the baseline did not delete)")
    )
    objects = statistics.fmean(r["objects"] for r in res)
    gz_mb = statistics.fmean(r["gz_bytes"] for r in res) / C.MB
    rows = [
        C.info(
            SECTION,
            "naive loop: one request alone",
            mean,
            "s",
            peak_mb=st.peak_mb,
            note=f"independent cron-style script (psycopg2 deletes + one full log pass in "
            f"Python gzip, no project code), {k} requests on {st.workers} process(es): "
            f"mean {mean:.2f} s, min {min(calls):.2f} s, max {max(calls):.2f} s per request "
            f"(SQL mean {statistics.fmean(r['sql_s'] for r in res):.2f} s, logs "
            f"{statistics.fmean(r['logs_s'] for r in res):.2f} s); each pass reads "
            f"{objects:,.0f} objects, {gz_mb:,.1f} MB gzip; generous: objects searched whole "
            f"before any line split, objects with nothing dropped not rewritten; {oracle}; "
            f"S3 server CPU {st.s3_cpu:.1f} s",
        )
    ]
    baseline = per_request * batch_size
    method = (
        f"baseline = naive loop measured on {k} requests over every log day, "
        f"{st.seconds:.1f} s wall on {st.workers} process(es) = {per_request:.2f} s per "
        f"request, x {batch_size} = {baseline:,.0f} s (linear: every request pays a full log "
        f"pass)"
    )
    if batch_seconds is None:
        rows.append(
            C.unavailable(
                SECTION,
                f"batch of {batch_size} vs independent naive loop",
                f"no batch of {batch_size} measured in this run; {method}",
            )
        )
    else:
        rows.append(
            C.speedup(
                SECTION,
                f"batch of {batch_size} vs independent naive loop",
                batch_seconds,
                baseline,
                50.0,
                peak_mb=st.peak_mb,
                note=f"ours = the deletion section's batch of {batch_size} total "
                f"(sum of stage times); {method}"
                + ("" if ok else "; ORACLE FAILED: the baseline did not delete"),
            )
        )
        if not ok:
            rows[-1].met = False
    return rows
