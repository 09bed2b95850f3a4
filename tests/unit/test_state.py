"""The compliance state database (compliance.requests.state) on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import inspect, select

from compliance.core.hashing import keyed_hash
from compliance.core.stores.sql import engine_from_url
from compliance.requests import state
from compliance.requests.state import ExtensionRefused, NewRequest, PlanRow, TransitionRefused

KEY = b"unit-test-key"
RECEIVED = datetime(2024, 1, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
def engine(db_url):
    eng = engine_from_url(db_url)
    state.create_state_schema(eng)
    yield eng
    eng.dispose()


def _req(request_id: str, type: str = "delete", **kw) -> NewRequest:
    base = {
        "client_id": "7",  # tenant ids are text (issue 14)
        "request_id": request_id,
        "type": type,
        "jurisdiction": "ccpa",
        "received_at": RECEIVED,
        "accepted_at": RECEIVED + timedelta(days=1),
        "ack_due": RECEIVED.date() + timedelta(days=10),
        "response_due": RECEIVED.date() + timedelta(days=44),
        "source": f"inbox/7/{request_id}.json",
        "subject_hash": keyed_hash(KEY, "email", f"{request_id}@example.com"),
        "keys": (keyed_hash(KEY, "email", f"{request_id}@example.com"),),
    }
    base.update(kw)
    return NewRequest(**base)


def _one(engine, pk):
    return state.get_requests(engine, [pk])[pk]


# --------------------------------------------------------------------------- schema


def test_schema_creation_is_idempotent(engine):
    state.create_state_schema(engine)
    state.create_state_schema(engine)
    tables = set(inspect(engine).get_table_names())
    expected = {
        "cj_requests",
        "cj_request_keys",
        "cj_batches",
        "cj_batch_plan",
        "cj_tombstones",
        "cj_notices",
        "cj_ledger",
        "cj_ledger_lock",
    }
    assert expected <= tables


def test_no_pii_columns():
    """Identities are stored only as keyed hashes (R20): no column may hold a raw identity."""
    forbidden = ("email", "phone", "name", "address", "ssn", "birth")
    for table in state.metadata.sorted_tables:
        for col in table.columns:
            assert not any(word in col.name for word in forbidden), f"{table.name}.{col.name}"


# --------------------------------------------------------------------------- requests


def test_insert_requests_is_insert_if_absent(engine):
    pks = state.insert_requests(engine, [_req("r1"), _req("r2"), _req("r1", type="access")])
    assert len(set(pks.values())) == 3
    # A rerun with different fields returns the same pks and changes nothing (first write wins).
    again = state.insert_requests(
        engine, [_req("r1", response_due=date(2030, 1, 1), source="ui"), _req("r3")]
    )
    assert again[("7", "r1", "delete")] == pks[("7", "r1", "delete")]
    row = _one(engine, pks[("7", "r1", "delete")])
    assert row.response_due == date(2024, 2, 14)
    assert row.source == "inbox/7/r1.json"
    assert row.received_at == RECEIVED  # timezone-aware UTC on both backends
    assert row.status == "open"
    assert len(state.get_requests(engine, [*pks.values(), *again.values()])) == 4


def test_insert_requests_accepts_mappings_and_validates():
    with pytest.raises(ValueError, match="type"):
        _req("x", type="correct")
    with pytest.raises(ValueError, match="reason_code"):
        _req("x", status="rejected")


def test_insert_requests_from_mappings(engine):
    row = _req("m1").__dict__ | {"keys": ["k-a", "k-b", "k-a"]}
    pks = state.insert_requests(engine, [row])
    assert state.existing_dedupe_keys(engine, ["k-a", "k-b", "k-c"]) == {"k-a", "k-b"}
    assert list(pks) == [("7", "m1", "delete")]


def test_dedupe_keys_only_requests_being_worked_on(engine):
    """Identities deduplicate against open and deferred requests only: a consumer erased before
    whose data was collected again may ask again (issue 15, R16/R20); accepted statuses (finished
    ones too) still hold a request id (processed once); rejected ones never count."""
    pks = state.insert_requests(
        engine,
        [
            _req("open1", keys=("k-open",)),
            _req("done1", keys=("k-done",)),
            _req("def1", keys=("k-deferred",)),
            _req("rej1", keys=("k-rejected",), status="rejected", reason_code="unverified"),
        ],
    )
    state.set_status(engine, [pks[("7", "done1", "delete")]], "completed")
    state.set_status(engine, [pks[("7", "def1", "delete")]], "deferred", reason_code="legal_hold")
    wanted = ["k-open", "k-done", "k-deferred", "k-rejected", "k-new"]
    assert state.existing_dedupe_keys(engine, wanted) == {"k-open", "k-deferred"}
    assert state.existing_dedupe_keys(engine, wanted, state.ACCEPTED_STATUSES) == {
        "k-open",
        "k-done",
        "k-deferred",
    }
    assert state.existing_dedupe_keys(engine, []) == set()
    # what a repeat request links to: every accepted request holding the key, earliest first
    assert state.requests_holding_keys(engine, ["k-done", "k-rejected", "k-new"]) == {
        "k-done": [(pks[("7", "done1", "delete")], ("7", "done1", "delete"))]
    }


def test_dedupe_keys_many(engine):
    keys = tuple(f"k{i}" for i in range(1200))  # more than one IN chunk
    state.insert_requests(engine, [_req("big", keys=keys)])
    assert state.existing_dedupe_keys(engine, [*keys, "nope"]) == set(keys)


def test_open_requests_by_deadline(engine):
    pks = state.insert_requests(
        engine,
        [
            _req("late", response_due=date(2024, 3, 1)),
            _req("soon", response_due=date(2024, 2, 1)),
            _req("acc", type="access"),
            _req("gone", status="rejected", reason_code="direct_request"),
        ],
    )
    assert [r.request_id for r in state.open_requests(engine, "delete")] == ["soon", "late"]
    state.record_extension(engine, pks[("7", "soon", "delete")], RECEIVED, "volume of requests")
    assert [r.request_id for r in state.open_requests(engine, "delete")] == ["late", "soon"]
    assert [r.request_id for r in state.open_requests(engine, "access")] == ["acc"]
    with pytest.raises(ValueError):
        state.open_requests(engine, "opt_out")


def test_subject_request_count_for_r7(engine):
    subject = keyed_hash(KEY, "email", "same@example.com")
    state.insert_requests(
        engine,
        [
            _req("a1", type="access", subject_hash=subject),
            _req("a2", type="access", subject_hash=subject, received_at=RECEIVED + timedelta(90)),
            _req("a3", type="access", subject_hash=subject, status="rejected", reason_code="dup"),
        ],
    )
    since = RECEIVED - timedelta(days=365)
    assert state.subject_request_count(engine, 7, subject, "access", since) == 2
    assert state.subject_request_count(engine, 7, subject, "delete", since) == 0
    assert state.subject_request_count(engine, 8, subject, "access", since) == 0


# --------------------------------------------------------------------------- statuses


def test_status_transitions(engine):
    pks = state.insert_requests(engine, [_req("s1"), _req("s2")])
    a, b = pks[("7", "s1", "delete")], pks[("7", "s2", "delete")]

    with pytest.raises(TransitionRefused) as exc:
        state.set_status(engine, [a], "deferred")
    assert exc.value.reason_code == "reason_required"

    assert state.set_status(engine, [a], "deferred", reason_code="legal_hold") == 1
    assert _one(engine, a).reason_code == "legal_hold"
    assert state.set_status(engine, [a], "open") == 1  # hold lifted
    assert _one(engine, a).reason_code is None

    assert state.set_status(engine, [a, b], "open", batch_id="b-1") == 2
    done_at = datetime(2024, 1, 20, 12, tzinfo=UTC)
    assert state.set_status(engine, [a, b], "completed", completed_at=done_at) == 2
    row = _one(engine, a)
    assert (row.status, row.batch_id, row.completed_at) == ("completed", "b-1", done_at)

    # A rerun converges: no change, and completed_at (the R22 response date) never moves.
    later = done_at + timedelta(days=3)
    assert state.set_status(engine, [a, b], "completed", completed_at=later, batch_id="b-2") == 0
    assert _one(engine, a).completed_at == done_at
    assert _one(engine, a).batch_id == "b-1"

    with pytest.raises(TransitionRefused) as exc:
        state.set_status(engine, [a], "open")
    assert exc.value.reason_code == "transition_refused"


def test_status_change_is_all_or_nothing(engine):
    pks = state.insert_requests(engine, [_req("x1"), _req("x2")])
    a, b = pks[("7", "x1", "delete")], pks[("7", "x2", "delete")]
    state.set_status(engine, [b], "rejected", reason_code="unverified")
    with pytest.raises(TransitionRefused):
        state.set_status(engine, [a, b], "completed")
    assert _one(engine, a).status == "open"
    with pytest.raises(LookupError):
        state.set_status(engine, [a, 999_999], "completed")
    assert _one(engine, a).status == "open"
    with pytest.raises(ValueError):
        state.set_status(engine, [a], "rejected", reason_code="Consumer said: call me")
    assert state.set_status(engine, [], "completed") == 0


# --------------------------------------------------------------------------- extensions (R3, R4)


def test_valid_extension_gives_day_90(engine):
    pk = state.insert_requests(engine, [_req("e1")])[("7", "e1", "delete")]
    # Day 45 counting the day of receipt as day 1 (R3): received_on + 44d = 2024-02-14.
    notice = datetime(2024, 2, 14, 23, 0, tzinfo=UTC)
    due = state.record_extension(engine, pk, notice, "  complexity of the request ")
    assert due == RECEIVED.date() + timedelta(days=89) == date(2024, 3, 30)
    row = _one(engine, pk)
    assert (row.extended_due, row.extension_notice_at) == (due, notice)
    assert row.extension_reason == "complexity of the request"
    assert row.due == due
    # Rerunning the same extension is a no-op, a different one is a second extension.
    assert state.record_extension(engine, pk, notice, "complexity of the request") == due
    with pytest.raises(ExtensionRefused) as exc:
        state.record_extension(engine, pk, notice - timedelta(days=1), "another reason")
    assert exc.value.reason_code == "already_extended"


@pytest.mark.parametrize(
    ("notice", "reason", "code"),
    [
        (datetime(2024, 2, 15, 0, 0, tzinfo=UTC), "volume", "notice_too_late"),  # day 46
        (None, "volume", "notice_missing"),
        (datetime(2024, 1, 5, tzinfo=UTC), "", "reason_missing"),
        (datetime(2024, 1, 5, tzinfo=UTC), "   ", "reason_missing"),
        (datetime(2023, 12, 31, tzinfo=UTC), "volume", "notice_before_receipt"),
    ],
)
def test_invalid_extensions_are_refused(engine, notice, reason, code):
    pk = state.insert_requests(engine, [_req("e2")])[("7", "e2", "delete")]
    with pytest.raises(ExtensionRefused) as exc:
        state.record_extension(engine, pk, notice, reason)
    assert exc.value.reason_code == code
    assert _one(engine, pk).extended_due is None


def test_extension_of_closed_or_unknown_request_is_refused(engine):
    pk = state.insert_requests(engine, [_req("e3")])[("7", "e3", "delete")]
    state.set_status(engine, [pk], "completed")
    with pytest.raises(ExtensionRefused) as exc:
        state.record_extension(engine, pk, RECEIVED, "volume")
    assert exc.value.reason_code == "not_open"
    with pytest.raises(ExtensionRefused) as exc:
        state.record_extension(engine, 424242, RECEIVED, "volume")
    assert exc.value.reason_code == "unknown_request"


def test_gdpr_extension_uses_calendar_months(engine):
    received = datetime(2024, 1, 31, 9, tzinfo=UTC)
    pk = state.insert_requests(
        engine,
        [_req("g1", jurisdiction="gdpr", received_at=received, response_due=date(2024, 2, 29))],
    )[("7", "g1", "delete")]
    assert state.extension_window("gdpr", received.date()) == (date(2024, 2, 29), date(2024, 4, 30))
    with pytest.raises(ExtensionRefused):
        state.record_extension(engine, pk, datetime(2024, 3, 1, tzinfo=UTC), "volume")
    assert state.record_extension(engine, pk, datetime(2024, 2, 29, tzinfo=UTC), "volume") == date(
        2024, 4, 30
    )


def test_extension_counts_from_intakes_receipt_day(engine):
    """9 pm in California on 31 Dec is 1 Jan in UTC: intake's day 1 (the earlier) is 31 Dec."""
    received = datetime(2024, 1, 1, 5, 0, tzinfo=UTC)
    pk = state.insert_requests(
        engine,
        [
            _req(
                "tz1",
                received_at=received,
                received_on=date(2023, 12, 31),
                response_due=date(2023, 12, 31) + timedelta(days=44),
            )
        ],
    )[("7", "tz1", "delete")]
    assert _one(engine, pk).receipt_day == date(2023, 12, 31)
    with pytest.raises(ExtensionRefused) as exc:
        state.record_extension(engine, pk, datetime(2024, 2, 14, tzinfo=UTC), "volume")
    assert exc.value.reason_code == "notice_too_late"
    due = state.record_extension(engine, pk, datetime(2024, 2, 13, tzinfo=UTC), "volume")
    assert due == date(2023, 12, 31) + timedelta(days=89) == date(2024, 3, 29)


