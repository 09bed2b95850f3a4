"""access_reports end to end (R7-R15, R27, G2): real DAG runs on SQLite and PostgreSQL with moto S3.

What each bundle must hold is computed independently of the code under test, with plain SQL and
json over the seeded world (plus rows and log lines planted inside and outside each window),
then compared with the bundle's data.json exactly: every row and line of the consumer, none of
anyone else's, none of another tenant's.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import urllib.request
import zipfile
from collections import Counter
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa

from compliance.access import bundle, r10
from compliance.core.datamap.validate import load_datamap
from compliance.core.settings import REPO_ROOT
from compliance.requests.intake import add_months

DM = load_datamap(REPO_ROOT / "config" / "datamap.yaml")
LOG_BUCKET = DM.stores["app_logs"].bucket
AUDIO_BUCKET = DM.stores["call_audio"].bucket
NOW = datetime.now(UTC).replace(microsecond=0)
AUDIO = b"RIFF\x24\x00\x00\x00WAVEfmt planted e2e audio"
SCRIPT = "<script>alert(1)</script>"
FORMULA = '=HYPERLINK("http://evil.example","click")'
PLANTED_SECRETS = {
    "drivers_license": "DLX7654321",
    "bank_account": "BANK000111222333",
    "password_hash": "$2b$12$PLANTEDHASHplantedhashPLANTEDHASHplantedhashPLANTEDH",
    "security_question": "Planted question of the e2e test?",
    "security_answer": "PlantedAnswer-42",
    "voiceprint": "vp1:" + "ab" * 32,
}
# R10 columns as the data map marks them (`withhold`): the test follows the map, not a list.
WITHHELD_COLUMNS = [
    (table, col)
    for table, spec in DM.systems["crm"].tables.items()
    for col, c in spec.columns.items()
    if c.withhold is not None
]
# table -> (primary key, time column, SQL selecting (pk, time) of consumers {ids} in tenant :cl)
OWNED = {
    t: (pk, tc, f"select {pk}, {tc} from {t} where contact_id in ({{ids}}) and client_id = :cl")
    for t, pk, tc in [
        ("contacts", "contact_id", "created_at"),
        ("contact_aliases", "alias_id", "created_at"),
        ("leads", "lead_id", "created_at"),
        ("messages", "message_id", "created_at"),
        ("email_events", "event_id", "occurred_at"),
        ("web_visits", "visit_id", "visited_at"),
        ("call_recordings", "recording_id", "recorded_at"),
        ("payments", "payment_id", "paid_at"),
        ("portal_accounts", "account_id", "created_at"),
        ("support_tickets", "ticket_id", "created_at"),
    ]
}
OWNED["message_attachments"] = (
    "attachment_id",
    "created_at",
    "select a.attachment_id, a.created_at from message_attachments a join messages m "
    "on m.message_id = a.message_id where m.contact_id in ({ids}) and m.client_id = :cl",
)
OWNED["ticket_comments"] = (
    "comment_id",
    "created_at",
    "select c.comment_id, c.created_at from ticket_comments c join support_tickets s "
    "on s.ticket_id = c.ticket_id where s.contact_id in ({ids}) and s.client_id = :cl",
)


def _naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def _time(value) -> datetime:
    """A time as the database returned it (SQLite: text), as aware UTC."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _doc(
    request_id,
    client_id,
    received,
    jurisdiction=None,
    look_back=None,
    verification_level=None,
    **identities,
):
    doc = {
        "request_id": request_id,
        "client_id": client_id,
        "type": "access",
        "identities": identities,
        "received_at": received.isoformat(),
        "verification": {
            "method": "account_login",
            "verified_at": received.isoformat(),
            "verified_by": "staff-7",
        },
    }
    if jurisdiction:
        doc["jurisdiction"] = jurisdiction
    if look_back:
        doc["look_back"] = look_back
    if verification_level:
        doc["verification"]["level"] = verification_level
    return doc


