"""A SQL system as the data map sees it: reflected tables plus the joins the map implies.

Every job that touches rows "of a consumer" or "of a tenant" builds its statements from here, so
relation walking is written once: `owner_select` gives, for any mapped table, a FROM clause joined
along the relation chain plus the expressions for the owning consumer's key and the tenant.
Statements stay set-based (one statement per table, never one per consumer).
"""

from __future__ import annotations

import re
import uuid
import warnings
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from compliance.core.datamap.graph import chain_to_consumer, tenant_path, time_path
from compliance.core.datamap.model import SqlSystem


@dataclass(frozen=True)
class Owned:
    """FROM clause for a table joined toward its consumer, with the consumer key and tenant."""

    table: sa.Table
    from_clause: sa.FromClause
    consumer_key: sa.ColumnElement
    tenant: sa.ColumnElement
    # When the row was collected: its own time column, or the nearest ancestor's joined into
    # `from_clause` (graph.time_path); None when no table up the chain has one (R9, R27).
    time: sa.ColumnElement | None = None


class MappedSql:
    def __init__(self, engine: Engine, system: SqlSystem, present: set[str] | None = None) -> None:
        self.engine = engine
        self.system = system
        self.metadata = sa.MetaData()
        names = [n for n in system.tables if present is None or n in present]
        with warnings.catch_warnings():  # SQLite skips expression indexes (lower(email), #19)
            warnings.filterwarnings("ignore", "Skipped unsupported reflection")
            self.metadata.reflect(engine, only=names)

    def table(self, name: str) -> sa.Table:
        return self.metadata.tables[name]

    def owned(self, name: str, *, aliased: bool = False) -> Owned:
        """`name` joined toward the consumer far enough to know the consumer key and tenant.

        `aliased` joins the ancestors under aliases: a subquery correlated with an outer
        consumer row must not join the consumer table under its own name, or the subquery's copy
        shadows the outer row and the correlation silently vanishes."""
        hops = chain_to_consumer(self.system, name)
        tenant_hops, tenant_col = tenant_path(self.system, name)
        base = self.table(name)
        dated = time_path(self.system, name)
        if not hops:  # the consumer table itself (its key is one column: the validator says so)
            own_time = base.c[dated[1]] if dated else None
            return Owned(base, base, self.consumer_key_column(name), base.c[tenant_col], own_time)
        # Join every hop but the last: the last hop's column *is* the consumer key.
        needed = max(len(hops) - 1, len(tenant_hops), len(dated[0]) if dated else 0)
        from_clause: sa.FromClause = base
        current = base
        joined = {name: base}
        for i, hop in enumerate(hops[:needed]):
            target: sa.FromClause = self.table(hop.target_table)
            if aliased:
                target = target.alias(f"cj_up{i}_{hop.target_table}")
            from_clause = from_clause.join(
                target, current.c[hop.column] == target.c[hop.target_column]
            )
            joined[hop.target_table] = target
            current = target
        last = hops[-1]
        consumer_key = joined[last.table].c[last.column]
        tenant_table = joined[tenant_hops[-1].target_table] if tenant_hops else base
        time = None
        if dated:
            time_hops, time_col = dated
            time = (joined[time_hops[-1].target_table] if time_hops else base).c[time_col]
        return Owned(base, from_clause, consumer_key, tenant_table.c[tenant_col], time)

    def key_columns(self, name: str) -> list[sa.Column]:
        """The primary key's columns in the map's order (several for a composite key)."""
        table = self.table(name)
        return [table.c[c] for c in self.system.tables[name].key_columns]

    def primary_key(self, name: str) -> sa.ColumnElement:
        """The primary key as one expression: the column, or a row value `(a, b)` for a
        composite key (row-value comparisons and `IN (SELECT a, b ...)` work on SQLite >= 3.15
        and PostgreSQL alike)."""
        cols = self.key_columns(name)
        return cols[0] if len(cols) == 1 else sa.tuple_(*cols)

    def consumer_key_column(self, name: str) -> sa.Column:
        """The consumer table's key: one column, since relations point at one column."""
        cols = self.key_columns(name)
        if len(cols) != 1:
            raise ValueError(
                f"table {name!r} is the consumer table and needs a single-column primary_key"
            )
        return cols[0]


