"""Call recordings: audio objects whose keys are held in a mapped table (store kind `recordings`).

Keys are read from the CRM *before* the rows are erased (the plan stores them), then every version
of each object is deleted: in a versioned bucket a plain DELETE only adds a delete marker and the
audio would survive as a non-current version.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from compliance.datamap.model import RecordingStore, SqlSystem
from compliance.sqlmap import MappedSql

CHUNK = 1000


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
    """Delete every version and delete marker of each key; returns objects that existed."""
    existed = 0
    for key in sorted(set(keys)):
        versions = _versions(s3, bucket, key)
        if versions:
            existed += 1
        for i in range(0, len(versions), 1000):
            s3.delete_objects(
                Bucket=bucket,
                Delete={"Objects": versions[i : i + 1000], "Quiet": True},
            )
    return existed


def remaining(s3: Any, bucket: str, keys: Iterable[str]) -> int:
    """How many of `keys` still have any version (verification: must be 0)."""
    return sum(1 for key in set(keys) if _versions(s3, bucket, key))


def _versions(s3: Any, bucket: str, key: str) -> list[dict[str, str]]:
    found = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=key):
        for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
            if item["Key"] == key:  # Prefix also matches longer keys
                found.append({"Key": key, "VersionId": item["VersionId"]})
    return found
