"""The compliance dashboard (issue 18, item 2) through the api-server's own app (`create_app`,
our plugins mounted by Airflow itself) with tokens per role, on a seeded world (SQLite, moto S3)
and a state DB seeded with the state module's own functions:

- the navigation entry opens the dashboard; anonymous calls get 401 everywhere;
- each section shows the right counts (viewer) and request ids (staff), never an identity;
- a viewer cannot act (ledger verification, a request's page) nor see identities; a plain
  `user` (staff) acts but sees no identities; `op` sees them, and each view is ledgered with
  the keyed hash of the viewer and no identity (R20, R22);
- the ledger verifies on demand, and a tampered row is reported broken;
- the file viewer opens receipts and reports only, refuses other areas and path tricks, and
  opens an access bundle only for a role that may see identities (ledgered).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from . import staff_desk

pytestmark = pytest.mark.slow

DASH = "/compliance/dashboard"
CLIENT = "6"
EMAIL = "dash.consumer@example.com"


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only: the queries run on PostgreSQL in tests/unit/test_desk_dashboard_queries.py."""
    return f"sqlite:///{tmp_path / 'crm.db'}"


@pytest.fixture
def desk(stack):
    return staff_desk.open_desk()


@pytest.fixture
def ctx(stack):
    from compliance import runtime

    return runtime.context()


def _new(rid: str, due_in: int | None, received_days_ago: int = 10, **kw):
    from compliance.requests import state

    today = datetime.now(UTC).date()
    received = datetime.now(UTC) - timedelta(days=received_days_ago)
    return state.NewRequest(
        client_id=CLIENT,
        request_id=rid,
        type=kw.pop("type", "delete"),
        jurisdiction="ccpa",
        received_at=received,
        received_on=received.date(),
        accepted_at=received,
        source="ui",
        ack_due=received.date() + timedelta(days=9),
        response_due=None if due_in is None else today + timedelta(days=due_in),
        **kw,
    )


def seed(ctx) -> dict[str, int]:
    """One request per bucket and status, notices, a hold, objects in every kind of area."""
    from compliance.core import workspace_layout as layout
    from compliance.requests import state

    rows = [
        _new("OVER-1", -3),
        _new("DUE2-1", 1),
        _new("DUE7-1", 5),
        _new("LATER-1", 30),
        _new("EXT-1", 4, received_days_ago=40),  # extended below: due moves to day 90
        _new("DEF-1", 20),
        _new("PART-1", 12),
        _new("DONE-1", 12),
        _new("REJ-1", 12),
    ]
    pks = {k[1]: pk for k, pk in state.insert_requests(ctx.state, rows).items()}
    state.record_extension(ctx.state, pks["EXT-1"], datetime.now(UTC), "complex request")
    state.set_status(ctx.state, [pks["DEF-1"]], "deferred", reason_code="law_enforcement_hold")
    state.set_status(ctx.state, [pks["PART-1"]], "partial", reason_code="legal_claims")
    state.set_status(ctx.state, [pks["DONE-1"]], "completed")
    state.set_status(ctx.state, [pks["REJ-1"]], "rejected", reason_code="not_verified")
    state.record_notice(ctx.state, pks["DONE-1"], "esp", "http", "sent")
    state.record_notice(ctx.state, pks["DONE-1"], "crm_mirror", "sns", "failed", "timeout")
    state.record_notice(ctx.state, pks["PART-1"], "analytics", "http", "sent", acknowledged=True)
    with ctx.engine("crm").begin() as c:
        c.execute(
            sa.text(
                "insert into legal_holds (hold_id, client_id, contact_id, scope, reason, "
                "exception_code, created_at, expires_at) values (990001, :c, null, 'all', "
                "'case 12', 'legal_claims', :at, :exp)"
            ),
            {
                "c": int(CLIENT),
                "at": datetime.now(UTC).replace(tzinfo=None) - timedelta(days=1),
                "exp": datetime.now(UTC).replace(tzinfo=None) + timedelta(days=30),
            },
        )
    ws = ctx.workspace
    objects = {
        layout.receipt_key(CLIENT, "DONE-1", "delete"): b'{"request_id": "DONE-1"}',
        "deletion/dry-runs/2026-12-01/run-1.json": b'{"would_erase": 3}',
        "stats/2026/metrics.json": b'{"requests": 9}',
        "inbox/ui/delete-6-OVER-1.json": json.dumps({"identities": {"email": EMAIL}}).encode(),
        layout.accepted_key(CLIENT, "OVER-1", "delete"): json.dumps(
            {"request_id": "OVER-1", "identities": {"email": EMAIL, "phone": ["+14155550123"]}}
        ).encode(),
        layout.bundle_key(CLIENT, "ACC-1"): b"PK\x03\x04zip",
        layout.link_key(CLIENT, "ACC-1"): b'{"url": "https://s3.example/presigned"}',
    }
    for key, body in objects.items():
        ws.s3.put_object(Bucket=ws.bucket, Key=key, Body=body)
    return pks


