"""The request log from documents (issue 15): inbox -> intake -> state DB -> R23 metrics.

Every test starts from request documents dropped in the inbox (moto S3, SQLite state DB), never
from inserted rows, so what is checked is what intake records:

- R22/R23: a refused document is logged with the type, receipt time and jurisdiction it gives,
  `unknown` otherwise; the metrics count invalid submissions apart from denials, and a denial
  has a response date and a reason;
- R1/R5/R24: `forwarded_at`, the verification and a guardian's verification are stored as codes,
  times and keyed hashes, never names or identities;
- R2/R3: intake stamps `accepted_at`, so the watchdog reports a late-forwarded request at once;
- R20/R16: a repeat deletion after an erasure is a new request linked to the earlier one.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from compliance.core.stores.sql import engine_from_url
from compliance.requests import deadline_watch, inbox, request_records, state
from compliance.stats import config, metrics

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
KEY = b"request-log-test-key"
BUCKET = "cj-request-log"
CLIENTS = {"1": True, "2": True, "3": False}


def _doc(request_id: str, client_id: object = "1", **changes) -> dict:
    doc = {
        "request_id": request_id,
        "client_id": client_id,
        "type": "delete",
        "identities": {"email": f"{request_id.lower()}@example.com"},
        "received_at": "2025-03-01T10:00:00-08:00",
        "forwarded_at": "2025-03-05T09:00:00Z",
        "verification": {
            "method": "Email link",
            "verified_at": "2025-03-01T12:00:00-08:00",
            "verified_by": "Jane Smith (privacy desk)",
        },
    }
    doc.update(changes)
    return doc


@pytest.fixture
def world(s3, tmp_path):
    engine = engine_from_url(f"sqlite:///{tmp_path / 'state.db'}")
    state.create_state_schema(engine)
    s3.create_bucket(Bucket=BUCKET)

    def drop(key: str, body: bytes | dict, now: datetime = NOW) -> inbox.IntakeSummary:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        s3.put_object(Bucket=BUCKET, Key=f"inbox/{key}", Body=raw)
        return inbox.ingest(s3, BUCKET, CLIENTS, engine, KEY, now)

    yield engine, drop
    engine.dispose()


def _rows(engine) -> dict[str, state.RequestRow]:
    with engine.connect() as conn:
        pks = conn.execute(sa.select(state.cj_requests.c.id)).scalars().all()
    return {r.request_id: r for r in state.get_requests(engine, pks).values()}


def test_rejected_documents_are_logged_as_they_are_and_r23_tells_invalid_from_denied(world):
    engine, drop = world
    unverified = _doc("DEN-1", type="access")
    del unverified["verification"]
    no_date = _doc("INV-2", received_at="last tuesday")
    bad_jur = _doc("INV-3", jurisdiction="california")
    summary = drop(
        "1/batch.ndjson",
        b"\n".join(
            json.dumps(d).encode()
            for d in (
                _doc("OK-1"),  # accepted, pending
                unverified,  # a denial: unverifiable (R5)
                _doc("INV-1", identities={"email": "not an address"}),  # invalid: format
                no_date,  # invalid, receipt unknown
                bad_jur,  # invalid, jurisdiction unknown
            )
        )
        + b"\n{not json",  # invalid, unreadable: no client or request id, not logged
    )
    assert (summary.accepted, summary.rejected) == (1, 5)
    drop("3/inactive.json", _doc("DEN-2", client_id="3"))  # a denial: contract ended (R6)
    drop("2/theirs.json", _doc("MIS-1", client_id="1"))  # client 1 never sent it: not logged
    # the access-named key does not make a rejected delete an access request (no S3-key guess)
    drop("1/access-requests.json", _doc("INV-4", notes=""))

    rows = _rows(engine)
    assert set(rows) == {"OK-1", "DEN-1", "INV-1", "INV-2", "INV-3", "DEN-2", "INV-4"}
    received = datetime(2025, 3, 1, 18, 0, tzinfo=UTC)
    log = {
        rid: (r.type, r.jurisdiction, r.received_at, r.status, r.reason_code)
        for rid, r in rows.items()
    }
    assert log == {
        "OK-1": ("delete", "ccpa", received, "open", None),
        "DEN-1": ("access", "ccpa", received, "rejected", "not_verified"),
        "INV-1": ("delete", "ccpa", received, "rejected", "malformed_email"),
        "INV-2": ("delete", "ccpa", None, "rejected", "bad_date"),
        "INV-3": ("delete", "unknown", received, "rejected", "unknown_jurisdiction"),
        "DEN-2": ("delete", "ccpa", received, "rejected", "inactive_client"),
        "INV-4": ("delete", "ccpa", received, "rejected", "bad_text"),
    }
    # a refusal is the response: dated when intake refused it, with its reason (R21, R22)
    for rid in ("DEN-1", "INV-1", "INV-2", "INV-3", "DEN-2", "INV-4"):
        assert rows[rid].completed_at == NOW and rows[rid].reason_code

    cfg = config.Ccpa(
        jurisdictions=["ccpa"],
        denial_categories={"unverifiable": ["not_verified"]},
    )
    per_client, denials = metrics.ccpa_metrics(
        metrics.load_requests(engine), 2025, NOW + timedelta(days=1), cfg
    )
    got = {
        (r["client_id"], r["request_type"]): (
            r["received"],
            r["complied_whole_or_part"],
            r["denied"],
            r["invalid"],
            r["pending"],
        )
        for r in per_client.to_dict("records")
    }
    # received excludes invalid submissions: received = complied + denied + pending
    assert got[("1", "delete")] == (1, 0, 0, 4, 1)  # OK-1 pending; INV-1..4 invalid
    assert got[("1", "know")] == (1, 0, 1, 0, 0)  # DEN-1 denied
    assert got[("3", "delete")] == (1, 0, 1, 0, 0)  # DEN-2 denied
    assert got[("all", "delete")] == (2, 0, 1, 4, 1)
    know = per_client[(per_client.client_id == "1") & (per_client.request_type == "know")]
    assert float(know["median_days_to_respond"].iloc[0]) == pytest.approx(8.75, abs=0.1)
    assert sorted(zip(denials.reason_code, denials.r23_category, strict=True)) == [
        ("inactive_client", "other"),
        ("not_verified", "unverifiable"),
    ]


def test_verification_records_are_stored_as_codes_times_and_keyed_hashes(world):
    engine, drop = world
    child = _doc(
        "KID-1",
        subject={"is_minor": True, "under_13": True},
        guardian_verification={
            "method": "signed_consent_form",
            "verified_at": "2025-03-02T10:00:00-08:00",
            "verified_by": "call with mother, +1 415 555 0134",
        },
    )
    drop("1/kid.json", child)
    drop("1/plain.json", _doc("ADULT-1", forwarded_at=None))
    rows = _rows(engine)
    kid, adult = rows["KID-1"], rows["ADULT-1"]
    assert kid.forwarded_at == datetime(2025, 3, 5, 9, 0, tzinfo=UTC)  # R1
    assert adult.forwarded_at is None
    assert (kid.verification_method, kid.verified_at) == (
        "email_link",
        datetime(2025, 3, 1, 20, 0, tzinfo=UTC),
    )
    assert kid.verified_by_hash == request_records.verifier_hash(
        KEY, "1", "Jane Smith (privacy desk)"
    )
    assert (kid.guardian_method, kid.guardian_verified_at) == (
        "signed_consent_form",
        datetime(2025, 3, 2, 18, 0, tzinfo=UTC),
    )
    assert adult.guardian_method is None and adult.guardian_verified_by_hash is None
    # nothing readable of who verified is kept anywhere in the row (R20)
    with engine.connect() as conn:
        stored = " ".join(
            str(v) for row in conn.execute(sa.select(state.cj_requests)).all() for v in row
        )
    for leak in ("Jane", "Smith", "mother", "555", "kid-1@example.com"):
        assert leak not in stored

    shown = request_records.receipt_fields(kid)["request_record"]
    assert shown["forwarded_at"] == "2025-03-05T09:00:00+00:00"
    assert shown["verification"]["method"] == "email_link"
    assert shown["guardian_verification"]["rule"] == "R24"
    assert request_records.receipt_fields(adult)["request_record"]["guardian_verification"] is None


@pytest.mark.parametrize(
    ("label", "code"),
    [
        ("email_link", "email_link"),
        ("Account login", "account_login"),
        ("ID-document", "id_document"),
        ("jane@example.com", "other"),
        ("called 415 555 0134", "other"),
        ("asked her three questions about her last order and it matched", "other"),
    ],
)
def test_method_codes(label, code):
    assert request_records.method_code(label) == code


def test_a_late_forwarded_request_alerts_on_the_first_watchdog_run_after_intake(world):
    """R2/R3: received 20 days before it reached us, its acknowledgement is already overdue.
    The watchdog last ran yesterday, before intake; `accepted_at` makes the request new to it."""
    engine, drop = world
    now = datetime.now(UTC)
    received = now - timedelta(days=20)
    doc = _doc(
        "LATE-1",
        received_at=received.isoformat(),
        forwarded_at=(now - timedelta(days=1)).isoformat(),
        verification={
            "method": "email_link",
            "verified_at": received.isoformat(),
            "verified_by": "p",
        },
    )
    drop("1/late.json", doc, now=now)
    (row,) = state.actionable_requests(engine, "delete")
    assert row.accepted_at == now
    alerts = deadline_watch.watch(engine, now.date(), now - timedelta(days=1))
    assert [(a.request_id, a.clock, a.level) for a in alerts] == [
        ("LATE-1", deadline_watch.ACK, deadline_watch.OVERDUE)
    ]
    # the next day it is no longer new: an overdue acknowledgement is reported once
    assert deadline_watch.watch(engine, now.date() + timedelta(days=1), now) == []


def test_a_repeat_deletion_is_a_new_request_linked_to_the_earlier_one(world):
    engine, drop = world
    drop("1/first.json", _doc("DEL-1", identities={"email": "Jo@example.com"}))
    # while DEL-1 is open the same identities again are a duplicate (not logged)
    second = drop("1/second.json", _doc("DEL-2", identities={"email": "jo@example.com"}))
    assert second.by_reason == {"duplicate": 1}
    (first,) = state.actionable_requests(engine, "delete")
    assert first.previous_requests is None
    state.set_status(engine, [first.id], "completed", completed_at=NOW)
    # erased; data collected again; the business forwards a new deletion: a new request (R16)
    third = drop(
        "1/third.json",
        _doc("DEL-3", identities={"email": "JO@example.com", "phone": "(415) 555-0134"}),
    )
    assert (third.accepted, third.rejected) == (1, 0)
    (again,) = state.actionable_requests(engine, "delete")
    ref = request_records.request_ref(KEY, "1", "DEL-1", "delete")
    assert again.previous_requests == ref
    assert request_records.receipt_fields(again)["previous_requests"] == [ref]
    # a request id is still processed once, even after its request finished
    resend = drop("1/resend.json", _doc("DEL-1", identities={"email": "new@example.com"}))
    assert resend.by_reason == {"duplicate": 1}


def test_a_corrected_resend_under_a_refused_request_id_is_refused_not_swallowed(world):
    """The log keeps one row per (client, request id, type): a refused id resent, corrected, is
    refused as a duplicate (a new id is needed), never accepted into a row that stays rejected."""
    engine, drop = world
    unverified = _doc("FIX-1")
    del unverified["verification"]
    assert drop("1/a.json", unverified).by_reason == {"not_verified": 1}
    assert drop("1/b.json", _doc("FIX-1")).by_reason == {"duplicate": 1}
    assert drop("1/c.json", _doc("FIX-2")).accepted == 1
    rows = _rows(engine)
    assert (rows["FIX-1"].status, rows["FIX-2"].status) == ("rejected", "open")
