"""The deletion batch's fan-out steps, one per mapped DAG task, each idempotent (R16-R18).

After `compliance.deletion.plan` stored the batch's targets, the DAG runs these side by side:
one SQL system (`erase_system`), one log day folder (`scrub_log_shard`, then the independent
check `verify_log_shard`), one recording store, one backup store (`tombstone`, and with the data
map's `rewrite: true` its snapshots rewritten, `rewrite_backups`). Each loads the
targets by batch id under the data map they were planned with (`MapChanged` otherwise), so a
retry or a rerun after a crash repeats only what is left. `compliance.deletion.finalize` then
verifies everything and writes the receipts.

The module map of the package: `targets` (what a batch erases, where it lives), `plan`
(resolution, holds, counts), `erasure` (these steps), `finalize` (verification, receipts),
`erasure_preview` (dry runs), `erase_sql` (the SQL strategy per table).
"""

from __future__ import annotations

from typing import Any

from compliance.core import checkpoints
from compliance.core.context import JobContext
from compliance.core.logfiles.identity_index import log_index
from compliance.core.outputs import put_json
from compliance.core.shards import LogShard
from compliance.core.stores import recordings
from compliance.deletion import backup_rewrite, erase_sql, log_scrub, residue_oracle
from compliance.deletion.targets import (  # re-exported: where callers have long found them
    BATCHES,
    Targets,
    held_key,
    load_targets,
    targets_key,
    tombstone_hash,
)
from compliance.requests import state

__all__ = [
    "Targets",
    "erase_recordings",
    "erase_system",
    "held_key",
    "load_targets",
    "rewrite_backups",
    "scrub_log_shard",
    "targets_key",
    "tombstone",
    "tombstone_hash",
    "verify_log_shard",
]


def _targets(ctx: JobContext, batch_id: str) -> Targets:
    return load_targets(ctx.workspace, batch_id, ctx.datamap_hash)


def erase_system(ctx: JobContext, batch_id: str, system: str) -> dict[str, Any]:
    """Erase (or mask) the batch's consumers in one SQL system, chunked (`erase_sql`)."""
    targets = _targets(ctx, batch_id)
    done = erase_sql.execute_erasure(
        ctx.engine(system),
        ctx.datamap.systems[system],
        targets.consumer_ids(system),
        ctx.hash_key,
        held=targets.held.get(system) or None,  # kept under a legal hold (R19)
    )
    return {"system": system, "rows": done}


def erase_recordings(ctx: JobContext, batch_id: str, store: str) -> dict[str, Any]:
    """Delete every version of the batch's recordings in one store."""
    targets = _targets(ctx, batch_id)
    spec = ctx.datamap.stores[store]
    keys = [
        k for ref in targets.active_refs() for k in targets.recordings.get(store, {}).get(ref, [])
    ]
    deleted = recordings.delete_all_versions(ctx.store(store), spec.bucket, keys)
    return {"store": store, "objects": deleted}


def scrub_log_shard(ctx: JobContext, batch_id: str, shard: LogShard) -> dict[str, Any]:
    """Rewrite one day folder without the batch's lines; the lines removed per request are
    recorded before each object is replaced, so receipts survive a crash (`state.record_lines`)."""
    targets = _targets(ctx, batch_id)

    def count(key: str, per_ref: dict[str, int]) -> None:
        state.record_lines(ctx.state, batch_id, shard.store, key, per_ref)

    result = log_scrub.scrub_shard(
        ctx.store(shard.store),
        ctx.datamap.stores[shard.store],
        shard.prefix,
        targets.log_targets(shard.store),
        batch_id=batch_id,
        before_replace=count,
        index=log_index(ctx),  # issue 19: objects the index rules out are not read
        # Its own re-scan covers what it rewrote or what changed meanwhile; every version of
        # every object is read by the independent check, the mapped verify_logs task (R16.1).
        verify="changed",
    )
    return {"store": shard.store, "shard": shard.prefix, **result.to_dict()}


def verify_log_shard(ctx: JobContext, batch_id: str, shard: LogShard) -> dict[str, Any]:
    """The independent oracle on one day folder, after its scrub (R16.1): its counts-only
    verdict goes beside the targets, where `finalize` reads it (`residue_oracle`)."""
    values = residue_oracle.wanted_values(_targets(ctx, batch_id), store=shard.store)
    verdict = residue_oracle.verify_log_prefix(
        ctx.store(shard.store), shard.store, ctx.datamap.stores[shard.store], shard.prefix, values
    )
    ws = ctx.workspace
    key = residue_oracle.verdict_key(f"{BATCHES}{batch_id}/", shard.key)
    put_json(ws.s3, ws.bucket, key, verdict)
    return {k: verdict[k] for k in ("store", "prefix", "objects", "versions")} | {
        "residue": sum(verdict["hits"].values()),
        "unreadable": len(verdict["unreadable"]),
    }


def tombstone(ctx: JobContext, batch_id: str, store: str) -> dict[str, Any]:
    """Record keyed hashes so a restore of an old snapshot re-applies the deletions (R18, R20)."""
    targets = _targets(ctx, batch_id)
    spec = ctx.datamap.stores[store]
    stones = {
        int(ref): [
            (str(targets.requests[ref]["client_id"]), kind, tombstone_hash(ctx.hash_key, kind, v))
            for kind, values in targets.identities.get(ref, {}).items()
            for v in values
        ]
        for ref in targets.active_refs()
    }
    added = state.add_tombstones(ctx.state, spec.system, stones)  # all or none
    checkpoints.reached("backups.tombstoned", store=store)
    if not spec.rewrite:
        return {"store": store, "tombstones": added}
    return {"store": store, "tombstones": added, **rewrite_backups(ctx, batch_id, store)}


def rewrite_backups(ctx: JobContext, batch_id: str, store: str) -> dict[str, Any]:
    """`rewrite: true`: remove the batch's rows from every snapshot of the store, every other
    row byte-identical, old versions deleted (`backup_rewrite`); the rows removed per request
    are recorded before each object is replaced (R16.1, R18). A dry run never comes here: it
    counts with `erasure_preview.count_backups`."""
    spec = ctx.datamap.stores[store]
    if not spec.rewrite:
        return {}
    scope = backup_rewrite.scope_for(_targets(ctx, batch_id), spec.system)
    system = ctx.datamap.systems[spec.system]

    def count(key: str, per_ref: dict[str, int]) -> None:
        state.record_lines(ctx.state, batch_id, store, key, per_ref)

    done = backup_rewrite.rewrite_store(
        ctx.store(store), spec, system, scope, batch_id=batch_id, before_replace=count
    )
    return {"rewrite": done.to_dict()}
