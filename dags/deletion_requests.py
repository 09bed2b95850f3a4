"""
### Deletion requests

Erases consumers' personal information on their business's verified request (R16-R21):

1. **intake**: validates every document in the S3 inbox (and the one entered in this form),
   moving each to `accepted/` or `rejected/` with its reason (R1, R5, R24);
2. **plan**: forms one batch of every open request, resolves identities to consumer rows within
   each client's tenant, defers consumers under a legal hold (R19) and stores the plan;
3. fans out, mapped: **erase_system** per SQL system, **scrub_logs** per log day,
   **erase_recordings** per recording store, **tombstone_backups** per backup store (R18), and
   **notify_subprocessors** (R16.3, R16.4): queues this batch's notices in the outbox and sends
   every due notice of any earlier batch too (backoff, give-up; `compliance.deletion.outbox`);
4. **verify_logs** per log day, after the scrub: an independent, deliberately naive search of
   every object's raw bytes for every target value and its variants (`residue_oracle`);
5. **finalize**: re-checks every system for every target, with the eraser's own checks and the
   independent oracle (every text column of every mapped table, the shard verdicts), zero residue
   or the run fails and the requests stay open; writes receipts to `receipts/` saying what was
   verified and how, ledger entries (R20), closes the requests.

**Dry run** (the form's default for manual runs; scheduled runs always execute): intake only
examines the inbox and the form, plan runs the same resolution and counting without storing a
thing, the log shards are scanned instead of scrubbed, and finalize writes a report to
`deletion/dry-runs/<id>/` (index.html, report.json): what each request would erase or why it
would be deferred, and which documents would be refused. Nothing is erased, moved or sent.

Rerun = converge: a crashed batch is resumed from its stored plan. Logic:
`compliance.deletion.erasure`
(`compliance.deletion.erasure_preview` for dry runs).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

from compliance import runtime
from compliance.deletion import erasure, erasure_preview, outbox
from compliance.jobs import intake as intake_job
from compliance_alerts import DEFAULT_ARGS, nightly_deadline
from compliance_forms import request_form

FORM = {
    "dry_run": Param(
        True,
        type="boolean",
        title="Dry run",
        description="Report what would be erased (and refused); change nothing. "
        "Scheduled runs always execute.",
    ),
    **request_form(),
}


@dag(
    schedule="@hourly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    # Hourly: a run still going after 2 h is holding up the next ones (max_active_runs=1).
    deadline=nightly_deadline("deletion_requests", timedelta(hours=2)),
    tags=["compliance", "deletion"],
    params=FORM,
    doc_md=__doc__,
)
def deletion_requests():
    @task
    def intake(params: dict | None = None) -> dict:
        if runtime.dry_run(get_current_context()):
            return {"dry_run": True}  # plan examines the inbox read-only
        return {"dry_run": False, **intake_job.intake(runtime.context(), params or {}, "delete")}

    @task
    def plan(intake: dict, params: dict | None = None) -> dict:
        cfg = runtime.settings()
        dm = runtime.datamap()
        if intake["dry_run"]:
            return erasure_preview.preview(
                runtime.s3(cfg.workspace_connection),
                cfg.workspace_bucket,
                dm,
                runtime.engines(dm),
                runtime.state_engine(),
                intake_job.examine(runtime.context(), params or {}, "delete"),
                runtime.now(),
            )
        return erasure.plan(
            runtime.s3(cfg.workspace_connection),
            cfg.workspace_bucket,
            dm,
            runtime.engines(dm),
            runtime.state_engine(),
            cfg.hash_key,
            runtime.now(),
        )

    @task
    def pick(batch: dict, what: str) -> list[str]:
        return batch[what]

    @task(map_index_template="{{ system }}")
    def erase_system(batch: dict, system: str) -> dict:
        cfg = runtime.settings()
        dm = runtime.datamap()
        engine = runtime.sql_engine(dm.systems[system].connection)
        return erasure.erase_system(
            runtime.s3(cfg.workspace_connection),
            cfg.workspace_bucket,
            dm,
            engine,
            batch["batch_id"],
            system,
            cfg.hash_key,
        )

    @task(map_index_template="{{ shard }}")
    def scrub_logs(batch: dict, shard: str) -> dict:
        cfg = runtime.settings()
        dm = runtime.datamap()
        store_s3 = runtime.s3(dm.stores[shard.split("|")[0]].connection)
        if batch.get("dry_run"):
            return erasure_preview.scan_log_shard(
                runtime.s3(cfg.workspace_connection),
                cfg.workspace_bucket,
                dm,
                store_s3,
                batch["batch_id"],
                shard,
            )
        return erasure.scrub_log_shard(
            runtime.s3(cfg.workspace_connection),
            cfg.workspace_bucket,
            dm,
            store_s3,
            runtime.state_engine(),
            batch["batch_id"],
            shard,
        )

    @task(map_index_template="{{ shard }}")
    def verify_logs(batch: dict, shard: str) -> dict:
        if batch.get("dry_run"):
            return {}  # a dry run erased nothing: there is nothing to verify
        cfg = runtime.settings()
        dm = runtime.datamap()
        return erasure.verify_log_shard(
            runtime.s3(cfg.workspace_connection),
            cfg.workspace_bucket,
            dm,
            runtime.s3(dm.stores[shard.split("|")[0]].connection),
            batch["batch_id"],
            shard,
        )

    @task(map_index_template="{{ store }}")
    def erase_recordings(batch: dict, store: str) -> dict:
        cfg = runtime.settings()
        dm = runtime.datamap()
        return erasure.erase_recordings(
            runtime.s3(cfg.workspace_connection),
            cfg.workspace_bucket,
            dm,
            runtime.s3(dm.stores[store].connection),
            batch["batch_id"],
            store,
        )

    @task(map_index_template="{{ store }}")
    def tombstone_backups(batch: dict, store: str) -> dict:
        cfg = runtime.settings()
        return erasure.tombstone(
            runtime.s3(cfg.workspace_connection),
            cfg.workspace_bucket,
            runtime.datamap(),
            runtime.state_engine(),
            batch["batch_id"],
            store,
            cfg.hash_key,
        )

    @task
    def notify_subprocessors(batch: dict) -> dict:
        if batch.get("dry_run"):
            return {}  # a dry run tells nobody anything
        cfg = runtime.settings()
        return outbox.run(  # this batch's notices queued; every due one of any batch sent
            runtime.s3(cfg.workspace_connection),
            cfg.workspace_bucket,
            runtime.datamap(),
            runtime.state_engine(),
            cfg.hash_key,
            batch["batch_id"] if batch["requests"] else "",
            runtime.now(),
            runtime.sns(),
        )

    @task(trigger_rule="none_failed")
    def finalize(batch: dict, shard_results: list[dict]) -> dict:
        cfg = runtime.settings()
        if batch.get("dry_run"):
            return erasure_preview.report(
                runtime.s3(cfg.workspace_connection),
                cfg.workspace_bucket,
                batch["batch_id"],
                list(shard_results or []),
            )
        dm = runtime.datamap()
        stores = {name: runtime.s3(store.connection) for name, store in dm.stores.items()}
        return erasure.finalize(
            runtime.s3(cfg.workspace_connection),
            cfg.workspace_bucket,
            dm,
            runtime.engines(dm),
            stores,
            runtime.state_engine(),
            cfg.hash_key,
            batch["batch_id"],
            list(shard_results or []),
            runtime.now(),
        )

    batch = plan(intake())
    systems = erase_system.partial(batch=batch).expand(
        system=pick.override(task_id="systems")(batch, "systems")
    )
    log_shards = pick.override(task_id="log_shards")(batch, "shards")
    shards = scrub_logs.partial(batch=batch).expand(shard=log_shards)
    verified = verify_logs.partial(batch=batch).expand(shard=log_shards)
    shards >> verified
    audio = erase_recordings.partial(batch=batch).expand(
        store=pick.override(task_id="recording_stores")(batch, "recordings")
    )
    stones = tombstone_backups.partial(batch=batch).expand(
        store=pick.override(task_id="backup_stores")(batch, "backups")
    )
    notices = notify_subprocessors(batch)
    [systems, audio, stones, notices, verified] >> finalize(batch, shards)


deletion_requests()
