"""Issue 19, scale-out: the deletion batch on the Celery stack, beside the single-process figure.

The same batch as the deletion section's largest (`deletion._prepare`: a fresh CRM copy, state
database, workspace bucket and log objects as seeded; `n` fresh consumers put in the inbox as
request documents) runs as one `deletion_requests` DAG run on Airflow's CeleryExecutor with two
workers, PostgreSQL metadata and Redis as the broker (`compliance_dev.celery_stack`, the stack
`tests/e2e/test_celery_run.py` runs, with docker-compose.yml's executor settings).

The tasks reach the batch's databases and buckets through Airflow connections and COMPLIANCE_*
variables, exactly as a deployment's do (`compliance.runtime`): the variables are the ones the
deletion section's `job_context` sets (hash key, workspace bucket, data map, and approval off:
a scheduled batch someone already approved, R16-R21 work only), read from a `Settings` built
there, so the two figures cannot drift apart in configuration.

Figure: the DAG run's wall time, its `start_date` to `end_date` as the REST API reports them.
The stack's start-up (db migrate, components, workers ready, DAG parsed) is not in it; it is
shown as its own row. Each worker runs `CONCURRENCY` task slots: the machine has 2 cores, and
the single-process figure scrubs log shards on 2 processes, so 2 per worker gives the DAG the
same per-worker parallelism (4 slots in all, on the same 2 cores). The DAG does more than the
single-process sum of stages: a task per mapped item with its own process and API round trips,
the approval gate, the `verify_logs` tasks, XCom through the metadata database.

Memory (in a note, not as the row's `peak_mb`: the scheduler, API server, triggerer and
dag-processor are the platform, not the job): PSS of every Airflow and task process, PostgreSQL
and the S3 server, sampled each second during the run (`C.MemorySampler`).

Checked independently, not taken from the run's own report: the run's state, every task
instance's hostname (tasks must have run on both workers), and an SQL count that none of the
`n` consumers' contacts rows is left. Any failure is a failed row (the stack is stopped, the
databases dropped); no row or note holds personal data (counts, states and timings only).
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from benchmarks.sections import _common as C
from benchmarks.sections import deletion

SECTION = "celery"
DAG_ID = "deletion_requests"
CONCURRENCY = 2  # task slots per worker (see the module docstring)
RUN_TIMEOUT = 3600.0  # seconds the DAG run may take before the figure counts as failed


def single_figure(rows: list[C.Row], n: int) -> float | None:
    """The deletion section's single-process time for the batch of `n` ("batch of n: total")."""
    for row in rows:
        if row.section == deletion.SECTION and row.name == f"batch of {n}: total":
            return row.value
    return None


def stage_job_env(ctx: dict[str, str]) -> dict[str, str]:
    """The COMPLIANCE_* variables the deletion section's `job_context` runs with (in a stage
    process: `job_context` needs the benchmark's environment). Holds the hash key: never
    printed or stored, only handed to the stack's processes."""
    return dict(deletion.job_context(ctx).settings.env)


def run(bench: C.Bench, n: int, single_seconds: float | None) -> list[C.Row]:
    """The batch of `n` on the Celery stack; rows never raise (a failure is a failed row)."""
    from compliance_dev.celery_stack import celery_executor_problem, redis_problem

    name = f"batch of {n} on Celery, 2 workers: DAG run"
    problem = redis_problem() or celery_executor_problem()
    if problem:
        return [C.unavailable(SECTION, name, problem)]
    try:
        return _run(bench, n, single_seconds, name)
    except Exception as exc:
        sys.stderr.write(f"[bench] celery: {type(exc).__name__}: {exc}\n")
        return [C.failed(SECTION, name, exc)]


