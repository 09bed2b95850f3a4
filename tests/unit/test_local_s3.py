"""The local S3 server behaves as S3 where the jobs depend on it (dev stack, `compliance_dev`).

A copy of a multipart object must stay readable: moto 5.2 copied the source's composite
checksum as if it were the copy's own, and boto3 refused the copy's bytes (the large
benchmark's backup rewrite failed on it).
"""

from __future__ import annotations

import io
import os

from boto3.s3.transfer import TransferConfig

MB = 1024 * 1024


def test_a_copy_of_a_multipart_object_reads_back(s3):
    s3.create_bucket(Bucket="cj-local-s3-copy")
    data = os.urandom(11 * MB)
    parts = TransferConfig(multipart_threshold=5 * MB, multipart_chunksize=5 * MB)
    s3.upload_fileobj(io.BytesIO(data), "cj-local-s3-copy", "src", Config=parts)
    assert s3.head_object(Bucket="cj-local-s3-copy", Key="src")["ETag"].endswith('-3"')
    s3.copy_object(
        Bucket="cj-local-s3-copy",
        Key="dst",
        CopySource={"Bucket": "cj-local-s3-copy", "Key": "src"},
    )
    assert s3.get_object(Bucket="cj-local-s3-copy", Key="dst")["Body"].read() == data
