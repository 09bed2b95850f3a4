"""Call recordings: audio objects whose keys are held in a mapped table (store kind `recordings`).

Keys are read from the CRM *before* the rows are erased (the plan stores them), then every version
of each object is deleted: in a versioned bucket a plain DELETE only adds a delete marker and the
audio would survive as a non-current version.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from compliance.datamap.model import RecordingStore, SqlSystem
from compliance.sqlmap import MappedSql
from compliance.stores.s3 import delete_versions

CHUNK = 1000
THREADS = 8  # boto3 clients are thread-safe


def recording_keys(
    engine: Engine, system: SqlSystem, store: RecordingStore, consumer_ids: Iterable[int | str]
) -> dict[str, list[str]]:
    """consumer id -> object keys of their recordings."""
    ids = sorted(set(consumer_ids), key=str)
    owned = MappedSql(engine, system).owned(store.table)
    out: dict[str, list[str]] = {}
    with engine.connect() as conn:
        for i in range(0, len(ids), CHUNK):
            stmt = (
                sa.select(owned.consumer_key, owned.table.c[store.key_column])
                .select_from(owned.from_clause)
                .where(owned.consumer_key.in_(ids[i : i + CHUNK]))
            )
            for consumer, key in conn.execute(stmt):
                if key:
                    out.setdefault(str(consumer), []).append(str(key))
    return out


def delete_all_versions(s3: Any, bucket: str, keys: Iterable[str]) -> int:
    """Delete every version and delete marker of each key; returns objects that existed.

    A version S3 refuses to delete (Object Lock) raises: the caller must not drop the row that
    points at surviving audio. Listings overlap (one per key); deletes go a thousand at a time.
    """
    found = _versions_of(s3, bucket, keys)
    delete_versions(s3, bucket, [(v["Key"], v["VersionId"]) for vs in found.values() for v in vs])
    return sum(1 for vs in found.values() if vs)


def remaining(s3: Any, bucket: str, keys: Iterable[str]) -> int:
    """How many of `keys` still have any version (verification: must be 0)."""
    return sum(1 for vs in _versions_of(s3, bucket, keys).values() if vs)


def _versions_of(s3: Any, bucket: str, keys: Iterable[str]) -> dict[str, list[dict[str, str]]]:
    unique = sorted(set(keys))
    with ThreadPoolExecutor(max_workers=THREADS) as pool:  # latency-bound: overlap the listings
        return dict(zip(unique, pool.map(lambda k: _versions(s3, bucket, k), unique), strict=True))


def _versions(s3: Any, bucket: str, key: str) -> list[dict[str, str]]:
    found = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=key):
        for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
            if item["Key"] == key:  # Prefix also matches longer keys
                found.append({"Key": key, "VersionId": item["VersionId"]})
    return found