class KeyTypeError(ValueError):
    """A tenant or key value (text) cannot be spelt in its column's type; names the column only."""


def typed_value(column: sa.ColumnElement, value: object) -> Any:
    """`value` (a tenant or key id, usually the text the state DB keeps) in `column`'s own type.

    Every comparison with a CRM key is made in the column's type, never by casting the column, so
    the CRM's own indexes serve (any-CRM: integer, text and UUID keys alike). Integer columns
    accept only the canonical spelling ("01" is not tenant 1: a string tenant "01" and an integer
    tenant 1 must never be confused). Raises KeyTypeError naming the column, never the value.
    """
    kind = column.type
    try:
        python_type = kind.python_type
    except NotImplementedError:  # NullType (e.g. an unknown SQLite declaration): compare as text
        python_type = str
    name = getattr(column, "name", "?")
    if python_type is bool:
        raise KeyTypeError(f"column {name!r} is boolean and cannot hold a key")
    if python_type is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        text = str(value)  # exactly as given: " 1" is no more tenant 1 than "01" is
        if re.fullmatch(r"-?[1-9][0-9]*|0", text):
            return int(text)
        raise KeyTypeError(f"column {name!r} holds integers; the value is not one")
    if python_type is uuid.UUID:
        try:
            return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
        except ValueError:
            raise KeyTypeError(f"column {name!r} holds UUIDs; the value is not one") from None
    if python_type is Decimal:
        try:
            return Decimal(str(value))
        except InvalidOperation:
            raise KeyTypeError(f"column {name!r} holds numbers; the value is not one") from None
    return value if isinstance(value, str) else str(value)


def typed_values(column: sa.ColumnElement, values: list[Any]) -> list[Any]:
    """`typed_value` for many; values that cannot be spelt in the column's type match nothing
    and are left out (a text tenant 'acme' can never equal an integer column's value)."""
    out = []
    for value in values:
        try:
            out.append(typed_value(column, value))
        except KeyTypeError:
            continue
    return out


def integer_text(text: str) -> str | None:
    """`text` spelt as `str(int(text))` would spell it when it is an integer in ASCII digits
    (signs, leading zeros and blanks allowed), else None. Without int(), which also takes '²'
    (a digit to `str.isdigit`) and refuses 4,300+ digits: text from a file must never stop a
    job. For identities and snapshot cells, never tenants (their spelling is exact, R6)."""
    text = text.strip()
    body = text[1:] if text[:1] in "+-" else text
    if not (body.isascii() and body.isdigit()):
        return None
    digits = body.lstrip("0") or "0"
    return f"-{digits}" if text[:1] == "-" and digits != "0" else digits


def key_text(value: object) -> str:
    """The text form of a key as the state DB and every target file keep it (UUIDs lower-case,
    integers in decimal): the one spelling Python code compares tenants and consumers in."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return str(value.quantize(Decimal(1)))  # NUMERIC(18, 0) keys read back as Decimal
    return str(value)


def record_id(values: tuple[Any, ...] | list[Any]) -> Any:
    """A row's id for reports: the key's value, or for a composite key its parts as text joined
    by '/' (stable, readable, and never mistaken for one of the parts)."""
    if len(values) == 1:
        return values[0]
    return "/".join(key_text(v) for v in values)


def key_order(text: object) -> str:
    """A sort key for key texts: integer ids in numeric order ("2" before "10"), then the rest
    in text order, so reports of a CRM with integer tenants read as before."""
    value = key_text(text)
    if re.fullmatch(r"[1-9][0-9]{0,19}|0", value):
        return "0" + value.zfill(20)
    return "1" + value


def by_key_order(series: Any) -> Any:
    """`key=` for pandas `sort_values`: natural order for `client_id`, other columns as they are."""
    return series.map(key_order) if getattr(series, "name", None) == "client_id" else series