def _pick(c: sa.Connection) -> dict:
    """S: an e-mail held in two tenants, with rows in the most tables; T and U: other people."""
    multi = [
        tuple(r)
        for r in c.execute(
            sa.text(
                "select c.contact_id, c.client_id, lower(c.email), c.phone, c.external_id "
                "from contacts c join clients k on k.client_id = c.client_id "
                "where k.active = true and c.is_child = false and c.phone is not null "
                "and c.external_id is not null and lower(c.email) in (select lower(email) "
                "from contacts where email is not null group by lower(email) "
                "having count(distinct client_id) > 1) order by c.contact_id"
            )
        )
    ]
    assert multi, "the world plants e-mails shared across tenants"

    def breadth(r: tuple) -> tuple:
        tables = sum(
            1
            for t, (_, _, q) in OWNED.items()
            if c.execute(sa.text(q.format(ids=r[0])), {"cl": r[1]}).first()
        )
        old = c.execute(
            sa.text("select created_at from contacts where contact_id = :i"), {"i": r[0]}
        ).scalar_one()
        return (_time(old) < NOW - timedelta(days=400), tables, -r[0])

    s = max(multi, key=breadth)
    shared = {r[2] for r in multi} | {
        e
        for (e,) in c.execute(
            sa.text(
                "select lower(email) from contacts where email is not null "
                "group by lower(email) having count(*) > 1"
            )
        )
    }
    others = [
        tuple(r)
        for r in c.execute(
            sa.text(
                "select c.contact_id, c.client_id, lower(c.email), c.phone, c.external_id "
                "from contacts c join clients k on k.client_id = c.client_id "
                "where k.active = true and c.is_child = false and c.phone is not null "
                "and c.email is not null and c.external_id is not null and c.client_id <> :a "
                "order by c.contact_id"
            ),
            {"a": s[1]},
        )
        if r[2] not in shared
    ]
    t = others[0]
    u = next(r for r in others if r[1] != t[1] and r[3] != t[3])
    other_tenant = c.execute(
        sa.text("select min(client_id) from contacts where lower(email) = :e and client_id <> :a"),
        {"e": s[2], "a": s[1]},
    ).scalar_one()
    return {"S": s, "T": t, "U": u, "B": other_tenant}


def _next_id(c: sa.Connection, table: str, pk: str) -> int:
    return int(c.execute(sa.text(f"select coalesce(max({pk}), 0) + 1 from {table}")).scalar())


