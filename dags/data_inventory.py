"""
### Data inventory

Holds the data map against the live systems, daily:

* every mapped table, column, bucket and prefix exists;
* columns, fields and prefixes that look personal but are not mapped are reported (**drift**);
* records per personal-information category per client are counted (R8, R27);
* a JSON and an HTML report land in the workspace bucket under `inventory/<date>/`.

Fails (and alerts) when the map no longer matches the systems. Logic: `compliance.inventory`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task

from compliance import inventory, runtime
from compliance_alerts import DEFAULT_ARGS, nightly_deadline


@dag(
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    deadline=nightly_deadline("data_inventory", timedelta(hours=4)),
    tags=["compliance", "inventory"],
    doc_md=__doc__,
)
def data_inventory():
    @task
    def plan() -> list[str]:
        """Validate the map and name what to inspect: one mapped task per system and store."""
        dm = runtime.datamap()
        return [f"system:{name}" for name in sorted(dm.systems)] + [
            f"store:{name}" for name in sorted(dm.stores)
        ]

    @task(map_index_template="{{ target }}")
    def inspect(target: str) -> dict:
        kind, name = target.split(":", 1)
        dm = runtime.datamap()
        if kind == "system":
            engine = runtime.sql_engine(dm.systems[name].connection)
            return inventory.inspect_sql_system(engine, dm, name).to_dict()
        s3 = runtime.s3(dm.stores[name].connection)
        return inventory.inspect_object_store(s3, dm, name).to_dict()

    @task
    def report(findings: list[dict]) -> dict:
        cfg = runtime.settings()
        s3 = runtime.s3(cfg.workspace_connection)
        summary = inventory.write_report(
            s3, cfg.workspace_bucket, runtime.run_day(), list(findings)
        )
        inventory.raise_on_problems(summary)
        return summary

    report(inspect.expand(target=plan()))


data_inventory()
