"""The compliance desk (issue 18) on the second world: a CRM unlike the demo's (tests/second_world:
text tenants where `"01"`, `"1"` and `"001"` are three different spellings and only two are
organisations, a Unicode tenant, UUID consumer keys, identities on a parent and a child table,
nested JSON log lines), wired to Airflow by `tests/e2e/test_second_world.py`'s `w2` fixture.

One world, the tests in order (as in test_second_world.py):

1. signed API submissions for consumers of three text tenants; a credential's `client_ids` are
   compared as text (`"01"` authorises `"01"`, not `"1"` nor the JSON integer `1`); a repeat is
   idempotent, a conflicting one 409;
2. documents shaped for the demo world (integer contact ids, a record id as an identity, a tenant
   spelt like a number) are refused with the field and the reason;
3. the deletion job runs as test_second_world.py's deletion test runs it; the API then reports the
   erasure completed and returns its receipt, the held consumer deferred. Oracle: the second
   world's own checker (`checker.check_erasure`, which shares no code with the product and takes
   ownership from the generator's ground truth) plus raw SQL;
4. the callback outbox derives the events and delivers them to a local HTTP server; each
   signature is recomputed by hand (docs/api.md's canonical string, `hmac`), and no body holds an
   identity of the consumers;
5. the dashboard's queries put each request in the deadline bucket computed by hand from R3
   (`received_on + 44 days`), and a request's page shows identities only when asked (ledgered).

SQLite only (the desk's queries run on PostgreSQL in tests/unit/test_desk_*.py; the second
world's DAG runs on both in test_second_world.py), to keep this module near a minute.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import sqlalchemy as sa

from tests.e2e import staff_desk
from tests.e2e.recorder import recording_endpoint
from tests.e2e.test_client_api import SECRET, Client, _problem
from tests.e2e.test_second_world import w2  # noqa: F401 (the module-scoped world fixture)
from tests.second_world import checker, generate
from tests.second_world.requests import document

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("w2", ["sqlite"], indirect=True)]

KEY = "crm2desk"  # the credential: connection compliance_api_crm2desk
UNI = generate.UNICODE_TENANT  # "zürich-süd"
# The tenants the credential may act for: two organisations, the Unicode one, "001" (no
# organisation: a number-like spelling of "01" and "1") and the inactive one. Not "1".
TENANTS = ["01", "acme-east", UNI, "001", generate.INACTIVE_TENANT]
NOW = datetime.now(UTC).replace(microsecond=0)
DEL_ID, HELD_ID, ACC_ID = "API2-DEL-01", "API2-DEL-HELD", "API2-ACC-UNI"
# Received long enough ago that the requests fall in different deadline buckets (test 5).
HELD_DAYS_AGO, ACC_DAYS_AGO = 39, 47
# The callback URL carries the Unicode tenant percent-encoded: signed as registered.
HOOK = "/dsr/callbacks?tenant=" + quote(UNI, safe="") + "&group=crm2"


@dataclass
class Endpoint:
    """The client's callback endpoint: records every call as it arrived, answers 200."""

    url: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[Endpoint]:
    ep = Endpoint()
    with recording_endpoint(ep.calls) as port:
        ep.url = f"http://127.0.0.1:{port}{HOOK}"
        yield ep