def _plant(stack, who: dict, received: dict[str, datetime]) -> dict:
    """Rows and log lines inside and outside each request's window, and R10 values."""
    s_id, a, s_email, s_phone, _ = who["S"]
    t_id, t_client, _, t_phone, _ = who["T"]
    u_id, u_client, _, _, _ = who["U"]
    r1 = received["S1"]
    eng = sa.create_engine(stack.db_url)
    planted: dict = {}
    with eng.begin() as c:
        for cid in (s_id, t_id):  # S's contact row predates S1's window; T's is in since 2022
            c.execute(
                sa.text("update contacts set drivers_license = :v where contact_id = :i"),
                {"v": PLANTED_SECRETS["drivers_license"], "i": cid},
            )
        m1, m2 = _next_id(c, "messages", "message_id"), _next_id(c, "messages", "message_id") + 1
        for mid, body in ((m1, SCRIPT), (m2, FORMULA)):
            c.execute(
                sa.text(
                    "insert into messages (message_id, contact_id, client_id, channel, direction, "
                    "to_address, body, created_at) values (:m, :c, :a, 'sms', 'inbound', null, "
                    ":b, :t)"
                ),
                {"m": mid, "c": s_id, "a": a, "b": body, "t": _naive(r1 - timedelta(days=10))},
            )
        c.execute(
            sa.text(
                "insert into payments (payment_id, contact_id, client_id, card_brand, "
                "bank_account, amount_cents, paid_at) values (:p, :c, :a, 'ach', :b, 1234, :t)"
            ),
            {
                "p": _next_id(c, "payments", "payment_id"),
                "c": s_id,
                "a": a,
                "b": PLANTED_SECRETS["bank_account"],
                "t": _naive(r1 - timedelta(days=15)),
            },
        )
        c.execute(
            sa.text(
                "insert into portal_accounts (account_id, contact_id, client_id, username, "
                "password_hash, security_question, security_answer, created_at) values "
                "(:p, :c, :a, 'planted.user', :h, :q, :s, :t)"
            ),
            {
                "p": _next_id(c, "portal_accounts", "account_id"),
                "c": s_id,
                "a": a,
                "h": PLANTED_SECRETS["password_hash"],
                "q": PLANTED_SECRETS["security_question"],
                "s": PLANTED_SECRETS["security_answer"],
                "t": _naive(r1 - timedelta(days=20)),
            },
        )
        planted["recording"] = _next_id(c, "call_recordings", "recording_id")
        audio_key = f"recordings/{a}/planted-e2e.wav"
        c.execute(
            sa.text(
                "insert into call_recordings (recording_id, contact_id, client_id, caller_phone, "
                "s3_key, duration_s, voiceprint, recorded_at) values (:r, :c, :a, :ph, :k, 3, "
                ":v, :t)"
            ),
            {
                "r": planted["recording"],
                "c": s_id,
                "a": a,
                "ph": s_phone,
                "k": audio_key,
                "v": PLANTED_SECRETS["voiceprint"],
                "t": _naive(r1 - timedelta(days=5)),
            },
        )
        visit = _next_id(c, "web_visits", "visit_id")
        for vid, cid, cl, when in (
            (visit, t_id, t_client, datetime(2021, 12, 15, 8, tzinfo=UTC)),  # T: before 2022
            (visit + 1, t_id, t_client, datetime(2022, 3, 1, 8, tzinfo=UTC)),  # T: since 2022
            (visit + 2, u_id, u_client, datetime(2021, 6, 1, 8, tzinfo=UTC)),  # U: GDPR, all
        ):
            c.execute(
                sa.text(
                    "insert into web_visits (visit_id, contact_id, client_id, url, visited_at) "
                    "values (:v, :c, :a, 'https://example.test/old', :t)"
                ),
                {"v": vid, "c": cid, "a": cl, "t": _naive(when)},
            )
    eng.dispose()
    stack.s3.put_object(Bucket=AUDIO_BUCKET, Key=audio_key, Body=AUDIO)

    def line(when: datetime, tenant: int, **fields) -> bytes:
        rec = {"ts": when.isoformat().replace("+00:00", "Z"), "level": "INFO", "client_id": tenant}
        return json.dumps(rec | fields).encode() + b"\n"

    in_window = (r1 - timedelta(days=30)).replace(hour=12, minute=0, second=0)
    too_old = datetime.combine(add_months(r1.date(), -13), datetime.min.time(), UTC).replace(
        hour=12
    )
    objects = {
        in_window: [
            line(in_window, a, email=s_email.upper(), msg=SCRIPT, path="/portal/login"),
            line(in_window, who["B"], email=s_email, msg="other tenant", path="/x"),
        ],
        too_old: [line(too_old, a, email=s_email, msg="older than 12 months", path="/x")],
        datetime(2023, 6, 1, 12, tzinfo=UTC): [
            line(datetime(2023, 6, 1, 12, tzinfo=UTC), t_client, phone=t_phone, msg="2023")
        ],
        datetime(2021, 12, 31, 12, tzinfo=UTC): [
            line(datetime(2021, 12, 31, 12, tzinfo=UTC), t_client, phone=t_phone, msg="2021")
        ],
        datetime(2021, 6, 1, 12, tzinfo=UTC): [
            line(datetime(2021, 6, 1, 12, tzinfo=UTC), u_client, contact_id=u_id, msg="gdpr")
        ],
    }
    for day, lines in objects.items():
        stack.s3.put_object(
            Bucket=LOG_BUCKET,
            Key=f"app/dt={day:%Y-%m-%d}/part-e2e.jsonl.gz",
            Body=gzip.compress(b"".join(lines)),
        )
    return planted


