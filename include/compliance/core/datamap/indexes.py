"""The indexes the jobs need on a CRM's own tables, derived from the data map (issue 19).

Why this exists: deletion (R16), access (R8/R10) and retention (R27) look consumers up by
identity within a tenant, follow relation columns toward the consumer table, and purge by tenant
and age. Without an index behind each of those statements a lookup reads a whole table (about
20 s at 1M contacts). The indexes depend on the user's map, not on our demo, so they are derived
here from the map and created by `python -m compliance datamap indexes` (docs/deployment.md),
never by a benchmark-only script.

E-mails are compared lower-cased (`requests.resolve`), so their index is on the expression,
`(tenant, lower(email))`, spelt `lower(email)` in a spec's columns and created as `lower("email")`.

Pure: no database access. The command inspects the live database and passes the existing
indexes' key parts (column names, `lower(col)` for that expression) to `missing`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from compliance.core.datamap import paths
from compliance.core.datamap.model import DataMap, IdentityType, LogStore, SqlSystem

Dialect = Literal["postgresql", "sqlite"]
DIALECTS: tuple[Dialect, ...] = ("postgresql", "sqlite")
MAX_NAME = 63  # PostgreSQL's identifier limit (NAMEDATALEN - 1); SQLite has none


@dataclass(frozen=True)
class IndexSpec:
    """One index the jobs need: where, on which columns in order, its name, and why."""

    system: str
    table: str
    columns: tuple[str, ...]
    name: str
    why: str


@dataclass(frozen=True)
class Scanned:
    """An identity no plain database index can serve: the jobs scan it (and say so)."""

    store: str
    path: str
    identity: str
    reason: str


@dataclass(frozen=True)
class IndexPlan:
    indexes: tuple[IndexSpec, ...]
    scanned: tuple[Scanned, ...]

    def for_system(self, system: str) -> list[IndexSpec]:
        return [i for i in self.indexes if i.system == system]


def lowered(column: str) -> str:
    """The key part of a column compared lower-case, as specs spell it: `lower(email)`.

    `requests.resolve` compares e-mails as `lower(column) IN (...)` (R16, R8: an address matches
    whatever its case), so an index on the raw column serves only the parts before it; only an
    index on the expression serves the e-mail itself (PostgreSQL and SQLite alike)."""
    return f"lower({column})"


_LOWERED = re.compile(r"lower\((?P<col>[^()]+)\)")


def index_name(table: str, columns: Sequence[str]) -> str:
    """`cj_<table>_<cols>` (`lower(email)` spelt `lower_email`); over 63 characters, truncated
    with a short hash so it stays unique.

    Deterministic, so a second run finds (IF NOT EXISTS) what the first created."""
    parts = [_LOWERED.sub(r"lower_\g<col>", c) for c in columns]
    full = "_".join(["cj", table, *parts])
    if len(full) <= MAX_NAME:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    return f"{full[: MAX_NAME - 9]}_{digest}"


def _covered_by_pk(columns: tuple[str, ...], pk: tuple[str, ...]) -> bool:
    return pk[: len(columns)] == columns


def _system_indexes(name: str, system: SqlSystem) -> list[IndexSpec]:
    wanted: dict[tuple[str, tuple[str, ...]], str] = {}

    def want(table: str, columns: tuple[str, ...], why: str) -> None:
        pk = system.tables[table].key_columns if table in system.tables else ()
        if _covered_by_pk(columns, pk) or (table, columns) in wanted:
            return
        wanted[(table, columns)] = why

    for tname, table in system.tables.items():
        tenant = table.tenant_column
        for cname, column in table.columns.items():
            if column.identity is None:
                continue
            # resolve compares e-mails lower-cased and nothing compares the raw column, so the
            # e-mail index is on the expression alone: a plain one would serve no lookup.
            email = column.identity is IdentityType.email
            key = lowered(cname) if email else cname
            how = ", compared lower-case" if email else ""
            if tenant and tenant != cname:
                cols: tuple[str, ...] = (tenant, key)
                why = f"find a consumer by {column.identity.value} within a client{how} (R16, R8)"
            else:
                cols = (key,)
                why = f"find a consumer by {column.identity.value}{how} (R16, R8)"
            want(tname, cols, why)
        rel = table.relation
        if rel is not None:
            want(tname, (rel.column,), f"join {tname} to {rel.references} toward the consumer")
            # The join also probes the parent's referenced column; usually its primary key.
            want(
                rel.target_table,
                (rel.target_column,),
                f"join {tname} to {rel.references}: the referenced column is not the primary key",
            )
        if tenant and table.time_column:
            want(
                tname,
                (tenant, table.time_column),
                "retention: rows of a client older than a cutoff (R27)",
            )
    return [
        IndexSpec(name, table, cols, index_name(table, cols), why)
        for (table, cols), why in wanted.items()
    ]


def _scanned(name: str, store: LogStore) -> list[Scanned]:
    out = []
    for path, field in store.fields.items():
        if field.identity is None:
            continue
        parsed = paths.parse(path)
        where = "inside arrays of" if parsed.has_each else "in"
        nested = len(parsed.steps) > 1 or parsed.has_each
        kind = "a nested JSON path" if nested else "a JSON field"
        reason = (
            f"{kind} {where} gzip JSON-lines objects, not a database column: "
            "no plain index can serve it, the log jobs scan the objects"
        )
        out.append(Scanned(name, path, field.identity.value, reason))
    return out


def needed(dm: DataMap) -> IndexPlan:
    """Every index the jobs need on every SQL system of the map, and what stays scanned."""
    indexes = [i for name, system in dm.systems.items() for i in _system_indexes(name, system)]
    scanned = [
        s
        for name, store in dm.stores.items()
        if isinstance(store, LogStore)
        for s in _scanned(name, store)
    ]
    return IndexPlan(tuple(indexes), tuple(scanned))


def exists_in(spec: IndexSpec, existing: Iterable[Sequence[str | None]]) -> bool:
    """True when an existing index (or key) starts with exactly the spec's columns, in order."""
    n = len(spec.columns)
    return any(tuple(cols[:n]) == spec.columns for cols in existing)