def _run(bench: C.Bench, n: int, single_seconds: float | None, name: str) -> list[C.Row]:
    from compliance_dev.celery_stack import WORKERS, celery_stack, pg_conn

    tag = f"cel{n}"
    ctx = deletion._prepare(bench, tag)[0]
    meta = ""
    try:
        consumers = bench.consumers(n)
        ids = [c.contact_id for c in consumers]
        before = _contacts_left(bench, ctx["crm"], ids)
        if before != n:
            raise RuntimeError(f"{before} of the {n} consumers' contacts rows in the CRM copy")
        docs = bench.put_requests(ctx["ws"], consumers, "delete", tag)
        job_env = bench.stage(f"{tag}.env", stage_job_env, [(ctx,)]).results[0]
        meta = bench.create_db(f"{tag}_meta")
        env = {
            **job_env,
            "AIRFLOW_CONN_CRM_DB": pg_conn(bench.env.url(ctx["crm"])),
            "AIRFLOW_CONN_COMPLIANCE_DB": pg_conn(bench.env.url(ctx["state"])),
            "COMPLIANCE_DEADLINE_ALERTS": "off",  # alerting is not the batch's work
        }
        home = Path(bench.env.workdir) / f"celery-{tag}"
        with celery_stack(
            home,
            meta_url=bench.env.url(meta),
            s3_url=bench.env.s3_url,
            dag_ids=[DAG_ID],
            env=env,
            workers=WORKERS,
            concurrency=CONCURRENCY,
        ) as stack:
            up = stack.timings["components up"]
            # every Airflow process and task process, every PostgreSQL server process and the
            # S3 server (PSS, as for the other sections' stages): context, in a note
            memory = C.MemorySampler(
                stack.pids(), bench.s3_pid, f"cjb_{bench.env.run_id}_", interval=1.0
            ).start()
            try:
                asked = time.monotonic()
                run_id = stack.trigger(DAG_ID, {"dry_run": False})
                dag_run = stack.wait_run(DAG_ID, run_id, RUN_TIMEOUT)
                observed = time.monotonic() - asked
                tis = stack.task_instances(DAG_ID, run_id)
            finally:
                memory.stop()
        left = _contacts_left(bench, ctx["crm"], ids)
    finally:
        bench.drop_db(ctx["crm"])
        if meta:
            bench.drop_db(meta)

    peak = memory.peak
    state = str(dag_run["state"])
    wall = _seconds(dag_run["start_date"], dag_run["end_date"])
    ran = [t for t in tis if t.get("hostname")]  # a skipped task ran nowhere
    per_worker = {w: sum(t["hostname"] == w for t in ran) for w in WORKERS}
    states: dict[str, int] = {}
    for t in tis:
        states[str(t["state"])] = states.get(str(t["state"]), 0) + 1
    busy = sum(float(t.get("duration") or 0.0) for t in ran)
    if state != "success":
        raise RuntimeError(f"DAG run {state} after {wall:.0f} s; task states {states}; logs {home}")
    if left:
        raise RuntimeError(f"{left} of the {n} consumers' contacts rows still in the CRM copy")
    if set(per_worker) != {t["hostname"] for t in ran} or not all(per_worker.values()):
        hosts = sorted({str(t["hostname"]) for t in ran})
        raise RuntimeError(f"tasks ran on {hosts}, not on both workers {list(WORKERS)}")

    shown = ", ".join(f"{w} {k}" for w, k in per_worker.items())
    note = (
        f"run {state}; DAG run start_date to end_date from the REST API (stack start-up not "
        f"included: {up:.0f} s; trigger to finished seen by the harness {observed:.0f} s); "
        f"CeleryExecutor, 2 workers x {CONCURRENCY} slots on this machine's "
        f"{_cpus()} cores, PostgreSQL metadata, Redis broker; {len(tis)} task instances "
        f"({shown}); {docs['requests']} request documents, contacts rows of the {n} consumers "
        f"left (SQL count) {left}"
    )
    baseline = ratio = None
    if single_seconds:
        baseline, ratio = single_seconds, wall / single_seconds
        note += (
            f"; ratio = Celery / single-process (deletion 'batch of {n}: total', sum of stage "
            f"times, {single_seconds:.1f} s) = {ratio:.2f}"
        )
    rows = [C.info(SECTION, name, wall, "s", baseline=baseline, ratio=ratio, note=note)]
    rows.append(
        C.info(
            SECTION,
            f"batch of {n} on Celery: task instances",
            float(len(tis)),
            "tasks",
            note=f"states {states}; per worker {shown}; summed task durations {busy:.0f} s "
            f"over {len(WORKERS) * CONCURRENCY} slots x {wall:.0f} s wall "
            f"({busy / max(wall * len(WORKERS) * CONCURRENCY, 1e-9):.0%} busy)",
        )
    )
    rows.append(
        C.info(
            SECTION,
            "Celery stack start-up (not in the figure)",
            up,
            "s",
            note="db migrate, api-server, scheduler, dag-processor, triggerer, 2 workers ready, "
            f"DAG parsed. Memory during the run (PSS sampled every 1 s, largest total): Airflow "
            f"processes and their task processes {peak.workers:,.0f} MB + PostgreSQL "
            f"{peak.postgres:,.0f} MB + S3 server {peak.s3:,.0f} MB = {peak.total:,.0f} MB "
            "(not a stage's peak_mb: the scheduler, API server, triggerer and dag-processor "
            "are the platform, not the job; Redis not included)",
        )
    )
    return rows


def _contacts_left(bench: C.Bench, db: str, ids: list[int]) -> int:
    with bench.connect(db) as conn:
        return int(
            conn.execute(
                sa.text("SELECT count(*) FROM contacts WHERE contact_id = ANY(:ids)"),
                {"ids": ids},
            ).scalar_one()
        )


def _seconds(start: str | None, end: str | None) -> float:
    if not start or not end:
        raise RuntimeError("the DAG run has no start_date or end_date")
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _cpus() -> int:
    import os

    return os.cpu_count() or 1
