"""The synthetic world's object stores: application and mail logs, CRM backups, call recordings.

Why it is built this way:
- Logs take every name they can from the data map store (timestamp, tenant and identity
  fields), so a map describing differently shaped logs still gets matching objects. A store
  whose only identities are e-mails is written as a mail gateway log (`status`, `msg_id`),
  any other as an application log (`level`, `service`, `path`, `msg`, and system lines that
  carry no tenant and no identity).
- Lines are assembled column-wise with pyarrow string kernels rather than a JSON encoder:
  gigabytes of logs at the large scale would take minutes through `json.dumps`. That is only
  correct because every value is plain ASCII without quotes or backslashes, which
  `_check_plain` enforces before writing; the output equals `json.dumps(..., separators=(",",
  ":"))` line for line.
- gzip uses ISA-L (`isal`, a project dependency) when present, stdlib zlib otherwise; both
  with mtime 0 so the same seed gives byte-identical objects on a given installation.
- Backups are point-in-time: the snapshot named D holds the rows whose time column (the first
  DateTime column) is before D 00:00, so older snapshots are subsets of newer ones and an erasure
  made "today" is absent from none of them (what R18 / Reg 7022(d) deferral is about). Each
  table is read once, as one gzip member per day segment; snapshot D is the concatenation of
  the members up to D, itself a valid gzip file. Rows are ordered by primary key within each
  segment. Values are written in PostgreSQL COPY's text forms (`YYYY-MM-DD HH:MM:SS`, t/f,
  shortest floats) from SQLite too, so the same world gives the same bytes on both backends.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import math
import os
import re
import tempfile
import time
import wave
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from sqlalchemy import Boolean, DateTime, Engine, Float, Table

from compliance.core.datamap.model import (
    BackupStore,
    DataMap,
    IdentityType,
    LogStore,
    RecordingStore,
)
from compliance.core.stores.s3 import ensure_bucket

try:  # ISA-L: several times faster than zlib at similar ratios
    from isal import igzip as _igzip
    from isal import isal_zlib as _deflate
except ImportError:  # pragma: no cover - isal is pinned in requirements.txt
    _igzip = None
    _deflate = zlib

DAY = 86_400
PART_BYTES = 48 * 1024 * 1024  # target raw size of one log object (32-64 MB)
PUT_LIMIT = 32 * 1024 * 1024  # above this, backups stream through multipart upload
RECORDING_TABLE = "call_recordings"
IN_FLIGHT = 8  # uploads queued at once...
IN_FLIGHT_BYTES = 160 * 1024 * 1024  # ...and the bytes they hold: memory stays bounded

# (service, path, msg, level) by kind of line.
EVENTS_FULL = [
    ("lead-api", "/api/v2/leads", "lead created", "INFO"),
    ("lead-api", "/api/v2/leads/score", "lead scored", "INFO"),
    ("crm", "/api/v2/contacts/update", "contact updated", "INFO"),
    ("portal", "/portal/login", "login succeeded", "INFO"),
    ("portal", "/portal/login", "login failed", "WARN"),
    ("tracker", "/t/open", "email opened", "INFO"),
    ("tracker", "/t/click", "link clicked", "INFO"),
    ("crm", "/api/v2/contacts/merge", "duplicate contact suggested", "INFO"),
    ("lead-api", "/api/v2/leads", "lead rejected by client rules", "ERROR"),
]
EVENTS_EMAIL = [
    ("mailer", "/api/v2/email/send", "email queued", "INFO"),
    ("mailer", "/webhooks/esp/events", "email delivered", "INFO"),
    ("mailer", "/webhooks/esp/events", "email bounced", "WARN"),
    ("lead-api", "/webhooks/forms/inbound", "web form received", "INFO"),
]
EVENTS_PHONE = [
    ("messaging", "/api/v2/sms/send", "sms queued", "INFO"),
    ("messaging", "/webhooks/sms/status", "sms delivered", "INFO"),
    ("messaging", "/webhooks/sms/inbound", "sms received", "INFO"),
    ("voice", "/webhooks/voice/recording", "call recorded", "INFO"),
    ("messaging", "/webhooks/sms/status", "carrier rejected message", "ERROR"),
]
EVENTS_SYSTEM = [
    ("scheduler", "/internal/health", "health check ok", "INFO"),
    ("worker", "/internal/queue", "queue drained", "INFO"),
    ("lead-api", "/internal/cache", "cache refreshed", "INFO"),
    ("mailer", "/internal/bounce-sync", "bounce list synced", "INFO"),
    ("worker", "/internal/queue", "worker restarted after timeout", "WARN"),
]
MAIL_STATUS = [("delivered", 0.9), ("deferred", 0.05), ("bounced", 0.04), ("complained", 0.01)]
TEXT_VALUES = ["web", "api", "mobile", "import", "webhook"]
ISP_FIRST_OCTETS = np.array([24, 47, 50, 66, 67, 68, 69, 70, 71, 73, 75, 76, 96, 97, 98, 99, 108])
# Share of an application log's lines by kind; system lines carry no tenant and no identity.
APP_MIX = {"full": 0.75, "email": 0.09, "phone": 0.09, "system": 0.07}
_NOT_PLAIN = r'["\\\x00-\x1f\x7f-\x{10FFFF}]'


@dataclass(frozen=True)
class Population:
    """What log lines need to know about consumers; index i is contact_id i + 1."""

    now: int  # as_of midnight, epoch seconds
    client_id: np.ndarray
    created: np.ndarray  # epoch seconds, ascending
    eligible: np.ndarray  # contact indices that may appear in recent logs (active clients)
    email: pa.Array
    phone: pa.Array
    ip: pa.Array
    external_id: pa.Array
    alias_contact: np.ndarray
    alias_email: pa.Array
    alias_phone: pa.Array
    alias_created: np.ndarray
    user_agents: Sequence[str]


@dataclass
class StoreStats:
    objects: dict[str, int] = field(default_factory=dict)
    stored_bytes: dict[str, int] = field(default_factory=dict)
    log_lines: int = 0
    log_bytes: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, store: str, size: int) -> None:
        self.objects[store] = self.objects.get(store, 0) + 1
        self.stored_bytes[store] = self.stored_bytes.get(store, 0) + size


def gzip_bytes(data: bytes) -> bytes:
    """Deterministic gzip (mtime 0): the same content gives the same object bytes."""
    if _igzip is not None:
        return _igzip.compress(data, 2, mtime=0)
    return gzip.compress(data, 6, mtime=0)


def _compressor() -> Any:
    return _deflate.compressobj(2 if _igzip is not None else 6, zlib.DEFLATED, 31)


def _rng(seed: int, *key: int | str) -> np.random.Generator:
    words = [seed & 0xFFFF_FFFF_FFFF_FFFF]
    words += [k if isinstance(k, int) else zlib.crc32(k.encode()) for k in key]
    return np.random.default_rng(words)


def _cat(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _num(values: np.ndarray, width: int = 0) -> pa.Array:
    out = pc.cast(pa.array(values), pa.string())
    return pc.utf8_lpad(out, width=width, padding="0") if width else out


def _strings(values: Sequence[str]) -> pa.Array:
    return pa.array(list(values), pa.string())


def _check_plain(name: str, values: pa.Array | Sequence[str]) -> None:
    arr = values if isinstance(values, pa.Array) else _strings(values)
    if len(arr) and pc.any(pc.match_substring_regex(arr, _NOT_PLAIN)).as_py():
        raise ValueError(f"{name}: values need JSON escaping; log lines are built without it")


def _joined(arr: pa.Array) -> bytes:
    """The concatenated values of a string array (each line ends in a newline)."""
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1]
    return bufs[2].to_pybytes()[offsets[0] : offsets[-1]] if len(arr) else b""


@cache
def _clock() -> tuple[pa.Array, pa.Array]:
    secs = [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(DAY)]
    return _strings(secs), _strings([f"{m:03d}" for m in range(1000)])


# -- buckets -----------------------------------------------------------------------------------


def _store_prefix(store: Any) -> str:
    if isinstance(store, RecordingStore):
        return "recordings/"
    return str(store.prefix)


def ensure_buckets(s3: Any, datamap: DataMap) -> None:
    """Log and backup buckets are versioned: erasure must also remove old versions there."""
    for store in datamap.stores.values():
        ensure_bucket(s3, store.bucket, versioned=isinstance(store, LogStore | BackupStore))


def _keys(s3: Any, bucket: str, prefix: str) -> Iterator[dict]:
    try:
        pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            yield from page.get("Versions", []) + page.get("DeleteMarkers", [])
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchBucket":
            raise


def busy_stores(s3: Any, datamap: DataMap) -> list[str]:
    """Stores that already hold objects (any version, delete markers too) under their prefix."""
    busy = []
    for name, store in datamap.stores.items():
        try:
            page = s3.list_object_versions(
                Bucket=store.bucket, Prefix=_store_prefix(store), MaxKeys=1
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                continue
            raise
        if page.get("Versions") or page.get("DeleteMarkers"):
            busy.append(name)
    return busy


def clear_stores(s3: Any, datamap: DataMap) -> None:
    """Delete every version under each store's prefix (replace=True starts a world over)."""
    for store in datamap.stores.values():
        batch: list[dict[str, str]] = []
        for item in _keys(s3, store.bucket, _store_prefix(store)):
            batch.append({"Key": item["Key"], "VersionId": item["VersionId"]})
            if len(batch) == 1000:
                s3.delete_objects(Bucket=store.bucket, Delete={"Objects": batch, "Quiet": True})
                batch = []
        if batch:
            s3.delete_objects(Bucket=store.bucket, Delete={"Objects": batch, "Quiet": True})


