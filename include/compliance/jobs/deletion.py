"""The tasks of `dags/deletion_requests.py`, one function each (R16-R21; docs/deletion.md).

The DAG, the crash harness (tests/reliability/harness.py) and the benchmark
(benchmarks/sections/deletion.py) all call these, so the crash matrix tests the code that runs.
Each takes the task's `JobContext` and the XComs it receives; the dry-run branching lives here
(a dry run examines, scans and reports; it erases, moves and sends nothing), the work in
`compliance.deletion`. Mapped log shards arrive as `LogShard.key` strings and are parsed here.
"""

from __future__ import annotations

from typing import Any

from compliance.core.context import JobContext
from compliance.core.shards import LogShard
from compliance.deletion import erasure, erasure_preview, outbox
from compliance.deletion import finalize as closing
from compliance.deletion import plan as planning
from compliance.desk import approvals
from compliance.jobs import intake as intake_job

Params = dict[str, Any]


def intake(ctx: JobContext, params: Params, *, dry_run: bool) -> dict[str, Any]:
    """Validate the inbox (the form names at most a reference to a request staff entered); a
    dry run leaves it to `plan`, read only."""
    if dry_run:
        return {"dry_run": True}
    return {"dry_run": False, **intake_job.intake(ctx, params, "delete")}


def plan(
    ctx: JobContext, intake: dict[str, Any], params: Params, *, scheduled: bool = False
) -> dict[str, Any]:
    """Form or resume the batch (`replan`: abandon a batch planned under another data map);
    a dry run previews one from the open requests and what intake would accept. `approval`:
    whether the erasure waits for a second person (`compliance.desk.approvals`)."""
    if intake["dry_run"]:
        batch = erasure_preview.preview(ctx, intake_job.examine(ctx, params, "delete"))
    else:
        batch = planning.plan(ctx, replan=bool(params.get("replan")))
    return {**batch, "approval": approvals.for_deletion(ctx.settings, batch, scheduled=scheduled)}


def erase_system(ctx: JobContext, batch: dict[str, Any], system: str) -> dict[str, Any]:
    approvals.require(ctx.state, batch.get("approval"))  # four eyes (docs/approvals.md)
    return erasure.erase_system(ctx, batch["batch_id"], system)


def scrub_logs(ctx: JobContext, batch: dict[str, Any], shard: str) -> dict[str, Any]:
    """Scrub one day folder; a dry run counts what a scrub would remove."""
    approvals.require(ctx.state, batch.get("approval"))
    if batch.get("dry_run"):
        return erasure_preview.scan_log_shard(ctx, batch["batch_id"], LogShard.parse(shard))
    return erasure.scrub_log_shard(ctx, batch["batch_id"], LogShard.parse(shard))


def verify_logs(ctx: JobContext, batch: dict[str, Any], shard: str) -> dict[str, Any]:
    if batch.get("dry_run"):
        return {}  # a dry run erased nothing: there is nothing to verify
    return erasure.verify_log_shard(ctx, batch["batch_id"], LogShard.parse(shard))


def erase_recordings(ctx: JobContext, batch: dict[str, Any], store: str) -> dict[str, Any]:
    approvals.require(ctx.state, batch.get("approval"))  # four eyes (docs/approvals.md)
    return erasure.erase_recordings(ctx, batch["batch_id"], store)


def tombstone_backups(ctx: JobContext, batch: dict[str, Any], store: str) -> dict[str, Any]:
    """Tombstones (R18), and with `rewrite: true` the snapshots rewritten; a dry run only
    counts the tombstones it would add and the rows a rewrite would remove (read only)."""
    approvals.require(ctx.state, batch.get("approval"))
    if batch.get("dry_run"):
        return erasure_preview.count_backups(ctx, batch["batch_id"], store)
    return erasure.tombstone(ctx, batch["batch_id"], store)


def notify_subprocessors(ctx: JobContext, batch: dict[str, Any]) -> dict[str, Any]:
    """Queue this batch's notices and send every due one of any batch (R16.3, R16.4)."""
    approvals.require(ctx.state, batch.get("approval"))
    if batch.get("dry_run"):
        return {}  # a dry run tells nobody anything
    return outbox.run(ctx, batch["batch_id"] if batch["requests"] else "")


def finalize(
    ctx: JobContext, batch: dict[str, Any], shard_results: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """Verify, receipt, ledger, close; a dry run writes its report instead."""
    approvals.require(ctx.state, batch.get("approval"))
    if batch.get("dry_run"):
        return erasure_preview.report(ctx, batch["batch_id"], list(shard_results or []))
    return closing.finalize(ctx, batch["batch_id"], list(shard_results or []))
