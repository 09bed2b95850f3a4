"""A SQL system as the data map sees it: reflected tables plus the joins the map implies.

Every job that touches rows "of a consumer" or "of a tenant" builds its statements from here, so
relation walking is written once: `owner_select` gives, for any mapped table, a FROM clause joined
along the relation chain plus the expressions for the owning consumer's key and the tenant.
Statements stay set-based (one statement per table, never one per consumer).
"""

from __future__ import annotations

from dataclasses import dataclass

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
