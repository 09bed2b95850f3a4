"""Figure 2: log rewrite throughput (MB/s of gzip input) against the shell pipeline.

Same objects, same identities, same parallelism. The objects are every log object of the
world (as seeded); the identities are those of the largest deletion batch's consumers, resolved
and expanded exactly as the batch plan does (`compliance.requests.resolve`). Three ways over them,
each
on `--workers` processes at once, best of `--repeat`, interleaved:

- pipeline: `gzip -dc f | grep -v -F -f ids | gzip -1 > out` on local copies (no S3): the
  baseline. Its pattern file holds the e-mails (lower case), phones and record ids (as
  `"contact_id":<id>,` so a number does not match inside timestamps); it knows no tenant, no
  field, and misses e-mails logged in another case;
- real job: the deletion section's largest batch's `scrub_logs` stage (`jobs.deletion.scrub_logs`
  per day folder on the moto S3 server: GET, scan, conditional PUT of what changed, old versions
  deleted, then the verification scan of every object), tenant-scoped, fields from the data map,
  e-mails compared case-insensitively; with `--only logs`, `log_scrub.scrub_shard` itself on the
  restored objects with the same identities;
- engine: the same rewrite engine on the local copies (no S3, no verification), for the cost of
  S3 and verification by difference.

Backups: the demo map's backup store says `rewrite: false` (tombstones, R18); the backup rewrite
figure (`rewrite: true`) is measured on a scratch copy of the snapshots, for the same batch
(`benchmarks.sections.backup_rewrite`).
"""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.bench_logs import PIPELINE
from benchmarks.sections import _common as C
from benchmarks.sections.deletion import shards

IMPORTS = [
    "compliance.core.logfiles",
    "compliance.deletion.log_scrub",
    "compliance.requests.resolve",
]
SECTION = "logs"


def resolve_targets(db: str, subjects: list[tuple[str, int, str, str]]) -> dict[str, list]:
    """Every request's identities (given and found on its rows), by tenant, as the plan does."""
    from compliance.core.datamap.model import IdentityType
    from compliance.requests.resolve import Subject, resolve

    dm = C.datamap()
    subs = [
        Subject(ref, client, ((IdentityType(kind), value),))
        for ref, client, kind, value in subjects
    ]
    per_ref: dict[str, dict[str, set[str]]] = {}
    for system in dm.systems.values():
        for ref, res in resolve(C.engine(db), system, subs).items():
            for kind, values in res.identities.items():
                per_ref.setdefault(ref, {}).setdefault(kind.value, set()).update(values)
    client_of = {ref: client for ref, client, _, _ in subjects}
    out: dict[str, list] = {}
    for ref, kinds in per_ref.items():
        out.setdefault(str(client_of[ref]), []).extend(
            (kind, v, ref) for kind, values in kinds.items() for v in sorted(values)
        )
    return out


def scrub_stage(shard: str, targets: dict[str, list], batch_id: str) -> dict[str, Any]:
    from compliance.core import logfiles
    from compliance.core.shards import LogShard
    from compliance.deletion import log_scrub

    where = LogShard.parse(shard)
    store = C.datamap().stores[where.store]
    r = log_scrub.scrub_shard(
        C.s3(), store, where.prefix, logfiles.Targets(targets), batch_id=batch_id
    )
    return {
        "bytes_in": r.bytes_in,
        "objects": r.objects,
        "rewritten": r.objects_rewritten,
        "lines": r.lines_removed,
        "residue": r.residue,
    }


def engine_stage(path: str, store_name: str, targets: dict[str, list]) -> dict[str, Any]:
    """The rewrite engine of `compliance.deletion.log_scrub` on a local file (its private entry
    points)."""
    from compliance.core import logfiles
    from compliance.deletion import log_scrub

    store = C.datamap().stores[store_name]
    matcher = logfiles.Matcher.get(store, logfiles.Targets(targets))
    result = logfiles.ObjectResult(key=path, bytes_in=os.path.getsize(path))
    with open(path, "rb") as body:
        out = log_scrub._edit_stream(body, matcher, store.erase, result)
    if out is not None:
        out.finish()
        out.close()
    return {"bytes_in": result.bytes_in, "lines": result.lines_matched}


def _pattern_file(bench: C.Bench, targets: dict[str, list], path: Path) -> int:
    """What a shell user would grep for: every value the log stores can hold."""
    from compliance.core.datamap.model import IdentityType

    fields: dict[IdentityType, set[str]] = {}
    for store in bench.log_stores().values():
        for name, spec in store.fields.items():
            if spec.identity is not None:
                fields.setdefault(spec.identity, set()).add(name)
    lines: set[str] = set()
    for items in targets.values():
        for kind, value, _ref in items:
            itype = IdentityType(kind)
            if itype not in fields:
                continue
            if itype is IdentityType.record_id:
                lines.update(f'"{f}":{value},' for f in fields[itype])
            else:
                lines.add(value.lower() if itype is IdentityType.email else value)
    path.write_text("".join(f"{v}\n" for v in sorted(lines)))
    return len(lines)


def _download(bench: C.Bench, objects: list[tuple[str, str, int]], into: Path) -> list[Path]:
    paths = []
    for bucket, key, _ in objects:
        target = into / bucket / key
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            bench.s3.download_file(C.PRISTINE, f"{bucket}/{key}", str(target))
        paths.append(target)
    return paths


def _pipeline(paths: list[Path], ids: Path, out_dir: Path, workers: int) -> float:
    out_dir.mkdir(parents=True, exist_ok=True)

    def one(i_path: tuple[int, Path]) -> None:
        i, path = i_path
        out = out_dir / f"{i}.gz"
        subprocess.run(["bash", "-c", PIPELINE, "_", str(path), str(ids), str(out)], check=True)
        out.unlink()

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, enumerate(paths)))
    return time.perf_counter() - started


