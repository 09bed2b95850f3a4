"""The residue oracle in log stores: raw bytes of every object version, searched for every
spelling of every target value, wherever it stands in a line (R16.1).

A day folder is searched by the mapped `verify_logs` task (`verify_log_prefix`; its verdict kept
beside the batch's targets, `verdict_key`); `verify_logs` then covers each store whole, reusing
a shard's verdict while its objects are unchanged (`fingerprint`). Tenants as the package's
docstring says: a hit counts unless its line is a JSON object of another tenant.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ahocorasick_rs

from compliance.core import workspace_layout
from compliance.core.datamap.model import (
    DataMap,
    LogStore,
)
from compliance.core.outputs import THREADS
from compliance.deletion.residue_oracle.values import Value, Verdict, bounded, unglued

try:  # decompression only (no matching): isal is several times faster than zlib
    from isal import igzip as _gzip
    from isal.isal_zlib import error as _IsalError

    _CORRUPT: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error, _IsalError)
except ImportError:  # pragma: no cover - isal is in requirements
    _gzip = gzip  # type: ignore[misc]
    _CORRUPT = (OSError, EOFError, zlib.error)

READ_SIZE = 8 << 20  # decompressed bytes searched at a time (cut at the last newline)
FEW_NEEDLES = 32  # up to this many anchors, one pass each; beyond, one Aho-Corasick pass
ANCHOR_MIN = 4  # shortest letter-or-digit run that may stand for its spellings
ANCHOR_HITS = 4096  # anchor hits in one block past which its spellings are searched directly
VERDICTS = workspace_layout.VERDICTS  # the workspace registry (core.workspace_layout)

_TOKEN = re.compile(rb"[a-z0-9\x80-\xff]+")
_GZIP_MAGIC = b"\x1f\x8b"


def _anchors(spellings: Iterable[bytes]) -> dict[bytes, list[tuple[bytes, int]]]:
    """Anchor -> (spelling, the anchor's offset in it): few substrings that every spelling
    contains one of, so one pass per anchor finds every occurrence of every spelling.

    Why: a phone has about sixteen spellings ("+1 (404) 210-9844", "404.210.9844", ...), and
    a pass per spelling made one consumer's check cost 17 passes over every log byte. Every
    spelling of that phone holds "9844": one pass finds them all, and each hit is compared with
    the spellings in place. Greedy cover: the letter-or-digit run (of at least ANCHOR_MIN) of
    some spelling that the most uncovered spellings contain, the longest on a tie; a spelling
    that contains none is its own anchor."""
    left = set(spellings)
    out: dict[bytes, list[tuple[bytes, int]]] = {}
    runs = {t for s in left for t in _TOKEN.findall(s) if len(t) >= ANCHOR_MIN}
    while left:
        cover = {t: [s for s in left if t in s] for t in runs}
        best = max(cover, key=lambda t: (len(cover[t]), len(t), t), default=None)
        if best is None or not cover[best]:
            out.update((s, [(s, 0)]) for s in left)
            break
        out[best] = [(s, s.find(best)) for s in sorted(cover[best])]
        left.difference_update(cover[best])
    return out


class _Needles:
    """Spellings (lower-cased bytes) -> tenants looking for them, and how they are searched.

    A few values (one consumer's check): one pass per anchor (`_anchors`, `_anchored`). Many (a
    batch): one pass of an Aho-Corasick automaton over every spelling, which costs about the
    same for 17,000 spellings as for 1,700 (0.5-0.7 s per 100 MB of log text; the token
    pre-filter it replaces took 2.4-2.6 s: a Python object per word of the text). The
    automaton is Rust's `aho-corasick` over the bytes themselves (`ahocorasick_rs`): on JSON
    log lines 150-300 MB/s for 1,000 to 100 values, against 70-115 for `pyahocorasick` over a
    latin-1 copy of them."""

    def __init__(self, values: Iterable[Value]) -> None:
        spelled = [(value.tenant, value.spellings) for value in values]
        tenants: dict[bytes, set[str]] = defaultdict(set)
        for tenant, spellings in spelled:
            for spelling in spellings:
                tenants[spelling.encode()].add(tenant)
        self.tenants = {k: frozenset(v) for k, v in tenants.items()}
        # per value (a greedy cover over the whole batch's spellings would be cubic); a value
        # has one anchor at least, so past FEW_NEEDLES values none are worked out
        anchors: dict[bytes, set[tuple[bytes, int]]] = defaultdict(set)
        if sum(1 for _, spellings in spelled if spellings) <= FEW_NEEDLES:
            for _, spellings in spelled:
                for anchor, group in _anchors(s.encode() for s in spellings).items():
                    anchors[anchor].update(group)
        self.anchors = {a: sorted(g) for a, g in anchors.items()}
        self.automaton: Any = None
        self.spellings = sorted(self.tenants)
        if len(self.anchors) > FEW_NEEDLES or (not self.anchors and self.tenants):
            self.automaton = ahocorasick_rs.BytesAhoCorasick(
                self.spellings,
                matchkind=ahocorasick_rs.MatchKind.Standard,  # overlapping too
            )

    def __len__(self) -> int:
        return len(self.tenants)

    def occurrences(self, low: bytes) -> Iterator[tuple[bytes, int]]:
        """(spelling, offset) of every bounded occurrence of a spelling in `low` (a spelling
        may be reported twice at one offset; callers count lines)."""
        if self.automaton is None:
            for anchor, group in self.anchors.items():
                yield from _anchored(low, anchor, group)
            return
        for i, at, _ in self.automaton.find_matches_as_indexes(low, overlapping=True):
            needle = self.spellings[i]
            if unglued(low, at, needle):
                yield needle, at


def _anchored(
    low: bytes, anchor: bytes, group: list[tuple[bytes, int]]
) -> Iterator[tuple[bytes, int]]:
    """Occurrences of the group's spellings, found through their anchor. An anchor too common
    in this block (a phone ending in a year, say) gives way to one pass per spelling."""
    hits = 0
    i = low.find(anchor)
    while i >= 0:
        hits += 1
        if hits > ANCHOR_HITS:
            for needle, _ in group:
                for at in bounded(low, needle):
                    yield needle, at
            return
        for needle, offset in group:
            at = i - offset
            if at >= 0 and low.startswith(needle, at) and unglued(low, at, needle):
                yield needle, at
        i = low.find(anchor, i + 1)


class _Obj(list):
    """A JSON object as its (key, value) pairs: duplicate keys kept, so a second tenant key
    cannot hide the first."""


def _path(field_name: str) -> list[str]:
    parts, buf, escaped = [], "", False
    for ch in field_name:
        if escaped:
            buf, escaped = buf + ch, False
        elif ch == "\\":
            escaped = True
        elif ch == ".":
            parts.append(buf)
            buf = ""
        else:
            buf += ch
    return [*parts, buf]


def _line_tenants(line: bytes, tenant_field: str) -> set[str] | None:
    """The tenant values the line's tenant field holds, or None when that cannot be told."""
    try:
        record = json.loads(line, object_pairs_hook=_Obj)
    except ValueError:
        return None
    if not isinstance(record, _Obj):
        return None
    for attempt in ([tenant_field], _path(tenant_field)):
        nodes: list[Any] = [record]
        for part in attempt:
            nodes = [v for node in nodes if isinstance(node, _Obj) for k, v in node if k == part]
        scalars = {
            str(v)
            for v in nodes
            if isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))
        }
        if nodes:
            return scalars if len(scalars) == 1 and len(nodes) == len(scalars) else None
    return None