def _counts(page: str) -> dict[str, int]:
    return {
        f"{s}.{n}": int(v)
        for s, n, v in re.findall(r"data-section='(\w+)' data-count-(\w+)='(\d+)'", page)
    }


def _section(page: str, name: str) -> str:
    match = re.search(rf"<table data-section='{name}'>.*?</table>", page, re.S)
    return match.group(0) if match else ""


def test_navigation_opens_the_dashboard_and_anonymous_gets_401(stack, desk, ctx):
    seed(ctx)
    plugins = desk.http.get("/api/v2/plugins", headers=desk.headers("admin")).json()["plugins"]
    (plugin,) = [p for p in plugins if p["name"] == "compliance_desk"]
    (nav,) = plugin["external_views"]
    assert (nav["name"], nav["href"], nav["destination"]) == (
        "Compliance",
        "compliance/dashboard",
        "nav",
    )
    http = desk.http
    for answer in (
        http.get(DASH),
        http.get("/compliance/"),
        http.get("/compliance/files", params={"key": "receipts/6/DONE-1.delete.json"}),
        http.post("/compliance/ledger/verify"),
        http.get("/compliance/requests/6/OVER-1"),
        http.post("/compliance/requests/6/OVER-1/identities", data={"type": "delete"}),
    ):
        assert answer.status_code == 401, answer.request.url
    staff_page = desk.page()
    assert "href='dashboard'" in staff_page.text  # the staff page links back (relative)
    dash = http.get(DASH, headers=desk.headers("user")).text
    assert "href='./requests'" in dash  # and the dashboard to the staff page


def test_sections_count_right_and_a_viewer_sees_counts_only(stack, desk, ctx):
    from compliance.desk import dashboard

    seed(ctx)
    holds = dashboard.active_holds(ctx)
    assert any(h.hold == "990001" for h in holds)
    viewer = desk.http.get(DASH, headers=desk.headers("viewer"))
    assert viewer.status_code == 200, viewer.text[:500]
    counts = _counts(viewer.text)
    # DEF-1 (deferred, 20 days) owes a response too: "later" holds LATER-1, DEF-1 and EXT-1
    assert counts == {
        "deadlines.overdue": 1,
        "deadlines.due_2": 1,
        "deadlines.due_7": 1,
        "deadlines.later": 3,
        "deadlines.extended": 1,
        "waiting.total": 2,
        "holds.total": len(holds),
        "notices.total": 2,
    }
    for rid in ("OVER-1", "DUE2-1", "DEF-1", "PART-1"):
        assert rid not in viewer.text  # a viewer sees counts, not requests
    assert "receipts/6/DONE-1.delete.json" in viewer.text  # and reports
    assert "Verify the ledger now" not in viewer.text
    codes = _section(viewer.text, "waiting-codes")
    assert "law_enforcement_hold" in codes and "legal_claims" in codes

    staff = desk.http.get(DASH, headers=desk.headers("user")).text
    for bucket, rid in (
        ("overdue", "OVER-1"),
        ("due_2", "DUE2-1"),
        ("due_7", "DUE7-1"),
        ("extended", "EXT-1"),
    ):
        table = _section(staff, f"due-{bucket}")
        assert rid in table, (bucket, table[:400])
        others = {"OVER-1", "DUE2-1", "DUE7-1", "EXT-1"} - {rid}
        assert not any(f"/{o}<" in table for o in others), (bucket, table[:400])
    assert "DONE-1" not in _section(staff, "due-overdue") + _section(staff, "waiting")
    waiting = _section(staff, "waiting")
    assert "DEF-1" in waiting and "PART-1" in waiting and "REJ-1" not in waiting
    expires = (datetime.now(UTC) + timedelta(days=30)).date().isoformat()
    held = re.search(r"<tr><td>crm</td><td>990001</td>(.*?)</tr>", _section(staff, "holds"))
    assert held and "legal_claims" in held.group(1) and expires in held.group(1)
    notices = _section(staff, "notices")
    assert "esp" in notices and "crm_mirror" in notices and "analytics" not in notices
    reports = _section(staff, "reports")
    assert "deletion/dry-runs/2026-12-01/run-1.json" in reports and "stats/2026" in reports
    for page in (viewer.text, staff):
        assert EMAIL not in page and "+14155550123" not in page
        assert "inbox/" not in page and "accepted/" not in page and "bundle.zip" not in page
    runs = _section(staff, "runs")
    for dag_id in ("deletion_requests", "access_reports", "deadline_watchdog"):
        assert f">{dag_id}<" in runs, runs[:600]


