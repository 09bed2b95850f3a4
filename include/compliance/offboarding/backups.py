"""An ended client's rows out of `rewrite: true` backup snapshots (G4 Art. 28(3)(g), R18).

A store whose data map says `rewrite: true` has its snapshots cleaned now, not only tombstoned:
`deletion.backup_rewrite` is given a tenant scope (every row whose tenant, on the table or up its
relations, is the client) plus the client's consumer keys read from the live CRM before its rows
go (a rerun after a crash between two objects of a day still finds a child row whose parent
object was already rewritten, by its consumer key). Every other record stays byte for byte, the
old versions are deleted, and a rerun finds nothing to remove. Stores with `rewrite: false` keep
their snapshots under R18; the client's tombstones purge a restore (`erase.tombstone`).

Verified without the rewrite's code: before the rewrite every current snapshot object is read
with Python's `csv` module and each row's tenant found by following the data map's relations
(`core.datamap.graph.tenant_path`) through plain dictionaries; after it, no row the client owned
may still be there (by its key columns), and no row may resolve to the client. Anything left is
residue and fails the step, like a log line left behind. The snapshots of a day are held in
memory for the check: offboarding is rare, and the tiny and second worlds' days are small; a
day too large for memory would need the oracle's SQLite loading (`residue_oracle.backup_search`).
"""

from __future__ import annotations

import csv
import gzip
import io
from collections import defaultdict
from typing import Any

from compliance.core.context import JobContext
from compliance.core.datamap.graph import tenant_path
from compliance.core.datamap.model import BackupStore, SqlSystem
from compliance.core.stores.s3 import list_keys
from compliance.deletion import backup_rewrite

SUFFIX = ".csv.gz"
Rows = dict[str, tuple[list[str], list[list[str]]]]  # table -> (header, records)


def rewrite_stores(ctx: JobContext) -> dict[str, BackupStore]:
    return {
        n: s
        for n, s in sorted(ctx.datamap.stores.items())
        if isinstance(s, BackupStore) and s.rewrite
    }


def _days(s3: Any, store: BackupStore, system: SqlSystem) -> dict[str, Rows]:
    """day prefix -> table -> (header, records): the current objects, read with `csv`."""
    out: dict[str, Rows] = defaultdict(dict)
    for entry in list_keys(s3, store.bucket, store.prefix):
        head, _, file = entry["Key"].rpartition("/")
        table = file[: -len(SUFFIX)] if file.endswith(SUFFIX) else ""
        if table not in system.tables:
            continue
        raw = s3.get_object(Bucket=store.bucket, Key=entry["Key"])["Body"].read()
        reader = csv.reader(io.StringIO(gzip.decompress(raw).decode("utf-8"), newline=""))
        header = next(reader, [])
        out[head + "/"][table] = (header, [r for r in reader if r])
    return out


def _tenant_of_rows(system: SqlSystem, day: Rows, table: str) -> list[str | None]:
    """The tenant of each record of `table`, up the relations (None: its parent is not there)."""
    hops, column = tenant_path(system, table)
    header, rows = day[table]
    if not hops:
        i = header.index(column) if column in header else None
        return [r[i] if i is not None and i < len(r) else None for r in rows]
    # walk down from the table holding the tenant: key value -> tenant, one hop at a time
    top = hops[-1].target_table
    theader, trows = day.get(top, ([], []))
    owners: dict[str, str | None] = {}
    if column in theader and hops[-1].target_column in theader:
        k, c = theader.index(hops[-1].target_column), theader.index(column)
        owners = {r[k]: r[c] for r in trows if len(r) > max(k, c)}
    for hop in reversed(hops[1:]):
        h, rows_h = day.get(hop.table, ([], []))
        prev = next(x for x in hops if x.target_table == hop.table)
        if hop.column not in h or prev.target_column not in h:
            owners = {}
            continue
        rel, key = h.index(hop.column), h.index(prev.target_column)
        owners = {r[key]: owners.get(r[rel]) for r in rows_h if len(r) > max(rel, key)}
    rel = header.index(hops[0].column) if hops[0].column in header else None
    return [owners.get(r[rel]) if rel is not None and rel < len(r) else None for r in rows]


def _client_rows(system: SqlSystem, days: dict[str, Rows], client: str) -> dict[str, set]:
    """ "day/table" -> the key tuples of the client's records in those snapshots."""
    out: dict[str, set] = {}
    for day, tables in days.items():
        for table in tables:
            header, rows = tables[table]
            keys = [header.index(k) for k in system.tables[table].key_columns if k in header]
            tenants = _tenant_of_rows(system, tables, table)
            out[f"{day}{table}"] = {
                tuple(r[i] for i in keys) for r, t in zip(rows, tenants, strict=True) if t == client
            }
    return out


def remove_client(
    ctx: JobContext, client: str, run_id: str, live_keys: dict[str, list[str]]
) -> dict[str, dict[str, Any]]:
    """Rewrite every `rewrite: true` store without the client, then check it independently.

    `live_keys`: system -> the client's consumer keys read from the CRM before its rows go.
    Returns per store the rewrite's counts, the client's records found before it and what is
    left after it (`left`, which must be 0)."""
    out: dict[str, dict[str, Any]] = {}
    for name, store in rewrite_stores(ctx).items():
        system = ctx.datamap.systems[store.system]
        s3 = ctx.store(name)
        before = _client_rows(system, _days(s3, store, system), client)
        scope = backup_rewrite.Scope(
            consumers=dict.fromkeys(live_keys.get(store.system, []), client),
            subjects=[],
            tenants={client: client},
        )
        done = backup_rewrite.rewrite_store(
            s3, store, system, scope, batch_id=f"offboarding:{run_id}"
        )
        out[name] = {**done.to_dict(), "client_records_before": sum(map(len, before.values()))}
        out[name]["left"] = left_in_store(ctx, name, client, before)
    return out


def left_in_store(ctx: JobContext, name: str, client: str, before: dict[str, set]) -> int:
    """Records of the client still in the store's current snapshots: those seen before the
    rewrite (by key), plus any record that now resolves to the client."""
    store = ctx.datamap.stores[name]
    assert isinstance(store, BackupStore)
    system = ctx.datamap.systems[store.system]
    after_days = _days(ctx.store(name), store, system)
    now = _client_rows(system, after_days, client)
    left = sum(len(keys) for keys in now.values())
    for where, keys in before.items():
        day, _, table = where.rpartition("/")
        header, rows = after_days.get(day + "/", {}).get(table, ([], []))
        idx = [header.index(k) for k in system.tables[table].key_columns if k in header]
        present = {tuple(r[i] for i in idx) for r in rows}
        left += len((keys & present) - now.get(where, set()))
    return left
