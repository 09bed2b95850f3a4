"""The audit ledger (R20, R22): an append-only, tamper-evident record of what the jobs did.

Table `cj_ledger` in the compliance state database. Every entry carries a MAC chained to the
previous one:

    mac = HMAC-SHA256(hash_key, prev_mac || canonical_json(seq, at, kind, ref, payload, idem))

with `prev_mac` of the first entry = 64 zeros. The key is the deployment secret
COMPLIANCE_HASH_KEY, so someone who can write the table but lacks the key cannot recompute the
chain after editing, deleting, reordering or inserting entries; `verify` finds the first seq
where the chain breaks. What the table alone cannot show is a cut-off tail (dropping the newest
entries leaves a valid shorter chain): keep a `head()` checkpoint elsewhere and pass it to
`verify(expected_head=...)`. See docs/ledger.md.

Entries hold counts, rule ids, batch ids, S3 keys and keyed hashes only. `append` refuses values
that look like e-mail addresses or phone numbers, so personal data cannot slip in by mistake.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, NamedTuple

from sqlalchemy import Column, Engine, Index, Integer, String, Table, Text, select, update
from sqlalchemy.engine import Connection

from compliance.core.statedb import UTCDateTime, insert_if_absent, metadata, transaction, utcnow

GENESIS_MAC = "0" * 64
_PAGE = 1000

cj_ledger = Table(
    "cj_ledger",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", UTCDateTime, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("ref", String(128)),
    Column("payload", Text, nullable=False),  # canonical JSON, exactly the text that was MACed
    Column("idempotency_key", String(200), unique=True),
    Column("prev_mac", String(64), nullable=False),
    Column("mac", String(64), nullable=False),
)
Index("ix_cj_ledger_ref", cj_ledger.c.ref)  # one request's entries, on the desk's request page

# One row that every writer updates first: on PostgreSQL a row lock, on SQLite the database
# write lock (the first statement of the transaction is a write, i.e. BEGIN IMMEDIATE
# semantics). Either way appends are serialised and two writers cannot fork the chain.
cj_ledger_lock = Table(
    "cj_ledger_lock",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("appends", Integer, nullable=False),
)

KINDS = (
    "request_accepted",
    "request_rejected",
    "request_extended",
    "erasure_completed",
    "access_delivered",
    "notice_sent",
    "retention_sweep",
    "backup_restore_purged",
)  # the usual ones; any lowercase token is accepted

_KIND = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# E.164 (how the CRM stores phones) and separated North-American forms. Bare digit runs are not
# flagged: client request ids and epoch seconds look like that.
_PHONE = re.compile(
    r"(?<![\w+])\+(?:\d[\s().-]?){7,14}\d(?!\w)"
    r"|(?<![\w])\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}(?!\w)"
)


@dataclass(frozen=True)
class Entry:
    """What to append. `ref` is a keyed hash or a batch id; `payload` counts, rule ids, keys."""

    kind: str
    ref: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None  # appending the same key again is a no-op


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    at: datetime
    kind: str
    ref: str | None
    payload: dict[str, Any]
    idempotency_key: str | None
    prev_mac: str
    mac: str


class Head(NamedTuple):
    """A checkpoint of the chain: the last seq and its MAC ("SEQ:MAC" as text)."""

    seq: int
    mac: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.mac}"

    @classmethod
    def parse(cls, text: str) -> Head:
        seq, sep, mac = text.strip().partition(":")
        if not sep or not seq.isdigit() or not re.fullmatch(r"[0-9a-f]{64}", mac):
            raise ValueError("a head checkpoint is SEQ:MAC (MAC = 64 lowercase hex digits)")
        return cls(int(seq), mac)


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int  # entries checked
    first_bad_seq: int | None = None
    problem: str | None = None
    head: Head | None = None  # the last entry checked (a checkpoint to keep when ok)


# --------------------------------------------------------------------------- MAC


def _json(obj: Any) -> str:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_json_default
    )


def _json_default(obj: Any) -> Any:
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    if isinstance(obj, set | frozenset | tuple):
        return sorted(obj)
    raise TypeError(f"ledger payloads hold JSON values only, not {type(obj).__name__}")


def _at_text(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def compute_mac(
    hash_key: bytes,
    prev_mac: str,
    seq: int,
    at: datetime,
    kind: str,
    ref: str | None,
    payload_text: str,
    idempotency_key: str | None,
) -> str:
    body = _json(
        {
            "seq": seq,
            "at": _at_text(at),
            "kind": kind,
            "ref": ref,
            "payload": payload_text,
            "idem": idempotency_key,
        }
    )
    return hmac.new(hash_key, prev_mac.encode() + body.encode(), hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------- PII guard


def reject_pii(value: Any, where: str = "payload") -> None:
    """Raise ValueError if a string (or dict key) looks like an e-mail address or phone number.

    The message names where the value sits (e.g. `payload.recipients[0]`), never the value.
    """
    if isinstance(value, str):
        if _EMAIL.search(value):
            raise ValueError(f"{where} looks like an e-mail address; the ledger takes no PII")
        if _PHONE.search(value):
            raise ValueError(f"{where} looks like a phone number; the ledger takes no PII")
    elif isinstance(value, dict):
        for i, (k, v) in enumerate(value.items()):
            reject_pii(str(k), f"{where}.<key #{i + 1}>")
            reject_pii(v, f"{where}.{k}")
    elif isinstance(value, list | tuple | set | frozenset):
        for i, v in enumerate(value):
            reject_pii(v, f"{where}[{i}]")


def _check(entry: Entry) -> str:
    if not _KIND.match(entry.kind):
        raise ValueError(f"ledger kind {entry.kind!r} must be a lowercase token")
    if entry.ref is not None and len(entry.ref) > 128:
        raise ValueError("ledger ref is a keyed hash or a batch id (at most 128 characters)")
    if entry.idempotency_key is not None and len(entry.idempotency_key) > 200:
        raise ValueError("idempotency_key is at most 200 characters")
    if not isinstance(entry.payload, dict):
        raise ValueError("ledger payload must be a dict")
    reject_pii(entry.ref, "ref")
    reject_pii(entry.idempotency_key, "idempotency_key")
    reject_pii(entry.payload, "payload")
    return _json(entry.payload)


# --------------------------------------------------------------------------- writing


def seed_lock_row(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(insert_if_absent(conn, cj_ledger_lock).values(id=1, appends=0))


def _lock(conn: Connection) -> None:
    bump = update(cj_ledger_lock).where(cj_ledger_lock.c.id == 1)
    if not conn.execute(bump.values(appends=cj_ledger_lock.c.appends + 1)).rowcount:
        conn.execute(insert_if_absent(conn, cj_ledger_lock).values(id=1, appends=0))
        conn.execute(bump.values(appends=cj_ledger_lock.c.appends + 1))


def append(bind: Engine | Connection, hash_key: bytes, entries: Sequence[Entry]) -> list[int]:
    """Append entries in one transaction; return the seq of each (the existing one for a key
    appended before, so reruns neither duplicate entries nor fail).

    Serialised across processes by the lock row; the seq primary key is the last guard. Given
    a connection, the entries commit with the caller's transaction (and the lock is held
    until then).
    """
    if not hash_key:
        raise ValueError("the ledger needs the deployment hash key")
    texts = [_check(e) for e in entries]  # before any I/O: a PII slip writes nothing
    if not entries:
        return []
    with transaction(bind) as conn:
        _lock(conn)
        keys = sorted({e.idempotency_key for e in entries if e.idempotency_key})
        known: dict[str, int] = {}
        for i in range(0, len(keys), 500):
            q = select(cj_ledger.c.idempotency_key, cj_ledger.c.seq).where(
                cj_ledger.c.idempotency_key.in_(keys[i : i + 500])
            )
            known.update({k: s for k, s in conn.execute(q)})
        last = conn.execute(
            select(cj_ledger.c.seq, cj_ledger.c.mac).order_by(cj_ledger.c.seq.desc()).limit(1)
        ).first()
        seq, prev = (last[0], last[1]) if last else (0, GENESIS_MAC)
        at = utcnow()
        out: list[int] = []
        rows: list[dict[str, Any]] = []
        for entry, text in zip(entries, texts, strict=True):
            if entry.idempotency_key and entry.idempotency_key in known:
                out.append(known[entry.idempotency_key])
                continue
            seq += 1
            mac = compute_mac(
                hash_key, prev, seq, at, entry.kind, entry.ref, text, entry.idempotency_key
            )
            rows.append(
                {
                    "seq": seq,
                    "at": at,
                    "kind": entry.kind,
                    "ref": entry.ref,
                    "payload": text,
                    "idempotency_key": entry.idempotency_key,
                    "prev_mac": prev,
                    "mac": mac,
                }
            )
            if entry.idempotency_key:
                known[entry.idempotency_key] = seq
            out.append(seq)
            prev = mac
        if rows:
            conn.execute(cj_ledger.insert(), rows)
    return out


# --------------------------------------------------------------------------- reading


def head(engine: Engine) -> Head | None:
    """The newest entry's (seq, mac): store it outside the database to detect a cut-off tail."""
    with engine.connect() as conn:
        row = conn.execute(
            select(cj_ledger.c.seq, cj_ledger.c.mac).order_by(cj_ledger.c.seq.desc()).limit(1)
        ).first()
    return Head(row[0], row[1]) if row else None


