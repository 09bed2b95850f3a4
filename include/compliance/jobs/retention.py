"""The retention_sweep DAG's tasks: plan -> execute (per rule, wave by wave) -> report.

Every task rebuilds the same `Sweep` from its `JobContext` and the options the plan fixed (dry
run, rule subset, as-of date, the plan's clock, the policy's digest): the sweep looks its
engines and clients up by connection id, and the context holds them per system and store, so
`_connections` translates once here. Logic: `compliance.retention` (docs/retention.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from compliance.core.context import JobContext
from compliance.desk import approvals
from compliance.requests.state import STATE_CONN_ID
from compliance.retention import run
from compliance.retention.plan import Sweep
from compliance.retention.policy_file import LoadedPolicy, load_policy
from compliance.retention.report import record, write_report


def plan(ctx: JobContext, params: dict[str, Any], *, scheduled: bool) -> dict[str, Any]:
    """Options from the form, then the dry-run diff and each wave's rule ids (R27, R26, R19),
    and whether the run waits for a second person (rules changed since the last approval).

    Raises `RetentionError` / `PolicyInvalid` for a bad form or policy file: a retry would not
    fix either, so the DAG fails the task at once."""
    opts = run.options(params, scheduled=scheduled, run_day=ctx.run_day.isoformat(), now=ctx.now())
    sweep, loaded = _sweep(ctx, opts)
    planned = run.plan(sweep, loaded, opts)
    digest = approvals.rules_digest(loaded.sha256, ctx.datamap_hash)
    decision = approvals.for_retention(
        ctx.settings, ctx.state, planned["plan"], dry_run=opts["dry_run"], digest=digest
    )
    # The execute tasks get `options` only: the decision and the map it was made under go along
    # (a map edited while the approval waited must not be swept under: R27, four eyes).
    options = {**planned["options"], "approval": decision, "datamap_sha256": ctx.datamap_hash}
    return {**planned, "options": options, "approval": decision}


def execute(ctx: JobContext, options: dict[str, Any], rule_id: str) -> dict[str, Any]:
    """One rule, in short batches; counts only."""
    approvals.require(ctx.state, options.get("approval"))  # four eyes (docs/approvals.md)
    if options.get("datamap_sha256") not in (None, ctx.datamap_hash):
        raise approvals.NotApproved(
            "the data map changed after this run was planned (and approved): plan again"
        )
    sweep, _ = _sweep(ctx, options)
    return run.execute(sweep, options, rule_id)


def report(
    ctx: JobContext,
    planned: dict[str, Any],
    options: dict[str, Any],
    waves: list[list[dict[str, Any]] | None],
    run_id: str,
) -> dict[str, Any]:
    """JSON + HTML report (plan next to result) and, for a real run, the ledger entry (R22)."""
    sweep, loaded = _sweep(ctx, options)
    results = [r for wave in waves for r in (wave or [])]
    rep = run.report(sweep, loaded, options, planned, results, run_id)
    summary = write_report(ctx.workspace.s3, ctx.workspace.bucket, rep)
    if not options["dry_run"]:
        summary["ledger_seq"] = record(ctx.state, ctx.hash_key, rep, summary["json"])
    return summary


def _sweep(ctx: JobContext, opts: dict[str, Any]) -> tuple[Sweep, LoadedPolicy]:
    loaded = load_policy(ctx.settings.retention_path, ctx.datamap)
    engine, s3 = _connections(ctx)
    sweep = run.open_sweep(opts, ctx.datamap, loaded, engine, s3, ctx.hash_key, ctx.workspace)
    return sweep, loaded


def _connections(ctx: JobContext) -> tuple[Callable[[str], Engine], Callable[[str], Any]]:
    """The sweep names systems and stores by connection id (a hold registry, the request log
    in the state DB): the context's engines and clients under those ids."""
    dm = ctx.datamap
    engines = {dm.systems[name].connection: eng for name, eng in ctx.engines.items()}
    engines[STATE_CONN_ID] = ctx.state
    clients = {dm.stores[name].connection: client for name, client in ctx.stores.items()}
    return engines.__getitem__, clients.__getitem__