@pytest.fixture(scope="module")
def desk(w2, endpoint) -> Iterator[staff_desk.Desk]:  # noqa: F811
    """The api-server's app with the credential in an Airflow connection (text tenant ids)."""
    conn = {
        "conn_type": "generic",
        "password": SECRET,
        "extra": {
            "client_ids": TENANTS,
            "callback_url": endpoint.url,
            "rate_limit_per_minute": 1000,
        },
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(f"AIRFLOW_CONN_COMPLIANCE_API_{KEY.upper()}", json.dumps(conn))
        yield staff_desk.open_desk()


@pytest.fixture
def api(desk) -> Client:
    return Client(desk.http, KEY)


def _inbox(w2) -> dict[str, dict]:  # noqa: F811
    return {k: json.loads(w2.read(k)) for k in w2.keys("inbox/")}


def _identities(world: generate.World, *persons: generate.Person) -> set[str]:
    """Every spelling of these consumers' identities the second world's checker searches for
    (e-mails, phones in four forms, UUID keys, client-side ids), plus their names."""
    if not persons:
        return set()
    found = checker.variants(world, {p.uuid for p in persons})
    values = {v.decode() for spellings in found.values() for v in spellings}
    return values | {p.full_name.lower() for p in persons}


def _no_identity(
    world: generate.World, texts: list[str] | list[bytes], *persons: generate.Person
) -> None:
    """None of the values in any text, as written or JSON-escaped (non-ASCII as \\uXXXX)."""
    values = _identities(world, *persons)
    escaped = {json.dumps(v)[1:-1].lower() for v in values}
    for raw in texts:
        text = (raw.decode() if isinstance(raw, bytes) else raw).lower()
        leaked = sorted(v for v in values | escaped if v in text)
        assert not leaked, f"an identity leaked ({len(leaked)} spelling(s))"


def _status(api: Client, request_id: str, tenant: str) -> Any:
    return api.call("GET", f"/requests/{request_id}?client_id={quote(tenant, safe='')}")


def _crm_scalar(w2, sql: str, **params: Any) -> Any:  # noqa: F811
    engine = sa.create_engine(w2.db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar_one()
    finally:
        engine.dispose()


# -- 1. signed submissions, tenants compared as text ---------------------------------------------
def test_submissions_for_text_tenants_are_authorised_by_text(w2, api):  # noqa: F811
    world = w2.world
    # What the second world's tenant ids are: text keys, "01" and "1" two organisations, "001"
    # none (the demo's are integers; a product that read these as numbers would merge them).
    engine = sa.create_engine(w2.db_url)
    key_type = {c["name"]: c["type"] for c in sa.inspect(engine).get_columns("orgs")}["org_code"]
    engine.dispose()
    assert isinstance(key_type, sa.String)
    orgs = {o for o, *_ in generate.ORGS}
    assert {"01", "1", UNI} <= orgs and "001" not in orgs

    twin, twin_1 = world.person("twin_01"), world.person("twin_1")
    held, uni = world.person("held"), world.person("unicode")
    assert twin.org == "01" and twin_1.org == "1" and held.org == "acme-east" and uni.org == UNI
    assert twin.primary_email and twin.primary_email.lower() == twin_1.primary_email.lower()

    doc = document(DEL_ID, "01", "delete", NOW - timedelta(days=1), email=twin.primary_email)
    answer = api.call("POST", "/requests", doc)
    assert answer.status_code == 202, answer.text[:500]
    view = answer.json()
    assert (view["client_id"], view["request_id"], view["type"], view["status"]) == (
        "01",
        DEL_ID,
        "delete",
        "received",
    )
    ((key, written),) = _inbox(w2).items()
    assert key.startswith("inbox/ui/") and written == doc  # the document a drop would be

    # idempotent: the same document again is its status, nothing written twice
    again = api.call("POST", "/requests", doc)
    assert again.status_code == 200 and again.json()["status"] == "received", again.text[:300]
    assert _inbox(w2) == {key: doc}
    changed = {**doc, "identities": {"email": "someone.else@example.test"}}
    _problem(api.call("POST", "/requests", changed), 409, "duplicate")
    assert _inbox(w2) == {key: doc}

    # the credential acts for several tenants: the query must name one, spelt as the CRM does
    missing = _problem(api.call("GET", f"/requests/{DEL_ID}"), 400, "invalid_document")
    assert [e["field"] for e in missing["errors"]] == ["client_id"]
    assert _status(api, DEL_ID, "01").json()["status"] == "received"
    _problem(_status(api, DEL_ID, "1"), 403, "wrong_client")  # "1" is another organisation
    _problem(_status(api, DEL_ID, "001"), 404, "not_found")  # authorised, but not "01"

    # the twin in tenant "1" (the same e-mail): not this credential's, as text or as integer 1
    for other in ("1", 1):
        twin_doc = {**document("API2-TWIN", "1", "delete", NOW, email=twin_1.primary_email)}
        twin_doc["client_id"] = other
        _problem(api.call("POST", "/requests", twin_doc), 403, "wrong_client")

    # a held consumer by the CRM's own client-side id, and an access request in the Unicode
    # tenant (the query below carries it percent-encoded, signed as sent)
    held_doc = document(
        HELD_ID,
        "acme-east",
        "delete",
        NOW - timedelta(days=HELD_DAYS_AGO),
        contact_id=held.ref_code,
    )
    acc_doc = document(
        ACC_ID, UNI, "access", NOW - timedelta(days=ACC_DAYS_AGO), email=uni.primary_email
    )
    batch = api.call("POST", "/requests", {"requests": [held_doc, acc_doc]})
    assert batch.status_code == 207, batch.text[:500]
    assert [(r["status"], r["request"]["client_id"]) for r in batch.json()["results"]] == [
        (202, "acme-east"),
        (202, UNI),
    ]
    assert _status(api, ACC_ID, UNI).json()["status"] == "received"
    _problem(_status(api, ACC_ID, "acme-east"), 404, "not_found")
    assert len(_inbox(w2)) == 3
    _no_identity(world, [a.text for a in api.sent], twin, twin_1, held, uni)


# -- 2. documents shaped for the demo world ------------------------------------------------------
def test_demo_shaped_documents_are_refused_naming_field_and_reason(w2, api):  # noqa: F811
    world = w2.world
    twin = world.person("twin_01")
    base = document("API2-BAD", "01", "delete", NOW - timedelta(days=1), email=twin.primary_email)
    cases = {
        # the demo's contact ids are numbers; this CRM's are text (`C-0001`)
        "int_contact_id": (
            {**base, "identities": {"contact_id": 4711}},
            "identities.contact_id",
            "wrong_type",
        ),
        # the consumer's UUID key is a log identity (record_id), never a request field
        "record_id": (
            {**base, "identities": {"record_id": twin.uuid}},
            "identities.record_id",
            "unknown_field",
        ),
        # a UUID key in braces is no client-side id
        "braced_uuid": (
            {**base, "identities": {"contact_id": "{" + twin.uuid + "}"}},
            "identities.contact_id",
            "malformed_contact_id",
        ),
        # "001" reads as the number 1 but is neither "01" nor "1": no organisation
        "number_like_tenant": ({**base, "client_id": "001"}, "client_id", "unknown_client"),
        "inactive_tenant": (
            {**base, "client_id": generate.INACTIVE_TENANT},
            "client_id",
            "inactive_client",
        ),
    }
    before = _inbox(w2)
    answers = []
    for name, (doc, field_, reason) in cases.items():
        doc = {**doc, "request_id": f"API2-BAD-{len(answers)}"}
        answers.append(api.call("POST", "/requests", doc))
        problem = _problem(answers[-1], 400, "invalid_document")
        assert (field_, reason) in {(e["field"], e["reason"]) for e in problem["errors"]}, (
            name,
            problem["errors"],
        )
        assert all(e["message"] for e in problem["errors"]), name
    assert _inbox(w2) == before  # nothing written for a refused document
    for i in range(len(answers)):  # and nothing claimed: the ids stay free
        _problem(_status(api, f"API2-BAD-{i}", "01"), 404, "not_found")
    _no_identity(world, [a.text for a in answers], twin)


# -- 3. the deletion job, then the API's answer --------------------------------------------------
def test_the_deletion_run_completes_the_submission_and_the_api_returns_its_receipt(
    w2,  # noqa: F811
    api,
):
    world = w2.world
    twin, twin_1, held = world.person("twin_01"), world.person("twin_1"), world.person("held")
    before = w2.snapshot()
    run = w2.run_dag("deletion_requests", {"dry_run": False})  # as test_second_world.py does
    after = w2.snapshot()
    assert run.state == "success"
    # the oracle: exactly the consumer's rows and log lines gone, everything else byte-identical
    problems = checker.check_erasure(world, before, after, {twin.uuid})
    assert not problems, "\n".join(problems[:40])
    q = "select count(*) from people where person_uuid = :u"
    assert _crm_scalar(w2, q, u=twin.uuid) == 0
    assert _crm_scalar(w2, q, u=twin_1.uuid) == 1  # the twin in "1": someone else
    assert _crm_scalar(w2, q, u=held.uuid) == 1  # under a legal hold (R19)

    done = _status(api, DEL_ID, "01").json()
    assert done["status"] == "completed" and done["completed_at"], done
    result = api.call("GET", f"/requests/{DEL_ID}/result?client_id=01")
    assert result.status_code == 200, result.text[:500]
    got = result.json()
    assert got["request"] == done and "link" not in got  # an erasure: its receipt, no bundle
    receipt = json.loads(w2.read(f"receipts/01/{DEL_ID}.delete.json"))
    assert got["receipt"] == receipt and receipt["request_id"] == DEL_ID
    _problem(api.call("GET", f"/requests/{DEL_ID}/result?client_id=1"), 403, "wrong_client")

    deferred = _status(api, HELD_ID, "acme-east").json()
    assert deferred["status"] == "deferred" and deferred["reason_code"], deferred
    _problem(
        api.call("GET", f"/requests/{HELD_ID}/result?client_id=acme-east"), 409, "not_completed"
    )
    acc = _status(api, ACC_ID, UNI).json()  # taken in by the same intake, not yet answered
    assert acc["status"] == "acknowledged" and acc["response_due"], acc
    _no_identity(world, [a.text for a in api.sent], twin, twin_1, held, world.person("unicode"))


# -- 4. callbacks ----------------------------------------------------------------------------------
def _canonical(path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """docs/api.md's canonical string, written from the docs (not from signing.py)."""
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join(["v1", "POST", path, timestamp, nonce, digest]).encode()


def test_callbacks_are_derived_delivered_signed_and_carry_no_identity(w2, api, endpoint):  # noqa: F811
    from compliance import runtime
    from compliance.jobs import callbacks as jobs  # the client_callbacks DAG's tasks

    world = w2.world
    endpoint.calls.clear()
    ctx = runtime.context()
    want = {
        ("01", DEL_ID): ["received", "acknowledged", "completed"],
        ("acme-east", HELD_ID): ["received", "acknowledged", "deferred"],
        (UNI, ACC_ID): ["received", "acknowledged"],
    }
    total = sum(len(v) for v in want.values())
    assert jobs.sync(ctx)["queued"] == total  # the refused documents were never claimed
    assert jobs.deliver(ctx) == {"attempted": total, "acknowledged": total}

    seen: dict[tuple[str, str], list[str]] = {}
    for call in endpoint.calls:
        headers, body = call["headers"], call["body"]
        assert call["path"] == HOOK  # the registered path and query, as sent
        assert headers["X-Compliance-Client"] == KEY
        scheme, _, signature = headers["X-Compliance-Signature"].partition("=")
        assert scheme == "v1" and re.fullmatch(r"[0-9a-f]{64}", signature)
        ts, nonce = headers["X-Compliance-Timestamp"], headers["X-Compliance-Nonce"]
        message = _canonical(
            urlsplit(endpoint.url).path + "?" + urlsplit(endpoint.url).query, ts, nonce, body
        )
        expected = hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(signature, expected)
        assert hmac.new(SECRET.encode(), message + b" ", hashlib.sha256).hexdigest() != signature
        doc = json.loads(body)
        req = doc["request"]
        assert isinstance(req["client_id"], str)  # "01" stays "01", never 1
        seen.setdefault((req["client_id"], req["request_id"]), []).append(doc["event"])
        if doc["event"] == "deferred":
            assert doc["detail"] and doc["detail"] == req["reason_code"]
    assert seen == want
    _no_identity(
        world,
        [c["body"] for c in endpoint.calls],
        world.person("twin_01"),
        world.person("held"),
        world.person("unicode"),
    )
    # a rerun derives nothing new and sends nothing
    assert jobs.sync(ctx).get("queued", 0) == 0
    assert jobs.deliver(ctx) == {}
    assert len(endpoint.calls) == total


# -- 5. the dashboard's queries and a request's page ---------------------------------------------
def _bucket(days_left: int) -> str:
    """docs/dashboard: overdue < 0 <= due within 2 days <= 2 < due in 3 to 7 days <= 7 < later."""
    if days_left < 0:
        return "overdue"
    if days_left <= 2:
        return "due_2"
    if days_left <= 7:
        return "due_7"
    return "later"


def test_dashboard_buckets_and_pages_show_identities_only_when_asked(w2, desk):  # noqa: F811
    from compliance import runtime
    from compliance.core import ledger
    from compliance.desk import dashboard, request_view

    world = w2.world
    held, uni, twin = world.person("held"), world.person("unicode"), world.person("twin_01")
    ctx = runtime.context()
    today = ctx.now().date()
    # R3 by hand: the day of receipt is day 1, the 45th day is received_on + 44 days
    due = {
        f"acme-east/{HELD_ID}": (NOW - timedelta(days=HELD_DAYS_AGO)).date() + timedelta(44),
        f"{UNI}/{ACC_ID}": (NOW - timedelta(days=ACC_DAYS_AGO)).date() + timedelta(44),
    }
    expected: dict[str, list[str]] = {b: [] for b in dashboard.BUCKETS}
    for ref, day in sorted(due.items(), key=lambda kv: kv[1]):
        expected[_bucket((day - today).days)].append(ref)
    assert expected["overdue"] == [f"{UNI}/{ACC_ID}"]  # the setup makes two buckets
    view = dashboard.deadlines(ctx.state, today)
    assert {b: [r.ref for r in rows] for b, rows in view.rows.items()} == expected
    assert view.counts == {b: len(v) for b, v in expected.items()} and view.undated == 0
    for rows in view.rows.values():
        for r in rows:
            assert r.due == due[r.ref] and r.days_left == (due[r.ref] - today).days
    waiting = dashboard.waiting(ctx.state)
    assert [(r["client_id"], r["request_id"]) for r in waiting.rows] == [("acme-east", HELD_ID)]
    # holds from the world's own registry record: the held consumer's, not the lifted one's
    holds = dashboard.active_holds(ctx)
    truth = world.active_holds(ctx.now().replace(tzinfo=None))
    assert sorted(h.client_id for h in holds) == sorted(h.org for h in truth) == ["acme-east"]
    _no_identity(world, [repr(holds), repr(view), repr(waiting)], held, uni, twin)

    # a request's page: ids, statuses and dates; the identities only when asked
    page = request_view.page(ctx, "acme-east", HELD_ID)
    assert page is not None and [r.row.status for r in page.records] == ["deferred"]
    assert [e for e, _ in page.records[0].events] == ["received", "acknowledged", "deferred"]
    _no_identity(world, [repr(page)], held)
    assert request_view.page(ctx, "1", DEL_ID) is None  # "1" is not "01"
    done = request_view.page(ctx, "01", DEL_ID)
    assert done is not None and done.receipts == [f"receipts/01/{DEL_ID}.delete.json"]

    # through the api-server: the dashboard links the Unicode tenant's request, no identity
    op = desk.headers("op")
    board = desk.http.get("/compliance/dashboard", headers=op)
    assert board.status_code == 200, board.text[:400]
    links = re.findall(r"href='\./requests/([^']+)'", board.text)
    assert f"{quote(UNI, safe='')}/{ACC_ID}" in links and f"acme-east/{HELD_ID}" in links
    uni_page = desk.http.get(f"/compliance/requests/{quote(UNI, safe='')}/{ACC_ID}", headers=op)
    assert uni_page.status_code == 200, uni_page.text[:400]
    held_page = desk.http.get(f"/compliance/requests/acme-east/{HELD_ID}", headers=op)
    assert held_page.status_code == 200 and "Show identities" in held_page.text
    _no_identity(world, [board.text, uni_page.text, held_page.text], held, uni, twin)

    viewed = len(ledger.entries(ctx.state, kind=request_view.VIEWED))
    shown = desk.http.post(
        f"/compliance/requests/acme-east/{HELD_ID}/identities", data={"type": "delete"}, headers=op
    )
    assert shown.status_code == 200, shown.text[:400]
    assert held.ref_code in shown.text  # asked for: the accepted document's contact id
    entries = ledger.entries(ctx.state, kind=request_view.VIEWED)
    assert len(entries) == viewed + 1
    entry = entries[-1]
    assert entry.ref == request_view.request_ref(ctx.hash_key, "acme-east", HELD_ID, "delete")
    assert entry.payload["client_id"] == "acme-east" and entry.payload["fields"] == ["contact_id"]
    _no_identity(world, [json.dumps([entry.ref, entry.payload])], held)
    gone = desk.http.post(
        f"/compliance/requests/01/{DEL_ID}/identities", data={"type": "delete"}, headers=op
    )
    assert gone.status_code == 200 and "No longer held" in gone.text
    _no_identity(world, [gone.text], twin)
