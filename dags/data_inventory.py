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

from datetime import datetime

from airflow.sdk import dag, task

from compliance import inventory, runtime
from compliance_alerts import DEFAULT_ARGS


@dag(
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["compliance", "inventory"],
    doc_md=__doc__,
)
def data_inventory():
    @task
    def plan() -> dict:
        """Validate the map and list what to inspect (small JSON only)."""
        dm = runtime.datamap()
        return {"systems": sorted(dm.systems), "stores": sorted(dm.stores)}

    @task(map_index_template="{{ system }}")
    def inspect_system(system: str) -> dict:
        dm = runtime.datamap()
        engine = runtime.sql_engine(dm.systems[system].connection)
        return inventory.inspect_sql_system(engine, dm, system).to_dict()

    @task(map_index_template="{{ store }}")
    def inspect_store(store: str) -> dict:
        dm = runtime.datamap()
        return inventory.inspect_object_store(
            runtime.s3(dm.stores[store].connection), dm, store
        ).to_dict()

    @task
    def report(systems: list[dict], stores: list[dict]) -> dict:
        cfg = runtime.settings()
        s3 = runtime.s3(cfg.workspace_connection)
        day = runtime.run_day()
        summary = inventory.write_report(s3, cfg.workspace_bucket, day, list(systems), list(stores))
        inventory.raise_on_problems(summary)
        return summary

    planned = plan()
    systems = inspect_system.expand(system=planned["systems"])
    stores = inspect_store.expand(store=planned["stores"])
    report(systems, stores)


data_inventory()
