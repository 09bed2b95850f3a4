"""Backup snapshots as something an access batch can search (R13): which snapshot days to map
over, one snapshot loaded into a temporary SQLite file, and the records of several snapshot
days merged into one per distinct row version.

A backup store is searched unless the data map states R13's four conditions for it
(`BackupStore.not_searched`, checked by `core/datamap/backup_rules.py`). Each snapshot day is
one shard (`LogShard` key `<store>|<prefix><YYYY-MM-DD>/`, the way log days travel), searched
by `gather_backups.gather_backup_shard`.

Loading: only the mapped tables, and of each only the columns the mapping names (keys, time,
tenant, relation and mapped columns): what the gather selects and nothing more, so an unmapped
column of a snapshot never even reaches the temporary file. Types come from the live system
(the snapshot is a copy of it), so time windows and key comparisons behave as in the live gather.
Rows are streamed from the gzip CSV in chunks: memory stays bounded whatever the snapshot's
size; the file lives in a temporary directory removed when the shard is done. The same CSV
reading as `compliance.deletion.backups.restore` (PostgreSQL COPY text forms, "" is NULL), but
written here: restore loads a whole snapshot into a database that already has the schema, while
the access job needs a typed subset in a throwaway file.

Issue 19: only the batch's rows reach the file (`snapshot_subset`: its consumers' rows and
those holding its given identities, parents first), and rows of other consumers are never even
parsed: each decompressed block is searched for the batch's keys and identities, and only the
records around a match go through `csv` (`csv_records.candidates`). What the gather finds is
the same, byte for byte (tests/unit/test_snapshot_subset.py); the cost left is reading and
decompressing the snapshot.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from compliance.core.compression import GZIP
from compliance.core.csv_records import candidates
from compliance.core.datamap.live import type_family
from compliance.core.datamap.model import BackupStore, DataMap, SqlSystem
from compliance.core.shards import LogShard
from compliance.core.snapshot_subset import Needles, RowTest, Subset, Wanted, load_subset
from compliance.core.snapshot_subset import plan as subset_plan
from compliance.core.stores.s3 import list_keys
from compliance.core.stores.sql import scratch_engine
from compliance.deletion.backups import snapshot_days

CHUNK = 5000
# The pseudo-field of a backup record naming the snapshot days that held this version of the
# row (docs/access.md, "Backups"): no column of any table, so it carries no category.
SNAPSHOT_FIELD = "held_in_snapshots"


def searched_stores(dm: DataMap) -> dict[str, BackupStore]:
    """Backup stores the access job searches: every one without R13's `not_searched`."""
    return {
        name: store
        for name, store in sorted(dm.stores.items())
        if isinstance(store, BackupStore) and store.not_searched is None
    }


def backup_shards(dm: DataMap, stores: Mapping[str, Any]) -> list[str]:
    """One `LogShard` key per snapshot day of every searched backup store (`stores`: the S3
    client of each store). Every day held is searched: a snapshot taken before a request's
    window still holds undated rows (always in scope, R9), and retention bounds the count."""
    shards = []
    for name, store in searched_stores(dm).items():
        for day in snapshot_days(stores[name], store):
            try:
                date.fromisoformat(day)
            except ValueError:
                continue  # not a snapshot folder (the layout is `<prefix>YYYY-MM-DD/`)
            shards.append(LogShard(name, f"{store.prefix}{day}/").key)
    return shards


def snapshot_day(store: BackupStore, shard: LogShard) -> str:
    """The day of a shard, refused unless it is a day folder of this store."""
    day = shard.prefix.removeprefix(store.prefix).rstrip("/")
    if not shard.prefix.startswith(store.prefix) or shard.prefix != f"{store.prefix}{day}/":
        raise ValueError(f"shard {shard.key!r} is not a snapshot folder of {shard.store!r}")
    date.fromisoformat(day)
    return day


def needed_columns(system: SqlSystem) -> dict[str, list[str]]:
    """Per mapped table, the columns the mapping names: keys, time, tenant, relation, mapped,
    and any column another table's relation references."""
    cols: dict[str, list[str]] = {}
    for tname, table in system.tables.items():
        names = list(table.key_columns)
        names += [c for c in (table.time_column, table.tenant_column) if c]
        if table.relation is not None:
            names.append(table.relation.column)
        names += list(table.columns)
        cols[tname] = list(dict.fromkeys(names))
    for table in system.tables.values():
        rel = table.relation
        if rel is not None and rel.target_table in cols:
            cols[rel.target_table] = list(
                dict.fromkeys([*cols[rel.target_table], rel.target_column])
            )
    return cols


def _join_columns(system: SqlSystem) -> dict[str, list[str]]:
    """Per table, the columns relations join on (both ends): what the snapshot indexes."""
    out: dict[str, list[str]] = {t: list(table.key_columns) for t, table in system.tables.items()}
    for tname, table in system.tables.items():
        rel = table.relation
        if rel is not None:
            out[tname] = list(dict.fromkeys([*out[tname], rel.column]))
            if rel.target_table in out:
                target = out[rel.target_table]
                out[rel.target_table] = list(dict.fromkeys([*target, rel.target_column]))
    return out


