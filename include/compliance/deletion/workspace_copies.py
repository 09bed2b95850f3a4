"""A deletion also removes the jobs' own earlier copies of the consumer (R16, R20, issue 16).

Erasing the CRM, logs and recordings is not enough: the jobs themselves left copies in the
workspace bucket. For each request of the batch this finds, without writing an identity
anywhere:

- **earlier requests of the same consumer** (same client) through the state DB: their dedupe keys
  are keyed hashes of (client, type, identity) (`requests.intake._identity_keys`), so hashing
  this request's identities the same way finds them, finished ones included (R20's minimal
  record). Of each finished one it removes the access bundle folder (bundle, download link,
  anything delivered beside them), the accepted document, a held memory and notice bodies left
  behind. Receipts stay: they hold no identity and are R22's record. Requests still open,
  deferred or partial are live work and keep their documents.
- **refused documents** (`rejected/`): read in memory and compared with the request's
  identities record by record (normalised like intake does); a document that is only this
  consumer's goes with its reasons, an NDJSON batch loses only this consumer's lines.
- **versions behind delete markers** (a versioned bucket): documents, batch targets and parts
  the jobs deleted with a plain DELETE whose older versions still name the consumer.

Every version is deleted (the bucket may be versioned). Crash safety: what will be removed is
recorded in the state DB (`cj_batch_lines`, store `workspace:<kind>`, the key's sha256) before
it is deleted, so a rerun that finds nothing left still reports what went; the receipt shows the
count per kind, never a key or a value. Layouts come from `core.workspace_layout`: this package
(rank 2) cannot import `access` (rank 4).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from compliance.core import checkpoints
from compliance.core import workspace_layout as layout
from compliance.core.context import JobContext, Workspace
from compliance.core.hashing import keyed_hash
from compliance.core.outputs import put_bytes
from compliance.core.stores import recordings
from compliance.core.stores.s3 import delete_versions
from compliance.deletion.outbox.parties import OPEN as OPEN_NOTICES
from compliance.deletion.targets import Targets
from compliance.requests import state
from compliance.requests.fields import FieldRejected
from compliance.requests.identities import identities_of

KIND_PREFIX = "workspace:"  # cj_batch_lines.store for what this module removed
FINISHED = ("completed", "rejected")
MAX_DOC_BYTES = 16 * 1024 * 1024  # as intake reads them
STATEMENT = (
    "the jobs' own earlier copies of this consumer were deleted from the workspace bucket, "
    "every version: access bundles with their download links, request documents (accepted, "
    "refused, held) and notice bodies; receipts (no identity) are kept as the request log (R22)"
)


@dataclass
class Found:
    """What one request's consumer left in the workspace: kind -> keys; rewrites of NDJSON."""

    keys: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    rewrites: dict[str, bytes] = field(default_factory=dict)  # rejected key -> kept lines
    versions: list[tuple[str, str]] = field(default_factory=list)  # older rejected versions

    def count(self) -> int:
        return sum(len(v) for v in self.keys.values()) + len(self.rewrites) + len(self.versions)


def remove(ctx: JobContext, targets: Targets) -> dict[str, dict[str, int]]:
    """Find, record, then delete every earlier copy of the batch's consumers; ref -> kind -> n
    removed over every run of the batch (from the state DB, so a rerun reports the same)."""
    found = find(ctx, targets)
    for ref, f in found.items():
        for kind, keys in f.keys.items():
            for key in keys:
                state.record_lines(
                    ctx.state, targets.batch_id, KIND_PREFIX + kind, _id(key), {ref: 1}
                )
        for key in {*f.rewrites, *(k for k, _ in f.versions)} - f.keys.get("rejected", set()):
            state.record_lines(
                ctx.state, targets.batch_id, KIND_PREFIX + "rejected", _id(key), {ref: 1}
            )
    checkpoints.reached("workspace_copies.recorded")
    ws = ctx.workspace
    for f in found.values():
        delete_versions(ws.s3, ws.bucket, sorted(set(f.versions)))
        for key, body in sorted(f.rewrites.items()):
            _replace(ws, key, body)
        doomed = sorted({k for keys in f.keys.values() for k in keys})
        recordings.delete_all_versions(ws.s3, ws.bucket, doomed)
    checkpoints.reached("workspace_copies.removed", batch=targets.batch_id)
    return removed(ctx, targets)


