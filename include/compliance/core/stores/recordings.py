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

from compliance.core.datamap.model import RecordingStore, SqlSystem
from compliance.core.sqlmap import MappedSql, key_text, typed_values
from compliance.core.stores.s3 import delete_versions

CHUNK = 1000
THREADS = 8  # boto3 clients are thread-safe
PAGE_PER_KEYS = 8  # a folder page must replace this many one-key listings (they run THREADS-wide)


def recording_keys(
    engine: Engine, system: SqlSystem, store: RecordingStore, consumer_ids: Iterable[object]
) -> dict[str, list[str]]:
    """consumer id -> object keys of their recordings."""
    owned = MappedSql(engine, system).owned(store.table)
    # consumer keys travel as text; compared in the key column's own type (any-CRM keys)
    ids = typed_values(owned.consumer_key, sorted({key_text(c) for c in consumer_ids}))
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
                    out.setdefault(key_text(consumer), []).append(str(key))
    return out


def delete_all_versions(s3: Any, bucket: str, keys: Iterable[str]) -> int:
    """Delete every version and delete marker of each key; returns objects that existed.

    A version S3 refuses to delete (Object Lock) raises: the caller must not drop the row that
    points at surviving audio. Deletes go a thousand at a time.
    """
    found = _versions_of(s3, bucket, keys)
    delete_versions(s3, bucket, [(v["Key"], v["VersionId"]) for vs in found.values() for v in vs])
    return sum(1 for vs in found.values() if vs)


def remaining(s3: Any, bucket: str, keys: Iterable[str]) -> int:
    """How many of `keys` still have any version (verification: must be 0)."""
    return sum(1 for vs in _versions_of(s3, bucket, keys).values() if vs)


def _versions_of(
    s3: Any, bucket: str, keys: Iterable[str], page_size: int = 1000
) -> dict[str, list[dict[str, str]]]:
    """Every version of each key, listed by folder where that is cheaper than key by key.

    One listing per key costs one request per key; a folder listing costs one request per
    thousand versions in the folder, whatever was asked, and parsing a full page costs the
    client more than a one-key answer. So a folder is listed only for at least PAGE_PER_KEYS
    wanted keys, on a budget of one page per PAGE_PER_KEYS of them; a folder too large for its
    budget stops early and its unseen keys fall back to one listing each. Small batches and
    huge stores never list a folder they cannot afford; big batches cost pages, not keys.
    """
    wanted = sorted(set(keys))
    folders: dict[str, list[str]] = {}
    for key in wanted:
        folders.setdefault(key.rpartition("/")[0] + "/" if "/" in key else "", []).append(key)
    found: dict[str, list[dict[str, str]]] = {}
    with ThreadPoolExecutor(max_workers=THREADS) as pool:  # latency-bound: overlap the listings
        left: list[str] = []
        for seen, rest in pool.map(
            lambda f: _list_folder(s3, bucket, f[0], f[1], page_size), folders.items()
        ):
            found.update(seen)
            left.extend(rest)
        found.update(zip(left, pool.map(lambda k: _versions(s3, bucket, k), left), strict=True))
    return {k: found[k] for k in wanted}


def _list_folder(
    s3: Any, bucket: str, folder: str, members: list[str], page_size: int
) -> tuple[dict[str, list[dict[str, str]]], list[str]]:
    """(versions of the members the listing covered, members it did not reach)."""
    budget = len(members) // PAGE_PER_KEYS
    if budget == 0:
        return {}, members
    seen: dict[str, list[dict[str, str]]] = {k: [] for k in members}
    args: dict[str, Any] = {"Bucket": bucket, "Prefix": folder, "MaxKeys": page_size}
    for _ in range(budget):
        page = s3.list_object_versions(**args)
        for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
            if item["Key"] in seen:
                seen[item["Key"]].append({"Key": item["Key"], "VersionId": item["VersionId"]})
        if not page.get("IsTruncated"):
            return seen, []
        args.update(KeyMarker=page["NextKeyMarker"], VersionIdMarker=page["NextVersionIdMarker"])
    # Keys before the marker are complete; the marker's own key may continue on the next page.
    marker = args["KeyMarker"]
    return {k: v for k, v in seen.items() if k < marker}, [k for k in members if k >= marker]


def _versions(s3: Any, bucket: str, key: str) -> list[dict[str, str]]:
    found = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=key):
        for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
            if item["Key"] == key:  # Prefix also matches longer keys
                found.append({"Key": key, "VersionId": item["VersionId"]})
    return found
