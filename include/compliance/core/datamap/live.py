"""A data map against the live database: missing tables and columns, and column types that do
not fit their role or the columns they are compared with (`datamap check --db`, the inventory).

Kept apart from the file checks: it needs a reflected schema (SQLAlchemy), they need only text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from compliance.core.datamap.issues import Issue
from compliance.core.datamap.model import (
    DataMap,
    IdentityType,
    RecordingStore,
    SqlSystem,
    Table,
)


def check_against_schema(
    datamap: DataMap, system_name: str, live: Mapping[str, Iterable[str]]
) -> list[Issue]:
    """Compare a SQL system's mapping with the live database (`live`: table -> column names, or
    table -> {column: reflected SQLAlchemy type}, as `live_schema` gives, to check types too).

    A missing column is located where the map names it: `columns.<name>`, or `primary_key`,
    `time_column`, `tenant_column`, `relation.column`. Every issue is reported at once.
    """
    system = datamap.systems[system_name]
    live_cols = {table: set(cols) for table, cols in live.items()}
    issues: list[Issue] = []
    for tname, table in system.tables.items():
        loc = f"systems.{system_name}.tables.{tname}"
        if tname not in live_cols:
            issues.append(
                Issue(loc, "live-missing-table", f"table {tname!r} is not in the database")
            )
            continue
        for col, where in _named_columns(table).items():
            if col not in live_cols[tname]:
                issues.append(
                    Issue(
                        f"{loc}.{where}",
                        "live-missing-column",
                        f"column {col!r} is not in table {tname!r} of the database",
                    )
                )
    for part, registry in (("tenants", system.tenants), ("holds", system.holds)):
        if registry is None:
            continue
        loc = f"systems.{system_name}.{part}"
        if registry.table not in live_cols:
            issues.append(
                Issue(
                    f"{loc}.table",
                    "live-missing-table",
                    f"table {registry.table!r} is not in the database",
                )
            )
            continue
        for key, col in registry.model_dump().items():
            if key == "placed_column" and key not in registry.model_fields_set:
                continue  # optional by default: without it a hold's expiry is taken as given
            if key != "table" and col and col not in live_cols[registry.table]:
                issues.append(
                    Issue(
                        f"{loc}.{key}",
                        "live-missing-column",
                        f"column {col!r} is not in table {registry.table!r} of the database",
                    )
                )
    for sname, store in datamap.stores.items():
        if not (isinstance(store, RecordingStore) and store.system == system_name):
            continue
        if store.table not in live_cols:
            if store.table not in system.tables:  # a mapped table is reported above
                issues.append(
                    Issue(
                        f"stores.{sname}.table",
                        "live-missing-table",
                        f"table {store.table!r} is not in the database",
                    )
                )
        elif store.key_column not in live_cols[store.table]:
            issues.append(
                Issue(
                    f"stores.{sname}.key_column",
                    "live-missing-column",
                    f"column {store.key_column!r} is not in table {store.table!r} of the database",
                )
            )
    types = {t: dict(cols) for t, cols in live.items() if isinstance(cols, Mapping)}
    if types:
        issues += _type_issues(system, f"systems.{system_name}", types)
    return issues


def live_schema(engine: Any) -> dict[str, dict[str, Any]]:
    """The live schema with types: table -> {column: reflected SQLAlchemy type}. SQLite reflects
    the declared type (a column declared INTEGER is an Integer, whatever it holds)."""
    import sqlalchemy as sa

    insp = sa.inspect(engine)
    return {t: {c["name"]: c["type"] for c in insp.get_columns(t)} for t in insp.get_table_names()}


class TimeColumnTypeError(ValueError):
    """A time column that is not a DATE or TIMESTAMP: comparing it with a datetime would drop
    rows (SQLite) or fail (PostgreSQL). Names the column, never a value."""


def type_family(kind: Any) -> str:
    """What a reflected type compares as: datetime, text, integer, number, uuid, boolean,
    binary, unknown (SQLite without a declared type) or other (JSON, arrays...)."""
    import sqlalchemy as sa

    families: list[tuple[type, str]] = [
        (sa.types.Date, "datetime"),
        (sa.types.DateTime, "datetime"),
        (sa.types.Boolean, "boolean"),  # before Integer: some dialects derive one from the other
        (sa.types.Integer, "integer"),
        (sa.types.Numeric, "number"),
        (sa.types.Uuid, "uuid"),
        (sa.types.String, "text"),
        (sa.types.Enum, "text"),
        (sa.types._Binary, "binary"),
        (sa.types.NullType, "unknown"),
    ]
    for cls, family in families:
        if isinstance(kind, cls):
            return family
    return "other"


_NUMBERS = frozenset({"integer", "number"})
_TEXT_KINDS = frozenset({IdentityType.email, IdentityType.phone})
_KEY_FAMILIES = frozenset({"text", "integer", "number", "uuid"})


def _comparable(a: str, b: str) -> bool:
    """Whether two families compare without a cast on both engines (unknown: cannot tell)."""
    return a == b or "unknown" in (a, b) or {a, b} <= _NUMBERS


def _type_issues(
    system: SqlSystem, sloc: str, types: Mapping[str, Mapping[str, Any]]
) -> list[Issue]:
    """Column types against each column's role (`live-column-type`) and against the columns it
    is compared with (`live-type-mismatch`). Missing tables and columns are reported by the
    caller and skipped here."""
    issues: list[Issue] = []

    def kind(table: str, column: str | None) -> Any:
        return types.get(table, {}).get(column) if column else None

    def role(loc: str, table: str, column: str | None, allowed: frozenset[str], what: str) -> None:
        found = kind(table, column)
        if found is not None and type_family(found) not in allowed:
            issues.append(
                Issue(
                    loc,
                    "live-column-type",
                    f"column {table}.{column} is {_type_name(found)}; {what}",
                )
            )

    def pair(loc: str, left: tuple[str, str | None], right: tuple[str, str | None]) -> None:
        a, b = kind(*left), kind(*right)
        if a is None or b is None or _comparable(type_family(a), type_family(b)):
            return
        issues.append(
            Issue(
                loc,
                "live-type-mismatch",
                f"column {left[0]}.{left[1]} is {_type_name(a)} but {right[0]}.{right[1]}, "
                f"which it is compared with, is {_type_name(b)}: make the types match (a "
                "cast on the column would defeat its index)",
            )
        )

    dates = frozenset({"datetime"})
    registry = system.tenants
    for tname, table in system.tables.items():
        loc = f"{sloc}.tables.{tname}"
        role(
            f"{loc}.time_column",
            tname,
            table.time_column,
            dates,
            "a time_column must be a DATE or TIMESTAMP type (leave time_column out to date the "
            "table by its parent, see docs/data-map.md)",
        )
        for cname, col in table.columns.items():
            if col.identity in _TEXT_KINDS:
                role(
                    f"{loc}.columns.{cname}",
                    tname,
                    cname,
                    frozenset({"text", "unknown"}),
                    f"a {col.identity.value} identity column must be a text type",
                )
            elif col.identity is not None:
                role(
                    f"{loc}.columns.{cname}",
                    tname,
                    cname,
                    _KEY_FAMILIES | {"unknown"},
                    f"a {col.identity.value} identity column must be text, integer or UUID",
                )
        if table.tenant_column and registry is not None:
            pair(
                f"{loc}.tenant_column",
                (tname, table.tenant_column),
                (registry.table, registry.key),
            )
        if table.relation:
            rel = table.relation
            pair(
                f"{loc}.relation.column",
                (tname, rel.column),
                (rel.target_table, rel.target_column),
            )
    holds = system.holds
    if holds is not None:
        hloc = f"{sloc}.holds"
        if registry is not None:
            pair(
                f"{hloc}.client_column",
                (holds.table, holds.client_column),
                (registry.table, registry.key),
            )
        consumer = system.tables.get(system.consumer_table)
        if consumer is not None and len(consumer.key_columns) == 1:
            pair(
                f"{hloc}.consumer_column",
                (holds.table, holds.consumer_column),
                (system.consumer_table, consumer.key_columns[0]),
            )
        role(
            f"{hloc}.expires_column",
            holds.table,
            holds.expires_column,
            dates | {"unknown"},
            "a hold's expires_column must be a DATE or TIMESTAMP type",
        )
    return issues


def _type_name(kind: Any) -> str:
    if type_family(kind) == "unknown":
        return "of no declared type"
    try:
        return str(kind.compile()).upper() or type(kind).__name__
    except Exception:  # a type that does not compile without a dialect (e.g. NullType)
        return "of no declared type" if type_family(kind) == "unknown" else type(kind).__name__


def _named_columns(table: Table) -> dict[str, str]:
    """Every column the map names for `table` -> the key that names it (first one wins)."""
    named = {name: f"columns.{name}" for name in table.columns}
    for key in table.key_columns:
        named.setdefault(key, "primary_key")
    if table.time_column:
        named.setdefault(table.time_column, "time_column")
    if table.tenant_column:
        named.setdefault(table.tenant_column, "tenant_column")
    if table.relation:
        named.setdefault(table.relation.column, "relation.column")
    return named
