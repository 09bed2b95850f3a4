"""S3 access: clients, streaming reads and listing, all bounded in memory.

Jobs take a boto3 S3 client as an argument; in Airflow it comes from the `aws_default` connection
(its `endpoint_url` extra points at the local moto server in the demo), in tests from the moto
server fixture. Objects are read as streams so memory does not grow with object size.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

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


class ObjectChanged(RuntimeError):
    """The object changed between its read and its replacement (If-Match failed): a rerun
    reads it again and converges."""


KEPT_ATTRIBUTES = ("ContentType", "ContentEncoding", "CacheControl", "ContentDisposition")
PRECONDITION_CODES = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


def replacement_args(
    s3: Any, bucket: str, key: str, original: dict[str, Any], metadata: dict[str, str]
) -> dict[str, Any]:
    """The PUT arguments that give a rewritten object everything the original had (its
    metadata plus `metadata`, content headers, storage class, tags): erasing a consumer's lines
    or rows must not change anything else about a client's object."""
    extra: dict[str, Any] = {
        "Metadata": {**original.get("Metadata", {}), **metadata},
        "ServerSideEncryption": "AES256",
    }
    for name in KEPT_ATTRIBUTES:
        if original.get(name):
            extra[name] = original[name]
    if original.get("StorageClass"):
        extra["StorageClass"] = original["StorageClass"]
    if original.get("TagCount"):
        tags = s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
        extra["Tagging"] = urlencode({t["Key"]: t["Value"] for t in tags})
    return extra


@contextmanager
def unchanged(bucket: str, key: str, what: str) -> Iterator[None]:
    """Around a conditional (If-Match) write: a failed precondition becomes ObjectChanged."""
    try:
        yield
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code", "") in PRECONDITION_CODES:
            raise ObjectChanged(f"s3://{bucket}/{key} changed while it was {what}") from exc
        raise


def replace_if_unchanged(
    s3: Any,
    bucket: str,
    key: str,
    body: Any,
    original: dict[str, Any],
    metadata: dict[str, str],
    what: str,
) -> str | None:
    """Replace `key` by `body` only if it is still the object read as `original`; its version id."""
    extra = replacement_args(s3, bucket, key, original, metadata)
    with unchanged(bucket, key, what):
        resp = s3.put_object(Bucket=bucket, Key=key, Body=body, IfMatch=original["ETag"], **extra)
    return resp.get("VersionId")
