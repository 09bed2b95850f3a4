"""Figure 1: the deletion batch of 1, 100 and 1,000 requests, stage by stage.

Each batch starts from the same world: the CRM is a fresh `CREATE DATABASE ... TEMPLATE` copy
of the seeded one, the log stores are restored from the pristine copies, the state database and
the workspace bucket are new. Consumers are disjoint between batches, because the recordings
a batch deletes are not restored (the recording store loses at most a few dozen of its objects
over the whole run: documented, negligible).

What production has when a batch arrives (issue 19): the hourly `log_index` job has run, so the
workspace bucket holds a current sidecar per log object. Each batch's fresh workspace gets a
server-side copy of the sidecars the `log_index` section built (`log_index.seed_index`, untimed,
checked current); `scrub_logs` then reads only the objects the index cannot rule out (the
stage's row says how many), and `verify_logs`, the independent oracle, still reads every
version of every object of its day folder.

The stages are the DAG's task functions (`compliance.jobs.deletion`), called in its order with
the XComs its tasks pass, each in its own process(es); log shards (`scrub_logs`, then
`verify_logs`, as the DAG chains them) run on `--workers` processes at once, as mapped tasks on
that many workers would. A batch's time is the sum of its stages (the DAG runs the middle ones
side by side: the sum is an upper bound). The independent naive baseline is
`sections/naive.py`.
"""

from __future__ import annotations

from typing import Any

from benchmarks.sections import _common as C

IMPORTS = [
    "compliance.jobs.deletion",
    "compliance.deletion.erasure",
    "compliance.requests.inbox",
    "compliance.deletion.subprocessors",
    "compliance.core.logfiles",
    "compliance.deletion.log_scrub",
    "compliance.deletion.residue_oracle",
]
SECTION = "deletion"
STAGES = [
    "intake",
    "plan",
    "erase_system",
    "scrub_logs",
    "verify_logs",
    "erase_recordings",
    "tombstone_backups",
    "notify_subprocessors",
    "finalize",
]

# -- stage functions (run in stage processes) ------------------------------------------------------
# Each calls the DAG's own task function (`compliance.jobs.deletion`) with a `JobContext` on the
# benchmark's databases and buckets: the code measured is the code the DAG runs.


def job_context(ctx: dict[str, str]) -> Any:
    """What `compliance.runtime.context()` builds in a task, on this batch's CRM copy, state
    database and workspace bucket; the clock is the benchmark's."""
    import hashlib
    import os
    from pathlib import Path

    from compliance.core.context import JobContext, Workspace
    from compliance.core.settings import Settings

    dm = C.datamap()
    env = {
        **os.environ,
        "COMPLIANCE_HASH_KEY": C.HASH_KEY.decode(),
        "COMPLIANCE_WORKSPACE_BUCKET": ctx["ws"],
        "COMPLIANCE_DATAMAP": C.env().datamap_path,
        # a scheduled run someone already approved: the figures time the work, not a wait
        "COMPLIANCE_APPROVAL_BATCH_SIZE": "1000000",
        "COMPLIANCE_APPROVAL_MANUAL_RUNS": "off",
        "COMPLIANCE_APPROVAL_RETENTION_RULES": "off",
    }
    return JobContext(
        settings=Settings.from_env(env),
        datamap=dm,
        datamap_hash=hashlib.sha256(Path(C.env().datamap_path).read_bytes()).hexdigest(),
        workspace=Workspace(C.s3(), ctx["ws"]),
        state=C.engine(ctx["state"]),
        engines=dict.fromkeys(dm.systems, C.engine(ctx["crm"])),
        stores=dict.fromkeys(dm.stores, C.s3()),
        clock=C.now,
        run_day=C.now().date(),
        sns=C.sns(),
    )


def stage_intake(ctx: dict[str, str]) -> dict[str, Any]:
    from compliance.jobs import deletion as job

    return job.intake(job_context(ctx), {}, dry_run=False)


def stage_plan(ctx: dict[str, str], intake: dict[str, Any]) -> dict[str, Any]:
    from compliance.jobs import deletion as job

    return job.plan(job_context(ctx), intake, {})


def stage_erase_system(ctx: dict[str, str], batch: dict, system: str) -> dict[str, Any]:
    from compliance.jobs import deletion as job

    return job.erase_system(job_context(ctx), batch, system)


def stage_scrub(ctx: dict[str, str], batch: dict, shard: str) -> dict[str, Any]:
    from compliance.jobs import deletion as job

    return job.scrub_logs(job_context(ctx), batch, shard)


def stage_verify(ctx: dict[str, str], batch: dict, shard: str) -> dict[str, Any]:
    from compliance.jobs import deletion as job

    return job.verify_logs(job_context(ctx), batch, shard)


def stage_recordings(ctx: dict[str, str], batch: dict, store: str) -> dict[str, Any]:
    from compliance.jobs import deletion as job

    return job.erase_recordings(job_context(ctx), batch, store)


