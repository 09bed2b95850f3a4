"""Backup rewrite throughput (MB/s of gzip snapshot input), beside the log rewrite figure.

The demo map keeps `rewrite: false` (tombstones, R18), so the world's snapshots are never
rewritten by a deletion run. This figure measures what `rewrite: true` would cost: the objects
of the store's newest snapshot day are copied (server-side) into a scratch versioned bucket (a
throughput needs one day, and each day costs about the same: all 7 took over half an hour at
1M contacts), and `compliance.deletion.backup_rewrite.rewrite_store` (the code the
`tombstone_backups` step runs for such a store) removes the same batch's consumers from it:
load the day's mapped tables into a temporary SQLite, find the consumers' rows through the
relations, rewrite the objects that hold any with every other record byte-identical, delete the
old versions. The world's own bucket is not touched; the scratch bucket is deleted afterwards.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.sections import _common as C

SCRATCH = "cjb-backup-rewrite"


def _store(dm: Any) -> tuple[str, Any] | None:
    from compliance.core.datamap.model import BackupStore

    for name, store in sorted(dm.stores.items()):
        if isinstance(store, BackupStore):
            return name, store
    return None


def rewrite_stage(consumers: list[tuple[int, int, str | None]]) -> dict[str, Any]:
    """One rewrite of the scratch copy; (contact id, client id, e-mail) per consumer."""
    from compliance.core.datamap.model import IdentityType
    from compliance.deletion import backup_rewrite
    from compliance.requests.resolve import Subject

    found = _store(C.datamap())  # inside the stage's process
    assert found is not None
    _, store = found
    spec = store.model_copy(update={"bucket": SCRATCH})
    scope = backup_rewrite.Scope(
        {str(cid): str(i) for i, (cid, _, _) in enumerate(consumers)},
        [
            Subject(str(i), str(client), ((IdentityType.email, email),))
            for i, (_, client, email) in enumerate(consumers)
            if email
        ],
    )
    started = time.perf_counter()
    r = backup_rewrite.rewrite_store(
        C.s3(), spec, C.datamap().systems[store.system], scope, batch_id="bench"
    )
    return {**r.to_dict(), "seconds": time.perf_counter() - started}


def run(bench: C.Bench, consumers: list[Any], section: str) -> C.Row:
    """The figure's row; `consumers` are the log figure's batch (the same identities)."""
    from compliance.core.datamap.validate import load_datamap
    from compliance.core.stores.s3 import (
        delete_versions,
        ensure_bucket,
        list_keys,
        list_prefixes,
    )

    name = "backup rewrite throughput (rewrite: true, on S3)"
    found = _store(load_datamap(bench.env.datamap_path))
    if found is None:
        return C.unavailable(section, name, "the data map has no backup store")
    store_name, store = found
    s3 = bench.s3
    ensure_bucket(s3, SCRATCH, versioned=True)
    try:
        days = sorted(p for p in list_prefixes(s3, store.bucket, store.prefix))
        objects = list(list_keys(s3, store.bucket, days[-1])) if days else []
        for o in objects:
            s3.copy_object(
                Bucket=SCRATCH, Key=o["Key"], CopySource={"Bucket": store.bucket, "Key": o["Key"]}
            )
        gz_mb = sum(int(o["Size"]) for o in objects) / C.MB
        calls = [([(c.contact_id, c.client_id, c.email) for c in consumers],)]
        st = bench.stage("backups.rewrite", rewrite_stage, calls, 1)
        r = st.results[0]
    finally:
        versions = []
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=SCRATCH):
            versions += [(v["Key"], v["VersionId"]) for v in page.get("Versions", [])]
            versions += [(v["Key"], v["VersionId"]) for v in page.get("DeleteMarkers", [])]
        if versions:
            delete_versions(s3, SCRATCH, versions)
        s3.delete_bucket(Bucket=SCRATCH)
    return C.info(
        section,
        name,
        gz_mb / st.seconds if st.seconds else None,
        "MB/s",
        peak_mb=st.peak_mb,
        note=(
            f"{store_name}: the newest of {len(days)} snapshot days, {len(objects)} objects, "
            f"{gz_mb:,.1f} MB gzip; {len(consumers)} consumers: {r['objects_rewritten']} objects "
            f"rewritten, {r['rows_removed']:,} rows removed, {r['versions_deleted']} old "
            "versions deleted; one process (compliance.deletion."
            "backup_rewrite.rewrite_store on a scratch copy; the demo map says rewrite: false)"
        ),
    )
