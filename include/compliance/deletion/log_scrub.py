"""Erasure in log stores (R16.1): drop or redact a request's lines, object by object, day by day.

Which lines match is the shared engine's (`compliance.core.logfiles`); this module rewrites.
Erasure (`rewrite_object`) keeps every non-matching line byte for byte: the output is the input's
decompressed bytes with the matching lines cut out (or replaced by their redaction, which replaces
exactly the values at the personal fields' paths and keeps every other byte). The compressed
input is spooled while it is scanned, so an object is read from S3 once; an object without a match
is never written. A rewrite is a conditional PUT (If-Match on the ETag that was scanned) carrying
`Metadata {"cj-rewritten": batch_id}`, followed by the deletion of the key's non-current versions;
`clean_versions` finishes that deletion after a crash. `scrub_shard` does a whole day folder and
verifies it (residue must be 0).

What leaves this module for XCom or logs (`ObjectResult.to_dict`, `ShardResult.to_dict`, `repr`)
holds counts, keys and request references only, never a line or an identity value.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from compliance.core import checkpoints
from compliance.core.compression import COMPRESS_LEVEL, GZIP
from compliance.core.datamap.model import LogStore
from compliance.core.logfiles import reading
from compliance.core.logfiles.identity_index import LogIndex
from compliance.core.logfiles.matching import Hit, Matcher
from compliance.core.logfiles.reading import (
    LogFormatError,
    ObjectResult,
    count_lines,
    get_object,
    line_blocks,
    scan_object,
)
from compliance.core.logfiles.targets import Targets
from compliance.core.stores.s3 import (
    delete_versions,
    list_keys,
    replace_if_unchanged,
    replacement_args,
    unchanged,
)

log = logging.getLogger(__name__)

REWRITTEN_META = "cj-rewritten"  # user metadata on a version this module wrote
SPOOL_MEMORY = 32 << 20  # spooled files (input copy, output) move to disk beyond this
PUT_LIMIT = 5 << 30  # S3's single-PUT limit; larger outputs go up as a multipart upload
PART_SIZE = 64 << 20


class _Tee:
    """A read-only stream that copies what is read into `sink` until `stop()`."""

    def __init__(self, source: Any, sink: Any) -> None:
        self.source, self.sink = source, sink

    def read(self, size: int | None = -1) -> bytes:
        data = self.source.read(size) if size is not None and size >= 0 else self.source.read()
        if self.sink is not None:
            self.sink.write(data)
        return data

    def readinto(self, buffer: Any) -> int:  # isal's reader fills its own buffer
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def stop(self) -> None:
        self.sink = None


class _GzipSpool:
    """Output written through gzip into a spooled temporary file (memory, then disk)."""

    def __init__(self) -> None:
        self.file = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115
        self.gz = GZIP.GzipFile(fileobj=self.file, mode="wb", compresslevel=COMPRESS_LEVEL, mtime=0)

    def write(self, data: bytes | memoryview) -> None:
        self.gz.write(data)

    def finish(self) -> int:
        self.gz.close()
        size = self.file.tell()
        self.file.seek(0)
        return size

    def close(self) -> None:
        self.gz.close()
        self.file.close()


def rewrite_object(
    s3: Any,
    store: LogStore,
    bucket: str,
    key: str,
    targets: Targets,
    *,
    batch_id: str,
    before_replace: Callable[[str, dict[str, int]], None] | None = None,
) -> ObjectResult:
    """Drop or redact the matching lines of one object; an object without a match is untouched.

    The new object keeps every other line byte for byte; it replaces the key by a conditional PUT
    (the ETag that was scanned) with Metadata {"cj-rewritten": batch_id} and SSE AES256, keeping
    the object's content type, encoding, user metadata and tags; then every non-current version
    of the key is deleted. Raises ObjectChanged if the object changed meanwhile.
    `before_replace(key, per_ref)` is called just before the replacement, so whatever it records
    outlives a crash after it (a rerun finds the object clean and counts nothing).
    """
    matcher = Matcher.get(store, targets)
    resp = get_object(s3, bucket, key)
    result = ObjectResult(key=key, bytes_in=int(resp.get("ContentLength", 0)))
    out = _edit_stream(resp["Body"], matcher, store.erase, result)
    if out is None:
        return result
    try:
        if before_replace is not None:
            before_replace(key, result.per_ref)
        size = out.finish()
        new_version = _upload(s3, bucket, key, out.file, size, resp, batch_id)
    finally:
        out.close()
    result.rewritten, result.bytes_out = True, size
    checkpoints.reached("logs.after_put", key=key)
    result.versions_deleted = _delete_noncurrent(s3, bucket, key, keep=new_version)
    log.info(
        "rewrote s3://%s/%s: %d of %d lines %s, %d old versions deleted",
        bucket,
        key,
        result.lines_matched,
        result.lines_in,
        "dropped" if store.erase == "drop_line" else "redacted",
        result.versions_deleted,
    )
    return result


def _edit_stream(
    body: Any, matcher: Matcher, erase: str, result: ObjectResult
) -> _GzipSpool | None:
    """Scan a compressed stream; its edited copy (the caller closes it), None without a match.

    The compressed input is copied aside while it is scanned; at the first match the part
    before is replayed from that copy into the output, and from then on blocks go straight out.
    """
    counts: Counter[str] = Counter()
    copy = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115
    tee = _Tee(body, copy)
    out: _GzipSpool | None = None
    try:
        with GZIP.GzipFile(fileobj=tee, mode="rb") as gz:
            for offset, block in line_blocks(gz, result.key):
                result.lines_in += count_lines(block)
                hits, malformed = matcher.scan(block)
                result.malformed += malformed
                if not hits:
                    if out is not None:
                        out.write(block)
                    continue
                if out is None:
                    tee.stop()
                    out = _GzipSpool()
                    _replay(copy, offset, out, result.key)
                    copy.close()
                _write_edited(out, block, hits, matcher, erase)
                result.lines_matched += len(hits)
                for hit in hits:
                    counts.update(hit.refs)
    except BaseException:
        if out is not None:
            out.close()
        raise
    finally:
        copy.close()
    result.per_ref = dict(sorted(counts.items()))
    return out


def _replay(copy: Any, length: int, out: _GzipSpool, key: str) -> None:
    """Write the first `length` decompressed bytes of the spooled compressed copy to `out`."""
    copy.seek(0)
    with GZIP.GzipFile(fileobj=copy, mode="rb") as gz:
        while length > 0:
            chunk = gz.read(min(reading.READ_SIZE, length))
            if not chunk:
                raise LogFormatError(f"{key}: the spooled copy ended early")
            out.write(chunk)
            length -= len(chunk)


def _write_edited(
    out: _GzipSpool, block: bytes, hits: list[Hit], matcher: Matcher, erase: str
) -> None:
    view = memoryview(block)
    prev = 0
    for hit in hits:
        if hit.start > prev:
            out.write(view[prev : hit.start])
        if erase == "redact":
            newline = b"\n" if block[hit.end - 1 : hit.end] == b"\n" else b""
            out.write(matcher.redact(hit).encode() + newline)
        prev = hit.end
    if prev < len(block):
        out.write(view[prev:])


def _upload(
    s3: Any, bucket: str, key: str, body: Any, size: int, original: dict[str, Any], batch_id: str
) -> str | None:
    """Replace `key` by `body` if it is still the version scanned; the new version id."""
    if size <= PUT_LIMIT:
        meta = {REWRITTEN_META: batch_id}
        return replace_if_unchanged(s3, bucket, key, body, original, meta, "scrubbed")
    extra = replacement_args(s3, bucket, key, original, {REWRITTEN_META: batch_id})
    with unchanged(bucket, key, "scrubbed"):
        return _multipart(s3, bucket, key, body, original["ETag"], extra).get("VersionId")


def _multipart(
    s3: Any, bucket: str, key: str, body: Any, etag: str, extra: dict[str, Any]
) -> dict[str, Any]:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, **extra)["UploadId"]
    try:
        parts = []
        number = 1
        while chunk := body.read(PART_SIZE):
            part = s3.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
            )
            parts.append({"ETag": part["ETag"], "PartNumber": number})
            number += 1
        return s3.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
            IfMatch=etag,
        )
    except BaseException:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise


def _versions(s3: Any, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Versions", [])


def _delete_noncurrent(s3: Any, bucket: str, key: str, *, keep: str | None) -> int:
    old = [
        (v["Key"], v["VersionId"])
        for v in _versions(s3, bucket, key)
        if v["Key"] == key and not v["IsLatest"] and v["VersionId"] != keep
    ]
    return delete_versions(s3, bucket, old) if old else 0


def clean_versions(s3: Any, bucket: str, prefix: str) -> int:
    """Delete the non-current versions of keys whose current version this module wrote.

    Finishes a rewrite that crashed between its PUT and its version clean-up. Keys whose current
    version is not ours (or is a delete marker) are left alone. Returns the versions deleted.
    """
    current: dict[str, str] = {}
    old: dict[str, list[str]] = defaultdict(list)
    for v in _versions(s3, bucket, prefix):
        if v["IsLatest"]:
            current[v["Key"]] = v["VersionId"]
        else:
            old[v["Key"]].append(v["VersionId"])
    doomed: list[tuple[str, str]] = []
    for key, versions in sorted(old.items()):
        if key not in current:
            continue
        head = s3.head_object(Bucket=bucket, Key=key, VersionId=current[key])
        if REWRITTEN_META in head.get("Metadata", {}):
            doomed.extend((key, version) for version in versions)
    return delete_versions(s3, bucket, doomed) if doomed else 0


@dataclass
class ShardResult:
    """What one scrub of a day folder did: counts and keys only (XCom-safe)."""

    bucket: str
    day_prefix: str
    mode: str  # drop_line: lines_removed were dropped; redact: they were redacted
    objects: int = 0
    objects_rewritten: int = 0
    objects_skipped: int = 0  # ruled out by the log identity index: not read
    lines_in: int = 0
    lines_removed: int = 0
    per_ref: dict[str, int] = field(default_factory=dict)
    residue: int = 0  # matching lines found by the verification scan: must be 0
    objects_verified: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    versions_deleted: int = 0
    malformed: int = 0
    rewritten_keys: list[str] = field(default_factory=list)
    residue_keys: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scrub_shard(
    s3: Any,
    store: LogStore,
    day_prefix: str,
    targets: Targets,
    *,
    batch_id: str,
    verify: Literal["all", "changed"] = "all",
    before_replace: Callable[[str, dict[str, int]], None] | None = None,
    index: LogIndex | None = None,
) -> ShardResult:
    """Rewrite every object under one day folder, clean old versions, then verify.

    With `index` (the log identity index, issue 19) objects whose current sidecar holds none of
    the targets' values are not read (`objects_skipped`; unchanged, so verify="changed" leaves
    them too), and every object rewritten loses its sidecar at once, so no sidecar keeps the
    keyed hashes of identities just erased (the next `log_index` run rebuilds it).

    The verification lists the folder again and scans it for residual matching lines
    (`residue`, must be 0). verify="changed" scans only objects that were rewritten, or whose
    ETag/size/mtime differ from when they were scanned (new or modified since): the others were
    scanned clean moments before, byte for byte the same.
    """
    started = time.monotonic()
    result = ShardResult(bucket=store.bucket, day_prefix=day_prefix, mode=store.erase)
    counts: Counter[str] = Counter()
    clean: set[tuple[str, str, int, Any]] = set()
    listed = list(list_keys(s3, store.bucket, day_prefix))
    to_read = listed if index is None else index.objects_to_read(store, listed, targets)
    read_keys = {o["Key"] for o in to_read}
    for obj in listed:
        if obj["Key"] not in read_keys:
            result.objects += 1
            result.objects_skipped += 1
            clean.add(_identity(obj))
            continue
        r = rewrite_object(
            s3,
            store,
            store.bucket,
            obj["Key"],
            targets,
            batch_id=batch_id,
            before_replace=before_replace,
        )
        result.objects += 1
        result.lines_in += r.lines_in
        result.lines_removed += r.lines_matched
        result.bytes_in += r.bytes_in
        result.bytes_out += r.bytes_out
        result.versions_deleted += r.versions_deleted
        result.malformed += r.malformed
        counts.update(r.per_ref)
        if r.rewritten:
            result.objects_rewritten += 1
            result.rewritten_keys.append(r.key)
            if index is not None:
                index.forget(store, r.key)
        else:
            clean.add(_identity(obj))
        checkpoints.reached("logs.after_object", n=result.objects, rewritten=r.rewritten)
    result.per_ref = dict(sorted(counts.items()))
    result.versions_deleted += clean_versions(s3, store.bucket, day_prefix)
    for obj in list_keys(s3, store.bucket, day_prefix):
        if verify == "changed" and _identity(obj) in clean:
            continue
        r = scan_object(s3, store, store.bucket, obj["Key"], targets)
        result.objects_verified += 1
        if r.lines_matched:
            result.residue += r.lines_matched
            result.residue_keys.append(r.key)
    result.seconds = round(time.monotonic() - started, 3)
    log.info(
        "scrubbed s3://%s/%s: %d objects, %d rewritten, %d lines %s, residue %d",
        store.bucket,
        day_prefix,
        result.objects,
        result.objects_rewritten,
        result.lines_removed,
        "dropped" if store.erase == "drop_line" else "redacted",
        result.residue,
    )
    return result


def _identity(obj: dict[str, Any]) -> tuple[str, str, int, Any]:
    return (obj["Key"], obj.get("ETag", ""), int(obj.get("Size", 0)), obj.get("LastModified"))