def test_extension_notice_never_after_stored_response_due(engine):
    pk = state.insert_requests(engine, [_req("rd1", response_due=date(2024, 2, 10))])[
        ("7", "rd1", "delete")
    ]
    with pytest.raises(ExtensionRefused):
        state.record_extension(engine, pk, datetime(2024, 2, 12, tzinfo=UTC), "volume")


def test_extension_naive_datetimes_are_utc(engine):
    pk = state.insert_requests(engine, [_req("e4")])[("7", "e4", "delete")]
    due = state.record_extension(engine, pk, datetime(2024, 2, 14, 12), "volume")
    assert due == date(2024, 3, 30)
    assert _one(engine, pk).extension_notice_at == datetime(2024, 2, 14, 12, tzinfo=UTC)


# --------------------------------------------------------------------------- batches


def test_plan_batch_is_written_once(engine):
    pk = state.insert_requests(engine, [_req("p1")])[("7", "p1", "delete")]
    plan = [PlanRow(pk, "crm", "contacts", 3), PlanRow(pk, "recordings", "bucket/shard-0", 2)]
    stored = state.plan_batch(engine, "del-2024-01-20", "delete", plan)
    assert stored == plan
    assert state.get_batch(engine, "del-2024-01-20").status == "planned"
    # After a crash, the rerun finds fewer rows; the stored plan still reports the first counts.
    rerun = state.plan_batch(
        engine, "del-2024-01-20", "delete", [PlanRow(pk, "crm", "contacts", 0)]
    )
    assert rerun == plan
    assert state.batch_plan(engine, "del-2024-01-20") == plan
    with pytest.raises(ValueError, match="kind"):
        state.plan_batch(engine, "del-2024-01-20", "access", plan)

    assert state.finish_batch(engine, "del-2024-01-20") is True
    assert state.finish_batch(engine, "del-2024-01-20") is False
    assert state.get_batch(engine, "del-2024-01-20").status == "done"
    with pytest.raises(LookupError):
        state.finish_batch(engine, "nope")
    assert state.batch_plan(engine, "nope") == []
    assert state.get_batch(engine, "nope") is None


