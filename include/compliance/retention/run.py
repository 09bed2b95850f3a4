"""The sweep's run-level steps, between the task layer and the sweep itself: options in, small
JSON out.

`compliance.jobs.retention` reaches the stores (through its `JobContext`) and calls these; they
take a built `Sweep` and the loaded policy, and return counts, rule ids and S3 keys only (what
travels through XCom). Nothing here knows Airflow or reads the environment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Engine

from compliance.core.context import Workspace
from compliance.core.datamap.model import DataMap
from compliance.retention.coverage import coverage
from compliance.retention.execute import execute_step
from compliance.retention.plan import Sweep, plan_sweep
from compliance.retention.policy import WAVE_ORDER, periods_by_category
from compliance.retention.policy_file import LoadedPolicy
from compliance.retention.report import build_report
from compliance.retention.rows import RetentionError

log = logging.getLogger(__name__)


def options(
    params: dict[str, Any],
    *,
    scheduled: bool,
    run_day: str,
    today: date | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The run's options from the trigger form (validated; PII-free).

    Scheduled runs always execute (the form's dry-run default is for people); an as-of date in
    the future is refused, because it would expire data before its period is over. `now` is the
    plan's clock: every later task of the run uses it, so S3 ages agree between plan and run.
    """
    now = now or datetime.now(UTC)
    today = today or now.date()
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
        "now": now.isoformat(),
    }


def open_sweep(
    opts: dict[str, Any],
    dm: DataMap,
    loaded: LoadedPolicy,
    engine: Callable[[str], Engine],
    s3: Callable[[str], Any],
    hash_key: bytes,
    workspace: Workspace | None = None,
) -> Sweep:
    """The sweep of this run's options; refused when the policy file changed since the plan
    (a later task must not delete by rules nobody planned with)."""
    pinned = opts.get("policy_sha256")
    if pinned and pinned != loaded.sha256:
        raise RetentionError(
            "policy-changed",
            "the retention policy file changed since this run's plan; start a new run",
        )
    return Sweep(
        datamap=dm,
        policy=loaded.policy,
        as_of=date.fromisoformat(opts["as_of"]),
        now=datetime.fromisoformat(opts["now"]),
        engine=engine,
        s3=s3,
        hash_key=hash_key,
        only=tuple(opts["rules"]) if opts.get("rules") else None,
        workspace=workspace,
    )


def plan(sweep: Sweep, loaded: LoadedPolicy, opts: dict[str, Any]) -> dict[str, Any]:
    """The dry-run diff, and (under `run`) the rule ids each wave runs (none on a dry run)."""
    opts = {**opts, "policy_sha256": loaded.sha256}  # later tasks refuse a changed file
    result = plan_sweep(sweep)
    for rule in result["rules"]:
        log.info("plan %s (%s): %s", rule["rule"], rule["wave"], rule["counts"])
    waves = {w.value: ([] if opts["dry_run"] else result["waves"][w.value]) for w in WAVE_ORDER}
    return {"plan": result, "options": opts, "run": {"waves": waves}}


def execute(sweep: Sweep, opts: dict[str, Any], rule_id: str) -> dict[str, Any]:
    if opts["dry_run"]:  # defensive: waves are empty on a dry run
        raise RetentionError("dry-run", "a dry run executes nothing")
    result = execute_step(sweep, rule_id)
    log.info("done %s: %s", rule_id, result["counts"])
    return result


def report(
    sweep: Sweep,
    loaded: LoadedPolicy,
    opts: dict[str, Any],
    planned: dict[str, Any],
    results: list[dict[str, Any]],
    run_id: str,
) -> dict[str, Any]:
    """The report document: plan next to result, what the policy leaves uncovered, and the
    retention periods per category (the disclosure, R27)."""
    dm = sweep.datamap
    rep = build_report(
        planned,
        results,
        dry_run=opts["dry_run"],
        run_id=run_id,
        policy_sha256=loaded.sha256,
        selected=opts.get("rules"),
        uncovered=coverage(loaded.policy, dm).uncovered,
        disclosure=periods_by_category(loaded.policy, dm),
    )
    if rep["mismatches"]:
        log.warning("%d difference(s) between plan and run: see the report", rep["mismatches"])
    return rep