def removed(ctx: JobContext, targets: Targets) -> dict[str, dict[str, int]]:
    """ref -> kind -> objects removed (recorded before deletion; survives a crash)."""
    out: dict[str, dict[str, int]] = {}
    for pk, per_store in state.batch_lines(ctx.state, targets.batch_id).items():
        for store, n in per_store.items():
            if store.startswith(KIND_PREFIX):
                out.setdefault(str(pk), {})[store.removeprefix(KIND_PREFIX)] = n
    return out


def receipt_section(kinds: dict[str, int]) -> dict[str, Any]:
    """The receipt's `workspace_copies`: how many and of which kinds (no key, no value)."""
    return {
        "removed": sum(kinds.values()),
        "kinds": dict(sorted(kinds.items())),
        "statement": STATEMENT,
        "rules": ["R16", "R20"],
    }


def find(ctx: JobContext, targets: Targets) -> dict[str, Found]:
    """ref -> what is left of that consumer in the workspace (reads only)."""
    refs = targets.active_refs()
    out = {ref: Found() for ref in refs}
    own = {int(r) for r in refs if r.isdigit()}
    for ref in refs:
        client = str(targets.requests[ref]["client_id"])
        pairs = _pairs(targets, ref)
        keys = [
            keyed_hash(ctx.hash_key, f"dedupe:{kind}", f"{client}\x1f{type_}\x1f{value}")
            for kind, value in pairs
            for type_ in state.REQUEST_TYPES
        ]
        hits = state.requests_holding_keys(ctx.state, keys, state.STATUSES)
        pks = {pk for found in hits.values() for pk, _ in found} - own
        rows = state.get_requests(ctx.state, pks)
        busy = _open_notices(ctx, pks)
        for pk, row in sorted(rows.items()):
            if row.status not in FINISHED or row.client_id != client:
                continue  # live work keeps its documents
            _earlier_copies(ctx.workspace, row, pk in busy, out[ref])
    _rejected(ctx.workspace, targets, out)
    _behind_markers(ctx.workspace, targets, out)
    return out


# Areas whose jobs delete their objects with a plain DELETE once done: in a versioned bucket the
# data stays behind a delete marker (the nightly sweep purges such versions; a deletion does
# not wait for it when they name its consumer). Bundles and refused documents are handled above.
_DELETED_BY_JOBS = ("inbox", "accepted", "held", "outbox", "targets", "parts")
_CLIENT_FOLDER = ("inbox", "accepted", "held")  # <prefix><client>/...


def _behind_markers(ws: Workspace, targets: Targets, out: dict[str, Found]) -> None:
    """Objects a job deleted whose older versions still hold one of the consumers."""
    needles = {
        ref: {v.lower().encode() for _, v in _pairs(targets, ref) if len(v) >= 5} for ref in out
    }
    clients = {ref: str(targets.requests[ref]["client_id"]) for ref in out}
    for name in _DELETED_BY_JOBS:
        area = layout.BY_NAME[name]
        by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
        pages = ws.s3.get_paginator("list_object_versions").paginate(
            Bucket=ws.bucket, Prefix=area.prefix
        )
        for page in pages:
            for v in page.get("Versions", []):
                by_key[v["Key"]].append({**v, "marker": False})
            for m in page.get("DeleteMarkers", []):
                by_key[m["Key"]].append({**m, "marker": True})
        for key, items in sorted(by_key.items()):
            if not area.matches(key) or not any(i["marker"] and i["IsLatest"] for i in items):
                continue
            folder = key[len(area.prefix) :].split("/", 1)[0] if name in _CLIENT_FOLDER else None
            bodies = [
                ws.s3.get_object(Bucket=ws.bucket, Key=key, VersionId=i["VersionId"])["Body"]
                .read()
                .lower()
                for i in items
                if not i["marker"] and i.get("Size", 0) <= MAX_DOC_BYTES
            ]
            for ref in out:
                if folder not in (None, layout.UI, clients[ref]):
                    continue  # another client's folder
                if any(n in body for n in needles[ref] for body in bodies):
                    out[ref].keys[name].add(key)