def test_retention_batch_without_requests(engine):
    rows = [{"request_pk": None, "system": "crm", "target": "email_events", "planned": 120}]
    assert state.plan_batch(engine, "ret-1", "retention", rows) == [
        PlanRow(None, "crm", "email_events", 120)
    ]
    assert state.plan_batch(engine, "ret-empty", "retention", []) == []


def test_concurrent_plan_batch_writes_one_plan(engine):
    plan = [PlanRow(None, "crm", f"t{i}", i) for i in range(20)]
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            state.plan_batch(engine, "race", "retention", plan)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert state.batch_plan(engine, "race") == plan


# --------------------------------------------------------------------------- tombstones


def test_tombstones_are_unique(engine):
    pk = state.insert_requests(engine, [_req("t1")])[("7", "t1", "delete")]
    h_mail = keyed_hash(KEY, "email", "t1@example.com")
    h_phone = keyed_hash(KEY, "phone", "+15555550100")
    stones = [("7", "email", h_mail), ("7", "phone", h_phone), ("7", "email", h_mail)]
    assert state.add_tombstones(engine, "crm", {pk: stones}) == 2
    assert state.add_tombstones(engine, "crm", {pk: stones}) == 0
    assert state.add_tombstones(engine, "crm", {None: [("8", "email", h_mail)]}) == 1
    assert state.add_tombstones(engine, "recordings", {None: [("7", "email", h_mail)]}) == 1
    assert state.tombstone_hashes(engine, "crm") == {
        ("7", "email", h_mail),
        ("7", "phone", h_phone),
        ("8", "email", h_mail),
    }
    assert state.tombstone_hashes(engine, "crm", client_id=8) == {("8", "email", h_mail)}
    assert state.tombstone_hashes(engine, "nothing") == set()