class _Uploader:
    """Uploads (compression included) on worker threads; what is queued is bounded in count
    and bytes, so memory does not grow with the world."""

    def __init__(self, s3: Any, stats: StoreStats, workers: int = 4) -> None:
        self.s3, self.stats = s3, stats
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.pending: deque[tuple[Future[tuple[str, int]], int]] = deque()
        self.queued_bytes = 0

    def put(
        self, store: str, bucket: str, key: str, make_body: Callable[[], bytes], size: int
    ) -> None:
        """Queue an upload; `size` is what the queued work holds in memory (an estimate)."""
        while self.pending and (
            len(self.pending) >= IN_FLIGHT or self.queued_bytes + size > IN_FLIGHT_BYTES
        ):
            self._settle()
        self.pending.append((self.pool.submit(self._put, store, bucket, key, make_body), size))
        self.queued_bytes += size

    def _put(
        self, store: str, bucket: str, key: str, make_body: Callable[[], bytes]
    ) -> tuple[str, int]:
        body = make_body()
        self.s3.put_object(Bucket=bucket, Key=key, Body=body)
        return store, len(body)

    def _settle(self) -> None:
        fut, size = self.pending.popleft()
        self.queued_bytes -= size
        store, stored = fut.result()
        self.stats.add(store, stored)

    def close_pending(self) -> None:
        while self.pending:
            self._settle()

    def close(self) -> None:
        try:
            self.close_pending()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


