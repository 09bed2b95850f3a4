"""The dashboard's queries (`compliance.desk.dashboard`, issue 18 item 2) on SQLite and
PostgreSQL: deadline buckets relative to a fixed day (R3, R4, G1: the deadline in force is the
extended one), deferred and partial requests by reason code (R19, R16.2), unacknowledged
notices and their age (R16.3), and ledger verification on demand (R20, R22)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from compliance.core import ledger
from compliance.desk import dashboard
from compliance.requests import state

TODAY = date(2026, 6, 1)
NOW = datetime.combine(TODAY, time(12), tzinfo=UTC)
KEY = b"unit-test-key"


@pytest.fixture
def engine(db_url: str):
    eng = sa.create_engine(db_url)
    state.create_state_schema(eng)
    yield eng
    eng.dispose()


def _req(rid: str, due_in: int | None, received_days_ago: int = 10, client: object = 7):
    received = NOW - timedelta(days=received_days_ago)
    return state.NewRequest(
        client_id=client,
        request_id=rid,
        type="delete",
        jurisdiction="ccpa",
        received_at=received,
        received_on=received.date(),
        source="ui",
        response_due=None if due_in is None else TODAY + timedelta(days=due_in),
    )


def _seed(engine) -> dict[str, int]:
    rows = [
        _req("OVER-1", -1),
        _req("OVER-2", -30),
        _req("TODAY-1", 0),
        _req("DUE2-1", 2),
        _req("DUE7-1", 3),
        _req("DUE7-2", 7),
        _req("LATER-1", 8),
        _req("EXT-1", 4, received_days_ago=40),  # extended: due at day 90 (R4)
        _req("DEF-1", -2),  # deferred still owes a response: overdue too
        _req("PART-1", 5),
        _req("DONE-1", -10),
        _req("NODUE-1", None),
    ]
    pks = {k[1]: pk for k, pk in state.insert_requests(engine, rows).items()}
    notice = datetime.combine(TODAY, time(9), tzinfo=UTC)
    state.record_extension(engine, pks["EXT-1"], notice, "complex request")
    state.set_status(engine, [pks["DEF-1"]], "deferred", reason_code="law_enforcement_hold")
    state.set_status(engine, [pks["PART-1"]], "partial", reason_code="legal_claims")
    state.set_status(engine, [pks["DONE-1"]], "completed")
    state.record_notice(engine, pks["DONE-1"], "esp", "http", "sent", at=NOW - timedelta(days=5))
    state.record_notice(engine, pks["DONE-1"], "sms", "sns", "failed", "timeout", at=NOW)
    state.record_notice(engine, pks["PART-1"], "crm2", "http", "sent", at=NOW, acknowledged=True)
    state.record_notice(engine, pks["EXT-1"], "late", "http", "sent", at=NOW)
    state.acknowledge(engine, pks["EXT-1"], "late", at=NOW)
    return pks


def test_deadline_buckets_count_and_list_by_the_deadline_in_force(engine):
    _seed(engine)
    got = dashboard.deadlines(engine, TODAY)
    assert got.counts == {
        "overdue": 3,  # OVER-1, OVER-2, DEF-1 (deferred owes a response)
        "due_2": 2,  # due today (0 days left) and in 2 days
        "due_7": 2,  # 3 and 7 days
        "later": 2,  # LATER-1 and EXT-1 (its response_due was 4 days away, extended to day 90)
        "extended": 1,
    }
    assert got.undated == 1
    ids = {b: [r.request_id for r in rows] for b, rows in got.rows.items()}
    assert ids["overdue"] == ["OVER-2", "DEF-1", "OVER-1"]  # earliest deadline first
    assert ids["due_2"] == ["TODAY-1", "DUE2-1"] and ids["due_7"] == ["DUE7-1", "DUE7-2"]
    (ext,) = got.rows["extended"]
    assert (
        ext.request_id == "EXT-1"
        and ext.extended
        and ext.due == TODAY - timedelta(days=40) + state.CCPA_EXTENDED_LAST_DAY
    )
    assert [r.days_left for r in got.rows["overdue"]] == [-30, -2, -1]
    assert all(r.client_id == "7" for rows in got.rows.values() for r in rows)
    capped = dashboard.deadlines(engine, TODAY, cap=1)
    assert capped.counts == got.counts and len(capped.rows["overdue"]) == 1


def test_deferred_and_partial_requests_by_reason_code(engine):
    _seed(engine)
    got = dashboard.waiting(engine)
    assert got.counts == {("deferred", "law_enforcement_hold"): 1, ("partial", "legal_claims"): 1}
    assert got.total == 2
    assert {(r["request_id"], r["reason_code"]) for r in got.rows} == {
        ("DEF-1", "law_enforcement_hold"),
        ("PART-1", "legal_claims"),
    }


def test_unacknowledged_notices_count_and_age(engine):
    _seed(engine)
    got = dashboard.unacknowledged(engine, NOW)
    assert got.count == 2 and got.by_status == {"sent": 1, "failed": 1}
    assert got.oldest_days == 5
    assert [(r["subprocessor"], r["age_days"]) for r in got.rows] == [("esp", 5), ("sms", 0)]
    assert {r["request_id"] for r in got.rows} == {"DONE-1"}


def test_ledger_verification_on_demand_reports_ok_then_broken(engine):
    ctx = SimpleNamespace(state=engine, hash_key=KEY)
    assert dashboard.verify_ledger(ctx).as_dict()["entries"] == 0
    ledger.append(engine, KEY, [ledger.Entry("unit", None, {"n": i}) for i in range(4)])
    ok = dashboard.verify_ledger(ctx)
    assert ok.ok and ok.entries == 4 and ok.head and ok.head.startswith("4:")
    with engine.begin() as c:
        c.execute(
            sa.update(ledger.cj_ledger).where(ledger.cj_ledger.c.seq == 3).values(kind="edited")
        )
    broken = dashboard.verify_ledger(ctx, ok.head)
    assert not broken.ok and broken.first_bad_seq == 3 and broken.entries == 2
    assert "MAC" in (broken.problem or "")
    with pytest.raises(ValueError):
        dashboard.verify_ledger(ctx, "not-a-checkpoint")


def test_the_file_viewer_opens_receipts_and_reports_only():
    """The whitelist (`reports_list.area_for`): areas without personal data, an access bundle
    only for a role that may see identities, never its link, never a key with path tricks."""
    from compliance.desk import reports_list as rl

    assert rl.area_for("receipts/7/R-1.delete.json") == "receipts"
    assert rl.area_for("stats/2026/q1.json") == "stats"
    assert rl.area_for("deletion/dry-runs/2026-06-01/x.json") == "dry_runs"
    assert rl.area_for("access/7/R-1/bundle.zip", identities=True) == "bundles"
    for key, identities in [
        ("access/7/R-1/bundle.zip", False),
        ("access/7/R-1/link.json", True),
        ("inbox/ui/x.json", True),
        ("accepted/7/R-1.delete.json", True),
        ("batches/b1/targets.json", True),
        ("receipts/../accepted/7/R-1.delete.json", False),
        ("stats/2026/../../inbox/x", False),
        ("/stats/x.json", False),
        ("stats//x.json", False),
        ("stats/x\x00.json", False),
        ("", False),
    ]:
        with pytest.raises(rl.Refused):
            rl.area_for(key, identities=identities)