def entries(
    engine: Engine, kind: str | None = None, ref: str | None = None, after_seq: int = 0
) -> list[LedgerEntry]:
    """Entries in seq order, optionally filtered (for receipts, reports and tests)."""
    q = select(cj_ledger).where(cj_ledger.c.seq > after_seq).order_by(cj_ledger.c.seq)
    if kind is not None:
        q = q.where(cj_ledger.c.kind == kind)
    if ref is not None:
        q = q.where(cj_ledger.c.ref == ref)
    with engine.connect() as conn:
        return [
            LedgerEntry(
                seq=m["seq"],
                at=m["at"],
                kind=m["kind"],
                ref=m["ref"],
                payload=json.loads(m["payload"]),
                idempotency_key=m["idempotency_key"],
                prev_mac=m["prev_mac"],
                mac=m["mac"],
            )
            for m in conn.execute(q).mappings()
        ]


def _pages(engine: Engine) -> Iterable[Any]:
    after = None
    while True:
        q = select(cj_ledger).order_by(cj_ledger.c.seq).limit(_PAGE)
        if after is not None:
            q = q.where(cj_ledger.c.seq > after)
        with engine.connect() as conn:
            page = conn.execute(q).mappings().all()
        if not page:
            return
        yield from page
        after = page[-1]["seq"]


