"""Rewriting backup snapshots without the batch's consumers (`rewrite: true`, R16.1, R18).

Tombstones (`backups.restore`) make a restore re-apply a deletion; a store whose data map says
`rewrite: true` is also cleaned now. Per snapshot day (`<prefix>YYYY-MM-DD/<table>.csv.gz`):

1. the records the scope owns are found (`snapshot_owners`): the batch's consumer keys plus
   whoever the request's own identities resolve to *in the snapshot*, and their rows in every
   table through the relation joins, named by byte offset. Every mapped table loses the
   consumers' rows, whatever its live strategy (`mask` and `keep` tables too): the live
   database keeps what an exception needs, and a snapshot missing a parent row but keeping its
   children could not be restored (foreign keys);
2. the day's objects are streamed from a scratch directory, never held whole;
3. the object is rewritten from its original bytes: the header and every other record are copied
   byte for byte (records split on newlines outside quotes, so a quoted newline stays inside its
   record), the removed rows are counted per request in the state DB (`state.record_lines`)
   *before* the new version is written (a crash after it still leaves the count), the PUT is
   conditional on the ETag that was read and carries Metadata `cj-rewritten` (batch) and
   `cj-replaced-versions` (how many versions it supersedes, for the receipt), and then every
   non-current version of the key is deleted (the bucket is versioned: an old version holds the
   rows). `checkpoints.reached` follows each durable write.

A consumer a legal hold keeps rows of (R19) is left whole in the snapshots until the hold ends:
the live database keeps the held rows and their parent keys, a snapshot cannot keep half of a
consumer without editing rows, and its tombstones still apply on restore. The request's other
consumers (no held rows) are removed; its identities are not resolved again in the snapshot
(they would find the held consumer). A rerun finds nothing to
remove and writes nothing; it only finishes a version clean-up a crash interrupted. The dry run
(`count_store`) reads and counts, and writes nothing.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from botocore.exceptions import ClientError

from compliance.core import checkpoints
from compliance.core.compression import COMPRESS_LEVEL, GZIP
from compliance.core.csv_records import copy_without
from compliance.core.datamap.model import BackupStore, IdentityType, SqlSystem
from compliance.core.stores.s3 import (
    ObjectChanged,
    delete_versions,
    list_keys,
    list_prefixes,
    replace_if_unchanged,
)
from compliance.core.stores.sql import scratch_engine
from compliance.deletion.snapshot_owners import Scope, doomed_rows, load_day
from compliance.requests.resolve import Subject
from compliance.requests.schema import cj_batch_lines

log = logging.getLogger(__name__)

REWRITTEN_META = "cj-rewritten"  # the batch whose rewrite wrote this version
REPLACED_META = "cj-replaced-versions"  # versions the rewrite superseded (deleted after it)
SUFFIX = ".csv.gz"
CHUNK = 1000


@dataclass
class StoreResult:
    days: int = 0
    objects: int = 0  # snapshot objects rewritten (or, in a dry run, that would be)
    rows: int = 0  # rows removed (or that would be)
    versions_deleted: int = 0
    per_ref: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def to_dict(self) -> dict[str, Any]:
        return {
            "days": self.days,
            "objects_rewritten": self.objects,
            "rows_removed": self.rows,
            "versions_deleted": self.versions_deleted,
        }


def rewrite_store(
    s3: Any,
    store: BackupStore,
    system: SqlSystem,
    scope: Scope,
    *,
    batch_id: str,
    before_replace: Callable[[str, dict[str, int]], None] | None = None,
) -> StoreResult:
    """Remove the scope's rows from every snapshot day of `store` (module docstring)."""
    return _run(s3, store, system, scope, batch_id=batch_id, before_replace=before_replace)


def count_store(s3: Any, store: BackupStore, system: SqlSystem, scope: Scope) -> StoreResult:
    """The dry run: what `rewrite_store` would remove. Reads only."""
    return _run(s3, store, system, scope, batch_id=None, before_replace=None)


def _run(s3, store, system, scope, *, batch_id, before_replace) -> StoreResult:
    result = StoreResult()
    if not scope:
        return result
    days = sorted(
        p[len(store.prefix) :].rstrip("/") for p in list_prefixes(s3, store.bucket, store.prefix)
    )
    for day in days:
        result.days += 1
        _day(s3, store, system, scope, f"{store.prefix}{day}/", result, batch_id, before_replace)
        if batch_id is not None:
            result.versions_deleted += clean_versions(s3, store.bucket, f"{store.prefix}{day}/")
    return result


@dataclass
class _Object:
    key: str
    table: str
    path: Path  # the compressed bytes read, in the day's scratch directory
    response: dict[str, Any]