def stage_tombstone(ctx: dict[str, str], batch: dict, store: str) -> dict[str, Any]:
    from compliance.jobs import deletion as job

    return job.tombstone_backups(job_context(ctx), batch, store)


def stage_notify(ctx: dict[str, str], batch: dict) -> dict[str, Any]:
    from compliance.jobs import deletion as job

    return job.notify_subprocessors(job_context(ctx), batch)


def stage_finalize(ctx: dict[str, str], batch: dict, shards: list[dict]) -> dict[str, Any]:
    from compliance.jobs import deletion as job

    return job.finalize(job_context(ctx), batch, shards)


# -- the section ---------------------------------------------------------------------------------


def shards(bench: C.Bench) -> list[str]:
    from compliance.core import logfiles
    from compliance.core.shards import LogShard

    return [
        LogShard(name, prefix).key
        for name, store in sorted(bench.log_stores().items())
        for prefix in logfiles.day_prefixes(bench.s3, store)
    ]


def _prepare(bench: C.Bench, tag: str) -> tuple[dict[str, str], dict[str, float]]:
    """A batch's starting state: CRM copy, logs as seeded, new state database, and a new
    workspace bucket holding the run's current log index sidecars (what the hourly `log_index`
    job leaves there; built once per run by `log_index.ensure_index`). Untimed; the set-up
    seconds and the number of sidecars seeded are returned."""
    from benchmarks.sections import log_index

    log_index.ensure_index(bench)  # before the CRM copy: the build is not part of a batch
    crm, clone_s = bench.clone_world(tag)
    restore_s = bench.restore_logs()
    ws = bench.workspace(tag)
    seeded = log_index.seed_index(bench, ws)
    ctx = {"crm": crm, "state": bench.state_db(f"{tag}_state"), "ws": ws}
    return ctx, {
        "clone": clone_s,
        "restore_logs": restore_s,
        "seed_index": seeded["seconds"],
        "sidecars": seeded["sidecars"],
    }


def run_batch(bench: C.Bench, n: int, workers: int) -> dict[str, Any]:
    tag = f"del{n}"
    ctx, setup = _prepare(bench, tag)
    consumers = bench.consumers(n)
    docs = bench.put_requests(ctx["ws"], consumers, "delete", tag)
    stages: list[C.Stage] = []
    try:
        st = bench.stage(f"{tag}.intake", stage_intake, [(ctx,)])
        stages.append(st)
        intake = st.results[0]
        st = bench.stage(f"{tag}.plan", stage_plan, [(ctx, intake)])
        stages.append(st)
        batch = st.results[0]
        stages.append(
            bench.stage(
                f"{tag}.erase_system",
                stage_erase_system,
                [(ctx, batch, s) for s in batch["systems"]],
            )
        )
        scrub = bench.stage(
            f"{tag}.scrub_logs", stage_scrub, [(ctx, batch, s) for s in batch["shards"]], workers
        )
        stages.append(scrub)
        verify = bench.stage(
            f"{tag}.verify_logs", stage_verify, [(ctx, batch, s) for s in batch["shards"]], workers
        )
        stages.append(verify)
        stages.append(
            bench.stage(
                f"{tag}.erase_recordings",
                stage_recordings,
                [(ctx, batch, s) for s in batch["recordings"]],
            )
        )
        stages.append(
            bench.stage(
                f"{tag}.tombstone_backups",
                stage_tombstone,
                [(ctx, batch, s) for s in batch["backups"]],
            )
        )
        stages.append(bench.stage(f"{tag}.notify_subprocessors", stage_notify, [(ctx, batch)]))
        st = bench.stage(f"{tag}.finalize", stage_finalize, [(ctx, batch, scrub.results)])
        stages.append(st)
        final = st.results[0]
    finally:
        bench.drop_db(ctx["crm"])
    # the DAG's middle branches side by side: erase_system, scrub_logs >> verify_logs,
    # erase_recordings, tombstone_backups, notify_subprocessors
    erase_s, scrub_s, verify_s, *rest = stages[2:8]
    middle = [erase_s.seconds, scrub_s.seconds + verify_s.seconds, *(s.seconds for s in rest)]
    return {
        "n": n,
        "docs": docs,
        "intake": intake,
        "requests": batch["requests"],
        "deferred": batch["deferred"],
        "completed": final.get("completed", 0),
        "stages": stages,
        "total": sum(s.seconds for s in stages),
        "critical_path": stages[0].seconds + stages[1].seconds + max(middle) + stages[-1].seconds,
        "shards": len(batch["shards"]),
        "gz_bytes": sum(int(r.get("bytes_in", 0)) for r in scrub.results),
        "lines_removed": sum(int(r.get("lines_removed", 0)) for r in scrub.results),
        "scrub": {
            "seconds": scrub.seconds,
            "s3_cpu": scrub.s3_cpu,
            "peak_mb": scrub.peak_mb,
            "workers": scrub.workers,
            **{
                k: sum(int(r.get(k, 0)) for r in scrub.results)
                for k in (
                    "bytes_in",
                    "objects",
                    "objects_skipped",
                    "objects_rewritten",
                    "lines_removed",
                    "residue",
                )
            },
        },
        "verify": {
            k: sum(int(r.get(k, 0)) for r in verify.results)
            for k in ("objects", "versions", "residue", "unreadable")
        },
        "consumers": consumers,
        "setup": setup,
    }