# -- logs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    mail: bool
    fields: list[tuple[str, str]]  # (key, value kind), identities first
    extras: list[str]  # our own keys, skipped when the map already uses the name


def _shape(store: LogStore) -> _Shape:
    identities = {f.identity for f in store.fields.values() if f.identity}
    mail = identities <= {IdentityType.email}
    priority = {"record_id": 0, "contact_id": 1, "email": 2, "phone": 3}
    fields = []
    for name, spec in store.fields.items():
        low = name.lower()
        if spec.identity:
            kind = spec.identity.value
        elif re.search(r"(^|_)ip($|_)", low):
            kind = "ip"
        elif low in {"ua", "user_agent", "useragent"} or "agent" in low:
            kind = "ua"
        else:
            kind = "text"
        fields.append((name, kind))
    fields.sort(key=lambda f: priority.get(f[1], 9))
    taken = {store.timestamp_field, store.tenant_field, *store.fields}
    extras = ["status", "msg_id"] if mail else ["level", "service", "path", "msg"]
    return _Shape(mail, fields, [e for e in extras if e not in taken])


def _lines_per_day(shape: _Shape, contacts: int) -> int:
    return max(200, round(0.1 * contacts)) if shape.mail else max(400, round(0.3 * contacts))


def _random_ip(rng: np.random.Generator, rows: int) -> pa.Array:
    value = ISP_FIRST_OCTETS[rng.integers(0, len(ISP_FIRST_OCTETS), rows)].astype(np.int64) << 24
    value += rng.integers(0, 1 << 24, rows)
    parts: list[pa.Array | str] = []
    for shift in (24, 16, 8, 0):
        parts += [".", _num((value >> shift) & 255)]
    return _cat(*parts[1:])


