"""The local S3 server must not keep deleted object versions alive (it runs the benchmarks)."""

from __future__ import annotations

import gc
import os

import boto3
from moto.s3.models import FakeKey

from compliance import local_s3


def _live_keys() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, FakeKey) and not o.disposed)


def test_deleted_versions_are_released():
    server, url = local_s3.start()
    try:
        s3 = boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket="release-test")
        s3.put_bucket_versioning(
            Bucket="release-test", VersioningConfiguration={"Status": "Enabled"}
        )
        body = os.urandom(6 * 1024 * 1024)  # above moto's 5 MB: a temporary file each
        local_s3.release_deleted_objects()
        before = _live_keys()
        for _ in range(4):
            s3.put_object(Bucket="release-test", Key="k", Body=body)
        for v in s3.list_object_versions(Bucket="release-test")["Versions"]:
            if not v["IsLatest"]:
                s3.delete_object(Bucket="release-test", Key="k", VersionId=v["VersionId"])
        assert _live_keys() - before > 1  # moto's instance lists hold the deleted versions
        local_s3.release_deleted_objects()
        assert _live_keys() - before == 1  # only the current version
        assert s3.get_object(Bucket="release-test", Key="k")["Body"].read() == body
    finally:
        server.stop()