def _s3_cpu(batch: dict[str, Any]) -> float:
    return sum(st.s3_cpu for st in batch["stages"])


def _stage_note(st: C.Stage, b: dict[str, Any]) -> str:
    """Calls and processes; for the log stages, how many objects they actually read."""
    parts = []
    if st.workers > 1 or len(st.results) > 1:
        parts.append(f"{len(st.results)} call(s) on {st.workers} process(es)")
    stage = st.name.split(".", 1)[1]
    if stage == "scrub_logs":
        sc = b["scrub"]
        parts.append(
            f"read {sc['objects'] - sc['objects_skipped']} of {sc['objects']} log objects "
            f"({sc['objects_skipped']} ruled out by the log index, "
            f"{int(b['setup']['sidecars'])} sidecars seeded), "
            f"{sc['bytes_in'] / C.MB:,.1f} MB gzip, {sc['objects_rewritten']} rewritten"
        )
    elif stage == "verify_logs":
        v = b["verify"]
        parts.append(
            f"independent oracle: every version of every object, {v['versions']} versions of "
            f"{v['objects']} objects read, residue {v['residue']}"
        )
    if st.s3_cpu >= 0.05:
        parts.append(f"S3 server CPU {st.s3_cpu:.1f} s")
    return "; ".join(parts)


def run(bench: C.Bench, sizes: list[int], workers: int) -> list[C.Row]:
    """Rows: each batch's stages, its total ("batch of N: total"), and t(largest)/t(smallest).
    Leaves the largest batch (its consumers and scrub figures) in `bench.results` for the logs
    section."""
    rows: list[C.Row] = []
    batches: dict[int, dict[str, Any]] = {}
    for n in sizes:
        try:
            b = run_batch(bench, n, workers)
        except Exception as exc:  # one batch failing (e.g. finalize's residue check) must not
            # lose the other batches' figures; the failure is a row of its own, named as the
            # total it replaces
            rows.append(C.failed(SECTION, f"batch of {n}: total", exc))
            continue
        batches[n] = b
        for st in b["stages"]:
            rows.append(
                C.info(
                    SECTION,
                    f"batch of {n}: {st.name.split('.', 1)[1]}",
                    st.seconds,
                    "s",
                    peak_mb=st.peak_mb,
                    note=_stage_note(st, b),
                )
            )
        sc = b["scrub"]
        # issue 19: the batch of 1,000 within a minute (the name stays "batch of N: total")
        limit = {"limit": 60.0} if n == 1000 else {}
        rows.append(
            (C.at_most if limit else C.info)(
                SECTION,
                f"batch of {n}: total",
                b["total"],
                "s",
                **limit,
                peak_mb=max(s.peak_mb for s in b["stages"]),
                note=f"{b['requests']} accepted of {n} documents, {b['completed']} completed, "
                f"{b['deferred']} deferred; {b['shards']} log shards, scrub read "
                f"{sc['objects'] - sc['objects_skipped']} of {sc['objects']} log objects "
                f"({b['gz_bytes'] / C.MB:,.1f} MB gzip), {b['lines_removed']:,} lines removed; "
                f"critical path (middle stages side by side) {b['critical_path']:.1f} s",
            )
        )
    if not batches:
        return rows
    first, last = min(batches), max(batches)
    bench.results["deletion_batch"] = {
        "n": last,
        "consumers": batches[last]["consumers"],
        "scrub": batches[last]["scrub"],
    }
    if first != last:
        rows.append(
            C.ratio_at_most(
                SECTION,
                f"batch scaling t({last})/t({first})",
                batches[last]["total"],
                batches[first]["total"],
                "s",
                3.0,
                peak_mb=max(s.peak_mb for b in batches.values() for s in b["stages"]),
                note=f"value = t({last}), baseline = t({first}), sums of stage times; on the "
                f"critical path (the DAG's middle stages side by side) "
                f"{batches[last]['critical_path']:.1f} s / {batches[first]['critical_path']:.1f} s"
                f" = {batches[last]['critical_path'] / batches[first]['critical_path']:.1f}; "
                f"the local S3 server's CPU (same cores) {_s3_cpu(batches[last]):.1f} s vs "
                f"{_s3_cpu(batches[first]):.1f} s",
            )
        )
    if 1 in batches:
        rows.append(
            C.at_most(
                SECTION,
                "deletion, one request",
                batches[1]["total"],
                "s",
                3.0,
                peak_mb=max(s.peak_mb for s in batches[1]["stages"]),
                note=f"the batch of 1's total (sum of stage times, log index current); "
                f"critical path {batches[1]['critical_path']:.1f} s",
            )
        )
    return rows