def _earlier_copies(ws: Workspace, row: state.RequestRow, busy: bool, found: Found) -> None:
    prefix = layout.bundle_prefix(row.client_id, row.request_id)
    for obj in _all_keys(ws, prefix):
        found.keys["bundles"].add(obj)
    source = row.source or ""
    if source.startswith(layout.ACCEPTED) and _all_keys(ws, source, exact=True):
        found.keys["accepted"].add(source)
    held = layout.held_key(row.client_id, row.request_id)
    if _all_keys(ws, held, exact=True):
        found.keys["held"].add(held)
    if not busy:
        for obj in _all_keys(ws, f"{layout.OUTBOX}{row.id}/"):
            found.keys["outbox"].add(obj)


def _rejected(ws: Workspace, targets: Targets, out: dict[str, Found]) -> None:
    """Refused documents: every version's records compared with each request's identities, in
    memory. A current version that is only this consumer's goes whole (with its reasons); one
    that holds others' lines too is rewritten without this consumer's; an older version (a
    versioned bucket, or a rewrite a crash interrupted) that mentions them is deleted."""
    wanted = {ref: set(_pairs(targets, ref)) for ref in out}
    clients = {ref: str(targets.requests[ref]["client_id"]) for ref in out}
    pages = ws.s3.get_paginator("list_object_versions").paginate(
        Bucket=ws.bucket, Prefix=layout.REJECTED
    )
    for page in pages:
        for item in page.get("Versions", []):
            key = item["Key"]
            if key.endswith(".reasons.json") or item["Size"] > MAX_DOC_BYTES:
                continue
            raw = ws.s3.get_object(Bucket=ws.bucket, Key=key, VersionId=item["VersionId"])
            raw = raw["Body"].read()
            folder = key[len(layout.REJECTED) :].split("/")
            # the client folder it came from (staff's `ui/` names no client)
            path_client = folder[1] if len(folder) > 2 and folder[1] != layout.UI else None
            for ref in out:
                kept, matched = _strip(raw, wanted[ref], clients[ref], path_client)
                if not matched:
                    continue
                if not item["IsLatest"]:
                    out[ref].versions.append((key, item["VersionId"]))
                elif kept is None:
                    out[ref].keys["rejected"].add(key)
                    out[ref].keys["rejected"].update(_all_keys(ws, key + ".reasons.json", True))
                else:
                    out[ref].rewrites[key] = kept
                raw = kept if kept is not None else b""


def _strip(
    raw: bytes, wanted: set[tuple[str, str]], client: str, path_client: str | None
) -> tuple[bytes | None, bool]:
    """(what stays of the document, whether it held this consumer). None: nothing stays."""
    if not raw.strip():
        return raw, False
    text = raw.decode("utf-8", "replace")
    try:  # hostile documents too: deep nesting is a RecursionError, not a ValueError
        records: list[Any] = [json.loads(text)]
        lines = None
    except (ValueError, RecursionError):
        lines = text.splitlines(keepends=True)
        records = []
        for line in lines:
            try:
                records.append(json.loads(line) if line.strip() else None)
            except (ValueError, RecursionError):
                records.append(line)  # unreadable line: compared as text
    texts = lines if lines is not None else [text]
    hits = [
        _safe_mentions(r, t, wanted, client, path_client)
        for r, t in zip(records, texts, strict=True)
    ]
    if not any(hits):
        return raw, False
    if lines is None or all(h for h, r in zip(hits, records, strict=True) if r is not None):
        return None, True
    kept = "".join(line for line, hit in zip(lines, hits, strict=True) if not hit)
    return kept.encode(), True