def _expected(url: str, client: int, identities: dict, since, until) -> dict:
    """Consumers, identities, row keys in the window, by hand-written SQL (independent)."""
    eng = sa.create_engine(url)
    with eng.connect() as c:
        ids: set[int] = set()
        if "email" in identities:
            e = identities["email"].lower()
            for q in (
                "select contact_id from contacts where client_id = :cl and lower(email) = :v",
                "select contact_id from contact_aliases where client_id = :cl and lower(email) = :v",
            ):
                ids |= set(c.execute(sa.text(q), {"cl": client, "v": e}).scalars())
        if "phone" in identities:
            for q in (
                "select contact_id from contacts where client_id = :cl and phone = :v",
                "select contact_id from contact_aliases where client_id = :cl and phone = :v",
                "select contact_id from call_recordings where client_id = :cl and caller_phone = :v",
            ):
                ids |= set(
                    c.execute(sa.text(q), {"cl": client, "v": identities["phone"]}).scalars()
                )
        if "contact_id" in identities:
            q = "select contact_id from contacts where client_id = :cl and external_id = :v"
            ids |= set(
                c.execute(sa.text(q), {"cl": client, "v": identities["contact_id"]}).scalars()
            )
        inlist = ",".join(str(i) for i in ids) or "-1"
        emails = {identities["email"].lower()} if "email" in identities else set()
        emails |= {
            e.lower()
            for (e,) in c.execute(
                sa.text(
                    f"select email from contacts where contact_id in ({inlist}) and email is not null "
                    f"union select email from contact_aliases where contact_id in ({inlist}) and email is not null"
                )
            )
        }
        phones = {identities["phone"]} if "phone" in identities else set()
        phones |= set(
            c.execute(
                sa.text(
                    f"select phone from contacts where contact_id in ({inlist}) and phone is not null "
                    f"union select phone from contact_aliases where contact_id in ({inlist}) and phone is not null "
                    f"union select caller_phone from call_recordings where contact_id in ({inlist}) and caller_phone is not null"
                )
            ).scalars()
        )
        rows, outside = set(), 0
        for table, (_, _, q) in OWNED.items():
            for pk, when in c.execute(sa.text(q.format(ids=inlist)), {"cl": client}):
                moment = _time(when)
                if (since is None or moment >= since) and moment <= until:
                    rows.add((f"crm.{table}", int(pk)))
                else:
                    outside += 1
        secrets = set()  # (R10 kind, value): G2 decides per jurisdiction which are shown
        for table, col in WITHHELD_COLUMNS:
            kind = DM.systems["crm"].tables[table].columns[col].withhold
            secrets |= {
                (kind, v)
                for (v,) in c.execute(
                    sa.text(f"select {col} from {table} where contact_id in ({inlist})")
                )
                if v and len(str(v)) >= 8
            }
    eng.dispose()
    return {
        "client": client,
        "ids": ids,
        "emails": emails,
        "phones": phones,
        "rows": rows,
        "outside": outside,
        "secrets": secrets,
        "since": since,
        "until": until,
    }


def _expected_lines(s3, exp: dict) -> Counter:
    """(store, timestamp) of every log line of the consumer's tenant, identity and window."""
    found: Counter = Counter()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=LOG_BUCKET):
        for obj in page.get("Contents", []):
            store = "app_logs" if obj["Key"].startswith("app/") else "mail_logs"
            body = gzip.decompress(s3.get_object(Bucket=LOG_BUCKET, Key=obj["Key"])["Body"].read())
            for raw in body.splitlines():
                rec = json.loads(raw)
                if str(rec.get("client_id", rec.get("tenant"))) != str(exp["client"]):
                    continue
                email = str(rec.get("email") or rec.get("rcpt") or "").lower()
                if not (
                    email in exp["emails"]
                    or rec.get("phone") in exp["phones"]
                    or str(rec.get("contact_id")) in {str(i) for i in exp["ids"]}
                ):
                    continue
                moment = _time(rec.get("ts") or rec.get("at"))
                if (exp["since"] is None or moment >= exp["since"]) and moment <= exp["until"]:
                    found[(store, moment)] += 1
    return found


def _bundle(stack, client: int, request_id: str) -> tuple[zipfile.ZipFile, bytes, dict]:
    key = f"access/{client}/{request_id}/bundle.zip"
    raw = stack.s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read()
    receipt = json.loads(
        stack.s3.get_object(Bucket=stack.bucket, Key=f"receipts/{client}/{request_id}.access.json")[
            "Body"
        ].read()
    )
    return zipfile.ZipFile(io.BytesIO(raw)), raw, receipt


