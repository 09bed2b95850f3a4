"""Walking a SQL system's relations toward its consumer table.

Erasure, access and retention all need "which rows of table T belong to consumer C": the answer is
the chain of relations from T to the consumer table. It is computed here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from compliance.core.datamap.model import Relation, SqlSystem


@dataclass(frozen=True)
class Hop:
    """`table.column` references `target_table.target_column`."""

    table: str
    column: str
    target_table: str
    target_column: str


class RelationError(ValueError):
    def __init__(self, rule: str, table: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.table = table


def chain_to_consumer(system: SqlSystem, table: str) -> list[Hop]:
    """Hops from `table` to the consumer table ([] for the consumer table itself)."""
    hops: list[Hop] = []
    seen = [table]
    current = table
    while current != system.consumer_table:
        spec = system.tables.get(current)
        if spec is None:
            raise RelationError(
                "unknown-table", table, f"relation chain reaches unmapped table {current!r}"
            )
        rel: Relation | None = spec.relation
        if rel is None:
            raise RelationError(
                "relation-unreachable",
                table,
                f"table {current!r} has no relation, so {table!r} does not reach the consumer "
                f"table {system.consumer_table!r}",
            )
        hops.append(Hop(current, rel.column, rel.target_table, rel.target_column))
        if rel.target_table in seen:
            cycle = " -> ".join([*seen, rel.target_table])
            raise RelationError("relation-cycle", table, f"relations form a cycle: {cycle}")
        seen.append(rel.target_table)
        current = rel.target_table
    return hops


def tenant_path(system: SqlSystem, table: str) -> tuple[list[Hop], str]:
    """Hops from `table` to the nearest table with a tenant column, and that column."""
    hops = chain_to_consumer(system, table)
    spec = system.tables[table]
    if spec.tenant_column:
        return [], spec.tenant_column
    for i, hop in enumerate(hops):
        target = system.tables[hop.target_table]
        if target.tenant_column:
            return hops[: i + 1], target.tenant_column
    path = " -> ".join([table, *(hop.target_table for hop in hops)])
    raise RelationError(
        "missing-tenant",
        table,
        f"no table on the way {path} has a tenant_column, so {table!r} rows cannot be "
        "limited to one client",
    )


def time_path(system: SqlSystem, table: str) -> tuple[list[Hop], str] | None:
    """Hops from `table` to the nearest table with a time column, and that column; None when no
    table up the chain has one.

    A row without its own collection time is dated by its parent (an order line by its order):
    the R9 look-back and retention periods then run from the parent's time. The chain always
    ends at the consumer table, so a table has no time anywhere only when the consumer table has
    none either; such rows are always inside an access look-back (err toward disclosing, R9) and
    cannot be expired by age (docs/retention.md).
    """
    spec = system.tables[table]
    if spec.time_column:
        return [], spec.time_column
    hops = chain_to_consumer(system, table)
    for i, hop in enumerate(hops):
        target = system.tables[hop.target_table]
        if target.time_column:
            return hops[: i + 1], target.time_column
    return None


def erase_order(system: SqlSystem) -> list[str]:
    """Mapped tables, deepest first: children are erased before the parents they reference."""
    depth = {name: len(chain_to_consumer(system, name)) for name in system.tables}
    return sorted(system.tables, key=lambda name: (-depth[name], name))