def _safe_mentions(
    record: Any, text: str, wanted: set[tuple[str, str]], client: str, path: str | None
) -> bool:
    """`_mentions`, falling back to the record's text when its structure defeats the checks (a
    hostile document must not stop an erasure)."""
    try:
        return _mentions(record, wanted, client, path)
    except RecursionError:
        return _mentions(text, wanted, client, path)


def _mentions(record: Any, wanted: set[tuple[str, str]], client: str, path: str | None) -> bool:
    if record is None:
        return False
    values = {v for _, v in wanted}
    if not isinstance(record, dict):  # a document nobody could read: any identity in its text
        text = json.dumps(record) if not isinstance(record, str) else record
        return any(len(v) >= 5 and v.lower() in text.lower() for v in values)
    named = record.get("client_id")
    named = str(named) if named is not None else path
    if named is not None and named != client:
        return False  # another client's consumer, whatever the identity (R6)
    ids = record.get("identities")
    if not isinstance(ids, dict):
        return _mentions(json.dumps(record), wanted, client, path)
    given: set[tuple[str, str]] = set()
    with contextlib.suppress(Exception):  # malformed or hostile: compared as given below
        given = {(k.value, v) for k, v in identities_of(record).match_items()}
    given |= {(k, str(v).strip().lower()) for k, v in ids.items() if isinstance(v, str | int)}
    lowered = {(k, v.lower()) for k, v in wanted}
    return bool(given & wanted or given & lowered)


def _pairs(targets: Targets, ref: str) -> list[tuple[str, str]]:
    """(kind, value) of the request's identities: as given, found on rows, normalised."""
    out: set[tuple[str, str]] = set()
    for source in (targets.given, targets.identities):
        for kind, values in source.get(ref, {}).items():
            for v in values:
                out.add((kind, v))
                with contextlib.suppress(FieldRejected, ValueError, TypeError):  # a CRM spelling
                    for k, norm in identities_of({"identities": {kind: v}}).match_items():
                        out.add((k.value, norm))
    return sorted(out)


def _open_notices(ctx: JobContext, pks: set[int]) -> set[int]:
    if not pks:
        return set()
    n = state.cj_notices
    q = sa.select(n.c.request_pk).where(
        n.c.request_pk.in_(sorted(pks)), n.c.status.in_(OPEN_NOTICES)
    )
    with ctx.state.connect() as conn:
        return {int(pk) for pk in conn.execute(q).scalars()}


def _all_keys(ws: Workspace, prefix: str, exact: bool = False) -> set[str]:
    """Keys with any version (or delete marker) under `prefix` (or exactly `prefix`)."""
    out = set()
    pages = ws.s3.get_paginator("list_object_versions").paginate(Bucket=ws.bucket, Prefix=prefix)
    for page in pages:
        for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
            if not exact or item["Key"] == prefix:
                out.add(item["Key"])
    return out


def _replace(ws: Workspace, key: str, body: bytes) -> None:
    """Write the kept lines, then (versioned bucket) delete every older version: they hold the
    consumer. A crash in between leaves older versions that the rerun finds and deletes."""
    before = [
        (i["Key"], i["VersionId"])
        for page in ws.s3.get_paginator("list_object_versions").paginate(
            Bucket=ws.bucket, Prefix=key
        )
        for i in page.get("Versions", []) + page.get("DeleteMarkers", [])
        if i["Key"] == key and i["VersionId"] not in (None, "null")
    ]
    put_bytes(ws.s3, ws.bucket, key, body, "application/octet-stream")
    checkpoints.reached("workspace_copies.after_rewrite", key=key)
    delete_versions(ws.s3, ws.bucket, before)


def _id(key: str) -> str:
    """What the state DB keeps of a removed key: its digest (a file name may be personal)."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:40]
