"""
### Access reports

Compiles everything we hold about a consumer into a bundle the business can hand over, when it
forwards a verified "right to know" request (R8-R15, R7, R27; GDPR Art. 15, G2):

1. **intake**: the same inbox as deletions (`compliance.requests.inbox`): every document in the S3
   inbox (clients' and the staff page's) is validated and moved to `accepted/` or `rejected/`;
   the form names at most a reference to a request staff entered, never an identity;
2. **plan**: one batch of every open access request: identities resolved within each client's
   tenant, each request's window (12 months before receipt, since 2022-01-01 on request, R9; no
   limit for the GDPR, G2), third request in 12 months flagged (R7);
3. fans out, mapped: **gather_system** per SQL system (one SELECT per table for the whole
   batch) and **gather_logs** per log day; withheld values (R10) never leave the stores;
4. **build_bundles**: per request a zip (index.html, data.json, csv/, manifest.json, audio when
   enabled) at `access/<client>/<request_id>/bundle.zip`, encrypted, a link that expires within
   7 days (`link.json` beside it, R12), a receipt in `receipts/`, a ledger entry; requests closed.

Backups are searched, one mapped **gather_backups** per snapshot day, unless the data map states
R13's four conditions for a store; every report lists what was not searched and why (R13).
Rerun = converge: a crashed batch is resumed from its stored targets. Logic:
`compliance.access`; guide: docs/access.md.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, task

from compliance import access, runtime
from compliance.jobs import access as jobs_access
from compliance_alerts import DEFAULT_ARGS
from compliance_forms import request_form

RUN = "This run"

FORM = {
    **request_form(),
    "link_expiry_days": Param(
        access.MAX_LINK_DAYS,
        type="integer",
        minimum=1,
        maximum=access.MAX_LINK_DAYS,
        title="Download link expiry (days)",
        description="Every bundle of this run gets a link valid this long; at most 7 days (R12).",
        section=RUN,
    ),
    "include_audio": Param(
        None,
        type=["null", "boolean"],
        title="Include call audio",
        description="Empty: the deployment setting COMPLIANCE_ACCESS_INCLUDE_AUDIO (on).",
        section=RUN,
    ),
    "replan": Param(
        False,
        type="boolean",
        title="Re-plan",
        description="Abandon a batch planned under another data map; plan its requests afresh.",
        section=RUN,
    ),
}


@dag(
    schedule="@hourly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["compliance", "access"],
    params=FORM,
    doc_md=__doc__,
)
def access_reports():
    @task
    def intake(params: dict | None = None) -> dict:
        return jobs_access.intake(runtime.context(), params or {})

    @task
    def plan(_intake: dict, params: dict | None = None) -> dict:
        return jobs_access.plan(runtime.context(), params or {})

    @task
    def pick(batch: dict, what: str) -> list[str]:
        """What one mapped task fans out over: Airflow maps only over a task's return value,
        never over one key of it (`multiple_outputs`), so each list gets this small task."""
        return batch[what]

    @task(map_index_template="{{ system }}")
    def gather_system(batch: dict, system: str) -> dict:
        return jobs_access.gather_system(runtime.context(), batch, system)

    @task(map_index_template="{{ shard }}")
    def gather_logs(batch: dict, shard: str) -> dict:
        return jobs_access.gather_logs(runtime.context(), batch, shard)

    @task(map_index_template="{{ shard }}")
    def gather_backups(batch: dict, shard: str) -> dict:
        return jobs_access.gather_backups(runtime.context(), batch, shard)

    @task(trigger_rule="none_failed")
    def build_bundles(batch: dict, _gathered: list | None, params: dict | None = None) -> dict:
        return jobs_access.build_bundles(
            runtime.context(), batch, (params or {}).get("link_expiry_days")
        )

    batch = plan(intake())
    systems = gather_system.partial(batch=batch).expand(
        system=pick.override(task_id="systems")(batch, "systems")
    )
    shards = gather_logs.partial(batch=batch).expand(
        shard=pick.override(task_id="log_shards")(batch, "shards")
    )
    backups = gather_backups.partial(batch=batch).expand(
        shard=pick.override(task_id="backup_shards")(batch, "backup_shards")
    )
    [systems, backups] >> build_bundles(batch, shards)


access_reports()