def _pick_events(rng: np.random.Generator, kind: np.ndarray) -> tuple[pa.Array, ...]:
    groups = [EVENTS_FULL, EVENTS_EMAIL, EVENTS_PHONE, EVENTS_SYSTEM]
    flat = [e for g in groups for e in g]
    sizes = np.array([len(g) for g in groups])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    idx = pa.array(offsets[kind] + (rng.random(len(kind)) * sizes[kind]).astype(np.int64))
    return tuple(_strings([e[i] for e in flat]).take(idx) for i in range(4))


def _log_lines(
    store: LogStore,
    shape: _Shape,
    pop: Population,
    pool: np.ndarray,
    day: date,
    part: int,
    parts: int,
    lines: int,
    seed: int,
    store_name: str,
) -> bytes:
    """One object's lines, sorted by time, as compact JSON (see the module docstring).

    `pool`: the contacts (ascending, i.e. by creation) this store's lines may name.
    """
    rng = _rng(seed, "logs", store_name, day.toordinal(), part)
    day_start = (day - date(1970, 1, 1)).days * DAY
    lo, hi = part * DAY * 1000 // parts, (part + 1) * DAY * 1000 // parts
    ms = np.sort(rng.integers(lo, hi, lines))
    secs, millis = _clock()
    # who: contacts that existed before the day, recent ones more often
    known = int(np.searchsorted(pop.created[pool], day_start))
    if shape.mail:
        kind = np.zeros(lines, np.int64)
    else:
        mix = np.array(list(APP_MIX.values()))
        kind = rng.choice(len(mix), lines, p=mix / mix.sum())  # full, email, phone, system
    if known == 0:
        kind[:] = 3
    pick = (known * rng.random(lines) ** 0.6).astype(np.int64)
    who = pool[np.minimum(pick, max(known - 1, 0))] if len(pool) else np.zeros(lines, np.int64)
    # some lines carry an alias identity instead of the contact's main one
    n_alias = len(pop.alias_contact)
    j = rng.integers(0, max(n_alias, 1), lines)
    use_alias = (rng.random(lines) < 0.05) & (kind != 3) & (n_alias > 0)
    if use_alias.any():
        use_alias &= pop.alias_created[j] < day_start
        if shape.mail:  # a gateway line needs the alias's e-mail
            use_alias &= pop.alias_email.take(pa.array(j)).is_valid().to_numpy(zero_copy_only=False)
        who = np.where(use_alias, pop.alias_contact[j], who)
    email = pop.email.take(pa.array(who))
    phone = pop.phone.take(pa.array(who))
    if use_alias.any():
        mask = pa.array(use_alias)
        email = pc.if_else(mask, pc.coalesce(pop.alias_email.take(pa.array(j)), email), email)
        phone = pc.if_else(mask, pc.coalesce(pop.alias_phone.take(pa.array(j)), phone), phone)
    email = pc.if_else(pa.array(rng.random(lines) < 0.03), pc.utf8_title(email), email)
    person = kind != 3
    allowed = {  # which value kinds each kind of line carries
        "record_id": kind == 0,
        "contact_id": kind == 0,
        "email": (kind == 0) | (kind == 1),
        "phone": (kind == 0) | (kind == 2),
        "ip": (kind == 0) | (kind == 1),
        "ua": (kind == 0) | (kind == 1),
        "text": person,
    }
    home = rng.random(lines) < 0.7
    values: dict[str, pa.Array] = {
        "record_id": _num(who + 1),
        "contact_id": _cat('"', pop.external_id.take(pa.array(who)), '"'),
        "email": _cat('"', email, '"'),
        "phone": _cat('"', phone, '"'),
        "ip": _cat(
            '"', pc.if_else(pa.array(home), pop.ip.take(pa.array(who)), _random_ip(rng, lines)), '"'
        ),
        "ua": _cat(
            '"',
            _strings(pop.user_agents).take(pa.array(rng.integers(0, len(pop.user_agents), lines))),
            '"',
        ),
        "text": _cat(
            '"', _strings(TEXT_VALUES).take(pa.array(rng.integers(0, len(TEXT_VALUES), lines))), '"'
        ),
    }
    prefix = "{" + json.dumps(store.timestamp_field) + ':"' + day.isoformat() + "T"
    pieces: list[pa.Array | str] = [
        prefix,
        secs.take(pa.array(ms // 1000)),
        ".",
        millis.take(pa.array(ms % 1000)),
        'Z"',
    ]
    service, path, msg, level = _pick_events(rng, kind)
    extra_values = {"level": level, "service": service, "path": path, "msg": msg}
    if shape.mail:
        status = rng.choice(len(MAIL_STATUS), lines, p=[w for _, w in MAIL_STATUS])
        extra_values = {
            "status": _strings([s for s, _ in MAIL_STATUS]).take(pa.array(status)),
            "msg_id": _cat("<", _hex(rng, lines, 8), "@mx.cj-mail.example>"),
        }
    head = [e for e in shape.extras if e in ("level", "service")]
    tail = [e for e in shape.extras if e not in head]

    def text_piece(key: str) -> list[pa.Array | str]:
        return ["," + json.dumps(key) + ':"', extra_values[key], '"']

    for key in head:
        pieces += text_piece(key)
    tenant = _cat("," + json.dumps(store.tenant_field) + ":", _num(pop.client_id[who]))
    pieces.append(pc.if_else(pa.array(person), tenant, ""))
    for key, kind_ in shape.fields:
        value = _cat("," + json.dumps(key) + ":", values[kind_])
        present = pa.array(allowed[kind_]) if kind_ in allowed else pa.array(person)
        present = pc.and_(present, value.is_valid())  # a missing phone/e-mail: no key at all
        pieces.append(pc.if_else(present, value, ""))
    for key in tail:
        pieces += text_piece(key)
    pieces.append("}\n")
    return _joined(_cat(*pieces))


_HEX = np.frombuffer(b"".join(f"{i:02x}".encode() for i in range(256)), dtype="S2")


def _hex(rng: np.random.Generator, rows: int, nbytes: int) -> pa.Array:
    raw = _HEX[rng.integers(0, 256, (rows, nbytes), dtype=np.uint8)]
    return pc.cast(pa.array(np.ascontiguousarray(raw).view(f"S{2 * nbytes}").ravel()), pa.string())


def write_logs(
    up: _Uploader,
    name: str,
    store: LogStore,
    pop: Population,
    days: Sequence[date],
    contacts: int,
    seed: int,
) -> tuple[int, int]:
    """Daily partitions of JSON-lines objects; returns (lines, raw bytes)."""
    shape = _shape(store)
    for label, arr in (
        ("email", pop.email),
        ("phone", pop.phone),
        ("ip", pop.ip),
        ("external_id", pop.external_id),
        ("alias email", pop.alias_email),
        ("alias phone", pop.alias_phone),
    ):
        _check_plain(label, pc.drop_null(arr))
    _check_plain("user agents", pop.user_agents)
    per_line = 150 if shape.mail else 260
    pool = pop.eligible
    if shape.mail:  # a gateway line always has a recipient
        pool = pool[pop.email.take(pa.array(pool)).is_valid().to_numpy(zero_copy_only=False)]
    total_lines = total_bytes = 0
    for day in days:
        rng = _rng(seed, "log-volume", name, day.toordinal())
        weekend = 0.75 if day.weekday() >= 5 else 1.0
        lines = max(1, round(_lines_per_day(shape, contacts) * weekend * rng.uniform(0.9, 1.1)))
        parts = max(1, math.ceil(lines * per_line / PART_BYTES))
        for part in range(parts):
            count = lines * (part + 1) // parts - lines * part // parts
            data = _log_lines(store, shape, pop, pool, day, part, parts, count, seed, name)
            total_lines += count
            total_bytes += len(data)
            key = f"{store.prefix}{day.strftime(store.partition)}part-{part:05d}.jsonl.gz"
            up.put(name, store.bucket, key, lambda data=data: gzip_bytes(data), 2 * len(data))
    return total_lines, total_bytes


# -- call recordings ---------------------------------------------------------------------------


def wav_bytes(samples: np.ndarray, rate: int = 8_000) -> bytes:
    """A mono 8-bit WAV: a real RIFF file, a few hundred bytes (a stand-in for the audio)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(rate)
        out.writeframes(samples.astype(np.uint8).tobytes())
    return buf.getvalue()


def write_recordings(
    up: _Uploader, name: str, store: RecordingStore, keys: Sequence[str], seed: int
) -> None:
    """One short tone per recording, different per recording, at the key the table holds."""
    frames = 400
    t = np.arange(frames) / 8_000
    for lo in range(0, len(keys), 10_000):
        chunk = keys[lo : lo + 10_000]
        rng = _rng(seed, "recordings", lo)
        freq = rng.uniform(220, 880, len(chunk))[:, None]
        noise = rng.normal(0, 6, (len(chunk), frames))
        audio = np.clip(128 + 70 * np.sin(2 * np.pi * freq * t) + noise, 0, 255)
        for key, samples in zip(chunk, audio, strict=True):
            up.put(name, store.bucket, key, lambda s=samples: wav_bytes(s), 1_000)


# -- backups -----------------------------------------------------------------------------------


class _Members:
    """CSV bytes compressed into a temporary file, one gzip member per day segment.

    psycopg2 hands COPY output over one row at a time; rows are gathered into blocks first,
    as compressing 100-byte pieces costs more than the compression itself.
    """

    BLOCK = 4 * 1024 * 1024

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.ends: list[int] = []
        self._z = _compressor()
        self._block = bytearray()

    def write(self, data: bytes | str) -> int:
        raw = data.encode() if isinstance(data, str) else data
        self._block += raw
        if len(self._block) >= self.BLOCK:
            self.file.write(self._z.compress(self._block))
            self._block.clear()
        return len(raw)

    def end_member(self) -> None:
        self.file.write(self._z.compress(self._block) + self._z.flush())
        self._block.clear()
        self.file.flush()
        self.ends.append(self.file.tell())
        self._z = _compressor()

    def read(self, size: int) -> bytes:
        return os.pread(self.file.fileno(), size, 0)

    def close(self) -> None:
        self.file.close()


class _Prefix(io.RawIOBase):
    """The first `size` bytes of a file, for streaming multipart uploads."""

    def __init__(self, members: _Members, size: int) -> None:
        self.fd, self.size, self.pos = members.file.fileno(), size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: offset, 1: self.pos + offset, 2: self.size + offset}[whence]
        return self.pos

    def readinto(self, buf: Any) -> int:
        n = max(0, min(len(buf), self.size - self.pos))
        data = os.pread(self.fd, n, self.pos) if n else b""
        buf[: len(data)] = data
        self.pos += len(data)
        return len(data)


def _segments(table: Table, time_col: str, days: Sequence[date]) -> list[str]:
    """WHERE clauses: before the first snapshot, then one per day up to the last."""
    bounds = [f"'{d.isoformat()} 00:00:00'" for d in days]
    out = [f"{time_col} < {bounds[0]}"]
    out += [f"{time_col} >= {a} AND {time_col} < {b}" for a, b in itertools.pairwise(bounds)]
    return out


def _dump_table(engine: Engine, table: Table, time_col: str, days: Sequence[date]) -> _Members:
    members = _Members()
    pk = ", ".join(c.name for c in table.primary_key.columns)
    cols = [c.name for c in table.columns]
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        for i, where in enumerate(_segments(table, time_col, days)):
            if engine.dialect.name == "postgresql":
                header = ", HEADER true" if i == 0 else ""
                cur.copy_expert(
                    f"COPY (SELECT {', '.join(cols)} FROM {table.name} WHERE {where} "
                    f"ORDER BY {pk}) TO STDOUT WITH (FORMAT csv{header})",
                    members,
                )
            else:
                _sqlite_segment(cur, table, where, pk, members, header=i == 0)
            members.end_member()
        cur.close()
    finally:
        raw.close()
    return members


def _sqlite_segment(
    cur: Any, table: Table, where: str, pk: str, out: _Members, header: bool
) -> None:
    """Rows in PostgreSQL COPY's text forms, so backups read the same on both backends."""
    exprs = []
    for col in table.columns:
        if isinstance(col.type, DateTime):
            exprs.append(f"substr({col.name}, 1, 19)")
        elif isinstance(col.type, Boolean):
            exprs.append(f"CASE {col.name} WHEN 1 THEN 't' WHEN 0 THEN 'f' END")
        elif isinstance(col.type, Float):  # PostgreSQL prints 1.0 as "1"
            exprs.append(
                f"CASE WHEN {col.name} = CAST({col.name} AS INTEGER) "
                f"THEN CAST(CAST({col.name} AS INTEGER) AS TEXT) ELSE {col.name} END"
            )
        else:
            exprs.append(col.name)
    cur.execute(f"SELECT {', '.join(exprs)} FROM {table.name} WHERE {where} ORDER BY {pk}")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow([c.name for c in table.columns])
    while rows := cur.fetchmany(20_000):
        writer.writerows(rows)
        out.write(buf.getvalue())
        buf.seek(0)
        buf.truncate()
    out.write(buf.getvalue())


def write_backups(
    s3: Any,
    up: _Uploader,
    name: str,
    store: BackupStore,
    engine: Engine,
    tables: Sequence[tuple[Table, str]],
    days: Sequence[date],
) -> None:
    """`<prefix>YYYY-MM-DD/<table>.csv.gz` per day: point-in-time subsets (module docstring)."""
    big = TransferConfig(multipart_threshold=PUT_LIMIT, multipart_chunksize=16 * 1024 * 1024)
    for table, time_col in tables:
        members = _dump_table(engine, table, time_col, days)
        try:
            for day, end in zip(days, members.ends, strict=True):
                key = f"{store.prefix}{day.isoformat()}/{table.name}.csv.gz"
                if end <= PUT_LIMIT:
                    up.put(name, store.bucket, key, lambda end=end, m=members: m.read(end), end)
                else:
                    up.close_pending()
                    s3.upload_fileobj(_Prefix(members, end), store.bucket, key, Config=big)
                    up.stats.add(name, end)
            up.close_pending()  # the members' file is read by the uploads
        finally:
            members.close()


# -- all stores --------------------------------------------------------------------------------


def write_stores(
    s3: Any,
    datamap: DataMap,
    *,
    engine: Engine,
    population: Population,
    recording_keys: Sequence[str],
    tables: Sequence[tuple[Table, str]],
    log_days: int,
    backup_days: int,
    as_of: date,
    seed: int,
    contacts: int,
) -> StoreStats:
    """Every store of the data map the world knows how to fill; returns counts and timings.

    `contacts` is the world's size, which log volumes scale with. Log days end the day before
    `as_of` (complete days); backup snapshots run up to `as_of` itself (taken at its midnight).
    """
    stats = StoreStats()
    up = _Uploader(s3, stats)
    log_dates = [as_of - timedelta(days=i) for i in range(log_days, 0, -1)]
    backup_dates = [as_of - timedelta(days=i) for i in range(backup_days - 1, -1, -1)]
    try:
        for name, store in datamap.stores.items():
            started = time.perf_counter()
            stats.objects.setdefault(name, 0)
            stats.stored_bytes.setdefault(name, 0)
            if isinstance(store, LogStore):
                lines, raw = write_logs(up, name, store, population, log_dates, contacts, seed)
                stats.log_lines += lines
                stats.log_bytes += raw
            elif isinstance(store, RecordingStore):
                if store.table == RECORDING_TABLE:
                    write_recordings(up, name, store, recording_keys, seed)
            else:
                write_backups(s3, up, name, store, engine, tables, backup_dates)
            up.close_pending()
            stats.seconds[name] = time.perf_counter() - started
    finally:
        up.close()
    return stats