def _local_type(live: sa.Column | None, is_time: bool) -> sa.types.TypeEngine:
    """The SQLite type standing for a live column (text when the live system lacks it)."""
    if live is None:
        return sa.DateTime() if is_time else sa.Text()
    family = type_family(live.type)
    if family == "datetime":
        plain_date = isinstance(live.type, sa.Date) and not isinstance(live.type, sa.DateTime)
        return sa.Date() if plain_date else sa.DateTime()
    if family == "integer":
        return sa.Integer()
    if family == "boolean":
        return sa.Boolean()
    return sa.Text()  # text, UUID (canonical text, as key_text spells it), numbers, JSON


def _converter(kind: sa.types.TypeEngine, live: sa.Column | None) -> Callable[[str], Any]:
    """PostgreSQL COPY CSV text -> the value for `kind` ("" is NULL)."""
    if isinstance(kind, sa.Boolean):
        return lambda v: None if v == "" else v in ("t", "true", "True", "1")
    if isinstance(kind, sa.DateTime):
        return lambda v: None if v == "" else _naive_utc(datetime.fromisoformat(v))
    if isinstance(kind, sa.Date):
        return lambda v: None if v == "" else date.fromisoformat(v[:10])
    if isinstance(kind, sa.Integer):
        return lambda v: None if v == "" else int(v)
    if live is not None and type_family(live.type) == "uuid":
        return lambda v: None if v == "" else str(uuid.UUID(v))
    return lambda v: None if v == "" else v


