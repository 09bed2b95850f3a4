"""Searching one backup snapshot for a batch (R13): the same mapped-SQL gather as the live
system, run against the snapshot loaded into a temporary SQLite file (`snapshots.loaded`).

A backup store is searched unless the data map states R13's four conditions for it; a shard of
a store declared not searched is refused rather than read. Whose rows: the consumers the plan
resolved in the live system, plus those the request's own identities (as given, not the ones
found on rows: one step of expansion, as in `requests.resolve`) find in the snapshot, within
the request's tenant. So a person erased from the live CRM, or a row deleted since, is still
found in the snapshots that hold it. Rows are kept in each request's tenant and window, withheld
columns (R10) are never selected (`gather.owned_rows`), and they go to one part per snapshot
day; `gather.read_parts` merges identical versions across days. XCom carries counts only.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any

from sqlalchemy import Engine

from compliance.access.batch import load
from compliance.access.gather import owned_rows, put_part, record_line
from compliance.access.snapshots import loaded, snapshot_day
from compliance.core.context import Workspace
from compliance.core.datamap.model import BackupStore, DataMap
from compliance.core.shards import LogShard
from compliance.core.snapshot_subset import wanted_for
from compliance.requests.identities import identity_pairs
from compliance.requests.resolve import Subject, resolve


def gather_backup_shard(
    ws: Workspace,
    dm: DataMap,
    store_s3: Any,
    live: Engine,
    batch_id: str,
    shard: LogShard,
    *,
    datamap_hash: str | None = None,
) -> dict[str, Any]:
    """One snapshot day of one backup store: each request's rows, into a part.

    `live`: the engine of the system the store copies, read only for its column types."""
    store = dm.stores[shard.store]
    if not isinstance(store, BackupStore):
        raise ValueError(f"{shard.store} is not a backup store")
    if store.not_searched is not None:
        raise ValueError(f"{shard.store} is declared not searched (R13): no shard is read")
    day = snapshot_day(store, shard)
    batch = load(ws, batch_id, datamap_hash)
    system = dm.systems[store.system]
    out: dict[str, list[bytes]] = defaultdict(list)
    loaded_rows = 0
    if batch.gather_refs:  # R5: categories-only requests read no store
        tenants = {str(batch.requests[ref]["client_id"]) for ref in batch.gather_refs}
        with loaded(
            store_s3, store, day, system, live, tenants, wanted_for(batch, store.system)
        ) as (engine, counts):
            loaded_rows = sum(counts.values())
            per_ref = batch.consumers.get(store.system, {})
            owners = {ref: {str(c) for c in per_ref.get(ref, [])} for ref in batch.gather_refs}
            subjects = [
                Subject(ref, str(batch.requests[ref]["client_id"]), pairs)
                for ref in batch.gather_refs
                if (pairs := identity_pairs(batch.given.get(ref, {})))
            ]
            for ref, found in resolve(engine, system, subjects).items():
                owners[ref] |= found.consumer_ids
            source = f"{shard.store}.{{}}"
            wanted = {ref: sorted(ids) for ref, ids in owners.items()}
            for ref, tname, row in owned_rows(engine, system, batch, wanted):
                out[ref].append(record_line(source.format(tname), row, snapshot=day))
    name = f"backup-{shard.store}-{hashlib.sha256(shard.prefix.encode()).hexdigest()[:16]}"
    put_part(ws.s3, ws.bucket, batch_id, name, out)
    return {
        "store": shard.store,
        "snapshot": day,
        "rows_loaded": loaded_rows,
        "rows": sum(len(v) for v in out.values()),
        "requests_with_rows": len(out),
    }
