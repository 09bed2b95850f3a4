"""The benchmark's log index set-up (issue 19): every deletion/access batch starts with the
sidecars production's hourly `log_index` job leaves, copied server-side into its fresh workspace.

The figures are only honest if those copies are *current* for the log objects the batch reads:
the objects are restored from the pristine bucket by server-side copy, and the index accepts a
sidecar only when the object's ETag and size match. These tests check that chain on real moto S3
(restore by copy keeps the ETag, the index accepts the copied sidecars and rules objects out)
and that the seeding refuses loudly when a sidecar is stale instead of timing a full pass.
"""

from __future__ import annotations

import gzip
import json
from types import SimpleNamespace
from typing import Any

import pytest

from benchmarks.sections import _common as C
from benchmarks.sections import log_index as section
from compliance.core.datamap.model import IdentityType
from compliance.core.datamap.validate import load_datamap
from compliance.core.logfiles import Targets
from compliance.core.logfiles.identity_index import LogIndex, index_day
from compliance.core.settings import REPO_ROOT
from compliance.core.stores.s3 import list_keys

DM = load_datamap(REPO_ROOT / "config" / "datamap.yaml")
APP = DM.stores["app_logs"]
DAY = f"{APP.prefix}dt=2026-11-02/"


def _object(i: int) -> bytes:
    lines = [
        json.dumps({"ts": "2026-11-02T10:00:00Z", "client_id": 7, "email": f"u{i}-{j}@x.example"})
        for j in range(20)
    ]
    return gzip.compress("\n".join(lines).encode() + b"\n")


class FakeBench:
    """What `log_index` uses of `C.Bench`: the S3 client, the log stores, buckets, restores."""

    def __init__(self, s3: Any, run_id: str) -> None:
        self.s3 = s3
        self.env = SimpleNamespace(run_id=run_id)
        self.restores = 0

    def log_stores(self) -> dict[str, Any]:
        return {"app_logs": APP}

    def workspace(self, tag: str) -> str:
        name = f"cjb-ws-{tag}"
        self.s3.create_bucket(Bucket=name)
        return name

    def restore_logs(self) -> float:
        """As `C.Bench.restore_logs`: every current object replaced by a server-side copy."""
        self.restores += 1
        for o in list_keys(self.s3, C.PRISTINE, f"{APP.bucket}/"):
            key = o["Key"][len(APP.bucket) + 1 :]
            self.s3.copy_object(
                Bucket=APP.bucket, Key=key, CopySource={"Bucket": C.PRISTINE, "Key": o["Key"]}
            )
        return 0.0


@pytest.fixture
def bench(s3: Any) -> FakeBench:
    s3.create_bucket(Bucket=APP.bucket)
    s3.create_bucket(Bucket=C.PRISTINE)
    for i in range(6):
        key = f"{DAY}part-{i}.json.gz"
        s3.put_object(Bucket=APP.bucket, Key=key, Body=_object(i))
        s3.copy_object(
            Bucket=C.PRISTINE,
            Key=f"{APP.bucket}/{key}",
            CopySource={"Bucket": APP.bucket, "Key": key},
        )
    fake = FakeBench(s3, run_id="unit")
    built = fake.workspace(section.INDEX_TAG)
    result = index_day(LogIndex.of(s3, built, C.HASH_KEY), s3, APP, DAY)
    assert result["built"] == 6
    section._BUILT[fake.env.run_id] = {"bucket": built, "build": None}  # as ensure_index leaves
    yield fake
    section._BUILT.pop(fake.env.run_id, None)


def test_seeded_sidecars_are_current_after_a_restore_and_rule_objects_out(
    bench: FakeBench, s3: Any
) -> None:
    bench.restore_logs()  # what each batch's set-up does before seeding: new objects, same bytes
    ws = bench.workspace("del1")
    seeded = section.seed_index(bench, ws)
    assert seeded["sidecars"] == 6
    assert seeded["checked"] >= 1
    index = LogIndex.of(s3, ws, C.HASH_KEY)
    listed = list(list_keys(s3, APP.bucket, DAY))
    assert all(index.read(APP, o) is not None for o in listed)  # the stale check accepts them
    one = Targets({"7": [(IdentityType.email, "U3-7@X.example", "r1")]})
    read = index.objects_to_read(APP, listed, one)
    assert f"{DAY}part-3.json.gz" in {o["Key"] for o in read}
    assert len(read) < len(listed)  # the batch reads fewer objects than a full pass


def test_seeding_refuses_a_stale_sidecar(bench: FakeBench, s3: Any) -> None:
    changed = f"{DAY}part-0.json.gz"
    s3.put_object(Bucket=APP.bucket, Key=changed, Body=_object(99))  # rewritten, not restored
    with pytest.raises(RuntimeError, match="stale or missing"):
        section.seed_index(bench, bench.workspace("acc1"))


def test_logs_are_restored_only_when_they_differ_from_the_pristine_copy(
    bench: FakeBench, s3: Any
) -> None:
    assert section.ensure_logs_as_seeded(bench) == 0.0
    assert bench.restores == 0
    s3.put_object(Bucket=APP.bucket, Key=f"{DAY}part-1.json.gz", Body=_object(98))
    section.ensure_logs_as_seeded(bench)
    assert bench.restores == 1
    ws = bench.workspace("acc2")
    assert section.seed_index(bench, ws)["sidecars"] == 6  # current again after the restore


def test_the_index_is_built_once_per_run(bench: FakeBench) -> None:
    bucket = section._BUILT[bench.env.run_id]["bucket"]
    assert section.ensure_index(bench) == bucket  # cached: no second build, no stage needed