def _day(s3, store, system, scope, prefix, result, batch_id, before_replace) -> None:
    """One snapshot day. Its objects are read once into a scratch directory and streamed from
    there (loaded, then filtered): a day's snapshot can be gigabytes, and neither its
    compressed nor its decompressed bytes are ever held in memory whole."""
    with tempfile.TemporaryDirectory(prefix="cj-backup-") as tmp:
        objects: dict[str, _Object] = {}
        for entry in list_keys(s3, store.bucket, prefix):
            key = entry["Key"]
            table = key[len(prefix) : -len(SUFFIX)] if key.endswith(SUFFIX) else ""
            if table in system.tables and "/" not in table:
                path = Path(tmp) / f"{len(objects)}.csv.gz"
                objects[table] = _Object(key, table, path, _download(s3, store.bucket, key, path))
        if not objects:
            return
        engine = scratch_engine(Path(tmp) / "snapshot.db")
        try:
            load_day(engine, {t: o.path for t, o in objects.items()}, system, scope)
            doomed = doomed_rows(engine, system, scope, set(objects))
        finally:
            engine.dispose()
        for table, rows in sorted(doomed.items()):
            if rows:
                _rewrite(s3, store, objects[table], rows, result, batch_id, before_replace)


def _rewrite(
    s3: Any,
    store: BackupStore,
    obj: _Object,
    rows: dict[int, str],
    result: StoreResult,
    batch_id: str | None,
    before_replace: Callable[[str, dict[str, int]], None] | None,
) -> None:
    """Replace one object by its copy without `rows` (record offset -> ref), then delete the
    versions it superseded; a dry run (`batch_id` None) only counts."""
    per_ref: dict[str, int] = defaultdict(int)
    for ref in rows.values():
        per_ref[ref] += 1
    result.objects += 1
    result.rows += len(rows)
    for ref, n in per_ref.items():
        result.per_ref[ref] += n
    if batch_id is None:
        return  # a dry run counts, and writes nothing
    filtered = obj.path.with_suffix(".new")
    _filtered(obj.path, set(rows), filtered)
    if before_replace is not None:
        before_replace(obj.key, dict(per_ref))
    # An unversioned (or suspended) bucket overwrites the "null" version in place: only
    # versions with an id of their own remain to be deleted after the PUT.
    replaced = sum(
        1 for v in _versions_of(s3, store.bucket, obj.key) if v["VersionId"] not in (None, "null")
    )
    with filtered.open("rb") as body:
        new_version = _put(s3, store.bucket, obj, body, batch_id, replaced) or "null"
    filtered.unlink()
    checkpoints.reached("backups.after_put", key=obj.key)
    old = [
        (obj.key, v["VersionId"])
        for v in _versions_of(s3, store.bucket, obj.key)
        if v["VersionId"] != new_version
    ]
    result.versions_deleted += delete_versions(s3, store.bucket, old) if old else 0
    checkpoints.reached("backups.after_object", key=obj.key)
    log.info(
        "rewrote s3://%s/%s: %d rows removed, %d old versions deleted",
        store.bucket, obj.key, len(rows), len(old),
    )  # fmt: skip


def _download(s3: Any, bucket: str, key: str, path: Path) -> dict[str, Any]:
    """GET `key` into `path`; the response without its body (the ETag the PUT is conditional
    on, and the attributes the rewritten object keeps)."""
    resp = s3.get_object(Bucket=bucket, Key=key)
    with path.open("wb") as out:
        shutil.copyfileobj(resp.pop("Body"), out, 1 << 20)
    return resp


def _filtered(source: Path, drop: set[int], target: Path) -> None:
    """`source` without the records at the offsets in `drop` (`csv_records.offsets`), into
    `target`: every other byte as it was, recompressed as the log rewrite does."""
    with GZIP.GzipFile(target, mode="wb", compresslevel=COMPRESS_LEVEL, mtime=0) as gz:
        dropped = copy_without(source, drop, gz)
    if dropped != len(drop):
        raise RuntimeError(f"{source.name}: {dropped} of {len(drop)} records dropped")


# -- S3 ------------------------------------------------------------------------------------------


def _versions_of(s3: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    out = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=key):
        out += [v for v in page.get("Versions", []) if v["Key"] == key]
        out += [v for v in page.get("DeleteMarkers", []) if v["Key"] == key]
    return out


def _put(s3: Any, bucket: str, obj: _Object, body: Any, batch_id: str, replaced: int) -> Any:
    meta = {REWRITTEN_META: batch_id, REPLACED_META: str(replaced)}
    return replace_if_unchanged(s3, bucket, obj.key, body, obj.response, meta, "rewritten")


