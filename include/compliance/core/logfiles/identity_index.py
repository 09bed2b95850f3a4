"""A log identity index: per log object, a sidecar of keyed hashes of the identity values it holds.

Why: one consumer's access (R8/R10) and a small deletion batch (R16.1) look for a handful of
values, yet without an index they decompress and scan every log object of every day in the
window. A sidecar says which objects cannot hold any of those values, so only the others are read.

Where: in the jobs' WORKSPACE bucket (never the client's log bucket), at
`log-index/<log bucket>/<object key>.idx` (`workspace_layout.LOG_INDEX`, a personal area with a
retention rule: keyed hashes of identities).

What: a small binary header (magic, version, an 8-byte stamp: a keyed hash of the object's ETag
and size, of the store's identity fields and of the index key) then a binary fuse filter
(`fuse_filter.Sidecar`) over the 8-byte keyed hashes (BLAKE2b keyed with a key derived from the
deployment's hash key, R20: a phone number's hash cannot be reversed by enumeration without the
key; the filter holds only a few bits per hash) of every identity value the object's lines
carry, normalised the way the matcher compares them (`matching._norm_log`,
`targets.norm_target`, then ASCII lower-case). The set is a superset of what the matcher can
match: values are extracted with the matcher's own pre-filter expression at each identity path's
leaf key wherever it stands; the lines where that extraction could be wrong (escapes, arrays,
non-ASCII e-mails) are parsed and their values at the identity paths added. Tenants are not
hashed: the matcher checks tenants on the lines read.

Size: a sidecar may take SIZE_BUDGET (1.9%) of its object's gzip bytes, at least
MIN_SIDECAR_BYTES; `fuse_filter.width_for` gives each value the most fingerprint bits that fit,
so the false-positive rate adapts to how dense in identities an object is (docs/log-index.md has
the figures: about 10% per value on the demo's application logs, 3% on its mail logs).

Correctness never depends on the index: an object without a sidecar, or whose sidecar is stale
(another ETag or size, other identity fields, another key, an unknown version), is read in full,
as before. A false positive (the filter's rate per value looked up, or a value in another tenant)
costs one read. The code paths that replace a log object delete its sidecar (`forget`); the
`log_index` job rebuilds it, and removes sidecars whose object is gone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from compliance.core.compression import GZIP
from compliance.core.datamap import paths as fpaths
from compliance.core.datamap.model import IdentityType, LogStore
from compliance.core.logfiles.matching import _norm_log, _scalar
from compliance.core.logfiles.reading import line_blocks
from compliance.core.logfiles.targets import Targets
from compliance.core.outputs import put_bytes
from compliance.core.stores.s3 import list_keys
from compliance.core.workspace_layout import LOG_INDEX

if TYPE_CHECKING:  # numpy (the filter's) loads on first use, never at DAG parse time
    from compliance.core.logfiles.fuse_filter import Sidecar

HASH_BYTES = 8
# A sidecar may cost this share of its object's gzip bytes (issue 19's target: 2%, kept with a
# margin). Within it, each value gets as many fingerprint bits as fit: the false-positive rate
# per value looked up is 2**-bits (3 bits: 12.5%, 4 bits: 6.25%, 5 bits: 3.1%).
SIZE_BUDGET = 0.019
# Every sidecar may take this much: the budget of a tiny object (a few kB) leaves no room for a
# useful filter, tiny objects weigh nothing in the total, and storing or reading an object costs
# a request whatever its size.
MIN_SIDECAR_BYTES = 128


def sidecar_key(bucket: str, key: str) -> str:
    return f"{LOG_INDEX}{bucket}/{key}.idx"


def index_secret(hash_key: bytes) -> bytes:
    """The sidecars' own key, derived from the deployment's hash key (one secret to manage)."""
    return hmac.new(hash_key, b"compliance log identity index v1", hashlib.sha256).digest()


def value_hash(secret: bytes, norm: bytes) -> bytes:
    return hashlib.blake2b(norm, key=secret, digest_size=HASH_BYTES).digest()


def value_hashes(secret: bytes, values: Iterable[bytes]) -> list[bytes]:
    """`value_hash` of each value, from one keyed state copied per value (a third faster than
    keying every call: the key costs a compression of its own)."""
    keyed = hashlib.blake2b(key=secret, digest_size=HASH_BYTES)
    out = []
    for v in values:
        h = keyed.copy()
        h.update(v)
        out.append(h.digest())
    return out


def fields_fingerprint(store: LogStore) -> str:
    """Which identity paths the sidecar was built for: another map makes it stale."""
    spec = sorted((p, f.identity.value) for p, f in store.fields.items() if f.identity is not None)
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]


def stamp(secret: bytes, etag: str, size: int, fields: str) -> bytes:
    """What a sidecar must match to be current, in 8 bytes: the object's ETag and size, the
    store's identity fields, and (keyed) the index key itself."""
    text = f"{etag}\0{size}\0{fields}".encode()
    return hashlib.blake2b(text, key=secret, digest_size=8, person=b"cj-log-idx-stamp").digest()


