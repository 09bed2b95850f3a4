"""A log store, tenant by tenant: count, read or drop the lines whose tenant field is a client.

Deletion requests match lines by a consumer's identities (`compliance.deletion.log_scrub`);
at contract end every line of the client goes, whoever it is about, so the match is the line's
tenant field (`tenant_field` in the data map, a path like any field). Every other line is kept
byte for byte: the new object is the old one's decompressed bytes with the client's lines cut
out. An object without such a line is never written. A rewrite is a conditional PUT (If-Match on
the ETag that was read) marked `cj-offboarded`, then the key's older versions are deleted so the
lines do not survive as non-current versions. A line that is not JSON is kept and counted
(`malformed`): it names no tenant we could check.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from collections import Counter
from collections.abc import Iterator
from typing import Any

from compliance.core.datamap import paths as fpaths
from compliance.core.datamap.model import LogStore
from compliance.core.logfiles.identity_index import LogIndex
from compliance.core.logfiles.reading import day_prefixes
from compliance.core.sqlmap import key_text
from compliance.core.stores.s3 import (
    delete_versions,
    list_keys,
    replace_if_unchanged,
)

OFFBOARDED_META = "cj-offboarded"
SPOOL = 32 << 20


def tenant_of(line: bytes, store: LogStore) -> str | None:
    """The line's tenant as text, or None when the line is not JSON or names none."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    value = fpaths.first(record, store.tenant_field) if isinstance(record, dict) else None
    return None if value is None or isinstance(value, dict | list) else key_text(value)


def _objects(s3: Any, store: LogStore) -> Iterator[dict[str, Any]]:
    for prefix in day_prefixes(s3, store):
        yield from list_keys(s3, store.bucket, prefix)


def _lines(s3: Any, bucket: str, key: str) -> tuple[dict[str, Any], Iterator[bytes]]:
    resp = s3.get_object(Bucket=bucket, Key=key)

    def read() -> Iterator[bytes]:
        with gzip.GzipFile(fileobj=resp["Body"], mode="rb") as gz:
            yield from gz

    return resp, read()


def count_lines(s3: Any, store: LogStore, clients: set[str]) -> Counter:
    """client -> lines of that client in the store (one read-only pass)."""
    found: Counter = Counter()
    for obj in _objects(s3, store):
        _, lines = _lines(s3, store.bucket, obj["Key"])
        for line in lines:
            tenant = tenant_of(line, store)
            if tenant in clients:
                found[tenant] += 1
    return found


def client_lines(s3: Any, store: LogStore, client: str) -> Iterator[bytes]:
    """Every line of one client, as stored (the return export)."""
    for obj in _objects(s3, store):
        _, lines = _lines(s3, store.bucket, obj["Key"])
        for line in lines:
            if tenant_of(line, store) == client:
                yield line if line.endswith(b"\n") else line + b"\n"


def drop_lines(
    s3: Any, store: LogStore, clients: set[str], run_id: str, index: LogIndex | None = None
) -> dict[str, Any]:
    """Remove the clients' lines from every object of the store; counts per client. A rewritten
    object's identity-index sidecar is deleted (issue 19): it held the hashes of erased lines."""
    dropped: Counter = Counter()
    rewritten = versions = malformed = 0
    for obj in _objects(s3, store):
        resp, lines = _lines(s3, store.bucket, obj["Key"])
        with tempfile.SpooledTemporaryFile(max_size=SPOOL) as raw:
            removed: Counter = Counter()
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) as out:
                for line in lines:
                    tenant = tenant_of(line, store)
                    if tenant is None and line.strip():
                        malformed += 1
                    if tenant in clients:
                        removed[tenant] += 1
                    else:
                        out.write(line)
            if not removed:
                continue
            raw.seek(0)
            new_version = _replace(s3, store.bucket, obj["Key"], raw, resp, run_id)
        if index is not None:
            index.forget(store, obj["Key"])
        dropped.update(removed)
        rewritten += 1
        versions += _delete_older(s3, store.bucket, obj["Key"], keep=new_version)
    return {
        "lines": {c: dropped.get(c, 0) for c in sorted(clients)},
        "objects_rewritten": rewritten,
        "versions_deleted": versions,
        "malformed": malformed,
    }


def _replace(
    s3: Any, bucket: str, key: str, body: Any, original: dict[str, Any], run_id: str
) -> str | None:
    meta = {OFFBOARDED_META: run_id}
    return replace_if_unchanged(s3, bucket, key, body, original, meta, "rewritten")


def _delete_older(s3: Any, bucket: str, key: str, *, keep: str | None) -> int:
    """Delete the key's non-current versions (a plain PUT keeps them in a versioned bucket)."""
    old = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=key):
        for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
            if v["Key"] == key and not v.get("IsLatest") and v["VersionId"] != keep:
                old.append((key, v["VersionId"]))
    return delete_versions(s3, bucket, old) if old else 0