def test_a_batch_of_tombstones_links_each_to_its_first_request(engine):
    pks = state.insert_requests(engine, [_req("b1"), _req("b2")])
    a, b = pks[("7", "b1", "delete")], pks[("7", "b2", "delete")]
    shared, own = (
        ("7", "email", keyed_hash(KEY, "email", "s")),
        ("7", "email", keyed_hash(KEY, "e", "o")),
    )
    assert state.add_tombstones(engine, "crm", {a: [shared], b: [shared, own]}) == 2
    t = state.cj_tombstones
    with engine.connect() as conn:
        links = {
            h: p
            for h, p in conn.execute(select(t.c.hash, t.c.request_pk).where(t.c.system == "crm"))
        }
    assert links == {shared[2]: a, own[2]: b}


# --------------------------------------------------------------------------- notices


def test_notice_lifecycle(engine):
    pk = state.insert_requests(engine, [_req("n1")])[("7", "n1", "delete")]
    t0 = datetime(2024, 1, 21, tzinfo=UTC)
    first = state.record_notice(engine, pk, "esp", "api", "failed", error_kind="http_503", at=t0)
    assert (first.status, first.attempts, first.last_error_kind) == ("failed", 1, "http_503")
    sent = state.record_notice(engine, pk, "esp", "api", "sent", at=t0 + timedelta(hours=1))
    assert (sent.status, sent.attempts, sent.last_error_kind) == ("sent", 2, None)
    assert sent.sent_at == t0 + timedelta(hours=1)
    again = state.record_notice(engine, pk, "esp", "api", "sent", at=t0 + timedelta(days=1))
    assert again.sent_at == sent.sent_at  # the first successful send is kept

    assert state.acknowledge(engine, pk, "esp", at=t0 + timedelta(days=2)) is True
    assert state.acknowledge(engine, pk, "esp") is False
    after = state.record_notice(engine, pk, "esp", "api", "failed", error_kind="timeout")
    assert after.status == "acknowledged"  # never downgraded by a rerun
    assert after.acked_at == t0 + timedelta(days=2)

    none = state.record_notice(engine, pk, "transcriber", "none", "not_configured")
    assert (none.status, none.attempts) == ("not_configured", 0)
    assert set(state.notices(engine, pk)) == {"esp", "transcriber"}
    with pytest.raises(LookupError):
        state.acknowledge(engine, pk, "payments")