@pytest.fixture
def dropped(stack):
    with sa.create_engine(stack.db_url).connect() as c:
        who = _pick(c)
    received = {
        "S1": NOW - timedelta(days=3),
        "S2": NOW - timedelta(days=20),
        "S3": NOW - timedelta(days=40),
        "T": NOW - timedelta(days=5),
        "U": NOW - timedelta(days=5),
        "V": NOW - timedelta(days=4),
    }
    planted = _plant(stack, who, received)
    _, a, s_email, s_phone, s_ext = who["S"]
    requests = {
        # one consumer, three requests in 12 months, each bringing a new identity (R7)
        "S1": ((a, {"email": s_email.upper()}), {}),
        "S2": ((a, {"email": s_email, "phone": s_phone}), {}),
        "S3": ((a, {"email": s_email, "contact_id": s_ext}), {}),
        "T": ((who["T"][1], {"phone": who["T"][3]}), {"look_back": "since_2022"}),
        "U": ((who["U"][1], {"contact_id": who["U"][4]}), {"jurisdiction": "gdpr"}),
        # R5 (issue 15): T again, by e-mail, verified only for categories: categories page only
        "V": ((who["T"][1], {"email": who["T"][2]}), {"verification_level": "categories"}),
    }
    docs: dict[int, list[dict]] = {}
    for name, ((client, idents), extra) in requests.items():
        docs.setdefault(client, []).append(
            _doc(f"ACC-{name}", client, received[name], **extra, **idents)
        )
    for client, items in docs.items():
        stack.s3.put_object(
            Bucket=stack.bucket,
            Key=f"inbox/{client}/access.ndjson",
            Body="\n".join(json.dumps(d) for d in items).encode(),
        )
    return who, received, requests, planted