def _naive_utc(moment: datetime) -> datetime:
    """The CRM's convention: naive UTC (a snapshot may spell an offset)."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


@contextmanager
def loaded(
    s3: Any,
    store: BackupStore,
    day: str,
    system: SqlSystem,
    live: Engine,
    tenants: set[str] | None = None,
    wanted: Wanted | None = None,
) -> Iterator[tuple[Engine, dict[str, int]]]:
    """A temporary SQLite engine holding one snapshot's mapped tables (missing ones empty),
    and the rows loaded per table; the file is removed on exit.

    `tenants` (tenant ids as text, `key_text`): rows of a table with its own tenant column are
    loaded only for these, since the gather keeps no other tenant's row anyway. `wanted` (the
    batch's consumers and given identities, `snapshot_subset.wanted_for`): only the rows the
    gather can reach for them are loaded (`snapshot_subset`, issue 19), so the file follows the
    batch, not the snapshot; None loads every row of the batch's tenants (and is what a map
    with an identity column two hops below the consumer table falls back to)."""
    prefix = f"{store.prefix}{day}/"
    keys = {
        o["Key"][len(prefix) : -len(".csv.gz")]: o["Key"]
        for o in list_keys(s3, store.bucket, prefix)
        if o["Key"].endswith(".csv.gz")
    }
    live_md = sa.MetaData()
    present = set(sa.inspect(live).get_table_names())
    live_md.reflect(live, only=[t for t in system.tables if t in present])
    with tempfile.TemporaryDirectory(prefix="cj-snapshot-") as tmp:
        engine = scratch_engine(Path(tmp) / "snapshot.db")
        try:
            md = sa.MetaData()
            joined = _join_columns(system)
            plans: dict[str, list[tuple[str, Callable[[str], Any]]]] = {}
            for tname, names in needed_columns(system).items():
                live_table = live_md.tables.get(tname)
                time_col = system.tables[tname].time_column
                columns, convert = [], []
                for cname in names:
                    live_col = live_table.c.get(cname) if live_table is not None else None
                    kind = _local_type(live_col, cname == time_col)
                    columns.append(sa.Column(cname, kind))
                    convert.append((cname, _converter(kind, live_col)))
                table = sa.Table(tname, md, *columns)
                for i, cname in enumerate(joined.get(tname, [])):  # the joins toward the consumer
                    sa.Index(f"ix_{tname}_{i}", table.c[cname])
                plans[tname] = convert
            md.create_all(engine)

            def load(
                tname: str,
                keep: Callable[[dict[str, int]], RowTest] | None = None,
                needles: Needles | bool | None = True,
            ) -> int:
                if tname not in keys or needles is None:
                    return 0  # (needles None: no row of this table can be kept)
                only = (system.tables[tname].tenant_column, tenants)
                table = md.tables[tname]
                scan = needles if isinstance(needles, Needles) else None
                return _load(
                    s3, store.bucket, keys[tname], engine, table, plans[tname], only, keep, scan
                )

            order = subset_plan(system) if wanted is not None else None
            if order is None or wanted is None:
                counts = {tname: load(tname) for tname in plans if tname in keys}
            else:
                counts = load_subset(order, Subset(order, wanted), load, set(keys))
            yield engine, counts
        finally:
            engine.dispose()


def _load(
    s3: Any,
    bucket: str,
    key: str,
    engine: Engine,
    table: sa.Table,
    plan: list[tuple[str, Callable[[str], Any]]],
    only: tuple[str | None, set[str] | None] = (None, None),
    keep: Callable[[dict[str, int]], Callable[[list[str]], bool]] | None = None,
    scan: Needles | None = None,
) -> int:
    """Stream one csv.gz (several gzip members are fine) into `table`, `CHUNK` rows at a time;
    a column the snapshot lacks is NULL, one the mapping does not name is never read. `only`:
    (tenant column, tenant ids as text): other tenants' rows are skipped while streaming.
    `keep`: given the header's column positions, a test a row must pass as well (the batch's
    subset, `snapshot_subset`); it sees only rows of the kept tenants. `scan`: a pattern every
    row `keep` can keep matches in its lower-cased CSV text (`snapshot_subset.needle_pattern`):
    only the rows of blocks' matches are parsed (`csv_records.candidates`), the rest never
    leave C code.

    Rows are inserted as tuples through the DBAPI's executemany, each value passed through the
    column type's own bind processor first: the stored values are exactly those a Core
    `insert()` would store (the same DateTime text, booleans as 0/1), without building a dict
    and compiling parameters per row (most of the loader's time on a large snapshot)."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    n = 0
    dialect = engine.dialect
    names = [name for name, _ in plan]
    sql = (
        f"INSERT INTO {dialect.identifier_preparer.format_table(table)} "
        f"({', '.join(dialect.identifier_preparer.quote(c) for c in names)}) "
        f"VALUES ({', '.join('?' for _ in names)})"
    )
    with GZIP.GzipFile(fileobj=body) as gz:
        text = io.TextIOWrapper(gz, encoding="utf-8", newline="")
        reader = csv.reader(text)
        header = next(reader, None)
        if header is None:
            return 0
        at = {name: i for i, name in enumerate(header)}
        picks = [
            (at.get(name), _bound(conv, _processor(table.c[name], dialect))) for name, conv in plan
        ]
        tenant_col, tenants = only
        tenant_at = at.get(tenant_col) if tenant_col and tenants is not None else None
        wanted = keep(at) if keep is not None else None
        chunk: list[tuple[Any, ...]] = []
        rows = reader if scan is None else (row for _, row in candidates(text, scan))
        for row in rows:
            if tenant_at is not None:
                raw = row[tenant_at]
                # the text as given is already `key_text`'s form unless it is a UUID in
                # another spelling: only then is it normalised (same verdict, far fewer calls)
                if raw not in tenants and _tenant_text(raw) not in tenants:  # type: ignore[operator]
                    continue
            if wanted is not None and not wanted(row):
                continue
            chunk.append(tuple(None if i is None else conv(row[i]) for i, conv in picks))
            if len(chunk) >= CHUNK:
                n += _insert(engine, sql, chunk)
                chunk = []
        if chunk:
            n += _insert(engine, sql, chunk)
    return n


def _processor(column: sa.Column, dialect: Any) -> Callable[[Any], Any] | None:
    """The bind processor a Core insert applies to `column` on this dialect (SQLite's own
    DateTime/Date/Boolean implementations, not the generic types')."""
    return column.type.dialect_impl(dialect).bind_processor(dialect)


def _bound(
    conv: Callable[[str], Any], process: Callable[[Any], Any] | None
) -> Callable[[str], Any]:
    """CSV text -> the value the DBAPI receives (None stays None, as in a Core insert)."""
    if process is None:
        return conv

    def both(value: str) -> Any:
        out = conv(value)
        return None if out is None else process(out)

    return both


def _tenant_text(raw: str) -> str:
    """A tenant as the CSV spells it, in `key_text`'s form (UUIDs lower-case)."""
    try:
        return str(uuid.UUID(raw)) if len(raw) == 36 else raw
    except ValueError:
        return raw


def _insert(engine: Engine, sql: str, rows: list[tuple[Any, ...]]) -> int:
    with engine.begin() as conn:
        conn.exec_driver_sql(sql, rows)
    return len(rows)


def merge_snapshot_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per distinct version of a backup row, naming every snapshot day that held it.

    A row unchanged for a week sits in seven snapshots: listing it seven times would bury the
    consumer in copies, so identical versions (same source, record, values, withheld, time) are
    merged and `held_in_snapshots` lists their days; a row changed between snapshots gives one
    record per version. Records without a `snapshot` (live rows, log lines) pass unchanged,
    in order; merged backup records follow them."""
    plain: list[dict[str, Any]] = []
    merged: dict[str, dict[str, Any]] = {}
    for rec in records:
        day = rec.pop("snapshot", None)
        if day is None:
            plain.append(rec)
            continue
        ident = json.dumps(rec, sort_keys=True, default=str)
        entry = merged.setdefault(ident, {**rec, "snapshots": []})
        entry["snapshots"].append(day)
    for entry in merged.values():
        days = sorted(set(entry["snapshots"]))
        entry["snapshots"] = days
        entry["values"] = {**entry["values"], SNAPSHOT_FIELD: ", ".join(days)}
    return plain + list(merged.values())
