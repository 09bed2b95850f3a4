"""One SQL system against its data map: tables and columns exist, unmapped columns that look
personal (drift), indexes the jobs need that are missing (issue 19: a lookup without one reads the
whole table), rows per table and per client and category (one GROUP BY per table)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from compliance.core.datamap import indexes
from compliance.core.datamap.model import DataMap
from compliance.core.datamap.validate import check_against_schema, live_schema
from compliance.core.sqlmap import MappedSql
from compliance.core.stores.sql import live_indexes
from compliance.inventory.findings import (
    OWN_TABLE_PREFIX,
    Finding,
    SystemInventory,
    looks_personal,
)


def inspect_sql_system(engine: Engine, dm: DataMap, system_name: str) -> SystemInventory:
    system = dm.systems[system_name]
    live = live_schema(engine)  # table -> {column: type}: the schema check checks types too
    inv = SystemInventory(system_name, "sql")
    inv.problems = [
        Finding(i.location, i.rule, i.message) for i in check_against_schema(dm, system_name, live)
    ]
    for tname, cols in sorted(live.items()):
        spec = system.tables.get(tname)
        if spec is None:
            if tname in system.ignore or tname.startswith(OWN_TABLE_PREFIX):
                continue
            personal = [c for c in cols if looks_personal(c)]
            if personal:
                inv.drift.append(
                    Finding(
                        f"{system_name}.{tname}",
                        "unmapped-table",
                        f"not in the data map; columns that look personal: {', '.join(personal)}",
                    )
                )
            continue
        known = {*spec.key_columns, *spec.columns}
        known |= {spec.time_column} if spec.time_column else set()
        known |= {spec.tenant_column} if spec.tenant_column else set()
        known |= {spec.relation.column} if spec.relation else set()
        for col in cols:
            if col not in known and looks_personal(col):
                inv.drift.append(
                    Finding(
                        f"{system_name}.{tname}.{col}",
                        "unmapped-column",
                        "looks personal but has no category in the data map",
                    )
                )
    present = {t for t in system.tables if t in live}
    wanted = indexes.needed(dm).for_system(system_name)
    for spec in indexes.missing(
        [i for i in wanted if i.table in present], live_indexes(engine, present)
    ):
        inv.missing_indexes.append(
            Finding(f"{system_name}.{spec.table}({', '.join(spec.columns)})", spec.name, spec.why)
        )
    sql = MappedSql(engine, system, present)
    counts: dict[tuple[Any, str], int] = defaultdict(int)
    with engine.connect() as conn:
        for tname in sorted(present):
            owned = sql.owned(tname)
            stmt = (
                sa.select(owned.tenant.label("client_id"), sa.func.count().label("n"))
                .select_from(owned.from_clause)
                .group_by(owned.tenant)
            )
            categories = {
                c.value for col in system.tables[tname].columns.values() for c in col.categories
            }
            total = 0
            for client_id, n in conn.execute(stmt):
                total += n
                for cat in categories:
                    counts[(client_id, cat)] += n
            inv.tables[tname] = total
    inv.per_client_category = [
        {"client_id": client, "category": cat, "records": n}
        for (client, cat), n in sorted(counts.items(), key=lambda kv: (str(kv[0][0]), kv[0][1]))
    ]
    return inv
