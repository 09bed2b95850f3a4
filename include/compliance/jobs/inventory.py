"""The data_inventory DAG's tasks: plan -> inspect (one per system and store) -> report.

Targets travel as "system:<name>" / "store:<name>" strings so the DAG can map over them and a
mapped task's label says what it inspected. Logic: `compliance.inventory` (R8, R27).
"""

from __future__ import annotations

from typing import Any

from compliance import inventory
from compliance.core.context import JobContext


def plan(ctx: JobContext) -> list[str]:
    """What to inspect: every SQL system and object store of the (validated) data map."""
    dm = ctx.datamap
    return [f"system:{name}" for name in sorted(dm.systems)] + [
        f"store:{name}" for name in sorted(dm.stores)
    ]


def inspect(ctx: JobContext, target: str) -> dict[str, Any]:
    """One system or store against the map: what is missing, what drifted, record counts."""
    kind, name = target.split(":", 1)
    if kind == "system":
        return inventory.inspect_sql_system(ctx.engine(name), ctx.datamap, name).to_dict()
    return inventory.inspect_object_store(ctx.store(name), ctx.datamap, name).to_dict()


def report(ctx: JobContext, findings: list[dict[str, Any]]) -> dict[str, Any]:
    """JSON and HTML report under `inventory/<day>/`; fails (and alerts) on any problem."""
    ws = ctx.workspace
    summary = inventory.write_report(ws.s3, ws.bucket, ctx.run_day.isoformat(), list(findings))
    inventory.raise_on_problems(summary)
    return summary
