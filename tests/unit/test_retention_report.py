"""The sweep's report, ledger entry and trigger-form options."""

from __future__ import annotations

import json
from datetime import date

import pytest

from compliance.core.ledger import entries, verify
from compliance.core.stores.sql import engine_from_url
from compliance.retention.report import build_report, mismatches, record, render_html, run_slug
from compliance.retention.rows import RetentionError
from compliance.retention.run import options

PLAN = {
    "as_of": "2026-06-15",
    "now": "2026-06-15T02:30:00+00:00",
    "holds": {"crm": 2},
    "waves": {},
    "rules": [
        {
            "rule": "web-visits",
            "wave": "rows",
            "action": "delete",
            "target": "crm.web_visits",
            "period": "13 months",
            "overrides": {"2": "6 months"},
            "counts": {"web_visits": {"delete": 3, "held": 2}},
        },
        {
            "rule": "app-logs",
            "wave": "objects",
            "action": "delete",
            "target": "store:app_logs",
            "period": "30 days",
            "overrides": {},
            "counts": {"store:app_logs": {"partitions": 1, "delete_versions": 2, "locked": 1}},
        },
    ],
}
DONE = [
    {"rule": "web-visits", "counts": {"web_visits": {"delete": 3}}},
    {"rule": "app-logs", "counts": {"store:app_logs": {"partitions": 1, "delete_versions": 2}}},
]


def report(results=DONE, dry_run=False, run_id="manual__2026-06-15T02:30:00+00:00"):
    return build_report(
        PLAN,
        results,
        dry_run=dry_run,
        run_id=run_id,
        policy_sha256="ab" * 32,
        selected=None,
        uncovered=[],
        disclosure={"internet_activity": ["web-visits: delete after 13 months"]},
    )


def test_matching_run_has_no_mismatch_and_facts_are_not_compared():
    rep = report()
    assert rep["mismatches"] == 0
    assert [r["matches"] for r in rep["rules"]] == [True, True]
    assert rep["totals"]["planned"]["delete"] == 3 and rep["totals"]["done"]["delete_versions"] == 2


def test_a_difference_or_a_missing_rule_is_flagged():
    assert mismatches({"t": {"delete": 3, "held": 1}}, {"t": {"delete": 2}}) == [
        "t.delete: planned 3, done 2"
    ]
    assert mismatches({}, {"child": {"delete": 1}}) == ["child.delete: planned 0, done 1"]
    rep = report(results=DONE[:1])
    assert rep["mismatches"] == 1 and rep["rules"][1]["mismatches"] == ["not executed"]


def test_dry_run_report_has_no_results_and_says_so():
    rep = report(results=[], dry_run=True)
    assert rep["dry_run"] is True and rep["mismatches"] == 0
    assert all(r["done"] is None for r in rep["rules"])
    assert "Dry run (nothing changed)" in render_html(rep)


def test_html_escapes_everything_and_run_ids_become_safe_keys():
    rep = report(run_id="manual__<script>alert(1)</script>")
    rep["uncovered"] = ["crm.x.<b>y</b>"]
    page = render_html(rep)
    assert "<script>" not in page and "<b>y</b>" not in page
    assert (
        run_slug("scheduled__2026-06-15T02:30:00+00:00") == "scheduled__2026-06-15T02-30-00-00-00"
    )
    assert "/" not in run_slug("../../etc")


def test_ledger_entry_is_appended_once_per_run(tmp_path):
    engine = engine_from_url(f"sqlite:///{tmp_path / 'state.db'}")
    rep = report()
    first = record(engine, b"k", rep, "s3://cj-compliance/retention/x/report.json")
    again = record(engine, b"k", rep, "s3://cj-compliance/retention/x/report.json")  # a retry
    assert first == again
    (entry,) = entries(engine, kind="retention_sweep")
    assert entry.payload["rules"]["web-visits"]["done"] == {"web_visits": {"delete": 3}}
    assert entry.payload["policy_sha256"] == "ab" * 32
    assert verify(engine, b"k").ok
    engine.dispose()


def test_report_and_ledger_payload_hold_no_personal_data():
    text = json.dumps(report())
    assert "@" not in text
    with pytest.raises(ValueError, match="e-mail"):
        from compliance.core.ledger import reject_pii

        reject_pii({"rules": {"x": "jo@example.com"}})


# -- the trigger form ----------------------------------------------------------------------


TODAY = date(2026, 6, 15)


def test_manual_runs_default_to_dry_run_and_scheduled_runs_execute():
    manual = options({"dry_run": True}, scheduled=False, run_day="2026-06-15", today=TODAY)
    assert manual["dry_run"] is True and manual["as_of"] == "2026-06-15" and manual["rules"] is None
    nightly = options({"dry_run": True}, scheduled=True, run_day="2026-06-15", today=TODAY)
    assert nightly["dry_run"] is False
    real = options({"dry_run": False}, scheduled=False, run_day="2026-06-15", today=TODAY)
    assert real["dry_run"] is False


def test_rules_and_as_of_from_the_form():
    opts = options(
        {"rules": ["web-visits", "leads", "leads"], "as_of": "2026-01-31"},
        scheduled=False,
        run_day="2026-06-15",
        today=TODAY,
    )
    assert opts["rules"] == ["leads", "web-visits"] and opts["as_of"] == "2026-01-31"
    typed = options(
        {"rules": "leads, web-visits\n"}, scheduled=False, run_day="2026-06-15", today=TODAY
    )
    assert typed["rules"] == ["leads", "web-visits"]


@pytest.mark.parametrize("as_of", ["2026-06-16", "next week", "2026-02-30"])
def test_future_or_malformed_as_of_is_refused(as_of):
    with pytest.raises(RetentionError) as err:
        options({"as_of": as_of}, scheduled=False, run_day="2026-06-15", today=TODAY)
    assert err.value.reason == "as-of"
