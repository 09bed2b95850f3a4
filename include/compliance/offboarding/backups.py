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
residue and fails the step, like a log line left behind.

Memory: each snapshot object is streamed once per check, tables of a day parents first, and
only the client's share is kept (its records' keys, and the values of columns a child table's
relation references). Before, every day of every table was read into lists at once: at 1M
contacts, seven days of 764 MB of gzip CSV would not have fitted in a worker.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from compliance.core.context import JobContext
from compliance.core.datamap.graph import tenant_path
from compliance.core.datamap.model import BackupStore, SqlSystem
from compliance.core.stores.s3 import list_keys
from compliance.deletion import backup_rewrite

SUFFIX = ".csv.gz"
Keys = dict[str, set[tuple[str, ...]]]  # "day/table" -> key tuples of records


def rewrite_stores(ctx: JobContext) -> dict[str, BackupStore]:
    return {
        n: s
        for n, s in sorted(ctx.datamap.stores.items())
        if isinstance(s, BackupStore) and s.rewrite
    }


def _objects(s3: Any, store: BackupStore, system: SqlSystem) -> dict[str, dict[str, str]]:
    """day prefix -> table -> the key of its current snapshot object."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for entry in list_keys(s3, store.bucket, store.prefix):
        head, _, file = entry["Key"].rpartition("/")
        table = file[: -len(SUFFIX)] if file.endswith(SUFFIX) else ""
        if table in system.tables:
            out[head + "/"][table] = entry["Key"]
    return out


def _records(s3: Any, bucket: str, key: str) -> Iterator[list[str]]:
    """The object's header, then its non-empty records, streamed (stdlib gzip and `csv`)."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    with gzip.GzipFile(fileobj=body, mode="rb") as raw:
        yield from (r for r in csv.reader(io.TextIOWrapper(raw, "utf-8", newline="")) if r)


def _scan_day(
    s3: Any,
    store: BackupStore,
    system: SqlSystem,
    tables: dict[str, str],
    client: str,
    watch: dict[str, set[tuple[str, ...]]] | None = None,
) -> tuple[dict[str, set[tuple[str, ...]]], dict[str, set[tuple[str, ...]]]]:
    """One snapshot day, each table read once, parents before children (fewer hops to the
    tenant first): per table the key tuples of the client's records (its own tenant column
    holds the client, or the parent row its relation references is the client's), and the
    `watch`ed key tuples still present. A record whose parent is not in the day is nobody's."""
    paths = {t: tenant_path(system, t) for t in tables}
    referenced = {
        (hops[0].target_table, hops[0].target_column) for hops, _ in paths.values() if hops
    }
    theirs: dict[tuple[str, str], set[str]] = defaultdict(set)  # referenced values of the client
    mine: dict[str, set[tuple[str, ...]]] = {}
    present: dict[str, set[tuple[str, ...]]] = {}
    for table in sorted(tables, key=lambda t: (len(paths[t][0]), t)):
        hops, column = paths[table]
        records = _records(s3, store.bucket, tables[table])
        header = next(records, [])
        keys = [header.index(k) for k in system.tables[table].key_columns if k in header]
        # the client's values: of its own tenant column, or of the parent's referenced column
        where, values = (
            (hops[0].column, theirs[(hops[0].target_table, hops[0].target_column)])
            if hops
            else (column, {client})
        )
        at = header.index(where) if where in header else None
        refs = [(c, header.index(c)) for t, c in referenced if t == table and c in header]
        watched = (watch or {}).get(table, set())
        mine[table], present[table] = set(), set()
        for r in records:
            key = tuple(r[i] for i in keys)
            if at is not None and at < len(r) and r[at] in values:
                mine[table].add(key)
                for c, i in refs:
                    if i < len(r):
                        theirs[(table, c)].add(r[i])
            if key in watched:
                present[table].add(key)
    return mine, present


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
        before = client_records(s3, store, system, client)
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


def client_records(s3: Any, store: BackupStore, system: SqlSystem, client: str) -> Keys:
    """ "day/table" -> the key tuples of the client's records in the current snapshots."""
    out: Keys = {}
    for day, tables in _objects(s3, store, system).items():
        mine, _ = _scan_day(s3, store, system, tables, client)
        out.update({f"{day}{t}": keys for t, keys in mine.items()})
    return out


def left_in_store(ctx: JobContext, name: str, client: str, before: Keys) -> int:
    """Records of the client still in the store's current snapshots: those seen before the
    rewrite (by key), plus any record that now resolves to the client."""
    store = ctx.datamap.stores[name]
    assert isinstance(store, BackupStore)
    system = ctx.datamap.systems[store.system]
    s3 = ctx.store(name)
    left = 0
    for day, tables in _objects(s3, store, system).items():
        watch = {t: before.get(f"{day}{t}", set()) for t in tables}
        now, present = _scan_day(s3, store, system, tables, client, watch)
        left += sum(len(keys) for keys in now.values())
        left += sum(len(present[t] - now[t]) for t in tables)
    return left
