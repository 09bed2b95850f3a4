"""What the retention_sweep DAG's tasks call: options in, small JSON out.

Each function takes the run's options (a small dict that travels through XCom: dry run, rule
subset, as-of date, the plan's `now`), rebuilds the `Sweep` from Airflow connections through
`compliance.runtime`, and returns counts, rule ids and S3 keys only. Keeping this here leaves the
DAG file as wiring and documentation.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from typing import Any

from compliance.retention.coverage import coverage
from compliance.retention.execute import execute_step
from compliance.retention.plan import Sweep, plan_sweep
from compliance.retention.policy import WAVE_ORDER, LoadedPolicy, load_policy, periods_by_category
from compliance.retention.report import build_report, record, write_report
from compliance.retention.rows import RetentionError

log = logging.getLogger(__name__)


def options(
    params: dict[str, Any], *, scheduled: bool, run_day: str, today: date | None = None
) -> dict[str, Any]:
    """The run's options from the trigger form (validated; PII-free).

    Scheduled runs always execute (the form's dry-run default is for people); an as-of date in
    the future is refused, because it would expire data before its period is over.
    """
    today = today or datetime.now(UTC).date()
    raw_as_of = params.get("as_of") or run_day
    try:
        as_of = date.fromisoformat(str(raw_as_of)[:10])
    except ValueError as exc:
        raise RetentionError("as-of", f"as_of {raw_as_of!r} is not a date (YYYY-MM-DD)") from exc
    if as_of > today:
        raise RetentionError(
            "as-of", f"as_of {as_of} is after today ({today}): data would expire early"
        )
    rules = params.get("rules") or None
    if isinstance(rules, str):
        rules = [r.strip() for r in rules.replace(",", "\n").splitlines() if r.strip()]
    return {
        "dry_run": False if scheduled else bool(params.get("dry_run", True)),
        "rules": sorted(set(rules)) if rules else None,
        "as_of": as_of.isoformat(),
        "now": datetime.now(UTC).isoformat(),
    }


def _policy() -> tuple[Any, LoadedPolicy]:
    from compliance import runtime

    dm = runtime.datamap()
    return dm, load_policy(runtime.settings().retention_path, dm)


def open_sweep(opts: dict[str, Any]) -> tuple[Sweep, LoadedPolicy]:
    from compliance import runtime

    dm, loaded = _policy()
    pinned = opts.get("policy_sha256")
    if pinned and pinned != loaded.sha256:
        raise RetentionError(
            "policy-changed",
            "the retention policy file changed since this run's plan; start a new run",
        )
    sweep = Sweep(
        datamap=dm,
        policy=loaded.policy,
        as_of=date.fromisoformat(opts["as_of"]),
        now=datetime.fromisoformat(opts["now"]),
        engine=runtime.sql_engine,
        s3=runtime.s3,
        hash_key=runtime.settings().hash_key,
        only=tuple(opts["rules"]) if opts.get("rules") else None,
    )
    return sweep, loaded


def plan(opts: dict[str, Any]) -> dict[str, Any]:
    """The dry-run diff, and (under `run`) the rule ids each wave runs (none on a dry run)."""
    sweep, loaded = open_sweep(opts)
    opts = {**opts, "policy_sha256": loaded.sha256}  # later tasks refuse a changed file
    result = plan_sweep(sweep)
    for rule in result["rules"]:
        log.info("plan %s (%s): %s", rule["rule"], rule["wave"], rule["counts"])
    waves = {w.value: ([] if opts["dry_run"] else result["waves"][w.value]) for w in WAVE_ORDER}
    return {
        "plan": result,
        "options": opts,
        "run": {"waves": waves},
    }


def execute(opts: dict[str, Any], rule_id: str) -> dict[str, Any]:
    if opts["dry_run"]:  # defensive: waves are empty on a dry run
        raise RetentionError("dry-run", "a dry run executes nothing")
    sweep, _ = open_sweep(opts)
    result = execute_step(sweep, rule_id)
    log.info("done %s: %s", rule_id, result["counts"])
    return result


def report(
    opts: dict[str, Any],
    planned: dict[str, Any],
    results: list[dict[str, Any]],
    run_id: str,
) -> dict[str, Any]:
    """Write the JSON and HTML report, then (real runs) the ledger entry; returns the summary."""
    from compliance import runtime

    sweep, loaded = open_sweep(opts)
    dm = sweep.datamap
    cov = coverage(loaded.policy, dm)
    rep = build_report(
        planned,
        results,
        dry_run=opts["dry_run"],
        run_id=run_id,
        policy_sha256=loaded.sha256,
        selected=opts.get("rules"),
        uncovered=cov.uncovered,
        disclosure=periods_by_category(loaded.policy, dm),
    )
    cfg = runtime.settings()
    summary = write_report(runtime.s3(cfg.workspace_connection), cfg.workspace_bucket, rep)
    if not opts["dry_run"]:
        from compliance.requests.state import STATE_CONN_ID

        seq = record(runtime.sql_engine(STATE_CONN_ID), cfg.hash_key, rep, summary["json"])
        summary["ledger_seq"] = seq
    if rep["mismatches"]:
        log.warning("%d difference(s) between plan and run: see the report", rep["mismatches"])
    return summary
