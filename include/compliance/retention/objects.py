"""Expiring objects: log day partitions, backup snapshots and non-current versions (R27, R18).

A store rule expires, under the store's prefix:
- day folders older than the period (log stores: folders dated by the store's `partition`
  pattern; backups: `YYYY-MM-DD/` folders). Every version and delete marker of every object in
  them is deleted: in a versioned bucket a plain DELETE only hides data behind a marker.
- non-current versions that have been non-current for longer than `noncurrent`, and delete
  markers left with nothing behind them.

What is never deleted:
- a version under S3 Object Lock (a retention date still in the future, or a legal hold ON):
  it is reported as `locked` and left for S3 to release;
- data under an active legal hold of the registry (R19) whose scope is `all` or the store. Log
  objects mix clients, so an expired log object is rewritten to keep only the held clients' lines
  (and the pre-rewrite version deleted); a backup snapshot is kept whole until the hold ends,
  because a snapshot is only useful as the consistent whole it was taken as; superseded versions
  and non-current versions are kept too while the hold lasts.

`plan_store` lists exactly what `expire_store` will do (the dry run); the executing task plans
again with the same inputs and executes that, so the two cannot drift. Only keys, counts and
client ids leave this module, never object contents.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from itertools import pairwise
from typing import Any

from botocore.exceptions import ClientError

from compliance.core import checkpoints
from compliance.core.datamap import paths as fpaths
from compliance.core.datamap.model import BackupStore, LogStore
from compliance.core.logfiles import day_prefixes
from compliance.core.outputs import encryption_args
from compliance.core.stores import recordings
from compliance.core.stores.s3 import delete_versions, list_prefixes
from compliance.retention.policy import Rule

log = logging.getLogger(__name__)

FILTERED_META = "cj-retention-filtered"  # user metadata on a version the sweep rewrote
_NO_LOCK = {
    "ObjectLockConfigurationNotFoundError",
    "NoSuchObjectLockConfiguration",
    "InvalidRequest",
    "MethodNotAllowed",
}

Version = tuple[str, str]  # (key, version id)


@dataclass
class StorePlan:
    """What one store rule will do. Lists of (key, version) so execution is exactly this."""

    store: str
    bucket: str
    cutoff_day: str  # folders dated before this day are expired
    partitions: list[str] = field(default_factory=list)  # expired folders acted on
    held_partitions: list[str] = field(default_factory=list)  # kept whole under a hold
    delete: list[Version] = field(default_factory=list)
    filter: list[Version] = field(default_factory=list)  # current log objects to strip
    noncurrent: list[Version] = field(default_factory=list)
    locked: list[Version] = field(default_factory=list)
    held_versions: int = 0
    held_clients: list[str] = field(default_factory=list)  # tenant ids as text
    missing: bool = False  # the bucket does not exist

    def counts(self) -> dict[str, int]:
        return {
            "partitions": len(self.partitions),
            "delete_versions": len(self.delete),
            "filter": len(self.filter),
            "noncurrent": len(self.noncurrent),
            "held_partitions": len(self.held_partitions),
            "held_versions": self.held_versions,
            "locked": len(self.locked),
            "missing_bucket": int(self.missing),
        }


def plan_store(
    s3: Any,
    store_name: str,
    store: LogStore | BackupStore,
    rule: Rule,
    as_of: date,
    now: datetime,
    held_clients: set[str],
) -> StorePlan:
    """List the expired folders and versions of one store (reads only)."""
    cutoff = rule.period.before(as_of)
    plan = StorePlan(
        store_name, store.bucket, cutoff.isoformat(), held_clients=sorted(held_clients)
    )
    if not _bucket_exists(s3, store.bucket):
        plan.missing = True  # nothing to expire; the inventory DAG reports the missing bucket
        return plan
    locking = _lock_enabled(s3, store.bucket)
    handled: set[str] = set()
    for prefix in expired_partitions(s3, store, cutoff):
        items = list(_versions(s3, store.bucket, prefix))
        handled.update(i["Key"] for i in items)
        if held_clients and isinstance(store, BackupStore):
            plan.held_partitions.append(prefix)
            plan.held_versions += len(items)
            continue
        plan.partitions.append(prefix)
        filtered_keys = _filtered_keys(s3, store.bucket, items) if held_clients else set()
        for item in items:
            version = (item["Key"], item["VersionId"])
            if locking and not item["marker"] and _locked(s3, store.bucket, *version, now):
                plan.locked.append(version)
            elif not held_clients:
                plan.delete.append(version)
            elif item["IsLatest"] and not item["marker"]:
                plan.filter.append(version)
            elif item["Key"] in filtered_keys:
                plan.delete.append(version)  # the copy from before our rewrite
            else:
                plan.held_versions += 1
    if rule.noncurrent is not None:
        _plan_noncurrent(s3, store, rule, now, plan, handled, locking)
    return plan


def expired_partitions(s3: Any, store: LogStore | BackupStore, cutoff: date) -> list[str]:
    """Day folders dated before `cutoff`, oldest first."""
    if isinstance(store, LogStore):
        return day_prefixes(s3, store, until=cutoff - timedelta(days=1))
    days = []
    for prefix in list_prefixes(s3, store.bucket, store.prefix):
        name = prefix[len(store.prefix) :].rstrip("/")
        try:
            day = date.fromisoformat(name)
        except ValueError:
            continue
        if day < cutoff:
            days.append((day, prefix))
    return [p for _, p in sorted(days)]


def _plan_noncurrent(
    s3: Any,
    store: LogStore | BackupStore,
    rule: Rule,
    now: datetime,
    plan: StorePlan,
    handled: set[str],
    locking: bool,
) -> None:
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in _versions(s3, store.bucket, store.prefix):
        if item["Key"] not in handled:
            by_key[item["Key"]].append(item)
    assert rule.noncurrent is not None
    limit = datetime.combine(rule.noncurrent.before(now.date()), now.timetz())
    for _key, items in sorted(by_key.items()):
        # newest first; the current version (IsLatest) leads on a tie of seconds
        items.sort(key=lambda i: (i["LastModified"], i["IsLatest"]), reverse=True)
        doomed = []
        for newer, item in pairwise(items):
            if newer["LastModified"] <= limit:  # non-current since `newer` was written
                doomed.append(item)
        if plan.held_clients:
            plan.held_versions += len(doomed)
            continue
        kept = []
        for item in doomed:
            version = (item["Key"], item["VersionId"])
            if locking and not item["marker"] and _locked(s3, store.bucket, *version, now):
                plan.locked.append(version)
                kept.append(item)
            else:
                plan.noncurrent.append(version)
        latest = items[0]
        if latest["marker"] and len(items) - len(doomed) + len(kept) == 1:
            plan.noncurrent.append((latest["Key"], latest["VersionId"]))  # nothing behind it


def expire_store(s3: Any, store: LogStore | BackupStore, plan: StorePlan) -> dict[str, int]:
    """Carry out `plan`; returns what was done (same keys as the plan's counts)."""
    done = {"partitions": len(plan.partitions), "delete_versions": 0, "filter": 0, "noncurrent": 0}
    done["delete_versions"] = delete_versions(s3, plan.bucket, plan.delete)
    checkpoints.reached("retention.after_expired_versions", store=plan.store)
    log.info("store %s: %d expired version(s) deleted", plan.store, done["delete_versions"])
    dropped = emptied = 0
    clients = {str(c) for c in plan.held_clients}
    for i, (key, version) in enumerate(plan.filter, 1):
        if not isinstance(store, LogStore):
            raise ValueError("only log objects are filtered")
        lines_dropped, empty = _filter_object(s3, plan.bucket, key, version, store, clients)
        dropped += lines_dropped
        emptied += int(empty)
        done["filter"] += 1
        if i % 100 == 0 or i == len(plan.filter):
            log.info("store %s: %d/%d held object(s) filtered", plan.store, i, len(plan.filter))
    done["noncurrent"] = delete_versions(s3, plan.bucket, plan.noncurrent)
    log.info("store %s: %d non-current version(s) deleted", plan.store, done["noncurrent"])
    done["lines_dropped"] = dropped
    done["objects_emptied"] = emptied
    return done


# -- helpers ---------------------------------------------------------------------------------


def _versions(s3: Any, bucket: str, prefix: str):
    """Every version and delete marker under `prefix` (marker: True for delete markers)."""
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Versions", []):
            yield {**item, "marker": False}
        for item in page.get("DeleteMarkers", []):
            yield {**item, "marker": True}


def _filtered_keys(s3: Any, bucket: str, items: list[dict[str, Any]]) -> set[str]:
    """Keys whose current version is our rewrite: their older versions are pre-filter copies."""
    keys = set()
    older = {i["Key"] for i in items if not i["IsLatest"]}
    for item in items:
        if item["IsLatest"] and not item["marker"] and item["Key"] in older:
            head = s3.head_object(Bucket=bucket, Key=item["Key"], VersionId=item["VersionId"])
            if FILTERED_META in head.get("Metadata", {}):
                keys.add(item["Key"])
    return keys


def _bucket_exists(s3: Any, bucket: str) -> bool:
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchBucket"}:
            return False
        raise
    return True


def _lock_enabled(s3: Any, bucket: str) -> bool:
    try:
        conf = s3.get_object_lock_configuration(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in _NO_LOCK:
            return False
        raise
    return conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"


def _locked(s3: Any, bucket: str, key: str, version: str, now: datetime) -> bool:
    """Object Lock: a retention date in the future, or a legal hold ON, protects the version.

    HEAD returns both (the `x-amz-object-lock-*` headers) in one call. Without the permissions to
    read them S3 omits the headers; the DELETE is then refused and the step fails loudly, so a
    locked version is never silently counted as deleted.
    """
    head = s3.head_object(Bucket=bucket, Key=key, VersionId=version)
    until = head.get("ObjectLockRetainUntilDate")
    if head.get("ObjectLockMode") and until is not None and until > now:
        return True
    return head.get("ObjectLockLegalHoldStatus") == "ON"


def _filter_object(
    s3: Any, bucket: str, key: str, version: str, store: LogStore, clients: set[str]
) -> tuple[int, bool]:
    """Keep only the lines of held clients; returns (lines dropped, object emptied)."""
    body = s3.get_object(Bucket=bucket, Key=key, VersionId=version)["Body"].read()
    kept: list[bytes] = []
    dropped = 0
    for line in gzip.decompress(body).splitlines(keepends=True):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            tenant = fpaths.first(record, store.tenant_field)  # a path: `ctx.client` (issue 14)
        except (ValueError, AttributeError):
            kept.append(line)  # unreadable: whose it is is unknown, so the hold keeps it
            continue
        if tenant is not None and str(tenant) in clients:
            kept.append(line)
        else:
            dropped += 1
    if not dropped:
        return 0, False
    if not kept:
        delete_versions(s3, bucket, [(key, version)])
        return dropped, True
    data = gzip.compress(b"".join(kept), compresslevel=6)
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=data,
        ContentType="application/gzip",
        Metadata={FILTERED_META: "1"},
        **encryption_args(),  # the project's one SSE policy (outputs.py)
    )
    checkpoints.reached("retention.after_filter_put", key=key)
    delete_versions(s3, bucket, [(key, version)])  # the pre-filter copy holds the others' lines
    return dropped, False


def delete_keys(s3: Any, bucket: str, keys: list[str]) -> int:
    """Delete every version of each key (recordings expiring with their rows); returns keys.

    Unlike a plain DELETE, nothing survives as a non-current version; a version S3 refuses to
    delete (Object Lock) fails the step, so a row never loses its pointer to surviving audio.
    """
    recordings.delete_all_versions(s3, bucket, keys)
    return len(set(keys))