class _Prefixed(io.RawIOBase):
    """A stream with its first bytes put back (read to sniff the gzip magic)."""

    def __init__(self, head: bytes, body: Any) -> None:
        self.head, self.body = head, body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        want = len(buffer)
        if self.head:
            data, self.head = self.head[:want], self.head[want:]
        else:
            data = self.body.read(want)
        buffer[: len(data)] = data
        return len(data)


def _blocks(body: Any) -> Iterator[bytes]:
    """Decompressed (when gzip) blocks of whole lines."""
    head = body.read(2)
    stream: Any = io.BufferedReader(_Prefixed(head, body), 1 << 20)
    if head == _GZIP_MAGIC:
        stream = _gzip.GzipFile(fileobj=stream, mode="rb")
    rest = b""
    while True:
        chunk = stream.read(READ_SIZE)
        if not chunk:
            break
        data = rest + chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            rest = data
            continue
        yield data[: cut + 1]
        rest = data[cut + 1 :]
    if rest:
        yield rest


def search_object(body: Any, needles: _Needles, tenant_field: str) -> tuple[int, int]:
    """(lines holding a target value of that line's tenant, decompressed bytes) in one object."""
    lines = 0
    size = 0
    for block in _blocks(body):
        size += len(block)
        low = block.lower()
        seen: dict[int, set[str] | None] = {}
        hit_lines: set[int] = set()
        for needle, at in needles.occurrences(low):
            start = low.rfind(b"\n", 0, at) + 1
            if start in hit_lines:
                continue
            if start not in seen:
                end = low.find(b"\n", at)
                seen[start] = _line_tenants(block[start : None if end < 0 else end], tenant_field)
            owners = seen[start]
            if owners is None or owners & needles.tenants[needle]:
                hit_lines.add(start)
        lines += len(hit_lines)
    return lines, size


