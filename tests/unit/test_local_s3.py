"""The local S3 server behaves as S3 where the jobs and the benchmarks depend on it (dev stack,
`compliance_dev.local_s3`): deleted versions are freed, version listings copy no bytes, and a
copy of a multipart object stays readable (moto 5.2 copied the source's composite checksum as
if it were the copy's own, and boto3 refused the copy's bytes: the large benchmark's backup
rewrite failed on it)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")


def _deleted_files(pid: int) -> int:
    """Open file descriptors of `pid` on deleted files: moto's object bytes above 5 MB."""
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if os.readlink(fd).endswith("(deleted)"))


def test_deleted_versions_are_freed(tmp_path):
    port_file = tmp_path / "s3.url"
    proc = subprocess.Popen(
        [sys.executable, "-m", "compliance_dev", "local-s3", "--port-file", str(port_file)]
    )
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text()):
            assert time.monotonic() < deadline and proc.poll() is None, "local S3 did not start"
            time.sleep(0.1)
        s3 = boto3.client(
            "s3",
            endpoint_url=port_file.read_text(),
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket="release-test")
        s3.put_bucket_versioning(
            Bucket="release-test", VersioningConfiguration={"Status": "Enabled"}
        )
        body = os.urandom(6 * 1024 * 1024)  # above moto's 5 MB buffer: a temporary file each
        for _ in range(5):
            for i in range(4):
                s3.put_object(Bucket="release-test", Key=f"k{i}", Body=body)
            for v in s3.list_object_versions(Bucket="release-test")["Versions"]:
                if not v["IsLatest"]:
                    s3.delete_object(Bucket="release-test", Key=v["Key"], VersionId=v["VersionId"])
        assert _deleted_files(proc.pid) < 10  # about the 4 current versions, not all 20
        assert s3.get_object(Bucket="release-test", Key="k0")["Body"].read() == body
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_version_listings_do_not_copy_object_bytes(s3, monkeypatch):
    """ListObjectVersions renders the same metadata without reading any object's bytes."""
    import gc
    import hashlib

    from moto.s3.models import FakeKey

    s3.create_bucket(Bucket="listing-test")
    s3.put_bucket_versioning(Bucket="listing-test", VersioningConfiguration={"Status": "Enabled"})
    big = os.urandom(6 * 1024 * 1024)  # a temporary file in moto
    bodies = {"a/1": [b"old", b"new"], "a/2": [big], "b/1": [b"x"]}
    for key, versions in bodies.items():
        for body in versions:
            s3.put_object(Bucket="listing-test", Key=key, Body=body)
    reads: list[int] = []
    getstate = FakeKey.__getstate__
    monkeypatch.setattr(FakeKey, "__getstate__", lambda self: reads.append(1) or getstate(self))
    copied: list[str] = []
    copy = FakeKey.__deepcopy__
    monkeypatch.setattr(
        FakeKey, "__deepcopy__", lambda self, memo: copied.append(self.name) or copy(self, memo)
    )

    for _ in range(20):
        listed = s3.list_object_versions(Bucket="listing-test", Prefix="a/")["Versions"]
    gc.collect()  # the listing's copies are finalised

    assert reads == []
    assert set(copied) == {"a/1", "a/2"}  # b/1 is outside the prefix: never even copied
    assert sorted((v["Key"], v["Size"], v["ETag"], v["IsLatest"]) for v in listed) == sorted(
        (k, len(b), f'"{hashlib.md5(b).hexdigest()}"', i == len(bodies[k]) - 1)
        for k in ("a/1", "a/2")
        for i, b in enumerate(bodies[k])
    )
    for v in listed:  # every version still readable after its copies were finalised
        got = s3.get_object(Bucket="listing-test", Key=v["Key"], VersionId=v["VersionId"])
        assert got["Body"].read() in bodies[v["Key"]]


def test_a_copy_of_a_multipart_object_reads_back(s3):
    mb = 1024 * 1024
    s3.create_bucket(Bucket="cj-local-s3-copy")
    data = os.urandom(11 * mb)
    parts = TransferConfig(multipart_threshold=5 * mb, multipart_chunksize=5 * mb)
    s3.upload_fileobj(io.BytesIO(data), "cj-local-s3-copy", "src", Config=parts)
    assert s3.head_object(Bucket="cj-local-s3-copy", Key="src")["ETag"].endswith('-3"')
    source = {"Bucket": "cj-local-s3-copy", "Key": "src"}
    s3.copy_object(Bucket="cj-local-s3-copy", Key="dst", CopySource=source)
    assert s3.get_object(Bucket="cj-local-s3-copy", Key="dst")["Body"].read() == data
