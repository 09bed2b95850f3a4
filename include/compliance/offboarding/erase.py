"""Deleting every piece of one ended client's data, in every store (G4 Art. 28(3)(g), R27).

The order makes a crash and a rerun converge: what is found through the CRM goes first, the
CRM rows last.

1. recordings: the audio objects the client's rows point at, every version (R16.1);
2. log lines whose tenant field is the client (`offboarding.logs`), older versions included;
3. backups: `rewrite: true` stores lose the client's rows from every snapshot, checked
   independently (`offboarding.backups`); every backup store also gets tombstones for every
   consumer of the client (`record_id`, keyed hashes): a restored backup is purged of them
   before it goes live (R18), as for a deletion request;
4. CRM rows: every mapped table, deepest first, one set-based DELETE per table selecting the
   keys of the client's rows through the tenant column (on the table or up its relations).
   The whole client's rows go, `erase: mask` tables included: their kept columns serve the
   client's own transactions, which end with the contract (the return export hands them back);
5. the workspace's documents filed under the client (bundles, accepted requests, held memories).

Only the client's own rows are touched: every statement is filtered by its tenant, and the
tests compare every other client's rows, lines and objects before and after, byte for byte.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from compliance.core import checkpoints
from compliance.core.context import JobContext
from compliance.core.datamap.graph import erase_order
from compliance.core.datamap.model import IdentityType, LogStore, RecordingStore, SqlSystem
from compliance.core.logfiles.identity_index import log_index
from compliance.core.outputs import delete_many
from compliance.core.sqlmap import MappedSql, key_text
from compliance.core.stores.recordings import delete_all_versions, remaining
from compliance.deletion.targets import tombstone_hash
from compliance.offboarding import backups, logs, scope
from compliance.requests import state

CHUNK = 1000


def delete_rows(engine: Engine, system: SqlSystem, client: str) -> dict[str, int]:
    """table -> rows deleted; children first, one DELETE ... WHERE key IN (SELECT ...) each."""
    sql = MappedSql(engine, system)
    deleted: dict[str, int] = {}
    with engine.begin() as conn:
        for tname in erase_order(system):
            owned = sql.owned(tname)
            key = sql.primary_key(tname)
            mine = (
                sa.select(*sql.key_columns(tname))
                .select_from(owned.from_clause)
                .where(scope.tenant_filter(owned.tenant, [client]))
            )
            result = conn.execute(sa.delete(owned.table).where(key.in_(mine)))
            deleted[tname] = int(result.rowcount or 0)
    checkpoints.reached("offboarding.after_rows", system=system.consumer_table)
    return deleted


def consumer_keys(engine: Engine, system: SqlSystem, client: str) -> list[str]:
    owned = MappedSql(engine, system).owned(system.consumer_table)
    stmt = sa.select(owned.consumer_key).where(scope.tenant_filter(owned.tenant, [client]))
    with engine.connect() as conn:
        return sorted(key_text(k) for (k,) in conn.execute(stmt))


def tombstone(ctx: JobContext, system_name: str, client: str) -> int:
    """R18: one `record_id` tombstone per consumer of the client, so a restore re-applies the
    deletion (`compliance.deletion.backups.reapply_tombstones`); returns how many were new."""
    system = ctx.datamap.systems[system_name]
    kind = IdentityType.record_id.value
    stones = [
        (client, kind, tombstone_hash(ctx.hash_key, kind, cid))
        for cid in consumer_keys(ctx.engine(system_name), system, client)
    ]
    return state.add_tombstones(ctx.state, system_name, {None: stones}, ctx.now())


def delete_client(ctx: JobContext, client: str, run_id: str) -> dict[str, Any]:
    """Everything of one client, in the order above; counts per store (no values)."""
    dm = ctx.datamap
    done: dict[str, Any] = {"recordings": {}, "log_lines": {}, "tables": {}, "tombstones": {}}
    for name, store in sorted(dm.stores.items()):
        if isinstance(store, RecordingStore):
            system = dm.systems[store.system]
            keys = scope.recording_keys(ctx.engine(store.system), system, store, client)
            done["recordings"][name] = delete_all_versions(ctx.store(name), store.bucket, keys)
            # verified now: once the rows are gone nothing points at these keys any more
            left = remaining(ctx.store(name), store.bucket, keys)
            if left:
                done.setdefault("recordings_left", {})[name] = left
    for name, store in sorted(dm.stores.items()):
        if isinstance(store, LogStore):
            result = logs.drop_lines(ctx.store(name), store, {client}, run_id, log_index(ctx))
            done["log_lines"][name] = result["lines"][client]
    if backups.rewrite_stores(ctx):  # before the CRM rows go: their keys help the rewrite
        live = {s: consumer_keys(ctx.engine(s), sys, client) for s, sys in dm.systems.items()}
        done["backups"] = backups.remove_client(ctx, client, run_id, live)
    for sname, system in sorted(dm.systems.items()):
        done["tombstones"][sname] = tombstone(ctx, sname, client)
        rows = delete_rows(ctx.engine(sname), system, client)
        done["tables"].update({f"{sname}.{t}": n for t, n in sorted(rows.items())})
    keys = scope.workspace_keys(ctx, client)
    delete_many(ctx.workspace.s3, ctx.workspace.bucket, keys)
    done["workspace_objects"] = len(keys)
    return done


def residue(ctx: JobContext, client: str, done: dict[str, Any]) -> dict[str, int]:
    """What is left of the client after `delete_client` (every figure must be 0): counted
    again in every store, plus the recordings `delete_client` found still there."""
    found = scope.inventory(ctx, [client])[client]
    left = {k: n for k, n in found["tables"].items() if n}
    left.update({f"recordings.{k}": n for k, n in done.get("recordings_left", {}).items()})
    left.update({f"logs.{k}": n for k, n in found["log_lines"].items() if n})
    left.update({f"recordings.{k}": n for k, n in found["recordings"].items() if n})
    left.update(
        {f"backups.{k}": r["left"] for k, r in done.get("backups", {}).items() if r["left"]}
    )
    if found["workspace_objects"]:
        left["workspace"] = found["workspace_objects"]
    return left
