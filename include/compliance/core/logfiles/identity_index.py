"""A log identity index: per log object, a sidecar of keyed hashes of the identity values it holds.

Why: one consumer's access (R8/R10) and a small deletion batch (R16.1) look for a handful of
values, yet without an index they decompress and scan every log object of every day in the
window. A sidecar says which objects cannot hold any of those values, so only the others are read.

Where: in the jobs' WORKSPACE bucket (never the client's log bucket), at
`log-index/<log bucket>/<object key>.idx` (`workspace_layout.LOG_INDEX`, a personal area with a
retention rule: keyed hashes of identities).

What: a small header (magic, version, the object's ETag and size, a fingerprint of the store's
identity fields and of the hash key) then a Bloom filter (`Sidecar`) over the 8-byte keyed hashes
(BLAKE2b keyed with a key derived from the deployment's hash key, R20: a phone number's hash cannot
be reversed by enumeration without the key; the filter holds only bits of those hashes) of every
identity value the object's lines carry, normalised the way
the matcher compares them (`matching._norm_log`, `targets.norm_target`, then ASCII lower-case).
The set is a superset of what the matcher can match: values are extracted with the matcher's own
pre-filter expression at each identity path's leaf key wherever it stands; the lines where that
extraction could be wrong (escapes, arrays, non-ASCII e-mails) are parsed and their values at the
identity paths added. Tenants are not hashed: fewer, larger sets, and the matcher checks tenants.

Correctness never depends on the index: an object without a sidecar, or whose sidecar is stale
(another ETag or size, other identity fields, another key, an unknown version), is read in full,
as before. A false positive (the filter's few percent, or a value in another tenant) costs one
read. The code paths that replace a log object delete its sidecar (`forget`); the `log_index`
job rebuilds it, and removes sidecars whose object is gone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from compliance.core.datamap import paths as fpaths
from compliance.core.datamap.model import IdentityType, LogStore
from compliance.core.logfiles.matching import _norm_log, _scalar
from compliance.core.logfiles.reading import GZIP, line_blocks
from compliance.core.logfiles.targets import Targets
from compliance.core.outputs import put_bytes
from compliance.core.stores.s3 import list_keys
from compliance.core.workspace_layout import LOG_INDEX

MAGIC = b"CJLI"
VERSION = 1
HASH_BYTES = 8
BITS_PER_VALUE = 6  # Bloom filter bits per distinct value: about 5.6% false positives with k=4
HASHES_PER_VALUE = 4
_HEAD = struct.Struct(">4sBH")  # magic, version, length of the JSON header that follows


def sidecar_key(bucket: str, key: str) -> str:
    return f"{LOG_INDEX}{bucket}/{key}.idx"


def index_secret(hash_key: bytes) -> bytes:
    """The sidecars' own key, derived from the deployment's hash key (one secret to manage)."""
    return hmac.new(hash_key, b"compliance log identity index v1", hashlib.sha256).digest()


def value_hash(secret: bytes, norm: bytes) -> bytes:
    return hashlib.blake2b(norm, key=secret, digest_size=HASH_BYTES).digest()


def fields_fingerprint(store: LogStore) -> str:
    """Which identity paths the sidecar was built for: another map makes it stale."""
    spec = sorted((p, f.identity.value) for p, f in store.fields.items() if f.identity is not None)
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]


def key_id(secret: bytes) -> str:
    return hashlib.sha256(secret + b"id").hexdigest()[:8]


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
        self.hazards: list[re.Pattern[bytes]] = []
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
        self.hazards = [
            re.compile(head + rb"\["),  # an array: its items are parsed
            re.compile(head + rb'"[^"\n]*\\'),  # an escaped value
            re.compile(escape + rb'[^"\n]*"' + ws + rb":"),  # a key spelt with an escape
        ]
        emails = {fp.leaf_key for fp, t in self.id_paths if t is IdentityType.email}
        if emails:
            email_head = rb'"(?:' + alternation(emails) + rb')"' + ws + rb":" + ws
            self.hazards.append(re.compile(email_head + rb'"[^"\n]*[\x80-\xff]'))

    def add(self, block: bytes, out: set[bytes]) -> None:
        if self.rx_value is None:
            return
        out.update(self.rx_value.findall(block))
        starts: set[int] = set()
        for rx in self.hazards:
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


# -- the sidecar --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sidecar:
    """A Bloom filter over the object's value hashes: `k` bit positions per value in `bits`.

    Why a filter and not the sorted hashes themselves: nearly every log line carries its own
    e-mail, phone and id, so 8 bytes per value cost about 30% of the gzip log bytes; a filter at
    BITS_PER_VALUE bits per value costs a tenth of that, for a few percent of objects read in
    vain (a false positive only costs a read)."""

    etag: str
    size: int
    fields: str
    key: str
    k: int
    bits: bytes

    @classmethod
    def of(cls, etag: str, size: int, fields: str, key: str, hashes: set[bytes]) -> Sidecar:
        m = max(64, BITS_PER_VALUE * len(hashes))
        m += -m % 8
        k = HASHES_PER_VALUE
        bits = bytearray(m // 8)
        for h in hashes:
            for pos in _positions(h, k, m):
                bits[pos >> 3] |= 1 << (pos & 7)
        return cls(etag, size, fields, key, k, bytes(bits))

    def contains(self, h: bytes) -> bool:
        bits, m = self.bits, len(self.bits) * 8
        return m > 0 and all(bits[p >> 3] >> (p & 7) & 1 for p in _positions(h, self.k, m))

    def encode(self) -> bytes:
        head = json.dumps(
            {
                "etag": self.etag,
                "size": self.size,
                "fields": self.fields,
                "key": self.key,
                "k": self.k,
            },
            separators=(",", ":"),
        ).encode()
        return _HEAD.pack(MAGIC, VERSION, len(head)) + head + self.bits

    @classmethod
    def decode(cls, data: bytes) -> Sidecar | None:
        """The sidecar, or None when it is not one this version can read."""
        try:
            magic, version, n = _HEAD.unpack_from(data)
            if magic != MAGIC or version != VERSION:
                return None
            head = json.loads(data[_HEAD.size : _HEAD.size + n])
            k = int(head["k"])
            if not 1 <= k <= 16:
                return None
            return cls(
                str(head["etag"]),
                int(head["size"]),
                head["fields"],
                head["key"],
                k,
                data[_HEAD.size + n :],
            )
        except (struct.error, ValueError, KeyError, TypeError):
            return None


def _positions(h: bytes, k: int, m: int) -> list[int]:
    """k bit positions from one 64-bit hash (Kirsch-Mitzenmacher double hashing)."""
    a = int.from_bytes(h[:4], "big")
    b = int.from_bytes(h[4:8], "big") | 1
    return [(a + i * b) % m for i in range(k)]


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
        sidecar = Sidecar.of(
            _etag(resp.get("ETag")),
            result.bytes_in,
            fields_fingerprint(store),
            key_id(self.secret),
            {value_hash(self.secret, v) for v in values},
        )
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
        sidecar = Sidecar.decode(resp["Body"].read())
        if (
            sidecar is None
            or sidecar.etag != _etag(obj.get("ETag"))
            or sidecar.size != int(obj.get("Size", -1))
            or sidecar.fields != fields_fingerprint(store)
            or sidecar.key != key_id(self.secret)
        ):
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
    for obj in listed:
        out["objects"] += 1
        if index.read(store, obj) is not None:
            out["current"] += 1
            continue
        sidecar, built = index.build(store_s3, store, obj["Key"])
        index.write(store, obj["Key"], sidecar)
        out["built"] += 1
        out["bytes_in"] += built.bytes_in
        out["index_bytes"] += built.sidecar_bytes
    present = {o["Key"] for o in listed}
    for key in index.sidecars(store, day_prefix):
        if key not in present:
            index.forget(store, key)
            out["removed"] += 1
    out["seconds"] = round(time.monotonic() - started, 3)
    return out
