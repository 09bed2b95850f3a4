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

from compliance import runtime
from compliance.jobs import inventory as jobs_inventory
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
        return jobs_inventory.plan(runtime.context())

    @task(map_index_template="{{ target }}")
    def inspect(target: str) -> dict:
        return jobs_inventory.inspect(runtime.context(), target)

    @task
    def report(findings: list[dict]) -> dict:
        return jobs_inventory.report(runtime.context(), findings)

    report(inspect.expand(target=plan()))


data_inventory()
