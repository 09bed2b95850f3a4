"""S3 access: clients, streaming reads and listing, all bounded in memory.

Jobs take a boto3 S3 client as an argument; in Airflow it comes from the `aws_default` connection
(its `endpoint_url` extra points at the local moto server in the demo), in tests from the moto
server fixture. Objects are read as streams so memory does not grow with object size.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config

# SigV4 explicitly: botocore otherwise presigns with SigV2, whose links have no 7-day cap (R12).
RETRIES = Config(
    retries={"max_attempts": 8, "mode": "adaptive"},
    connect_timeout=10,
    read_timeout=60,
    signature_version="s3v4",
)


def s3_client(
    endpoint_url: str | None = None,
    region: str = "us-east-1",
    access_key: str | None = None,
    secret_key: str | None = None,
) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=RETRIES,
    )


def list_keys(s3: Any, bucket: str, prefix: str = "") -> Iterator[dict[str, Any]]:
    """Every current object under `prefix` (Key, Size, ETag, LastModified)."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def delete_versions(s3: Any, bucket: str, versions: list[tuple[str, str]]) -> int:
    """Delete (key, version id) pairs a thousand per request; returns how many were asked for.

    Any version S3 refuses to delete (Object Lock, permissions) raises, naming the code: the
    caller's step fails and a rerun converges once the cause is fixed.
    """
    for i in range(0, len(versions), 1000):
        chunk = versions[i : i + 1000]
        resp = s3.delete_objects(
            Bucket=bucket,
            Delete={"Objects": [{"Key": k, "VersionId": v} for k, v in chunk], "Quiet": True},
        )
        errors = resp.get("Errors", [])
        if errors:
            first = errors[0]
            raise RuntimeError(
                f"could not delete {len(errors)} version(s) in s3://{bucket}, e.g. "
                f"{first.get('Key')}: {first.get('Code')} (a rerun converges once fixed)"
            )
    return len(versions)


def list_prefixes(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    """Immediate "folders" under `prefix`."""
    out: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix, Delimiter="/"
    ):
        out.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
    return out


def open_gzip_lines(s3: Any, bucket: str, key: str) -> Iterator[bytes]:
    """Stream an object's decompressed lines (with their line endings) without loading it."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    with gzip.GzipFile(fileobj=body, mode="rb") as gz:
        yield from io.BufferedReader(gz, buffer_size=1 << 20)


def put_gzip(s3: Any, bucket: str, key: str, data: bytes, **extra: Any) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(data, compresslevel=6), **extra)


def ensure_bucket(s3: Any, bucket: str, versioned: bool = False) -> None:
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
    if versioned:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