def missing(
    specs: Iterable[IndexSpec], existing: Mapping[str, Sequence[Sequence[str | None]]]
) -> list[IndexSpec]:
    """The specs no existing index serves; `existing` maps a table to its indexes' columns."""
    return [s for s in specs if not exists_in(s, existing.get(s.table, ()))]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _key_sql(column: str) -> str:
    """One key part in SQL: a quoted column, or `lower("col")` for a lowered one. Both dialects
    store the expression as `lower(col)`, the same expression `resolve` compares, so the
    planner matches it (SQLite matches an expression index only on the same expression)."""
    match = _LOWERED.fullmatch(column)
    return f"lower({_quote(match.group('col'))})" if match else _quote(column)


def create_sql(spec: IndexSpec, dialect: Dialect = "postgresql") -> str:
    """CREATE INDEX for one spec; CONCURRENTLY on PostgreSQL, so writes go on while it builds
    (it must then run outside a transaction)."""
    if dialect not in DIALECTS:
        raise ValueError(f"--dialect: {dialect!r} is not one of {', '.join(DIALECTS)}")
    concurrently = "CONCURRENTLY " if dialect == "postgresql" else ""
    cols = ", ".join(_key_sql(c) for c in spec.columns)
    return (
        f"CREATE INDEX {concurrently}IF NOT EXISTS {_quote(spec.name)} "
        f"ON {_quote(spec.table)} ({cols})"
    )


def drop_sql(spec: IndexSpec, dialect: Dialect = "postgresql") -> str:
    """DROP INDEX for one spec (an INVALID leftover of a failed concurrent build)."""
    concurrently = "CONCURRENTLY " if dialect == "postgresql" else ""
    return f"DROP INDEX {concurrently}IF EXISTS {_quote(spec.name)}"
