"""Figure 1: the deletion batch of 1, 100 and 1,000 requests, stage by stage, and the naive loop.

Each batch starts from the same world: the CRM is a fresh `CREATE DATABASE ... TEMPLATE` copy
of the seeded one, the log stores are restored from the pristine copies, the state database and
the workspace bucket are new. Consumers are disjoint between batches, because the recordings
a batch deletes are not restored (the recording store loses at most a few dozen of its objects
over the whole run: documented, negligible).

The stages are the DAG's task functions (`compliance.jobs.deletion`), called in its order with
the XComs its tasks pass, each in its own process(es); log shards run on `--workers` processes
at once, as mapped tasks on that many workers would. A batch's time is the sum of its stages
(the DAG runs the middle five side by side: the sum is an upper bound).

The naive loop does, for each request on its own, what a per-request job would: resolve that
one consumer, erase it (`erase_sql.execute_erasure`), and scan and rewrite every log object for
that one identity set (`log_scrub.scrub_shard`, same workers). It runs on `--naive` requests and
is scaled linearly to the largest batch size (its cost per request does not depend on how many
came before: every request pays a full pass over the logs).
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.sections import _common as C
from compliance.core.shards import LogShard

IMPORTS = [
    "compliance.jobs.deletion",
    "compliance.deletion.erasure",
    "compliance.requests.inbox",
    "compliance.deletion.subprocessors",
    "compliance.requests.resolve",
    "compliance.deletion.erase_sql",
    "compliance.core.logfiles",
    "compliance.deletion.log_scrub",
]
SECTION = "deletion"
STAGES = [
    "intake",
    "plan",
    "erase_system",
    "scrub_logs",
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


def naive_sql(ctx: dict[str, str], ref: str, client_id: int, kind: str, value: str) -> dict:
    """One request alone: resolve its consumer(s) in every system, erase them; the log targets."""
    from compliance.core.datamap.model import IdentityType
    from compliance.deletion import erase_sql
    from compliance.requests.resolve import Subject, resolve

    dm = C.datamap()
    subject = Subject(ref, client_id, ((IdentityType(kind), value),))
    idents: dict[str, set[str]] = {}
    found = 0
    for system in dm.systems.values():
        eng = C.engine(ctx["crm"])
        res = resolve(eng, system, [subject])[ref]
        found += len(res.consumer_ids)
        erase_sql.execute_erasure(eng, system, res.consumer_ids, C.HASH_KEY)
        for k, values in res.identities.items():
            idents.setdefault(k.value, set()).update(values)
    targets = [(k, v, ref) for k, values in idents.items() for v in sorted(values)]
    return {"consumers": found, "targets": {str(client_id): targets}}


def naive_scrub(shard: str, targets: dict[str, list], batch_id: str) -> dict[str, Any]:
    from compliance.core import logfiles
    from compliance.core.shards import LogShard
    from compliance.deletion import log_scrub

    where = LogShard.parse(shard)
    store = C.datamap().stores[where.store]
    result = log_scrub.scrub_shard(
        C.s3(), store, where.prefix, logfiles.Targets(targets), batch_id=batch_id
    )
    return {"bytes_in": result.bytes_in, "lines": result.lines_removed, "residue": result.residue}


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
    crm, clone_s = bench.clone_world(tag)
    restore_s = bench.restore_logs()
    ctx = {"crm": crm, "state": bench.state_db(f"{tag}_state"), "ws": bench.workspace(tag)}
    return ctx, {"clone": clone_s, "restore_logs": restore_s}


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
    middle = stages[2:7]
    return {
        "n": n,
        "docs": docs,
        "intake": intake,
        "requests": batch["requests"],
        "deferred": batch["deferred"],
        "completed": final.get("completed", 0),
        "stages": stages,
        "total": sum(s.seconds for s in stages),
        "critical_path": stages[0].seconds
        + stages[1].seconds
        + max(s.seconds for s in middle)
        + stages[-1].seconds,
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
                for k in ("bytes_in", "objects", "objects_rewritten", "lines_removed", "residue")
            },
        },
        "consumers": consumers,
        "setup": setup,
    }


def _shard_bytes(bench: C.Bench, all_shards: list[str]) -> dict[str, int]:
    """Gzip bytes under each shard (day folder), from the pristine listing."""
    stores = bench.log_stores()
    objects = bench.log_objects(C.PRISTINE)
    out = {}
    for shard in all_shards:
        where = LogShard.parse(shard)
        bucket = stores[where.store].bucket
        out[shard] = sum(
            size for b, k, size in objects if b == bucket and k.startswith(where.prefix)
        )
    return out


def sample_shards(all_shards: list[str], wanted: int) -> list[str]:
    """About `wanted` day folders, evenly spaced within each store (every store represented)."""
    if wanted <= 0 or wanted >= len(all_shards):
        return list(all_shards)
    by_store: dict[str, list[str]] = {}
    for shard in all_shards:
        by_store.setdefault(LogShard.parse(shard).store, []).append(shard)
    out = []
    for items in by_store.values():
        m = max(1, round(wanted * len(items) / len(all_shards)))
        step = len(items) / m
        out += [items[int(i * step + step / 2)] for i in range(m)]
    return out


def run_naive(bench: C.Bench, k: int, workers: int, wanted_shards: int) -> dict[str, Any]:
    """Per request: resolve + erase alone, then a scrub of the sampled day folders for that
    request's identities, scaled per store by (store's gzip bytes / sampled gzip bytes)."""
    ctx, _ = _prepare(bench, "naive")
    all_shards = shards(bench)
    size = _shard_bytes(bench, all_shards)
    sample = sample_shards(all_shards, wanted_shards)
    store_total: dict[str, int] = {}
    store_sampled: dict[str, int] = {}
    for shard in all_shards:
        store = LogShard.parse(shard).store
        store_total[store] = store_total.get(store, 0) + size[shard]
        if shard in sample:
            store_sampled[store] = store_sampled.get(store, 0) + size[shard]
    per_request: list[float] = []
    peaks: list[float] = []
    try:
        for i, c in enumerate(bench.consumers(k)):
            kind, value = C.identity(i, c)
            sql = bench.stage(
                f"naive.{i}.sql", naive_sql, [(ctx, f"naive-{i}", c.client_id, kind, value)]
            )
            targets = sql.results[0]["targets"]
            scan = bench.stage(
                f"naive.{i}.logs",
                naive_scrub,
                [(s, targets, f"naive-{i}") for s in sample],
                workers,
            )
            busy: dict[str, float] = {}
            for shard, took in zip(sample, scan.call_seconds, strict=True):
                store = LogShard.parse(shard).store
                busy[store] = busy.get(store, 0.0) + took
            all_busy = sum(busy.values()) or 1.0
            logs_s = sum(
                scan.seconds * (b / all_busy) * store_total[st] / max(store_sampled[st], 1)
                for st, b in busy.items()
            )
            per_request.append(sql.seconds + logs_s)
            peaks += [sql.peak_mb, scan.peak_mb]
    finally:
        bench.drop_db(ctx["crm"])
    return {
        "k": k,
        "per_request": per_request,
        "peak_mb": max(peaks),
        "gz_bytes": sum(size.values()),
        "sampled": len(sample),
        "shards": len(all_shards),
        "sampled_bytes": sum(size[s] for s in sample),
    }


def _s3_cpu(batch: dict[str, Any]) -> float:
    return sum(st.s3_cpu for st in batch["stages"])


def run(
    bench: C.Bench, sizes: list[int], naive_k: int, workers: int, naive_shards: int
) -> list[C.Row]:
    rows: list[C.Row] = []
    batches: dict[int, dict[str, Any]] = {}
    for n in sizes:
        b = run_batch(bench, n, workers)
        batches[n] = b
        for st in b["stages"]:
            stage = st.name.split(".", 1)[1]
            note = ""
            if st.workers > 1 or len(st.results) > 1:
                note = f"{len(st.results)} call(s) on {st.workers} process(es)"
            if st.s3_cpu >= 0.05:
                note += f"{'; ' if note else ''}S3 server CPU {st.s3_cpu:.1f} s"
            rows.append(
                C.info(
                    SECTION,
                    f"batch of {n}: {stage}",
                    st.seconds,
                    "s",
                    peak_mb=st.peak_mb,
                    note=note,
                )
            )
        rows.append(
            C.info(
                SECTION,
                f"batch of {n}: total",
                b["total"],
                "s",
                peak_mb=max(s.peak_mb for s in b["stages"]),
                note=f"{b['requests']} accepted of {n} documents, {b['completed']} completed, "
                f"{b['deferred']} deferred; {b['shards']} log shards, "
                f"{b['gz_bytes'] / C.MB:,.0f} MB gzip, {b['lines_removed']:,} lines removed; "
                f"critical path (middle stages side by side) {b['critical_path']:.1f} s",
            )
        )
    first, last = min(sizes), max(sizes)
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
    if naive_k > 0:
        naive = run_naive(bench, naive_k, workers, naive_shards)
        mean = statistics.fmean(naive["per_request"])
        rows.append(
            C.info(
                SECTION,
                "naive loop: one request alone",
                mean,
                "s",
                peak_mb=naive["peak_mb"],
                note=f"mean of {naive_k} requests (min {min(naive['per_request']):.1f} s, "
                f"max {max(naive['per_request']):.1f} s): resolve + erase_sql + scrub of "
                f"{naive['sampled']} of {naive['shards']} log day folders "
                f"({naive['sampled_bytes'] / C.MB:,.1f} of {naive['gz_bytes'] / C.MB:,.0f} MB "
                f"gzip) on {workers} processes, scaled per store to all of them",
            )
        )
        rows.append(
            C.speedup(
                SECTION,
                f"batch of {last} vs naive per-request loop",
                batches[last]["total"],
                mean * last,
                50.0,
                peak_mb=max(s.peak_mb for s in batches[last]["stages"]),
                note=f"baseline = naive loop measured on {naive_k} requests and scaled "
                f"linearly to {last} ({naive_k} x {mean:.1f} s -> {mean * last:,.0f} s)",
            )
        )
    return rows