def test_acknowledged_send_is_one_write(engine):
    """A send answered with an acknowledgement is stored as such at once (a crash between two
    writes used to leave it 'sent' forever: D4 in tests/reliability)."""
    pk = state.insert_requests(engine, [_req("n3")])[("7", "n3", "delete")]
    t0 = datetime(2024, 1, 21, tzinfo=UTC)
    row = state.record_notice(engine, pk, "esp", "webhook", "sent", at=t0, acknowledged=True)
    assert (row.status, row.sent_at, row.acked_at, row.attempts) == ("acknowledged", t0, t0, 1)
    with pytest.raises(ValueError, match="only a sent notice"):
        state.record_notice(engine, pk, "esp", "webhook", "failed", acknowledged=True)


def test_batch_lines_replace_per_object_and_sum_per_request(engine):
    pks = state.insert_requests(engine, [_req("l1"), _req("l2")])
    a, b = pks[("7", "l1", "delete")], pks[("7", "l2", "delete")]
    state.plan_batch(engine, "del-x", "delete", [])
    state.record_lines(engine, "del-x", "app_logs", "d1/a.gz", {str(a): 3, str(b): 1})
    state.record_lines(engine, "del-x", "app_logs", "d1/b.gz", {str(a): 2})
    state.record_lines(engine, "del-x", "web_logs", "d1/a.gz", {str(b): 5, str(a): 0})
    # the same object rewritten again (a rerun before the replacement landed): replaced
    state.record_lines(engine, "del-x", "app_logs", "d1/a.gz", {str(a): 3, str(b): 1})
    assert state.batch_lines(engine, "del-x") == {
        a: {"app_logs": 5},
        b: {"app_logs": 1, "web_logs": 5},
    }
    assert state.batch_lines(engine, "del-other") == {}


def test_connection_bound_calls_share_the_callers_transaction(engine):
    """plan_batch and set_status given one connection commit together or not at all."""
    pk = state.insert_requests(engine, [_req("t1")])[("7", "t1", "delete")]
    with pytest.raises(RuntimeError), engine.begin() as conn:
        state.plan_batch(conn, "del-t", "delete", [state.PlanRow(pk, "crm", "contacts", 1)])
        state.set_status(conn, [pk], "open", batch_id="del-t")
        raise RuntimeError("crash before commit")
    assert state.get_batch(engine, "del-t") is None
    assert _one(engine, pk).batch_id is None
    with engine.begin() as conn:
        state.plan_batch(conn, "del-t", "delete", [state.PlanRow(pk, "crm", "contacts", 1)])
        state.set_status(conn, [pk], "open", batch_id="del-t")
    assert [r.id for r in state.batch_requests(engine, "del-t")] == [pk]
    assert len(state.batch_plan(engine, "del-t")) == 1


def test_notice_error_kind_is_a_code_not_a_message(engine):
    pk = state.insert_requests(engine, [_req("n2")])[("7", "n2", "delete")]
    with pytest.raises(ValueError):
        state.record_notice(engine, pk, "esp", "api", "failed", error_kind="no user a@b.com")
    with pytest.raises(ValueError):
        state.record_notice(engine, pk, "esp", "api", "acknowledged")