def test_the_last_run_of_each_job_comes_from_airflows_db(stack, desk, ctx):
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.utils.types import DagRunTriggeredByType

    run = trigger_dag("statistics_reports", triggered_by=DagRunTriggeredByType.TEST)
    assert run is not None
    page = desk.http.get(DASH, headers=desk.headers("viewer")).text
    row = re.search(r"<tr><td><a[^>]*>statistics_reports</a></td>(.*?)</tr>", page)
    assert row and "queued" in row.group(1), _section(page, "runs")[:800]


def test_a_viewer_cannot_act_and_staff_verify_the_ledger(stack, desk, ctx):
    from compliance.core import ledger

    seed(ctx)
    ledger.append(
        ctx.state, ctx.hash_key, [ledger.Entry("dash_test", None, {"n": i}) for i in range(3)]
    )
    viewer = desk.headers("viewer")
    assert desk.http.post("/compliance/ledger/verify", headers=viewer).status_code == 403
    assert desk.http.get("/compliance/requests/6/OVER-1", headers=viewer).status_code == 403
    ident = desk.http.post(
        "/compliance/requests/6/OVER-1/identities", data={"type": "delete"}, headers=viewer
    )
    assert ident.status_code == 403

    ok = desk.http.post("/compliance/ledger/verify", headers=desk.headers("user"))
    assert ok.status_code == 200, ok.text[:400]
    entries = len(ledger.entries(ctx.state))
    assert f"data-ledger='ok' data-entries='{entries}'" in ok.text
    head = re.search(r"<code>(\d+:[0-9a-f]{64})</code>", ok.text).group(1)
    cross = desk.http.post(
        "/compliance/ledger/verify",
        headers={**desk.headers("user"), "Origin": "http://evil.example"},
    )
    assert cross.status_code == 403

    with ctx.state.begin() as c:
        c.execute(
            sa.update(ledger.cj_ledger).where(ledger.cj_ledger.c.seq == 2).values(payload='{"n":7}')
        )
    broken = desk.http.post(
        "/compliance/ledger/verify", data={"checkpoint": head}, headers=desk.headers("user")
    )
    assert broken.status_code == 200
    assert "data-ledger='broken'" in broken.text and "data-first-bad='2'" in broken.text
    bad = desk.http.post(
        "/compliance/ledger/verify", data={"checkpoint": "x"}, headers=desk.headers("user")
    )
    assert bad.status_code == 400


TRICKS = [
    "inbox/ui/delete-6-OVER-1.json",
    "accepted/6/OVER-1.delete.json",
    "access/6/ACC-1/link.json",
    "receipts/../inbox/ui/delete-6-OVER-1.json",
    "receipts/6/../../accepted/6/OVER-1.delete.json",
    "/receipts/6/DONE-1.delete.json",
    "receipts//6/DONE-1.delete.json",
    "receipts\\6\\DONE-1.delete.json",
    "stats/./x.json",
    "",
]


def test_the_file_viewer_refuses_other_areas_and_path_tricks(stack, desk, ctx):
    seed(ctx)
    for role, key in [(r, k) for r in ("viewer", "op") for k in TRICKS]:
        answer = desk.http.get("/compliance/files", params={"key": key}, headers=desk.headers(role))
        assert answer.status_code in (403, 422), (role, key, answer.status_code)
        assert EMAIL.encode() not in answer.content and b"presigned" not in answer.content