def _versions(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every version (current and not) under `prefix`: an old version holds data too."""
    out = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        out.extend(page.get("Versions", []))
    return sorted(out, key=lambda v: (v["Key"], str(v.get("VersionId"))))


def fingerprint(versions: list[dict[str, Any]]) -> str:
    """What was searched, so a verdict can be reused only while its objects are unchanged."""
    digest = hashlib.sha256()
    for v in versions:
        digest.update(f"{v['Key']}\0{v.get('VersionId')}\0{v.get('ETag')}\n".encode())
    return digest.hexdigest()


def search_versions(
    s3: Any, store_name: str, store: LogStore, versions: list[dict[str, Any]], needles: _Needles
) -> dict[str, Any]:
    """Search object versions of one store; counts-only result (key -> lines with a hit)."""
    hits: dict[str, int] = {}
    unreadable: list[str] = []
    size = 0
    keys = set()
    for v in versions:
        keys.add(v["Key"])
        if not len(needles):
            continue
        args: dict[str, Any] = {"Bucket": store.bucket, "Key": v["Key"]}
        if v.get("VersionId") not in (None, "null"):
            args["VersionId"] = v["VersionId"]
        try:
            lines, n = search_object(s3.get_object(**args)["Body"], needles, store.tenant_field)
        except _CORRUPT:
            unreadable.append(v["Key"])
            continue
        size += n
        if lines:
            hits[v["Key"]] = hits.get(v["Key"], 0) + lines
    return {
        "store": store_name,
        "objects": len(keys),
        "versions": len(versions),
        "bytes": size,
        "hits": hits,
        "unreadable": unreadable,
        "fingerprint": fingerprint(versions),
    }


def verify_log_prefix(
    s3: Any, store_name: str, store: LogStore, prefix: str, values: list[Value]
) -> dict[str, Any]:
    """One shard (a day folder) of one store: the body of the mapped `verify_logs` task."""
    result = search_versions(
        s3, store_name, store, _versions(s3, store.bucket, prefix), _Needles(values)
    )
    return {"prefix": prefix, **result}


def verdict_key(batch_prefix: str, shard: str) -> str:
    """Where a shard's verdict (counts and keys only) is kept: beside the batch's targets."""
    return f"{batch_prefix}{VERDICTS}{hashlib.sha256(shard.encode()).hexdigest()[:24]}.json"


def verdict_keys(s3: Any, bucket: str, batch_prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{batch_prefix}{VERDICTS}"
    )
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def load_verdicts(s3: Any, bucket: str, batch_prefix: str) -> list[dict[str, Any]]:
    """Every mapped verify_logs task's verdict (one small object per day folder, 70 a batch):
    fetched side by side, since per-object latency, not bandwidth, bounds them (issue 19)."""

    def read(key: str) -> dict[str, Any]:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return list(pool.map(read, verdict_keys(s3, bucket, batch_prefix)))


def verify_logs(
    dm: DataMap,
    store_clients: dict[str, Any],
    values: list[Value],
    shard_verdicts: list[dict[str, Any]],
    verdict: Verdict,
    per_store: dict[str, list[Value]] | None = None,
) -> None:
    """Every log store, whole: reuse a shard verdict whose objects are unchanged, search the
    rest (changed shards, new folders, objects outside day folders) here. `per_store`: the
    values to look for in a store when they differ (a legal hold keeps a request's lines)."""
    for name, store in sorted(dm.stores.items()):
        if not isinstance(store, LogStore):
            continue
        needles = _Needles(per_store[name] if per_store and name in per_store else values)
        s3 = store_clients[name]
        everything = _versions(s3, store.bucket, store.prefix)
        mine = sorted(
            (v for v in shard_verdicts if v.get("store") == name),
            key=lambda v: -len(v["prefix"]),
        )
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for v in everything:
            owner = next((s["prefix"] for s in mine if v["Key"].startswith(s["prefix"])), "")
            groups[owner].append(v)
        results = []
        for prefix, versions in groups.items():
            shard = next((s for s in mine if s["prefix"] == prefix), None) if prefix else None
            if shard is not None and shard.get("fingerprint") == fingerprint(versions):
                results.append(shard)
            else:
                results.append(search_versions(s3, name, store, versions, needles))
        counts = verdict.logs.setdefault(
            name, {"objects": 0, "versions": 0, "bytes": 0, "spellings": len(needles)}
        )
        for r in results:
            counts["objects"] += int(r["objects"])
            counts["versions"] += int(r["versions"])
            counts["bytes"] += int(r["bytes"])
            for key, n in r["hits"].items():
                verdict.residue[f"{name}:{key}"] += int(n)
            verdict.unreadable.extend(f"{name}:{key}" for key in r["unreadable"])