def run(bench: C.Bench, n: int, workers: int, repeat: int) -> list[C.Row]:
    batch = bench.results.get("deletion_batch")
    if batch is not None and batch["n"] == n:
        consumers = batch["consumers"]  # the batch's own: its scrub is the real job's figure
    else:
        consumers, batch = bench.consumers(n, fresh=False), None
    subjects = [(str(i), c.client_id, *C.identity(i, c)) for i, c in enumerate(consumers)]
    st = bench.stage("logs.resolve", resolve_targets, [(bench.env.world_db, subjects)])
    targets = st.results[0]
    identities = sum(len(v) for v in targets.values())

    work = Path(bench.env.workdir)
    objects = bench.log_objects(C.PRISTINE)
    paths = _download(bench, objects, work / "objects")
    gz_mb = sum(size for _, _, size in objects) / C.MB
    ids = work / "ids.txt"
    patterns = _pattern_file(bench, targets, ids)
    store_of = {
        (store.bucket, key): name
        for name, store in bench.log_stores().items()
        for bucket, key, _ in objects
        if bucket == store.bucket and key.startswith(store.prefix)
    }
    engine_calls = [
        (str(p), store_of[(b, k)], targets) for p, (b, k, _) in zip(paths, objects, strict=True)
    ]
    all_shards = shards(bench)

    best = {"pipeline": 1e18, "job": 1e18, "engine": 1e18}
    peaks = {"job": 0.0, "engine": 0.0}
    job: dict[str, Any] = {}
    s3_cpu = 0.0
    job_mb = gz_mb  # gzip bytes the job read: fewer when the log index rules objects out
    if batch is not None:  # the deletion section's batch scrubbed these objects for these ids
        scrub = batch["scrub"]
        best["job"], peaks["job"], s3_cpu = scrub["seconds"], scrub["peak_mb"], scrub["s3_cpu"]
        job = {
            "objects": scrub["objects"],
            "rewritten": scrub["objects_rewritten"],
            "lines": scrub["lines_removed"],
            "residue": scrub["residue"],
        }
        if scrub.get("bytes_in"):
            job_mb = scrub["bytes_in"] / C.MB
        where = (
            f"jobs.deletion.scrub_logs in the deletion section's batch of {n} (read "
            f"{job_mb:,.0f} MB gzip, {scrub.get('objects_skipped', 0)} objects ruled out by "
            "the log index; MB/s over what it read)"
        )
    else:
        where = "log_scrub.scrub_shard per day folder"
    for r in range(repeat):
        best["pipeline"] = min(best["pipeline"], _pipeline(paths, ids, work / "pipe-out", workers))
        if batch is None:
            bench.restore_logs()
            scrub_st = bench.stage(
                "log_scrub.scrub_shard",
                scrub_stage,
                [(s, targets, f"bench-{r}") for s in all_shards],
                workers,
            )
            if scrub_st.seconds < best["job"]:
                best["job"], s3_cpu = scrub_st.seconds, scrub_st.s3_cpu
            peaks["job"] = max(peaks["job"], scrub_st.peak_mb)
            job = {
                k: sum(int(x[k]) for x in scrub_st.results)
                for k in ("objects", "rewritten", "lines", "residue")
            }
        eng = bench.stage("logs.engine_local", engine_stage, engine_calls, workers)
        best["engine"] = min(best["engine"], eng.seconds)
        peaks["engine"] = max(peaks["engine"], eng.peak_mb)
    if batch is None:
        bench.restore_logs()
    pipe = gz_mb / best["pipeline"]
    common = f"{len(objects)} objects, {gz_mb:,.0f} MB gzip; {workers} processes"
    rows = [
        C.info(
            SECTION,
            "identities of the batch (resolved, expanded)",
            float(identities),
            "identities",
            note=f"{n} requests; pipeline pattern file: {patterns} lines",
        ),
        C.info(
            SECTION,
            "pipeline gzip -dc | grep -v -F -f | gzip -1",
            pipe,
            "MB/s",
            note=f"{common}; best of {repeat}",
        ),
        C.at_least(
            SECTION,
            "log scrub, real job (scrub_shard on S3, verified)",
            job_mb / best["job"],
            pipe,
            "MB/s",
            1.0,
            peak_mb=peaks["job"],
            note=f"{common}; {where}: {job.get('rewritten', 0)} of {job.get('objects', 0)} "
            f"objects rewritten, {job.get('lines', 0):,} lines removed, residue "
            f"{job.get('residue', 0)}; the S3 server used {s3_cpu:.0f} CPU-s of the same cores",
        ),
        C.Row(
            SECTION,
            "log rewrite engine, local files (no S3, no verification)",
            gz_mb / best["engine"],
            "MB/s",
            pipe,
            (gz_mb / best["engine"]) / pipe,
            None,
            None,
            peaks["engine"],
            note=f"{common}; best of {repeat}; the job minus S3 and verification",
        ),
        _backup_row(bench, consumers),
    ]
    return rows


def _backup_row(bench: C.Bench, consumers: list[Any]) -> C.Row:
    """Backup rewrite throughput on a scratch copy of the snapshots (`backup_rewrite`)."""
    from benchmarks.sections import backup_rewrite

    try:
        return backup_rewrite.run(bench, consumers, SECTION)
    except Exception as exc:  # one figure failing must not lose the others (row "failed")
        return C.failed(SECTION, "backup rewrite throughput (rewrite: true, on S3)", exc)
