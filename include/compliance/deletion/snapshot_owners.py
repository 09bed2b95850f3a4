"""Which records of one backup snapshot day a rewrite removes (`rewrite: true`, R16.1, R18).

The day's mapped tables are loaded, as text, into a temporary SQLite database, with one column
added: the record's byte offset past the header (`csv_records.offsets`), which is how the
rewrite names the records it drops. Only the rows the scope can own are loaded: the access
gather's subset (`core.snapshot_subset`), whose two questions (whom do the given identities
resolve to, and what do those consumers own through the relation joins) are the rewrite's too,
so it finds on the subset exactly what it would find on the whole day (tested against a whole
load). A day of a 1M-contact CRM is tens of millions of rows; a batch's share is thousands.
Every row is loaded when the subset cannot be decided in one pass (an identity column two hops
below the consumer table) or when whole tenants go (offboarding).

The owners are the scope's consumer keys plus whoever the request's own identities resolve to
*in the snapshot* (`requests.resolve`: a consumer since erased from the CRM by other means is
still found by e-mail or phone); their rows are found with the same relation joins the live
erasure plans with (`core.sqlmap.MappedSql.owned`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from compliance.core.compression import GZIP
from compliance.core.csv_records import candidates, offsets, read_header
from compliance.core.datamap.graph import chain_to_consumer
from compliance.core.datamap.model import SqlSystem
from compliance.core.snapshot_subset import Needles, RowTest, Subset, Wanted, load_subset
from compliance.core.snapshot_subset import plan as subset_plan
from compliance.core.sqlmap import MappedSql, key_text
from compliance.requests.resolve import Subject, resolve

ROW_COLUMN = "cj_record_at"  # added to each loaded table: the record's offset in its object
CHUNK = 1000  # consumer keys per statement


@dataclass(frozen=True)
class Scope:
    """What one backup store's rewrite removes: consumer key -> request ref (text keys), the
    subjects (the request's given identities) resolved again in each snapshot, and whole tenants
    (client id -> ref; `compliance.offboarding`: every row of an ended client)."""

    consumers: dict[str, str]
    subjects: list[Subject]
    tenants: dict[str, str] = field(default_factory=dict)  # client -> ref: a contract's end

    def __bool__(self) -> bool:
        return bool(self.consumers or self.subjects or self.tenants)


def _parse(record: bytes) -> list[str]:
    return next(csv.reader(io.StringIO(record.decode("utf-8"), newline="")), [])


def _needed(system: SqlSystem, table: str) -> set[str]:
    """The columns ownership and resolution read: keys, relation, tenant and time columns,
    identity columns, and the columns other tables' relations point at. Only these are loaded."""
    spec = system.tables[table]
    out = set(spec.key_columns)
    out |= {c for c, col in spec.columns.items() if col.identity is not None}
    if spec.relation is not None:
        out.add(spec.relation.column)
    out |= {c for c in (spec.tenant_column, spec.time_column) if c}  # the joins name them
    for other in system.tables.values():
        if other.relation is not None and other.relation.target_table == table:
            out.add(other.relation.target_column)
    return out


def load_day(engine: sa.Engine, files: dict[str, Path], system: SqlSystem, scope: Scope) -> None:
    """The day's tables into `engine`: only the rows the scope's consumers and given identities
    can own (`snapshot_subset`, the access gather's loader, issue 19: a day of a 1M-contact CRM
    is tens of millions of rows, a batch's share a few thousand), or every row when the subset
    cannot be decided in one pass or a whole tenant goes (offboarding)."""
    order = subset_plan(system) if not scope.tenants else None
    if order is None:
        for table, path in files.items():
            _load(engine, table, path, system)
        return
    given = [value for subject in scope.subjects for _, value in subject.identities]
    subset = Subset(order, Wanted.of(scope.consumers, given))

    def load(table: str, keep: Callable[[dict[str, int]], RowTest], needles: Any) -> int:
        if table not in files:
            return 0
        return _load(engine, table, files[table], system, (keep, needles))

    load_subset(order, subset, load, set(files))


def _load(
    engine: sa.Engine,
    table: str,
    path: Path,
    system: SqlSystem,
    subset: tuple[Callable[[dict[str, int]], RowTest], Needles | None] | None = None,
) -> int:
    """One table of text columns named as in the header (those `_needed`), plus the record's
    byte offset (`csv_records.offsets`); "" is NULL (COPY CSV's NULL; an empty string would
    match no key anyway). `subset`: (the row test given the header's positions, the needles
    every kept row's text holds, None: none can be): only candidate rows are parsed
    (`csv_records.candidates`). Returns the rows loaded."""
    with GZIP.open(path, "rb") as gz:
        text = io.TextIOWrapper(gz, encoding="utf-8", newline="")
        header, rest = read_header(text)
        if not header:
            return 0
        needed = _needed(system, table)
        keep = [i for i, name in enumerate(header) if name in needed]
        names = [header[i] for i in keep]
        md = sa.MetaData()
        sa.Table(
            table,
            md,
            sa.Column(ROW_COLUMN, sa.Integer, primary_key=True),
            *(sa.Column(name, sa.Text) for name in names),
        )
        md.create_all(engine)
        quoted = ", ".join(f'"{n}"' for n in [ROW_COLUMN, *names])
        marks = ", ".join("?" * (len(names) + 1))
        # Table and column names are the data map's (validated names), never the snapshot's.
        insert = f'INSERT OR IGNORE INTO "{table}" ({quoted}) VALUES ({marks})'
        if subset is None:
            rows: Iterator[tuple[int, list[str]]] = (
                (at, _parse(record)) for at, record in offsets(path) if at >= 0
            )
        elif subset[1] is None:
            return 0  # no row of this table can be kept
        else:
            test = subset[0]({name: i for i, name in enumerate(header)})
            rows = ((at, row) for at, row in candidates(text, subset[1], rest) if test(row))
        loaded = [0]

        def values() -> Iterator[tuple[Any, ...]]:
            for at, row in rows:
                loaded[0] += 1
                yield (at, *((row[i] or None) if i < len(row) else None for i in keep))

        raw = engine.raw_connection()
        try:
            raw.cursor().executemany(insert, values())
            raw.commit()
        finally:
            raw.close()
        return loaded[0]


def doomed_rows(
    engine: sa.Engine, system: SqlSystem, scope: Scope, present: set[str]
) -> dict[str, dict[int, str]]:
    """table -> {record offset (`csv_records.offsets`): ref} of the rows the scope owns."""
    owners = dict(scope.consumers)
    usable = {
        t for t in present if all(h.target_table in present for h in chain_to_consumer(system, t))
    }
    if usable >= set(system.tables) and scope.subjects:  # resolve reflects every mapped table
        for ref, found in resolve(engine, system, scope.subjects).items():
            for consumer in found.consumer_ids:
                owners.setdefault(consumer, ref)
    out: dict[str, dict[int, str]] = {}
    if not owners and not scope.tenants:
        return out
    sql = MappedSql(engine, system, present=usable)
    keys = sorted(owners)
    with engine.connect() as conn:
        for tname in sorted(usable):
            owned = sql.owned(tname)
            rows: dict[int, str] = {}
            if scope.tenants:  # every row of the tenants, through the same relation joins
                stmt = (
                    sa.select(owned.table.c[ROW_COLUMN], owned.tenant)
                    .select_from(owned.from_clause)
                    .where(owned.tenant.in_(sorted(scope.tenants)))
                )
                for at, tenant in conn.execute(stmt):
                    rows[int(at)] = scope.tenants[key_text(tenant)]
            for i in range(0, len(keys), CHUNK):
                stmt = (
                    sa.select(owned.table.c[ROW_COLUMN], owned.consumer_key)
                    .select_from(owned.from_clause)
                    .where(owned.consumer_key.in_(keys[i : i + CHUNK]))
                )
                for at, consumer in conn.execute(stmt):
                    rows[int(at)] = owners[key_text(consumer)]
            out[tname] = rows
    return out