def clean_versions(s3: Any, bucket: str, prefix: str) -> int:
    """Delete the non-current versions of keys whose current version a rewrite wrote: finishes
    a rewrite that crashed between its PUT and its clean-up. Returns how many were deleted."""
    current: dict[str, str] = {}
    old: dict[str, list[str]] = defaultdict(list)
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for v in page.get("Versions", []):
            if v["IsLatest"]:
                current[v["Key"]] = v["VersionId"]
            else:
                old[v["Key"]].append(v["VersionId"])
    doomed: list[tuple[str, str]] = []
    for key, versions in sorted(old.items()):
        if key in current:
            head = s3.head_object(Bucket=bucket, Key=key, VersionId=current[key])
            if REWRITTEN_META in head.get("Metadata", {}):
                doomed += [(key, v) for v in versions]
    if doomed:
        delete_versions(s3, bucket, doomed)
        checkpoints.reached("backups.versions_cleaned", prefix=prefix)
    return len(doomed)


def replaced_versions(s3: Any, bucket: str, key: str, batch_id: str) -> int:
    """How many versions `batch_id`'s rewrite of `key` superseded (0 if another wrote it)."""
    try:
        meta = s3.head_object(Bucket=bucket, Key=key).get("Metadata", {})
    except ClientError:
        return 0
    if meta.get(REWRITTEN_META) != batch_id:
        return 0
    try:
        return int(meta.get(REPLACED_META, "0"))
    except ValueError:
        return 0


def scope_for(targets: Any, system_name: str) -> Scope:
    """The batch's consumers of `system_name` and their requests' given identities, leaving out
    the consumers a legal hold keeps rows of (and, for their requests, the identities, which
    would find them again) (module docstring, R19)."""
    consumers: dict[str, str] = {}
    subjects: list[Subject] = []
    held = set((targets.held or {}).get(system_name, {}))
    for ref in targets.active_refs():
        for c in targets.consumers.get(system_name, {}).get(ref, []):
            if str(c) not in held:
                consumers.setdefault(str(c), ref)
        if ref in targets.partial:
            continue  # resolving its identities again would find the held consumer
        given = tuple(
            (IdentityType(k), v) for k, vs in targets.given.get(ref, {}).items() for v in vs
        )
        if given:
            subjects.append(Subject(ref, str(targets.requests[ref]["client_id"]), given))
    return Scope(consumers, subjects)


__all__ = [
    "ObjectChanged",
    "Scope",
    "StoreResult",
    "add_to_receipts",
    "clean_versions",
    "count_store",
    "replaced_versions",
    "rewrite_store",
    "scope_for",
]


# -- the receipt ---------------------------------------------------------------------------------


def add_to_receipts(ctx: Any, batch_id: str, receipts: dict[str, dict[str, Any]]) -> None:
    """Say in each receipt what the rewrite of each `rewrite: true` store did for that request:
    snapshot objects rewritten (those that held its rows), rows removed, old versions deleted.

    Built from what outlives a crash: the rows counted per object and request before each
    replacement (`cj_batch_lines`), and the count of superseded versions that the rewritten
    object carries in its metadata. The rows are the receipt's `counts[<store>]["rows"]`."""
    dm = ctx.datamap
    stores = {n: s for n, s in dm.stores.items() if isinstance(s, BackupStore) and s.rewrite}
    if not stores:
        return
    t = cj_batch_lines
    per: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    with ctx.state.connect() as conn:
        stmt = sa.select(t.c.store, t.c.object_key, t.c.request_pk, t.c.lines).where(
            t.c.batch_id == batch_id, t.c.store.in_(sorted(stores))
        )
        for store, key, pk, n in conn.execute(stmt):
            per[store][str(pk)][key] = int(n)
    versions: dict[tuple[str, str], int] = {}
    for store, by_ref in per.items():
        for key in sorted({k for keys in by_ref.values() for k in keys}):
            spec = stores[store]
            versions[(store, key)] = replaced_versions(ctx.store(store), spec.bucket, key, batch_id)
    for ref, receipt in receipts.items():
        counts = receipt.setdefault("counts", {})
        receipt["backups"] = [dict(e) for e in receipt.get("backups", [])]  # shared by receipts
        for entry in receipt["backups"]:
            name = entry.get("store")
            if name not in stores:
                continue
            keys = per.get(name, {}).get(ref, {})
            rows = sum(keys.values())
            counts.pop(name, None)  # finalize counts cj_batch_lines as log "lines"
            if rows:
                counts[name] = {"rows": rows}
            entry.update(
                handling=(
                    "snapshots rewritten without the consumer's rows, old versions deleted; "
                    "tombstoned too, re-applied on restore of any other copy (R18)"
                ),
                rewritten=True,
                snapshot_objects_rewritten=len(keys),
                rows_removed=rows,
                old_versions_deleted=sum(versions.get((name, k), 0) for k in keys),
            )
