"""A SQL system as the data map sees it: reflected tables plus the joins the map implies.

Every job that touches rows "of a consumer" or "of a tenant" builds its statements from here, so
relation walking is written once: `owner_select` gives, for any mapped table, a FROM clause joined
along the relation chain plus the expressions for the owning consumer's key and the tenant.
Statements stay set-based (one statement per table, never one per consumer).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from compliance.datamap.graph import chain_to_consumer, tenant_path
from compliance.datamap.model import SqlSystem


@dataclass(frozen=True)
class Owned:
    """FROM clause for a table joined toward its consumer, with the consumer key and tenant."""

    table: sa.Table
    from_clause: sa.FromClause
    consumer_key: sa.ColumnElement
    tenant: sa.ColumnElement


class MappedSql:
    def __init__(self, engine: Engine, system: SqlSystem, present: set[str] | None = None) -> None:
        self.engine = engine
        self.system = system
        self.metadata = sa.MetaData()
        names = [n for n in system.tables if present is None or n in present]
        self.metadata.reflect(engine, only=names)

    def table(self, name: str) -> sa.Table:
        return self.metadata.tables[name]

    def owned(self, name: str) -> Owned:
        """`name` joined toward the consumer far enough to know the consumer key and tenant."""
        hops = chain_to_consumer(self.system, name)
        tenant_hops, tenant_col = tenant_path(self.system, name)
        base = self.table(name)
        if not hops:  # the consumer table itself
            pk = base.c[self.system.tables[name].primary_key]
            return Owned(base, base, pk, base.c[tenant_col])
        # Join every hop but the last: the last hop's column *is* the consumer key.
        needed = max(len(hops) - 1, len(tenant_hops))
        from_clause: sa.FromClause = base
        current = base
        joined = {name: base}
        for hop in hops[:needed]:
            target = self.table(hop.target_table)
            from_clause = from_clause.join(
                target, current.c[hop.column] == target.c[hop.target_column]
            )
            joined[hop.target_table] = target
            current = target
        last = hops[-1]
        consumer_key = joined[last.table].c[last.column]
        tenant_table = joined[tenant_hops[-1].target_table] if tenant_hops else base
        return Owned(base, from_clause, consumer_key, tenant_table.c[tenant_col])

    def primary_key(self, name: str) -> sa.Column:
        return self.table(name).c[self.system.tables[name].primary_key]


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
        text = str(value).strip()
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


def key_text(value: object) -> str:
    """The text form of a key as the state DB and every target file keep it (UUIDs lower-case,
    integers in decimal): the one spelling Python code compares tenants and consumers in."""
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)
