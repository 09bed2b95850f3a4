"""The access_reports DAG's tasks: intake -> plan -> gather_system (per SQL system),
gather_logs (per log day) and gather_backups (per backup snapshot day, R13) -> build_bundles.

Intake is the shared inbox (`compliance.jobs.intake`). The rest hand the context to
`compliance.access`; the mapped tasks receive the batch id and one system name or one
`LogShard` key. Logic: `compliance.access` (R8-R15, R7, R27, G2); guide: docs/access.md.
"""

from __future__ import annotations

from typing import Any

from compliance.access import batch as access_batch
from compliance.access import portability
from compliance.access.deliver import MAX_LINK_DAYS
from compliance.access.deliver import build_bundles as deliver_bundles
from compliance.access.gather import gather_log_shard
from compliance.access.gather import gather_system as gather_rows
from compliance.access.gather_backups import gather_backup_shard
from compliance.core.context import JobContext
from compliance.core.logfiles.identity_index import log_index
from compliance.core.shards import LogShard
from compliance.jobs import intake as intake_job


def intake(ctx: JobContext, form: dict[str, Any]) -> dict[str, Any]:
    """The whole inbox is validated (staff-entered requests included: the form names at most a
    reference, `staff_entry`)."""
    return intake_job.intake(ctx, form, "access")


def plan(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """One batch of every open access request (or the planned one, resumed); what to map over.

    The form's `include_audio`, else the deployment's setting; its `replan` abandons a batch
    planned under another data map (docs/architecture.md)."""
    audio = access_batch.audio_setting(params.get("include_audio"), ctx.settings)
    return access_batch.plan(ctx, include_audio=audio, replan=bool(params.get("replan")))


def gather_system(ctx: JobContext, batch: dict[str, Any], system: str) -> dict[str, Any]:
    """One SELECT per mapped table of one system for the whole batch (R10: withheld stay)."""
    return gather_rows(
        ctx.workspace,
        ctx.datamap,
        ctx.engine(system),
        batch["batch_id"],
        system,
        datamap_hash=ctx.datamap_hash,
    )


def gather_logs(ctx: JobContext, batch: dict[str, Any], shard: str) -> dict[str, Any]:
    """One day folder of one log store (`shard`: a `LogShard.key`)."""
    where = LogShard.parse(shard)
    return gather_log_shard(
        ctx.workspace,
        ctx.datamap,
        ctx.store(where.store),
        batch["batch_id"],
        where,
        datamap_hash=ctx.datamap_hash,
        index=log_index(ctx),  # issue 19: objects the index rules out are not read
    )


def gather_backups(ctx: JobContext, batch: dict[str, Any], shard: str) -> dict[str, Any]:
    """One snapshot day of one backup store (`shard`: a `LogShard.key`), searched because the
    data map does not declare the store not searched (R13)."""
    where = LogShard.parse(shard)
    store = ctx.datamap.stores[where.store]
    return gather_backup_shard(
        ctx.workspace,
        ctx.datamap,
        ctx.store(where.store),
        ctx.engine(store.system),
        batch["batch_id"],
        where,
        datamap_hash=ctx.datamap_hash,
    )


def build_bundles(
    ctx: JobContext, batch: dict[str, Any], link_days: int | None = None
) -> dict[str, Any]:
    """Per request a bundle, an expiring link (R12), a receipt and a ledger entry; closed.
    Portability requests (G3) first: their provided data, to the business or another
    controller (`access.portability`)."""
    days = int(link_days or MAX_LINK_DAYS)
    moved = portability.deliver(ctx, batch["batch_id"], link_days=days)
    return {**deliver_bundles(ctx, batch["batch_id"], link_days=days), **moved}
