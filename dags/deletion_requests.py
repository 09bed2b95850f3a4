"""### Deletion requests (R16-R21): docs/deletion.md; four-eyes `approve`: docs/approvals.md.
Each task calls `compliance.jobs.deletion`. A dry run (the manual default) changes nothing."""

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task

from compliance import runtime
from compliance.jobs import deletion as job
from compliance_alerts import DEFAULT_ARGS, nightly_deadline
from compliance_approval import FourEyesApproval, alert_not_approved
from compliance_forms import request_form

DRY_RUN = "Report what would be erased (and refused); change nothing. Scheduled runs execute."
REPLAN = "Abandon a batch planned under another data map; plan its requests afresh."
RUNS = dict(schedule="@hourly", start_date=datetime(2026, 1, 1), catchup=False, max_active_runs=1)
FORM = {"dry_run": Param(True, type="boolean", title="Dry run", description=DRY_RUN)}
FORM["replan"] = Param(False, type="boolean", title="Re-plan", description=REPLAN)
FORM |= request_form()
META = dict(default_args=DEFAULT_ARGS, tags=["compliance", "deletion"], params=FORM, doc_md=__doc__)


@dag(**RUNS, **META, deadline=nightly_deadline("deletion_requests", timedelta(hours=2)))
def deletion_requests():
    @task
    def intake(**context) -> dict:
        return job.intake(runtime.context(), context["params"], dry_run=runtime.dry_run(context))

    @task
    def plan(intake: dict, **ctx) -> dict:
        return job.plan(runtime.context(), intake, ctx["params"], scheduled=runtime.scheduled(ctx))

    @task(map_index_template="{{ system }}")
    def erase_system(batch: dict, system: str) -> dict:
        return job.erase_system(runtime.context(), batch, system)

    @task(map_index_template="{{ shard }}")
    def scrub_logs(batch: dict, shard: str) -> dict:
        return job.scrub_logs(runtime.context(), batch, shard)

    @task(map_index_template="{{ shard }}")
    def verify_logs(batch: dict, shard: str) -> dict:
        return job.verify_logs(runtime.context(), batch, shard)

    @task(map_index_template="{{ store }}")
    def erase_recordings(batch: dict, store: str) -> dict:
        return job.erase_recordings(runtime.context(), batch, store)

    @task(map_index_template="{{ store }}")
    def tombstone_backups(batch: dict, store: str) -> dict:
        return job.tombstone_backups(runtime.context(), batch, store)

    @task
    def notify_subprocessors(batch: dict) -> dict:
        return job.notify_subprocessors(runtime.context(), batch)

    @task
    def pick(batch: dict, what: str) -> list[str]:  # Airflow maps over a task's whole XCom only
        return batch[what]

    @task(trigger_rule="none_failed")
    def finalize(batch: dict, shard_results: list[dict]) -> dict:
        return job.finalize(runtime.context(), batch, shard_results)

    batch = plan(intake())
    gate = batch >> FourEyesApproval(task_id="approve", subject="Erase this deletion batch?")
    shards = gate >> pick.override(task_id="log_shards")(batch, "shards")
    scrubbed = scrub_logs.partial(batch=batch).expand(shard=shards)
    verified = scrubbed >> verify_logs.partial(batch=batch).expand(shard=shards)
    systems = gate >> pick.override(task_id="systems")(batch, "systems")
    recordings = gate >> pick.override(task_id="recording_stores")(batch, "recordings")
    backups = gate >> pick.override(task_id="backup_stores")(batch, "backups")
    erased = erase_system.partial(batch=batch).expand(system=systems)
    audio = erase_recordings.partial(batch=batch).expand(store=recordings)
    stones = tombstone_backups.partial(batch=batch).expand(store=backups)
    notices, done = gate >> notify_subprocessors(batch), gate >> finalize(batch, scrubbed)
    [erased, audio, stones, alert_not_approved(after=notices), verified] >> done


deletion_requests()