def target_hashes(secret: bytes, store: LogStore, targets: Targets) -> frozenset[bytes]:
    """The hashes of every target value of an identity type the store's fields carry."""
    kinds = {f.identity for f in store.fields.values() if f.identity is not None}
    return frozenset(
        value_hash(secret, v.encode().lower()) for kind in kinds for v in targets.values(kind)
    )


# -- extraction ---------------------------------------------------------------------------------


class Extractor:
    """Every identity value of a block of whole lines, as normalised bytes (a superset)."""

    _cache: dict[tuple[Any, ...], Extractor] = {}

    @classmethod
    def get(cls, store: LogStore) -> Extractor:
        key = tuple((p, f.identity) for p, f in store.fields.items())
        if key not in cls._cache:
            cls._cache[key] = cls(store)
        return cls._cache[key]

    def __init__(self, store: LogStore) -> None:
        self.id_paths = [
            (fpaths.parse(p), f.identity) for p, f in store.fields.items() if f.identity is not None
        ]
        leaf_keys = {fp.leaf_key for fp, _ in self.id_paths}
        self.rx_value: re.Pattern[bytes] | None = None
        self.rx_array: re.Pattern[bytes] | None = None
        self.rx_escaped_value: re.Pattern[bytes] | None = None
        self.rx_escaped_key: re.Pattern[bytes] | None = None
        self.rx_non_ascii: re.Pattern[bytes] | None = None
        if not leaf_keys:
            return

        def alternation(names: Iterable[str]) -> bytes:
            keys = {json.dumps(n, ensure_ascii=False)[1:-1].encode() for n in names}
            return b"|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True))

        ws = rb"[ \t\r]*"
        head = rb'"(?:' + alternation(leaf_keys) + rb')"' + ws + rb":" + ws
        # the matcher's pre-filter expression: a string's raw bytes, a bare integer, or "["
        self.rx_value = re.compile(head + rb'"?((?<=")[^"\n]*|-?[0-9]+|\[)')
        plain = all(re.fullmatch(r"[A-Za-z0-9_.@$ -]+", n) for n in leaf_keys)
        escape = rb"\\u00[2-7][0-9a-fA-F]" if plain else rb"\\"
        # lines whose values the expression above could get wrong: they are parsed
        self.rx_array = re.compile(head + rb"\[")
        self.rx_escaped_value = re.compile(head + rb'"[^"\n]*\\')
        self.rx_escaped_key = re.compile(escape + rb'[^"\n]*"' + ws + rb":")
        emails = {fp.leaf_key for fp, t in self.id_paths if t is IdentityType.email}
        if emails:
            email_head = rb'"(?:' + alternation(emails) + rb')"' + ws + rb":" + ws
            self.rx_non_ascii = re.compile(email_head + rb'"[^"\n]*[\x80-\xff]')

    def add(self, block: bytes, out: set[bytes]) -> None:
        """Each hazard is looked for only where it can be, as the matcher's `candidates` does:
        an array where a value extracted is "[", an escaped value where one holds a backslash,
        a non-ASCII e-mail where one is not ASCII, an escaped key where the block holds a
        backslash. Plain ASCII logs cost one expression pass."""
        if self.rx_value is None:
            return
        values = set(self.rx_value.findall(block))
        out |= values
        joined = b"\n".join(values)
        hazards: list[re.Pattern[bytes] | None] = []
        if b"[" in values:
            hazards.append(self.rx_array)
        if b"\\" in joined:
            hazards.append(self.rx_escaped_value)
        if self.rx_non_ascii is not None and not joined.isascii():
            hazards.append(self.rx_non_ascii)
        if b"\\" in block:
            hazards.append(self.rx_escaped_key)
        starts: set[int] = set()
        for rx in filter(None, hazards):
            for m in rx.finditer(block):
                starts.add(block.rfind(b"\n", 0, m.start()) + 1)
        for start in starts:
            nl = block.find(b"\n", start)
            self._parsed(block[start : len(block) if nl < 0 else nl], out)

    def _parsed(self, line: bytes, out: set[bytes]) -> None:
        """The values at the identity paths of one parsed line (not JSON: it matches nothing)."""
        try:
            pairs = json.loads(line.decode("utf-8"), object_pairs_hook=list)
        except (ValueError, RecursionError):
            return
        for path, itype in self.id_paths:
            for item in fpaths.values(pairs, path):
                s = _scalar(item)
                if s is not None:
                    out.add(_norm_log(itype, s).encode().lower())


def normalised(raw: set[bytes]) -> set[bytes]:
    out = {v.lower() for v in raw}
    out.discard(b"[")
    if b"-0" in out:
        out.add(b"0")  # JSON -0 is the integer 0 to the parser
    return out


def may_contain(sidecar: Sidecar, hashes: Iterable[bytes]) -> bool:
    return any(sidecar.contains(h) for h in hashes)


def _etag(value: Any) -> str:
    return str(value or "").strip('"')