def test_the_file_viewer_streams_receipts_and_reports_behind_the_login(stack, desk, ctx):
    from compliance.core import ledger

    seed(ctx)
    viewer = desk.headers("viewer")
    receipt = desk.http.get(
        "/compliance/files", params={"key": "receipts/6/DONE-1.delete.json"}, headers=viewer
    )
    assert receipt.status_code == 200 and receipt.json() == {"request_id": "DONE-1"}
    assert receipt.headers["content-type"].startswith("application/json")
    assert receipt.headers["x-content-type-options"] == "nosniff"
    report = desk.http.get(
        "/compliance/files", params={"key": "stats/2026/metrics.json"}, headers=viewer
    )
    assert report.status_code == 200 and report.json() == {"requests": 9}
    missing = desk.http.get(
        "/compliance/files", params={"key": "receipts/6/NONE.delete.json"}, headers=viewer
    )
    assert missing.status_code == 404
    bundle = {"key": "access/6/ACC-1/bundle.zip"}
    assert desk.http.get("/compliance/files", params=bundle, headers=viewer).status_code == 403
    user = desk.http.get("/compliance/files", params=bundle, headers=desk.headers("user"))
    assert user.status_code == 403
    before = len(ledger.entries(ctx.state, kind="bundle_viewed"))
    op = desk.http.get("/compliance/files", params=bundle, headers=desk.headers("op"))
    assert op.status_code == 200 and op.content == b"PK\x03\x04zip"
    (entry,) = ledger.entries(ctx.state, kind="bundle_viewed")[before:]
    assert entry.payload["key"] == bundle["key"] and "op-1" not in json.dumps(entry.payload)


def test_identities_show_only_to_allowed_roles_and_each_view_is_ledgered(stack, desk, ctx):
    from compliance.core import ledger
    from compliance.core.hashing import keyed_hash
    from compliance.desk import request_view

    seed(ctx)
    user = desk.http.get("/compliance/requests/6/OVER-1", headers=desk.headers("user"))
    assert user.status_code == 200, user.text[:400]
    assert "Show identities" not in user.text and EMAIL not in user.text
    assert "acknowledged" in _section(user.text, "events")
    denied = desk.http.post(
        "/compliance/requests/6/OVER-1/identities",
        data={"type": "delete"},
        headers=desk.headers("user"),
    )
    assert denied.status_code == 403 and EMAIL not in denied.text
    assert ledger.entries(ctx.state, kind=request_view.VIEWED) == []

    op = desk.headers("op")
    page = desk.http.get("/compliance/requests/6/OVER-1", headers=op)
    assert "Show identities" in page.text and EMAIL not in page.text
    assert "action='OVER-1/identities'" in page.text  # relative to the page
    cross = desk.http.post(
        "/compliance/requests/6/OVER-1/identities",
        data={"type": "delete"},
        headers={**op, "Origin": "http://evil.example"},
    )
    assert cross.status_code == 403
    shown = desk.http.post(
        "/compliance/requests/6/OVER-1/identities", data={"type": "delete"}, headers=op
    )
    assert shown.status_code == 200, shown.text[:400]
    assert EMAIL in shown.text and "+14155550123" in shown.text
    assert shown.headers["cache-control"] == "no-store"
    (entry,) = ledger.entries(ctx.state, kind=request_view.VIEWED)
    text = json.dumps([entry.ref, entry.payload])
    assert EMAIL not in text and "+14155550123" not in text and "op-1" not in text
    assert entry.payload["viewer"] == keyed_hash(ctx.hash_key, "desk_user", "op-1")
    assert entry.ref == request_view.request_ref(ctx.hash_key, CLIENT, "OVER-1", "delete")
    assert entry.payload["fields"] == ["email", "phone"] and entry.payload["held"] is True
    assert f"ledger entry {entry.seq}" in shown.text

    done = desk.http.post(
        "/compliance/requests/6/DONE-1/identities", data={"type": "delete"}, headers=op
    )
    assert done.status_code == 200 and "No longer held" in done.text
    assert "data-identities='gone'" in done.text
    assert "receipts/6/DONE-1.delete.json" in _section(done.text, "receipts")
    assert len(ledger.entries(ctx.state, kind=request_view.VIEWED)) == 2
    nothing = desk.http.post(
        "/compliance/requests/6/NOPE-1/identities", data={"type": "delete"}, headers=op
    )
    assert nothing.status_code == 404
    assert len(ledger.entries(ctx.state, kind=request_view.VIEWED)) == 2
    assert ledger.verify(ctx.state, ctx.hash_key).ok
    assert desk.http.get("/compliance/requests/6/NOPE-1", headers=op).status_code == 404