def test_access_bundles_hold_exactly_the_consumers_data(stack, dropped):
    who, received, requests, planted = dropped
    run = stack.run_dag("access_reports", {"link_expiry_days": 3, "include_audio": True})
    assert run.state == "success"

    windows = {
        "S1": (
            datetime.combine(add_months(received["S1"].date(), -12), datetime.min.time(), UTC),
            received["S1"],
        ),
        "S2": (
            datetime.combine(add_months(received["S2"].date(), -12), datetime.min.time(), UTC),
            received["S2"],
        ),
        "T": (datetime(2022, 1, 1, tzinfo=UTC), received["T"]),
        "U": (None, NOW + timedelta(days=1)),  # GDPR: everything up to the run
    }
    receipts = {}
    for name, (since, until) in windows.items():
        (client, idents), _ = requests[name]
        exp = _expected(stack.db_url, client, idents, since, until)
        zf, raw, receipt = _bundle(stack, client, f"ACC-{name}")
        receipts[name] = receipt
        data = json.loads(zf.read("data.json"))

        # exactly the consumer's rows, inside the window, in their tenant
        got_rows = {
            (s["source"], r["record"])
            for s in data["sources"]
            if s["kind"] == "table"
            for r in s["records"]
        }
        assert exp["rows"], name
        assert got_rows == exp["rows"], name
        got_lines = Counter(
            (s["source"], _time(r["collected_at"]))
            for s in data["sources"]
            if s["kind"] == "log"
            for r in s["records"]
        )
        assert got_lines == _expected_lines(stack.s3, exp), name

        # integrity: manifest checksums verify, the receipt names the object's checksum
        assert bundle.verify_manifest(zf) == []
        assert hashlib.sha256(raw).hexdigest() == receipt["bundle"]["sha256"]
        manifest = json.loads(zf.read("manifest.json"))
        assert manifest["request_id"] == f"ACC-{name}" and manifest["generator"]["version"]

        # R10: no withheld value anywhere in the bundle; G2: a GDPR request (U) is shown the
        # consumer's own ids and account numbers, never credentials (r10.WITHHELD_BY_JURISDICTION)
        kind_of = {c: DM.systems["crm"].tables[t].columns[c].withhold for t, c in WITHHELD_COLUMNS}
        shown = r10.shown_kinds("gdpr" if name == "U" else "ccpa")
        secrets = {v for k, v in exp["secrets"] if k not in shown}
        secrets |= {
            v for c, v in PLANTED_SECRETS.items() if c in kind_of and kind_of[c] not in shown
        }
        disclosed = {v for k, v in exp["secrets"] if k in shown}
        assert all(str(v) in zf.read("data.json").decode() for v in disclosed), name
        for member in zf.namelist():
            body = zf.read(member).decode("utf-8", "replace")
            leaked = [x for x in secrets if str(x) in body]
            assert not leaked, (name, member)

        # encrypted at rest; the link works now and expires within the bound
        head = stack.s3.head_object(Bucket=stack.bucket, Key=receipt["bundle"]["key"])
        assert head["ServerSideEncryption"] == "AES256"
        link = json.loads(
            stack.s3.get_object(Bucket=stack.bucket, Key=receipt["bundle"]["link"])["Body"].read()
        )
        expires = int(parse_qs(urlsplit(link["url"]).query)["X-Amz-Expires"][0])
        assert expires == 3 * 86400 <= 604800
        with urllib.request.urlopen(link["url"], timeout=10) as resp:
            assert hashlib.sha256(resp.read()).hexdigest() == receipt["bundle"]["sha256"]
        assert "X-Amz-Signature" not in json.dumps(receipt)  # the link is not in the receipt

    # S1 in detail: planted data, windows, other tenant, HTML, CSV, audio
    (a, _), _ = requests["S1"]
    s1 = _expected(stack.db_url, a, requests["S1"][0][1], *windows["S1"])
    assert s1["outside"] > 0, "the subject has rows older than the window"
    zf, _, _ = _bundle(stack, a, "ACC-S1")
    data = json.loads(zf.read("data.json"))
    contacts = {
        r["record"] for s in data["sources"] if s["source"] == "crm.contacts" for r in s["records"]
    }
    log_msgs = {
        r["values"].get("msg") for s in data["sources"] if s["kind"] == "log" for r in s["records"]
    }
    assert SCRIPT in log_msgs and "other tenant" not in log_msgs
    assert "older than 12 months" not in log_msgs
    other = sa.create_engine(stack.db_url)
    with other.connect() as c:
        elsewhere = set(
            c.execute(
                sa.text(
                    "select contact_id from contacts where lower(email) = :e and client_id <> :a"
                ),
                {"e": who["S"][2], "a": a},
            ).scalars()
        )
    other.dispose()
    assert elsewhere and not elsewhere & contacts
    kinds = {w["kind"] for w in data["withheld"]}
    assert {"financial_account", "password", "security_answer", "biometric"} <= kinds
    (t_client, _), _ = requests["T"]
    t_data = json.loads(_bundle(stack, t_client, "ACC-T")[0].read("data.json"))
    assert "government_id" in {w["kind"] for w in t_data["withheld"]}
    html = zf.read("index.html").decode()
    assert SCRIPT not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.lower()
    # R13: the demo's disaster-recovery backups are searched (test_access_backups.py)
    assert data["not_searched"] == []
    cells = [
        cell
        for name in zf.namelist()
        if name.startswith("csv/")
        for row in list(csv.reader(io.StringIO(zf.read(name).decode())))[1:]
        for cell in row
    ]
    assert "'" + FORMULA in cells
    assert not [x for x in cells if x[:1] in ("=", "+", "-", "@")]
    audio = next(r for r in data["recordings"] if r["record"] == planted["recording"])
    assert audio["status"] == "included" and zf.read(audio["file"]) == AUDIO
    assert data["window"]["rule"] == "R9"
    assert json.loads(zf.read("data.json"))["categories"]

    # R7: the third request in 12 months is flagged, the first two are not
    for name in ("S2", "S3"):
        (client, _), _ = requests[name]
        _, _, receipts[name] = _bundle(stack, client, f"ACC-{name}")
    assert receipts["S1"]["repeat"] == {"requests_in_12_months": 3, "flagged": True, "rule": "R7"}
    assert receipts["S2"]["repeat"]["flagged"] is False
    assert receipts["S3"]["repeat"]["requests_in_12_months"] == 1
    assert receipts["U"]["rules"][-1] == "G2"
    # issue 15: the receipt shows the stored records (R1, R5) and links the consumer's earlier
    # requests by keyed ref (one intake, in document order: S2 follows S1, S3 both)
    from compliance.requests.request_records import request_ref

    (s_client, _), _ = requests["S1"]
    refs = {n: request_ref(b"e2e-test-key", str(s_client), f"ACC-{n}", "access") for n in requests}
    assert receipts["S1"]["previous_requests"] == []
    assert receipts["S3"]["previous_requests"] == [refs["S1"], refs["S2"]]
    record = receipts["S2"]["request_record"]
    assert record["verification"]["method"] == "account_login"
    assert record["verification"]["verified_by_hash"] and "staff-7" not in json.dumps(record)

    # R5: V (T verified only for categories) gets the categories page, no specific piece of T
    (v_client, v_idents), _ = requests["V"]
    zf, raw, receipts["V"] = _bundle(stack, v_client, "ACC-V")
    assert sorted(zf.namelist()) == ["data.json", "index.html", "manifest.json"]
    assert bundle.verify_manifest(zf) == []
    v_data = json.loads(zf.read("data.json"))
    assert v_data["scope"]["level"] == "categories" and v_data["scope"]["rule"] == "R5"
    assert json.loads(zf.read("manifest.json"))["scope"]["level"] == "categories"
    assert "Categories only." in zf.read("index.html").decode()
    assert v_data["sources"] == v_data["recordings"] == v_data["withheld"] == []
    assert v_data["request"]["identities"] == {}
    cats = {c["category"] for c in v_data["categories"]}
    assert {"identifiers", "commercial", "sensory"} <= cats
    assert all(
        c["sources"] and c["purposes"] and c["records"] is None for c in v_data["categories"]
    )
    t_exp = _expected(stack.db_url, v_client, v_idents, None, NOW + timedelta(days=1))
    assert t_exp["rows"], "T has records that a full request would disclose"
    crm = sa.create_engine(stack.db_url)
    with crm.connect() as c:
        row = (
            c.execute(sa.text("select * from contacts where contact_id = :i"), {"i": who["T"][0]})
            .one()
            ._mapping
        )
    crm.dispose()
    pieces = {who["T"][2], who["T"][3], who["T"][4], row["address_line"]} | {
        f"{row['first_name']} {row['last_name']}"
    }
    pieces = {p for p in pieces if p}
    for member in zf.namelist():
        body = zf.read(member).decode("utf-8", "replace").lower()
        assert not [p for p in pieces if p.lower() in body], member
    assert receipts["V"]["scope"] == "categories" and receipts["V"]["counts"] == {}
    assert receipts["V"]["rules"][0] == "R5"

    # state, ledger, clean-up, no PII outside the bundles
    from compliance.core import ledger

    state = sa.create_engine(stack.state_url)
    assert ledger.verify(state, b"e2e-test-key").ok
    with state.connect() as c:
        statuses = dict(
            c.execute(
                sa.text("select request_id, status from cj_requests where type = 'access'")
            ).all()
        )
        payloads = [
            json.dumps(list(r), default=str)
            for r in c.execute(sa.text("select payload, ref from cj_ledger"))
        ]
        delivered = c.execute(
            sa.text("select count(*) from cj_ledger where kind = 'access_delivered'")
        ).scalar()
    state.dispose()
    assert statuses == {f"ACC-{n}": "completed" for n in requests}
    assert delivered == len(requests)
    for prefix in ("batches/", "inbox/"):
        assert not stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix=prefix).get("Contents")
    accepted = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="accepted/").get("Contents", [])
    assert not [o for o in accepted if o["Key"].endswith(".access.json")]

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    blobs = payloads + [json.dumps(r) for r in receipts.values()]
    with create_session() as session:
        blobs += [
            str(x.value) for x in session.query(XComModel).filter(XComModel.run_id == run.run_id)
        ]
    identities = {who["S"][2], who["S"][3], who["T"][3], who["T"][2], who["U"][2]}
    for blob in blobs:
        assert not [x for x in identities if x and x.lower() in blob.lower()]

    # rerun = converge: nothing pending, every bundle untouched
    etags = {
        o["Key"]: o["ETag"]
        for o in stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="access/")["Contents"]
    }
    again = stack.run_dag("access_reports")
    assert again.state == "success"
    assert etags == {
        o["Key"]: o["ETag"]
        for o in stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="access/")["Contents"]
    }
