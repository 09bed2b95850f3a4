"""
### Log identity index

Keeps the log identity index current, hourly: for each day folder of each log store, a sidecar
of keyed hashes of the identity values each object holds (in the workspace bucket, under
`log-index/`), built for objects that lack a current one; sidecars of objects that are gone are
deleted.

Access reports and deletion read only the objects whose sidecar may hold a request's identities;
an object without a current sidecar is read in full, so a missed run only costs time.
Logic: `compliance.core.logfiles.identity_index`, `compliance.jobs.log_index`.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task

from compliance import runtime
from compliance.jobs import log_index as jobs_log_index
from compliance_alerts import DEFAULT_ARGS


@dag(
    schedule="@hourly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["compliance", "operations"],
    doc_md=__doc__,
)
def log_index():
    @task
    def plan() -> list[str]:
        """One mapped task per day folder of each log store."""
        return jobs_log_index.plan(runtime.context())

    @task(map_index_template="{{ shard }}")
    def index(shard: str) -> dict:
        return jobs_log_index.index_shard(runtime.context(), shard)

    @task
    def summarize(results: list[dict]) -> dict:
        return jobs_log_index.summarize(runtime.context(), results)

    summarize(index.expand(shard=plan()))


log_index()
