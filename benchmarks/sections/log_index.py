"""Figure (issue 19): the log identity index, its build time and size.

Over every log object of the world (as seeded), on `--workers` processes:

- build: `identity_index.index_day` per day folder (what the `log_index` DAG's mapped task runs):
  GET each object, extract its identity values, hash them, PUT one sidecar into a fresh
  workspace bucket. Baseline: one scrub pass over the same objects (`log_scrub.scrub_shard` per
  day folder, one consumer's identities, verified), the cost the index saves a request.
  Target: build <= 1x one scrub pass.
- size: the sidecars' bytes against the log objects' gzip bytes. Target: <= 2%.
- selectivity: for one consumer's identities, the objects a request still reads
  (`LogIndex.objects_to_read`) out of all (info).
"""

from __future__ import annotations

from typing import Any

from benchmarks.sections import _common as C
from benchmarks.sections.deletion import shards
from benchmarks.sections.log_scrub import resolve_targets, scrub_stage

IMPORTS = ["compliance.core.logfiles.identity_index", "compliance.deletion.log_scrub"]
SECTION = "log_index"


def build_stage(shard: str, bucket: str) -> dict[str, Any]:
    from compliance.core.logfiles.identity_index import LogIndex, index_day
    from compliance.core.shards import LogShard

    where = LogShard.parse(shard)
    store = C.datamap().stores[where.store]
    index = LogIndex.of(C.s3(), bucket, C.HASH_KEY)
    return index_day(index, C.s3(), store, where.prefix)


def select_stage(shard: str, bucket: str, targets: dict[str, list]) -> dict[str, int]:
    from compliance.core.logfiles import Targets
    from compliance.core.logfiles.identity_index import LogIndex
    from compliance.core.shards import LogShard
    from compliance.core.stores.s3 import list_keys

    where = LogShard.parse(shard)
    store = C.datamap().stores[where.store]
    index = LogIndex.of(C.s3(), bucket, C.HASH_KEY)
    listed = list(list_keys(C.s3(), store.bucket, where.prefix))
    return {
        "objects": len(listed),
        "read": len(index.objects_to_read(store, listed, Targets(targets))),
    }


def run(bench: C.Bench, workers: int) -> list[C.Row]:
    all_shards = shards(bench)
    objects = bench.log_objects(C.PRISTINE)
    gz_bytes = sum(size for _, _, size in objects)
    bucket = bench.workspace("logindex")
    consumer = bench.consumers(1, fresh=False)[0]
    subjects = [("0", consumer.client_id, *C.identity(0, consumer))]
    targets = bench.stage("log_index.resolve", resolve_targets, [(bench.env.world_db, subjects)])
    one = targets.results[0]

    bench.restore_logs()
    build = bench.stage("log_index.build", build_stage, [(s, bucket) for s in all_shards], workers)
    built = {k: sum(int(r[k]) for r in build.results) for k in ("objects", "built", "index_bytes")}
    sel = bench.stage(
        "log_index.select", select_stage, [(s, bucket, one) for s in all_shards], workers
    )
    read = sum(r["read"] for r in sel.results)
    scrub = bench.stage(
        "log_index.scrub_pass", scrub_stage, [(s, one, "bench-ix") for s in all_shards], workers
    )
    bench.restore_logs()
    common = f"{len(objects)} objects, {gz_bytes / C.MB:,.0f} MB gzip; {workers} processes"
    pct = 100.0 * built["index_bytes"] / gz_bytes if gz_bytes else 0.0
    return [
        C.ratio_at_most(
            SECTION,
            "log index build vs one scrub pass",
            build.seconds,
            scrub.seconds,
            "s",
            1.0,
            peak_mb=build.peak_mb,
            note=f"{common}; {built['built']} sidecars built; scrub pass (one consumer, "
            f"verified) {scrub.seconds:.1f}s; the S3 server used {build.s3_cpu:.0f} CPU-s",
        ),
        C.at_most(
            SECTION,
            "log index size, % of gzip log bytes",
            pct,
            "%",
            2.0,
            note=f"{built['index_bytes'] / C.MB:,.2f} MB of sidecars for {gz_bytes / C.MB:,.0f} "
            "MB gzip (a Bloom filter per object, 6 bits per distinct identity value)",
        ),
        C.info(
            SECTION,
            "log objects one consumer's request reads with the index",
            float(read),
            "objects",
            note=f"of {built['objects']} (whose sidecar may hold the consumer's identities)",
        ),
    ]
