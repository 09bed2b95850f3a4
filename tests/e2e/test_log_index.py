"""The log_index DAG end to end (issue 19): a real Airflow run (dag.test()) over the seeded demo
world's logs on moto S3, then access's log reading with and without the index returns exactly the
same lines (R10) while reading fewer objects, and a scrub leaves no sidecar of what it erased."""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from typing import Any

from compliance.core.datamap.model import IdentityType, LogStore
from compliance.core.datamap.validate import load_datamap
from compliance.core.logfiles import Targets, collect_shard, day_prefixes
from compliance.core.logfiles.identity_index import LogIndex, sidecar_key
from compliance.core.settings import REPO_ROOT
from compliance.core.stores.s3 import list_keys
from compliance.deletion.log_scrub import scrub_shard

DM = load_datamap(REPO_ROOT / "config" / "datamap.yaml")
LOGS = {name: s for name, s in DM.stores.items() if isinstance(s, LogStore)}


def _index(stack: Any) -> LogIndex:
    return LogIndex.of(stack.s3, stack.bucket, os.environ["COMPLIANCE_HASH_KEY"].encode())


def _some_consumers(stack: Any, n: int) -> dict[str, list[tuple[IdentityType, str, str]]]:
    """(tenant -> identities) of `n` consumers found in the seeded app logs' last day."""
    store = LOGS["app_logs"]
    day = day_prefixes(stack.s3, store)[-1]
    key = next(iter(list_keys(stack.s3, store.bucket, day)))["Key"]
    body = gzip.decompress(stack.s3.get_object(Bucket=store.bucket, Key=key)["Body"].read())
    out: dict[str, list[tuple[IdentityType, str, str]]] = {}
    seen = 0
    for raw in body.splitlines():
        line = json.loads(raw)
        if line.get("email") and seen < n:
            out.setdefault(str(line["client_id"]), []).append(
                (IdentityType.email, line["email"], f"r{seen}")
            )
            seen += 1
    assert seen == n
    return out


def _read(stack: Any, targets: Targets, index: LogIndex | None) -> tuple[Counter, int]:
    lines: Counter = Counter()
    read = 0
    for store in LOGS.values():
        for day in day_prefixes(stack.s3, store):
            listed = list(list_keys(stack.s3, store.bucket, day))
            objects = listed if index is None else index.objects_to_read(store, listed, targets)
            read += len(objects)
            for ref, line in collect_shard(
                stack.s3, store, day, targets, since=None, until=None, objects=objects
            ):
                lines[(ref, json.dumps(line, sort_keys=True))] += 1
    return lines, read


def test_log_index_dag_then_access_reads_fewer_objects_for_the_same_lines(stack: Any) -> None:
    run = stack.run_dag("log_index")
    assert run.state == "success"
    index = _index(stack)
    n_objects = sum(
        1
        for store in LOGS.values()
        for day in day_prefixes(stack.s3, store)
        for _ in list_keys(stack.s3, store.bucket, day)
    )
    sidecars = [o for o in list_keys(stack.s3, stack.bucket, "log-index/")]
    assert len(sidecars) == n_objects > 1  # every object got one

    targets = Targets(_some_consumers(stack, 1))
    plain, read_all = _read(stack, targets, None)
    indexed, read_some = _read(stack, targets, index)
    assert plain and indexed == plain  # exactly the same lines, each as often
    assert read_all == n_objects and read_some < read_all

    # a scrub through the index removes the sidecars of what it rewrote; the next run rebuilds
    store = LOGS["app_logs"]
    day = day_prefixes(stack.s3, store)[-1]
    result = scrub_shard(stack.s3, store, day, targets, batch_id="e2e", index=index)
    assert result.objects_rewritten >= 1 and result.residue == 0
    for key in result.rewritten_keys:
        assert "Contents" not in stack.s3.list_objects_v2(
            Bucket=stack.bucket, Prefix=sidecar_key(store.bucket, key)
        )
    run = stack.run_dag("log_index")
    assert run.state == "success"
    assert len(list(list_keys(stack.s3, stack.bucket, "log-index/"))) == n_objects
    after, _ = _read(stack, targets, index)
    assert sum(after.values()) < sum(plain.values())