@dataclass
class BuildResult:
    key: str
    values: int = 0
    bytes_in: int = 0
    sidecar_bytes: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class LogIndex:
    """The sidecars of one deployment: where they live and the key they are hashed with."""

    s3: Any  # the workspace bucket's client
    bucket: str
    secret: bytes = field(repr=False)

    @classmethod
    def of(cls, s3: Any, bucket: str, hash_key: bytes) -> LogIndex:
        return cls(s3, bucket, index_secret(hash_key))

    def build(self, store_s3: Any, store: LogStore, key: str) -> tuple[Sidecar, BuildResult]:
        """Read one object once and return its sidecar (not yet written)."""
        started = time.monotonic()
        resp = store_s3.get_object(Bucket=store.bucket, Key=key)
        result = BuildResult(key=key, bytes_in=int(resp.get("ContentLength", 0)))
        extractor = Extractor.get(store)
        raw: set[bytes] = set()
        with GZIP.GzipFile(fileobj=resp["Body"], mode="rb") as gz:
            for _offset, block in line_blocks(gz, key):
                extractor.add(block, raw)
        values = normalised(raw)
        current = stamp(
            self.secret, _etag(resp.get("ETag")), result.bytes_in, fields_fingerprint(store)
        )
        budget = max(SIZE_BUDGET * result.bytes_in, MIN_SIDECAR_BYTES)
        from compliance.core.logfiles.fuse_filter import Sidecar, width_for

        width = width_for(len(values), budget)
        sidecar = Sidecar.of(current, value_hashes(self.secret, values), width)
        result.values = len(values)
        result.sidecar_bytes = len(sidecar.encode())
        result.seconds = time.monotonic() - started
        return sidecar, result

    def write(self, store: LogStore, key: str, sidecar: Sidecar) -> None:
        put_bytes(  # encrypted like every workspace object
            self.s3,
            self.bucket,
            sidecar_key(store.bucket, key),
            sidecar.encode(),
            "application/octet-stream",
        )

    def read(self, store: LogStore, obj: dict[str, Any]) -> Sidecar | None:
        """The object's sidecar if it is current (same ETag and size, fields and key)."""
        try:
            resp = self.s3.get_object(Bucket=self.bucket, Key=sidecar_key(store.bucket, obj["Key"]))
        except self.s3.exceptions.NoSuchKey:
            return None
        from compliance.core.logfiles.fuse_filter import Sidecar

        sidecar = Sidecar.decode(resp["Body"].read())
        expected = stamp(
            self.secret, _etag(obj.get("ETag")), int(obj.get("Size", -1)), fields_fingerprint(store)
        )
        if sidecar is None or sidecar.stamp != expected:
            return None
        return sidecar

    def forget(self, store: LogStore, key: str) -> None:
        """Delete an object's sidecar: called when the object is replaced or deleted, so no
        sidecar keeps the hashes of identities erased from it (rebuilt by the next run)."""
        self.s3.delete_object(Bucket=self.bucket, Key=sidecar_key(store.bucket, key))

    def objects_to_read(
        self, store: LogStore, objects: Iterable[dict[str, Any]], targets: Targets
    ) -> list[dict[str, Any]]:
        """The listed objects (`list_keys` dicts) that must be scanned for `targets`: all but
        those whose current sidecar holds none of the targets' hashes."""
        wanted = target_hashes(self.secret, store, targets)
        out = []
        for obj in objects:
            sidecar = self.read(store, obj)
            if sidecar is None or may_contain(sidecar, wanted):
                out.append(obj)
        return out

    def sidecars(self, store: LogStore, day_prefix: str) -> list[str]:
        """Object keys that have a sidecar under one day folder."""
        base = f"{LOG_INDEX}{store.bucket}/"
        return [
            o["Key"][len(base) : -len(".idx")]
            for o in list_keys(self.s3, self.bucket, base + day_prefix)
            if o["Key"].endswith(".idx")
        ]


def log_index(ctx: Any) -> LogIndex:
    """The deployment's log identity index (sidecars in the workspace bucket)."""
    return LogIndex.of(ctx.workspace.s3, ctx.workspace.bucket, ctx.hash_key)


def index_day(index: LogIndex, store_s3: Any, store: LogStore, day_prefix: str) -> dict[str, Any]:
    """Bring one day folder's sidecars up to date: build those missing or stale, delete those
    whose object is gone. Counts only (XCom-safe)."""
    started = time.monotonic()
    out = {"objects": 0, "built": 0, "current": 0, "removed": 0, "bytes_in": 0, "index_bytes": 0}
    listed = list(list_keys(store_s3, store.bucket, day_prefix))
    indexed = set(index.sidecars(store, day_prefix))  # one listing spares a GET per new object
    for obj in listed:
        out["objects"] += 1
        if obj["Key"] in indexed and index.read(store, obj) is not None:
            out["current"] += 1
            continue
        sidecar, built = index.build(store_s3, store, obj["Key"])
        index.write(store, obj["Key"], sidecar)
        out["built"] += 1
        out["bytes_in"] += built.bytes_in
        out["index_bytes"] += built.sidecar_bytes
    present = {o["Key"] for o in listed}
    for key in sorted(indexed - present):
        index.forget(store, key)
        out["removed"] += 1
    out["seconds"] = round(time.monotonic() - started, 3)
    return out
