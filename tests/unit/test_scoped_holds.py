"""Scoped legal holds (issue 15 point 2; R16.2, R19, R21), both backends.

A hold on a table keeps that table's rows of the consumer and the rows below them; the parent
rows they need keep only their key, tenant and relation columns; everything else of the request
is erased. A hold on everything defers the request. Invalid codes and unknown scopes are honoured
conservatively; a law-enforcement hold lapses 90 days after it was placed (R19). Before this
change any hold (scoped or not) deferred the whole request: the partial-erasure tests fail there.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from compliance.core.datamap.validate import load_datamap
from compliance.deletion import erase_sql, plan, residue_oracle
from compliance.deletion import finalize as finalize_step
from compliance.requests import holds
from compliance_dev.world import schema as w
from tests.unit import test_erase_sql as base
from tests.unit.test_erase_sql import KEY, T0, snapshot

REPO = Path(__file__).resolve().parents[2]
DM = load_datamap(REPO / "config/datamap.yaml")
SYSTEM = DM.systems["crm"]
NOW = T0 + timedelta(days=10)


@pytest.fixture
def crm(db_url):
    """test_erase_sql's hand-built world: 10 and 11 are one person in tenant 1, 12 a bystander,
    20 the same e-mail in tenant 2; message 100 (10) has attachment 1000; 10 has payment 1."""
    yield from base.crm.__wrapped__(db_url)


def _hold(engine, hold_id, client, contact, scope, code, *, placed=T0, expires=None):
    with engine.begin() as c:
        c.execute(
            sa.insert(w.legal_holds),
            {
                "hold_id": hold_id,
                "client_id": client,
                "contact_id": contact,
                "scope": scope,
                "reason": "counsel's letter",
                "exception_code": code,
                "created_at": placed,
                "expires_at": expires,
            },
        )


def _row(engine, table, key):
    t = w.metadata.tables[table]
    pk = next(iter(t.primary_key.columns))
    with engine.connect() as c:
        row = c.execute(sa.select(t).where(pk == key)).first()
    return None if row is None else dict(row._mapping)


def _pending(ref="1", client="1", **identities):
    return plan.Pending(ref, client, f"R-{ref}", T0.isoformat(), identities)


# -- the hold itself --------------------------------------------------------------------------


def test_a_scoped_hold_does_not_cover_everything():
    scoped = holds.Hold("1", "10", "messages", "legal_claims")
    whole = holds.Hold("1", None, holds.ALL, "legal_claims")
    assert scoped.covers("1", "10", "messages") and not scoped.covers("1", "10", holds.ALL)
    assert not scoped.covers("1", "11", "messages") and not scoped.covers("2", "10", "messages")
    assert whole.covers("1", "99", holds.ALL) and whole.covers("1", "99", "payments")
    assert holds.Hold("1", None, "x", "no_such_code").code == holds.INVALID_CODE


def test_what_a_scope_keeps():
    assert holds.kept_tables(DM, "crm", "messages") == {"messages", "message_attachments"}
    assert holds.kept_tables(DM, "crm", "call_audio") == {"call_recordings"}
    assert holds.kept_stores(DM, "crm", "call_recordings") == {"call_audio"}
    assert holds.parent_tables(SYSTEM, {"message_attachments"}) == {"messages", "contacts"}
    # retention asks which scopes keep a row: its own table, the tables above, their stores
    assert holds.scopes_holding(DM, "crm", {"message_attachments"}) == {
        "message_attachments",
        "messages",
        "contacts",
    }
    assert not holds.known_scope(DM, "crm", "mesages")


def test_law_enforcement_holds_lapse_after_90_days_unless_renewed(crm):
    _hold(crm, 1, 1, 10, "messages", "law_enforcement_hold", placed=T0 - timedelta(days=95))
    _hold(crm, 2, 1, 11, "messages", "law_enforcement_hold", placed=T0 - timedelta(days=95))
    _hold(crm, 3, 1, 11, "messages", "law_enforcement_hold", placed=T0 - timedelta(days=5))
    _hold(crm, 4, 1, 12, "messages", "legal_claims", placed=T0 - timedelta(days=400))
    active = holds.active_holds(crm, SYSTEM, T0)
    assert {(h.consumer_id, h.ref) for h in active} == {("11", "3"), ("12", "4")}
    renewed = next(h for h in active if h.ref == "3")
    assert renewed.lapses and renewed.expires_at == T0 + timedelta(days=85)
    soon = holds.expiring(active, T0 + timedelta(days=80))
    assert [h.ref for h in soon] == ["3"]  # the watchdog's 7-day warning


def test_a_registry_without_a_placed_at_column_takes_expires_at_as_given(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    md = sa.MetaData()
    sa.Table(
        "legal_holds",
        md,
        sa.Column("hold_id", sa.Integer, primary_key=True),
        sa.Column("client_id", sa.Integer),
        sa.Column("contact_id", sa.Integer),
        sa.Column("scope", sa.String),
        sa.Column("reason", sa.String),
        sa.Column("exception_code", sa.String),
        sa.Column("expires_at", sa.DateTime),
    )
    md.create_all(engine)
    with engine.begin() as c:
        c.execute(md.tables["legal_holds"].insert(), [
            {"hold_id": 1, "client_id": 1, "contact_id": 2, "scope": "all", "reason": "r",
             "exception_code": "law_enforcement_hold", "expires_at": None},
        ])  # fmt: skip
    (hold,) = holds.active_holds(engine, SYSTEM, T0 + timedelta(days=400))
    assert hold.placed_at is None and hold.expires_at is None and not hold.lapses


# -- the SQL erasure -------------------------------------------------------------------------


def test_partial_erasure_keeps_held_rows_and_only_the_parent_skeleton(crm):
    """Consumer 10's messages are held: message 100 and its attachment stay byte-identical, the
    contact row keeps only key, tenant and relation columns, everything else of 10 and of 11
    (the same person, not held) is erased; other consumers are untouched."""
    before = snapshot(crm)
    kept = holds.kept_tables(DM, "crm", "messages")
    held = {"10": kept}
    plans = {p.table: p for p in erase_sql.plan_erasure(crm, SYSTEM, ["10", "11"], held)}
    assert plans["messages"].kept == {"10": 1} and plans["messages"].per_consumer == {"11": 1}
    assert plans["message_attachments"].kept == {"10": 1}
    assert plans["contacts"].parents == {"10": 1} and plans["contacts"].per_consumer == {
        "10": 1,
        "11": 1,
    }
    erase_sql.execute_erasure(crm, SYSTEM, ["10", "11"], KEY, held=held)
    after = snapshot(crm)
    for key in [("messages", 100), ("message_attachments", 1000)]:
        assert after[key] == before[key]  # byte-identical
    contact = _row(crm, "contacts", 10)
    assert contact["client_id"] == 1 and contact["is_child"] is False  # NOT NULL flag stays
    for col in ("email", "phone", "first_name", "last_name", "external_id", "address_line"):
        assert contact[col] is None, col
    assert _row(crm, "contacts", 11) is None and _row(crm, "messages", 101) is None
    assert _row(crm, "contact_aliases", 1) is None  # not held: erased
    assert _row(crm, "payments", 1)["card_token"] is None  # masked as usual
    untouched = {k for k in before if k[0] in ("contacts", "messages") and k[1] in (12, 20, 102)}
    assert all(after[k] == before[k] for k in untouched)
    assert erase_sql.residue(crm, SYSTEM, ["10", "11"], held) == {}
    assert erase_sql.residue(crm, SYSTEM, ["10", "11"])["messages"] == 1  # without the hold
    erase_sql.execute_erasure(crm, SYSTEM, ["10", "11"], KEY, held=held)  # idempotent
    assert snapshot(crm) == after


def test_the_hold_ends_and_the_rest_is_erased(crm):
    held = {"10": holds.kept_tables(DM, "crm", "messages")}
    erase_sql.execute_erasure(crm, SYSTEM, ["10", "11"], KEY, held=held)
    erase_sql.execute_erasure(crm, SYSTEM, ["10", "11"], KEY)
    assert _row(crm, "messages", 100) is None and _row(crm, "contacts", 10) is None
    assert _row(crm, "message_attachments", 1000) is None
    assert erase_sql.residue(crm, SYSTEM, ["10", "11"]) == {}


# -- planning: defer, partial, invalid --------------------------------------------------------


def _assemble(crm, *pending):
    return plan.assemble(DM, {"crm": crm}, "b1", list(pending), NOW)


def test_plan_partial_request_names_what_is_kept_and_why(crm):
    _hold(crm, 1, 1, 10, "messages", "legal_claims", expires=NOW + timedelta(days=30))
    targets, counts = _assemble(crm, _pending(email="jo@example.com"))
    assert targets.deferred == {} and targets.partial == {"1": "legal_claims"}
    assert targets.held == {"crm": {"10": ["message_attachments", "messages"]}}
    assert counts["1"]["crm"]["messages"] == 1  # consumer 11's message only
    (entry,) = targets.kept["1"]
    assert entry["scope"] == "messages" and entry["exception"] == "legal_claims"
    assert entry["hold"] == "consumer" and entry["rule"] == "R19"
    assert {"system": "crm", "table": "messages", "rows": 1} in entry["kept"]
    assert {"system": "crm", "table": "message_attachments", "rows": 1} in entry["kept"]
    (parent,) = entry["parents"]
    assert parent["table"] == "contacts" and parent["rows"] == 1
    assert "email" in parent["erased_columns"] and "contact_id" in parent["kept_columns"]
    blob = repr(targets.kept)
    assert "jo@example.com" not in blob and "+1415" not in blob  # names and counts only


def test_client_wide_table_hold_keeps_that_table_for_every_consumer(crm):
    _hold(crm, 1, 1, None, "payments", "legal_obligation")
    targets, _ = _assemble(crm, _pending(email="jo@example.com"))
    assert targets.partial == {"1": "legal_obligation"}
    assert targets.held["crm"] == {"10": ["payments"], "11": ["payments"]}
    (entry,) = targets.kept["1"]
    assert entry["hold"] == "client-wide"
    assert entry["kept"] == [{"system": "crm", "table": "payments", "rows": 1}]


def test_a_hold_on_everything_defers_and_a_hold_on_nothing_held_changes_nothing(crm):
    _hold(crm, 1, 1, 12, holds.ALL, "legal_claims")
    _hold(crm, 2, 1, 10, "portal_accounts", "legal_claims")  # 10 has no portal account
    targets, _ = _assemble(
        crm, _pending("1", email="jo@example.com"), _pending("2", email="other@example.com")
    )
    assert targets.deferred == {"2": "legal_claims"}
    assert targets.partial == {} and targets.active_refs() == ["1"]


def test_invalid_codes_and_unknown_scopes_are_honoured_conservatively(crm):
    _hold(crm, 1, 1, 10, "messages", "because_counsel_said_so")
    _hold(crm, 2, 1, 12, "mesages", "legal_claims")  # misspelt scope
    targets, _ = _assemble(
        crm, _pending("1", email="jo@example.com"), _pending("2", email="other@example.com")
    )
    assert targets.partial == {"1": holds.INVALID_CODE}
    assert targets.kept["1"][0]["valid_code"] is False
    assert "because_counsel" not in repr(targets.kept)  # the raw text stays in the registry
    assert targets.deferred == {"2": holds.INVALID_SCOPE}


def test_unchanged_holds_keep_a_partial_request_waiting(crm):
    _hold(crm, 1, 1, 10, "messages", "legal_claims")
    targets, _ = _assemble(crm, _pending(email="jo@example.com"))
    memo = finalize_step._held_doc(targets, "1")
    again, _ = _assemble(crm, plan.Pending("1", "1", "R-1", T0.isoformat(), {}, memo))
    assert again.waiting == {"1": "legal_claims"} and again.active_refs() == []
    with crm.begin() as c:
        c.execute(sa.delete(w.legal_holds))
    released, _ = _assemble(crm, plan.Pending("1", "1", "R-1", T0.isoformat(), {}, memo))
    assert released.active_refs() == ["1"] and released.partial == {}
    assert set(released.consumers["crm"]["1"]) == {"10", "11"}  # remembered
    assert released.requests["1"]["earlier"]["kept"] == targets.kept["1"]


# -- the independent oracle --------------------------------------------------------------------


def test_the_oracle_does_not_count_held_rows_as_residue(crm):
    with crm.begin() as c:
        c.execute(
            sa.update(w.messages)
            .where(w.messages.c.message_id == 100)
            .values(to_address="jo@example.com")
        )
    _hold(crm, 1, 1, 10, "messages", "legal_claims")
    targets, _ = _assemble(crm, _pending(email="jo@example.com"))
    erase_sql.execute_erasure(
        crm, SYSTEM, targets.consumer_ids("crm"), KEY, held=targets.held["crm"]
    )
    sql_only = DM.model_copy(update={"stores": {}})  # no S3 here: the SQL half of the oracle
    verdict = residue_oracle.verify(sql_only, {"crm": crm}, {}, targets, [])
    assert verdict.clean, verdict.describe()
    skipped = residue_oracle.statement(sql_only, verdict, [])["searched"]
    assert any(
        s.get("why") == "rows kept under a legal hold"
        for entry in skipped
        for s in entry.get("skipped", []) or []
        if isinstance(s, dict)
    )
    targets.held = {}  # the same check without the hold: the kept message is residue
    verdict = residue_oracle.verify(sql_only, {"crm": crm}, {}, targets, [])
    assert "crm:messages.to_address" in verdict.residue


# -- the watchdog --------------------------------------------------------------------------------


def test_the_watchdog_warns_before_a_hold_ends_and_on_broken_rows(crm):
    from compliance.requests import hold_watch

    _hold(crm, 1, 1, 10, "messages", "legal_claims", expires=NOW + timedelta(days=5))
    _hold(crm, 2, 1, 11, "messages", "legal_claims", expires=NOW + timedelta(days=30))
    _hold(crm, 3, 1, None, "payments", "because_counsel_said_so")
    _hold(crm, 4, 2, 20, "mesages", "legal_claims")
    found = hold_watch.check(DM, {"crm": crm}, NOW)
    assert sorted((f.kind, f.hold) for f in found) == [
        ("expiring", "1"),
        ("invalid_hold_code", "3"),
        ("invalid_hold_scope", "4"),
    ]
    # reported once: a run whose last check was already inside the 7-day window is quiet
    later = hold_watch.check(DM, {"crm": crm}, NOW + timedelta(days=1), NOW)
    assert [f.kind for f in later] == ["invalid_hold_code", "invalid_hold_scope"]
    summary = {
        "day": "2026-01-15",
        "findings": len(found),
        "by_kind": {"expiring": 1, "invalid_hold_code": 1, "invalid_hold_scope": 1},
        "lines": [f.line() for f in found],
    }
    alert = hold_watch.digest(summary)
    assert alert is not None and "1 ending" in alert.subject
    text = alert.body
    assert "because_counsel" not in text and "counsel's letter" not in text  # no free text
    assert "consumer" in text and " 10" not in text and " 20 " not in text  # no consumer ids
