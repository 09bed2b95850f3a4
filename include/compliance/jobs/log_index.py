"""The `log_index` DAG's tasks: keep the log identity index (`core.logfiles.identity_index`)
current, one mapped task per day folder of each log store.

Why a job: access (R8/R10) and deletion (R16.1) read only the log objects whose sidecar may hold
a request's identities; objects without a current sidecar are read in full. This job builds the
sidecars of new (or rewritten) objects and removes those whose object is gone, so the next
request reads less. It never changes a log object.
"""

from __future__ import annotations

from typing import Any

from compliance.core.context import JobContext
from compliance.core.datamap.model import LogStore
from compliance.core.logfiles import day_prefixes
from compliance.core.logfiles.identity_index import LogIndex, index_day
from compliance.core.shards import LogShard


def index_of(ctx: JobContext) -> LogIndex:
    """The deployment's index: the workspace bucket and a key derived from its hash key."""
    return LogIndex.of(ctx.workspace.s3, ctx.workspace.bucket, ctx.settings.hash_key)


def plan(ctx: JobContext) -> list[str]:
    """Every day folder of every log store (`LogShard` keys), oldest first."""
    return [
        LogShard(name, prefix).key
        for name, store in sorted(ctx.datamap.stores.items())
        if isinstance(store, LogStore)
        for prefix in day_prefixes(ctx.store(name), store)
    ]


def index_shard(ctx: JobContext, shard: str) -> dict[str, Any]:
    """Build the missing or stale sidecars of one day folder; delete orphans."""
    where = LogShard.parse(shard)
    store = ctx.datamap.stores[where.store]
    if not isinstance(store, LogStore):
        raise ValueError(f"{where.store} is not a log store")
    return {"shard": shard, **index_day(index_of(ctx), ctx.store(where.store), store, where.prefix)}


def summarize(ctx: JobContext, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over the day folders (counts and bytes, no key or identity)."""
    keys = ("objects", "built", "current", "removed", "bytes_in", "index_bytes")
    totals: dict[str, Any] = {k: sum(int(r.get(k, 0)) for r in results) for k in keys}
    totals["shards"] = len(results)
    return totals