def verify(
    engine: Engine, hash_key: bytes, expected_head: Head | tuple[int, str] | None = None
) -> VerifyResult:
    """Walk the chain from seq 1 and report the first entry that does not check out.

    Detects edited fields (MAC mismatch), deleted entries (a seq gap), reordered entries and
    inserted or forged ones (broken prev_mac link or MAC mismatch). A cut-off tail is detected
    only against `expected_head`, a (seq, mac) checkpoint taken earlier with `head()`.
    """
    want = Head(*expected_head) if expected_head is not None else None
    expected_seq, prev, count = 1, GENESIS_MAC, 0
    last: Head | None = None
    mac_at_checkpoint: str | None = None
    for row in _pages(engine):
        seq = row["seq"]
        if seq != expected_seq:
            problem = f"entry {expected_seq} is missing (the next entry is {seq})"
            return VerifyResult(False, count, expected_seq, problem, last)
        if row["prev_mac"] != prev:
            problem = (
                f"entry {seq} does not link to entry {seq - 1} "
                "(entries reordered, inserted or rewritten)"
            )
            return VerifyResult(False, count, seq, problem, last)
        mac = compute_mac(
            hash_key,
            prev,
            seq,
            row["at"],
            row["kind"],
            row["ref"],
            row["payload"],
            row["idempotency_key"],
        )
        if not hmac.compare_digest(mac, row["mac"]):
            problem = (
                f"entry {seq} fails its MAC (its fields or its MAC were changed, or it was "
                "forged; or COMPLIANCE_HASH_KEY is not the key that wrote it)"
            )
            return VerifyResult(False, count, seq, problem, last)
        count += 1
        prev, expected_seq, last = mac, seq + 1, Head(seq, mac)
        if want is not None and seq == want.seq:
            mac_at_checkpoint = mac
    if want is not None:
        ends = last.seq if last else 0
        if ends < want.seq:
            problem = (
                f"the ledger ends at entry {ends} but the checkpoint is entry {want.seq} "
                "(tail truncated)"
            )
            return VerifyResult(False, count, ends + 1, problem, last)
        if not hmac.compare_digest(mac_at_checkpoint or "", want.mac):
            problem = f"entry {want.seq} does not match the checkpoint (the chain was rewritten)"
            return VerifyResult(False, count, want.seq, problem, last)
    return VerifyResult(True, count, None, None, last)


def _mac_at(engine: Engine, seq: int) -> str | None:
    with engine.connect() as conn:
        return conn.execute(select(cj_ledger.c.mac).where(cj_ledger.c.seq == seq)).scalar()
