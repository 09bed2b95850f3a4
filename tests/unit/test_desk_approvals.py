"""The four-eyes rules (`compliance.desk.approvals`; issue 18 item 4, docs/approvals.md).

Which runs wait for a second person, why (the codes the alert and the ledger carry), and the
ledger round trip the retention rule reads back: on the real state DB, SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from compliance.core import ledger
from compliance.core.hashing import keyed_hash
from compliance.core.settings import Settings
from compliance.desk import approvals

BATCH = {
    "batch_id": "b-20261206T040000",
    "requests": 3,
    "deferred": 1,
    "systems": ["crm"],
    "shards": ["app_logs|mail/2026/12/01/"],
    "recordings": ["call_audio"],
    "backups": ["crm_backups"],
}


@pytest.fixture
def settings() -> Settings:
    return Settings.from_env({})


def test_settings_defaults_and_environment():
    s = Settings.from_env({})
    assert (s.approval_batch_size, s.approval_manual_runs, s.approval_retention_rules) == (
        100,
        True,
        True,
    )
    assert s.approval_timeout_hours == 72
    env = {
        "COMPLIANCE_APPROVAL_BATCH_SIZE": "0",
        "COMPLIANCE_APPROVAL_MANUAL_RUNS": "off",
        "COMPLIANCE_APPROVAL_RETENTION_RULES": "false",
        "COMPLIANCE_APPROVAL_TIMEOUT_HOURS": "0.5",
    }
    s = Settings.from_env(env)
    assert (s.approval_batch_size, s.approval_manual_runs, s.approval_retention_rules) == (
        0,
        False,
        False,
    )
    assert s.approval_timeout_hours == 0.5


def test_small_scheduled_batch_goes_ahead(settings):
    d = approvals.for_deletion(settings, BATCH, scheduled=True)
    assert d["required"] is False and d["why"] == []
    assert d["timeout_s"] == 72 * 3600


def test_manual_real_run_waits(settings):
    d = approvals.for_deletion(settings, BATCH, scheduled=False)
    assert d["required"] is True and d["why"] == [approvals.MANUAL_RUN]
    assert "**3**" in d["summary_md"] and "b-20261206T040000" in d["summary_md"]
    assert "a person started this run" in d["summary_md"]
    off = replace(settings, approval_manual_runs=False)
    assert approvals.for_deletion(off, BATCH, scheduled=False)["required"] is False


def test_batch_above_the_size_waits_even_when_scheduled(settings):
    small = replace(settings, approval_batch_size=2)
    d = approvals.for_deletion(small, BATCH, scheduled=True)
    assert d["required"] is True and d["why"] == [approvals.BATCH_SIZE]
    at = replace(settings, approval_batch_size=3)  # "more than N": exactly N goes ahead
    assert approvals.for_deletion(at, BATCH, scheduled=True)["required"] is False
    both = approvals.for_deletion(small, BATCH, scheduled=False)
    assert both["why"] == [approvals.BATCH_SIZE, approvals.MANUAL_RUN]


def test_dry_run_or_empty_batch_never_waits(settings):
    tiny = replace(settings, approval_batch_size=0)
    assert not approvals.for_deletion(tiny, {**BATCH, "dry_run": True}, scheduled=False)["required"]
    assert not approvals.for_deletion(tiny, {**BATCH, "requests": 0}, scheduled=False)["required"]


def test_offboarding_always_when_there_is_something_to_do(settings):
    planned = {"dry_run": False, "clients": ["8"], "summary_md": "| client | 8 |"}
    d = approvals.for_offboarding(settings, planned)
    assert d["required"] and d["why"] == [approvals.OFFBOARDING]
    assert d["summary_md"].endswith("| client | 8 |")
    assert not approvals.for_offboarding(settings, {**planned, "dry_run": True})["required"]
    assert not approvals.for_offboarding(settings, {**planned, "clients": []})["required"]


def test_timeout_from_settings(settings):
    d = approvals.for_deletion(replace(settings, approval_timeout_hours=0.01), BATCH, scheduled=0)
    assert d["timeout_s"] == 36


def test_rules_digest_covers_policy_and_datamap():
    base = approvals.rules_digest("p1", "m1")
    assert base == approvals.rules_digest("p1", "m1")
    assert base != approvals.rules_digest("p2", "m1")
    assert base != approvals.rules_digest("p1", "m2")


PLAN = {
    "rules": [
        {
            "rule": "R27-logs",
            "wave": "objects",
            "action": "delete",
            "counts": {"store:app_logs": {"objects": 4}},
        }
    ]
}


def test_retention_first_run_changed_and_unchanged(settings, state_engine):
    digest = approvals.rules_digest("p1", "m1")
    first = approvals.for_retention(settings, state_engine, PLAN, dry_run=False, digest=digest)
    assert first["required"] and first["why"] == [approvals.FIRST_RUN]
    assert "R27-logs" in first["summary_md"] and "objects=4" in first["summary_md"]
    approvals.record(
        state_engine,
        b"k",
        dag_id="retention_sweep",
        run_id="manual__1",
        approval=first,
        approver_id="reviewer",
    )
    assert approvals.last_approved_digest(state_engine, "retention_sweep") == digest
    same = approvals.for_retention(settings, state_engine, PLAN, dry_run=False, digest=digest)
    assert same["required"] is False
    other = approvals.rules_digest("p2", "m1")
    changed = approvals.for_retention(settings, state_engine, PLAN, dry_run=False, digest=other)
    assert changed["required"] and changed["why"] == [approvals.RULES_CHANGED]
    # a dry run, or the rule switched off, never waits
    assert not approvals.for_retention(settings, state_engine, PLAN, dry_run=True, digest=other)[
        "required"
    ]
    off = replace(settings, approval_retention_rules=False)
    assert not approvals.for_retention(off, state_engine, PLAN, dry_run=False, digest=other)[
        "required"
    ]


def test_the_newest_approval_wins_and_dags_are_apart(state_engine):
    for run, digest in (("r1", "d1"), ("r2", "d2")):
        approvals.record(
            state_engine,
            b"k",
            dag_id="retention_sweep",
            run_id=run,
            approval={"digest": digest, "why": ["rules_changed"]},
            approver_id="reviewer",
        )
    assert approvals.last_approved_digest(state_engine, "retention_sweep") == "d2"
    assert approvals.last_approved_digest(state_engine, "deletion_requests") is None


def test_the_ledger_entry_names_nobody(state_engine):
    seq = approvals.record(
        state_engine,
        b"k",
        dag_id="deletion_requests",
        run_id="manual__2",
        approval={"digest": None, "why": ["manual_run"], "summary_md": "x"},
        approver_id="reviewer",
    )
    again = approvals.record(  # a retried task: the same entry, not a second one
        state_engine,
        b"k",
        dag_id="deletion_requests",
        run_id="manual__2",
        approval={"digest": None, "why": ["manual_run"]},
        approver_id="reviewer",
    )
    assert again == seq
    (entry,) = ledger.entries(state_engine, kind="approval")
    assert entry.payload["approver"] == keyed_hash(b"k", "approver", "reviewer")
    assert "reviewer" not in json.dumps(entry.payload)
    assert "summary_md" not in entry.payload
    assert ledger.verify(state_engine, b"k").ok


def test_destructive_steps_need_the_approvals_ledger_entry(settings, state_engine):
    """Marking the approval task "success" by hand, or clearing the erasing tasks after a
    rejection, must not erase: each step checks the ledger entry only an Approve writes."""
    waiting = approvals.for_deletion(settings, BATCH, scheduled=False)
    assert waiting["required"] and len(waiting["token"]) == 32
    with pytest.raises(approvals.NotApproved):
        approvals.require(state_engine, waiting)
    other = approvals.for_deletion(settings, BATCH, scheduled=False)  # another plan's token
    approvals.record(
        state_engine, b"k", dag_id="deletion_requests", run_id="r9", approval=other, approver_id="x"
    )
    with pytest.raises(approvals.NotApproved):  # an approval of another plan does not count
        approvals.require(state_engine, waiting)
    approvals.record(
        state_engine,
        b"k",
        dag_id="deletion_requests",
        run_id="r1",
        approval=waiting,
        approver_id="x",
    )
    approvals.require(state_engine, waiting)  # approved: goes ahead
    small = approvals.for_deletion(settings, {**BATCH, "requests": 1}, scheduled=True)
    assert small["required"] is False and small["token"] is None
    approvals.require(state_engine, small)  # nothing to approve
    with pytest.raises(approvals.NotApproved):  # a required decision without a token
        approvals.require(state_engine, {**waiting, "token": None})


def test_documented():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "approvals.md").read_text()
    for name in (
        "COMPLIANCE_APPROVAL_BATCH_SIZE",
        "COMPLIANCE_APPROVAL_MANUAL_RUNS",
        "COMPLIANCE_APPROVAL_RETENTION_RULES",
        "COMPLIANCE_APPROVAL_TIMEOUT_HOURS",
        "Required Actions",
    ):
        assert name in doc
