"""A deliberately naive second opinion on an erasure: is any target identity still anywhere?

Why naive, on purpose (issue 14, R16.1): the eraser finds personal information where the data map
says it is (identity columns, the relation chain, the log fields the map names) with a matcher
tuned for speed. If the post-erasure check reused that matcher, whatever the eraser cannot see
(an e-mail at an unmapped JSON path, a phone in an unmapped column, a non-JSON line) the check
could not see either, and the receipt would claim "zero residue" falsely. This module shares no
matching code with the eraser (`compliance.deletion.logs`, `compliance.deletion.erase_sql`,
`compliance.requests.resolve`):

- logs: every version of every object under each log store's prefix (every day folder and
  anything else there) is decompressed and its lower-cased bytes are searched for every target
  value's spellings as raw bytes, wherever they stand in a line (any JSON path, any field, not
  JSON at all);
- SQL: every text-like column (String, Text, CHAR, VARCHAR, JSON as reflected from the live
  database, mapped or not) of every mapped table is searched with `LIKE '%value%'`, restricted to
  the request's tenant through the table's own tenant path (plain reflected tables joined here).

Spellings ("variants"): e-mails lower-cased (the haystack is lower-cased too, so any ASCII case
matches); phones in E.164, international and national forms from `phonenumbers` plus the common
NANP spellings (`+14155550123`, `14155550123`, `4155550123`, `(415) 555-0123`, `415-555-0123`,
`415.555.0123`, `415 555 0123`...), in SQL compared on the column's digits (spaces, dashes, dots
and brackets removed); client contact ids and record ids as given. A hit counts only when the
value is not glued to a letter or digit on an edge that is itself a letter or digit
(`ajohn@x.com` is not `john@x.com`; `to=john@x.com` is).

Short ids: record ids (our primary keys, `17`) and contact ids shorter than MIN_ID_CHARS (or
shorter than MIN_MIXED_ID_CHARS when not all digits) would match unrelated numbers everywhere, so
they are not searched as bytes or text. Instead SQL checks that no row of a mapped table the
consumer's rows are erased from still references an erased consumer's key, and that no mapped
`contact_id` identity column of the tenant still equals a short contact id. The receipt says so.

Tenants: a log object is not per tenant. A line holding a hit counts against a request unless the
line is a JSON object whose tenant field (the data map's `tenant_field`) holds one value that is
another tenant's; unparseable lines, lines without the field and lines with conflicting tenant
values count (conservatively). Rows whose tenant path cannot be followed (orphans of a deleted
parent) are searched for every tenant's values.

Kept is not residue (R18, R19): tables with `erase: keep` and `erase: keep` columns of `mask`
tables are not searched (listed in the receipt with their exception codes), the rest of a kept
row is (R16.2); backups are not
searched (R18: kept, tombstoned, re-applied on restore); deferred requests (legal holds) are not
in the batch's erased scope, so their values are not searched. A scoped legal hold (R19) keeps
part of a request: the held tables' rows of the held consumers are not searched (the rows of the
tables below a held table too: they are part of the held records), the parent rows they need are
searched like any other row (their personal columns must be erased, R16.2), a held consumer's
key in a held or parent table is not residue, and the request's values are not searched in a log
store the hold keeps. One more thing is not residue: an
identity found on a target's rows (not one the request gave), sitting in a mapped identity column
of a row owned by a consumer outside the batch, is that other consumer's own identity (a shared
household phone, resolved one step only on purpose, see `compliance.requests.resolve`). Everything
else is
residue: the verdict names the store and object key, or the table and column, with a count, never
the value.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import phonenumbers
import sqlalchemy as sa
from sqlalchemy import Engine

from compliance.core.datamap.graph import chain_to_consumer, tenant_path
from compliance.core.datamap.model import (
    BackupStore,
    ColumnErase,
    DataMap,
    IdentityType,
    LogStore,
    RecordingStore,
    SqlSystem,
    TableErase,
)
from compliance.core.sqlmap import KeyTypeError, typed_value, typed_values

try:  # decompression only (no matching): isal is several times faster than zlib
    from isal import igzip as _gzip
    from isal.isal_zlib import error as _IsalError

    _CORRUPT: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error, _IsalError)
except ImportError:  # pragma: no cover - isal is in requirements
    _gzip = gzip  # type: ignore[misc]
    _CORRUPT = (OSError, EOFError, zlib.error)

MIN_ID_CHARS = 8  # ids of digits only: shorter ones would match unrelated numbers
MIN_MIXED_ID_CHARS = 4  # ids with a letter or symbol ("C-3-000123")
READ_SIZE = 8 << 20  # decompressed bytes searched at a time (cut at the last newline)
FEW_NEEDLES = 32  # up to this many spellings, each is searched directly; beyond, tokens first
SQL_TERMS = 64  # LIKE terms per statement
PHONE_STRIP = " -().+"  # removed from a column's text before its digits are compared
VERDICTS = "verdicts/"

_WORD = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789") | frozenset(range(0x80, 0x100))
_TOKEN = re.compile(rb"[a-z0-9\x80-\xff]+")
_GZIP_MAGIC = b"\x1f\x8b"


class TargetsLike(Protocol):
    """What the oracle reads from `erasure.Targets` (kept structural: no import cycle)."""

    requests: dict[str, dict[str, Any]]
    consumers: dict[str, dict[str, list[str]]]
    given: dict[str, dict[str, list[str]]]
    identities: dict[str, dict[str, list[str]]]

    def active_refs(self) -> list[str]: ...


# --- what to look for ---------------------------------------------------------------------------


def searchable_id(value: str) -> bool:
    """Long enough to be searched as text without matching unrelated numbers (module doc)."""
    text = value.strip()
    if text.isdigit():
        return len(text) >= MIN_ID_CHARS
    return len(text) >= MIN_MIXED_ID_CHARS


def phone_digits(value: str) -> set[str]:
    """The national significant number, alone and after its country code: every spelling of the
    phone, once spaces, dashes, dots, brackets and "+" are removed, holds one of these bounded
    by non-digits. The first is the shortest (what SQL searches for)."""
    try:
        number = phonenumbers.parse(value, "US")
        nsn = phonenumbers.national_significant_number(number)
        return {nsn, f"{number.country_code}{nsn}"} if nsn else set()
    except phonenumbers.NumberParseException:
        digits = re.sub(r"\D", "", value)
        return {digits} if len(digits) >= 7 else set()


def phone_spellings(value: str) -> set[str]:
    """E.164, international, national and the common NANP spellings of one phone number."""
    out = {value.strip().lower()}
    try:
        number = phonenumbers.parse(value, "US")
    except phonenumbers.NumberParseException:
        digits = re.sub(r"\D", "", value)
        return out | ({digits} if len(digits) >= 7 else set())
    fmt = phonenumbers.PhoneNumberFormat
    e164 = phonenumbers.format_number(number, fmt.E164)
    nsn = phonenumbers.national_significant_number(number)
    cc = str(number.country_code)
    out |= {
        e164,
        e164[1:],
        nsn,
        phonenumbers.format_number(number, fmt.INTERNATIONAL),
        phonenumbers.format_number(number, fmt.NATIONAL),
    }
    if cc == "1" and len(nsn) == 10:  # NANP by hand: what people and systems write
        a, b, c = nsn[:3], nsn[3:6], nsn[6:]
        for local in (f"({a}) {b}-{c}", f"({a}){b}-{c}", f"{a}-{b}-{c}", f"{a}.{b}.{c}"):
            out.add(local)
        out |= {f"{a} {b} {c}", f"1-{a}-{b}-{c}", f"1 {a} {b} {c}", f"1.{a}.{b}.{c}"}
        out |= {f"+1 {a} {b} {c}", f"+1-{a}-{b}-{c}", f"+1 ({a}) {b}-{c}", f"+1.{a}.{b}.{c}"}
    return {s.lower() for s in out if s}


@dataclass
class Value:
    """One target value of one tenant: how it is searched. Holds an identity: never leaves."""

    kind: IdentityType
    text: str
    tenant: str
    given: bool = False  # the request named it (not only found on the consumer's rows)

    @property
    def spellings(self) -> set[str]:
        if self.kind is IdentityType.email:
            return {self.text.strip().lower()}
        if self.kind is IdentityType.phone:
            return phone_spellings(self.text)
        return {self.text.strip().lower()} if searchable_id(self.text) else set()


def wanted_values(targets: TargetsLike, store: str | None = None) -> list[Value]:
    """Every identity value of every request in the batch's erased scope (deferred excluded;
    for a log `store`, requests a legal hold keeps there excluded, R19)."""
    found: dict[tuple[str, IdentityType, str], Value] = {}
    held_stores: dict[str, list[str]] = getattr(targets, "held_stores", {}) or {}
    for ref in targets.active_refs():
        if store is not None and store in held_stores.get(ref, []):
            continue
        tenant = str(targets.requests[ref]["client_id"])
        given = {
            (IdentityType(k), _norm(IdentityType(k), v))
            for k, vs in targets.given.get(ref, {}).items()
            for v in vs
        }
        for kind_text, values in targets.identities.get(ref, {}).items():
            kind = IdentityType(kind_text)
            for raw in values:
                text = str(raw).strip()
                if not text:
                    continue
                key = (tenant, kind, _norm(kind, text))
                value = found.setdefault(key, Value(kind, text, tenant))
                value.given = value.given or (kind, _norm(kind, text)) in given
    return list(found.values())


def request_values(targets: TargetsLike, ref: str) -> list[Value]:
    """One request's values (for its receipt's counts)."""
    tenant = str(targets.requests[ref]["client_id"])
    return [
        Value(IdentityType(kind), str(v).strip(), tenant)
        for kind, values in sorted(targets.identities.get(ref, {}).items())
        for v in sorted(set(values))
        if str(v).strip()
    ]


def _norm(kind: IdentityType, text: str) -> str:
    return text.strip().lower() if kind is IdentityType.email else text.strip()


# --- the verdict ----------------------------------------------------------------------------------


@dataclass
class Verdict:
    """What the oracle searched and found: counts, keys, table and column names, never a value."""

    residue: Counter[str] = field(default_factory=Counter)  # "store:key" or "system:table.column"
    logs: dict[str, dict[str, int]] = field(default_factory=dict)  # store -> counts
    sql: dict[str, dict[str, Any]] = field(default_factory=dict)  # system -> counts, skipped
    unreadable: list[str] = field(default_factory=list)  # "store:key" that could not be read

    @property
    def clean(self) -> bool:
        return not self.residue and not self.unreadable

    def describe(self) -> str:
        """The failure message: where and how many, never what."""
        parts = [f"{where} ({n})" for where, n in sorted(self.residue.items())]
        parts += [f"{where} (unreadable, cannot be verified)" for where in sorted(self.unreadable)]
        return "; ".join(parts)


# --- logs: raw bytes ------------------------------------------------------------------------------


class _Needles:
    """Spellings (lower-cased bytes) -> tenants looking for them, with a token pre-filter."""

    def __init__(self, values: Iterable[Value]) -> None:
        tenants: dict[bytes, set[str]] = defaultdict(set)
        for value in values:
            for spelling in value.spellings:
                tenants[spelling.encode()].add(value.tenant)
        self.tenants = {k: frozenset(v) for k, v in tenants.items()}
        self.tokens = {k: frozenset(_TOKEN.findall(k)) for k in self.tenants}

    def __len__(self) -> int:
        return len(self.tenants)

    def candidates(self, low: bytes) -> list[bytes]:
        """Spellings that may occur in `low`: with many, only those whose every letter-and-digit
        run is a whole run of `low` too (a bounded occurrence implies that)."""
        if len(self.tenants) <= FEW_NEEDLES:
            return list(self.tenants)
        present = set(_TOKEN.findall(low))
        return [k for k, toks in self.tokens.items() if toks <= present]


def _bounded(low: bytes, needle: bytes) -> Iterator[int]:
    """Offsets of `needle` in `low` not glued to a letter or digit on a letter-or-digit edge."""
    size = len(needle)
    i = low.find(needle)
    while i >= 0:
        glued_left = i > 0 and needle[0] in _WORD and low[i - 1] in _WORD
        end = i + size
        glued_right = end < len(low) and needle[-1] in _WORD and low[end] in _WORD
        if not (glued_left or glued_right):
            yield i
        i = low.find(needle, i + 1)


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
        for needle in needles.candidates(low):
            for at in _bounded(low, needle):
                start = low.rfind(b"\n", 0, at) + 1
                if start in hit_lines:
                    continue
                if start not in seen:
                    end = low.find(b"\n", at)
                    seen[start] = _line_tenants(
                        block[start : None if end < 0 else end], tenant_field
                    )
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
    return [
        json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        for key in verdict_keys(s3, bucket, batch_prefix)
    ]


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


# --- SQL: text columns ----------------------------------------------------------------------------


def _text_like(column: sa.Column) -> bool:
    kind = column.type
    if isinstance(kind, sa.types.NullType):
        return True  # SQLite without a declared type: text may be stored there
    return isinstance(kind, sa.String | sa.JSON) and not isinstance(kind, sa.Enum)


@dataclass
class _Joined:
    """A mapped table outer-joined toward its tenant and consumer (plain reflected tables)."""

    base: sa.Table
    from_clause: sa.FromClause
    tenant: sa.ColumnElement
    consumer: sa.ColumnElement
    depth: int  # hops to the consumer table


def _join(md: sa.MetaData, system: SqlSystem, name: str) -> _Joined:
    hops = chain_to_consumer(system, name)
    tenant_hops, tenant_col = tenant_path(system, name)
    base = md.tables[name]
    if not hops:
        pk = system.tables[name].key_columns[0]
        return _Joined(base, base, base.c[tenant_col], base.c[pk], 0)
    needed = max(len(hops) - 1, len(tenant_hops))
    from_clause: sa.FromClause = base
    current: sa.FromClause = base
    joined: dict[str, sa.FromClause] = {name: base}
    for i, hop in enumerate(hops[:needed]):
        target = md.tables[hop.target_table].alias(f"oracle_hop{i}")
        # Outer joins: a row whose parent is gone (an orphan) is still searched.
        from_clause = from_clause.outerjoin(
            target, current.c[hop.column] == target.c[hop.target_column]
        )
        joined[hop.target_table] = target
        current = target
    last = hops[-1]
    tenant_table = joined[tenant_hops[-1].target_table] if tenant_hops else base
    return _Joined(
        base, from_clause, tenant_table.c[tenant_col], joined[last.table].c[last.column], len(hops)
    )


def _tenant_filter(joined: _Joined, tenant: str) -> sa.ColumnElement:
    try:
        return joined.tenant == typed_value(joined.tenant, tenant)
    except KeyTypeError:  # a tenant the column cannot hold owns no row
        return sa.false()


def _haystack(columns: list[sa.Column]) -> sa.ColumnElement:
    parts: list[sa.ColumnElement] = []
    for col in columns:
        plain = isinstance(col.type, sa.String) and not isinstance(col.type, sa.JSON)
        expr = col if plain else sa.cast(col, sa.Text)
        parts.append(sa.func.coalesce(expr, "", type_=sa.Text))
    text = parts[0]
    for part in parts[1:]:
        text = text + sa.literal("\n") + part
    return sa.func.lower(text)


def _digits(expr: sa.ColumnElement) -> sa.ColumnElement:
    for ch in PHONE_STRIP:
        expr = sa.func.replace(expr, ch, "")
    return expr


def _found_in(value: Value, cell: Any) -> bool:
    """The Python side of a SQL candidate: the value really is in this cell, bounded."""
    if cell is None:
        return False
    text = cell if isinstance(cell, str) else json.dumps(cell, default=str, ensure_ascii=False)
    text = text.lower()
    raw = text.encode()
    if any(next(_bounded(raw, s.encode()), None) is not None for s in value.spellings):
        return True
    if value.kind is IdentityType.phone:
        stripped = text.translate({ord(c): None for c in PHONE_STRIP}).encode()
        return any(
            next(_bounded(stripped, d.encode()), None) is not None for d in phone_digits(value.text)
        )
    return False


def _term(value: Value, low: sa.ColumnElement, digits: sa.ColumnElement) -> sa.ColumnElement:
    if value.kind is IdentityType.phone:
        forms = phone_digits(value.text)
        if forms:
            return digits.contains(min(forms, key=len), autoescape=True)
    spellings = sorted(value.spellings)
    return sa.or_(*(low.contains(s, autoescape=True) for s in spellings))


def verify_system(
    engine: Engine,
    sname: str,
    system: SqlSystem,
    values: list[Value],
    consumers: dict[str, set[str]],
    verdict: Verdict,
    held: dict[str, list[str]] | None = None,
) -> None:
    """Text columns of every mapped table, per tenant; then the short ids by key (module doc).

    `consumers`: tenant -> the erased consumers' keys (text) of this system. `held`: consumer
    key -> tables a legal hold keeps whole of it (R19): those rows are not searched, and the
    consumer's key in them and in the parent rows they need is not residue.
    """
    kept_of: dict[str, set[str]] = defaultdict(set)  # table -> consumers whose rows are kept
    exempt: dict[str, set[str]] = defaultdict(set)  # table -> consumers whose key may stay
    for consumer, tables in (held or {}).items():
        for t in tables:
            kept_of[t].add(consumer)
            exempt[t].add(consumer)
            for hop in chain_to_consumer(system, t):
                exempt[hop.target_table].add(consumer)
    inspector = sa.inspect(engine)
    present = set(inspector.get_table_names())
    missing = sorted(set(system.tables) - present)
    if missing:
        raise RuntimeError(f"{sname}: mapped tables missing from the database: {missing}")
    md = sa.MetaData()
    md.reflect(engine, only=sorted(system.tables))
    by_tenant: dict[str, list[Value]] = defaultdict(list)
    for value in values:
        if value.spellings:
            by_tenant[value.tenant].append(value)
    every = [v for vs in by_tenant.values() for v in vs]
    report: dict[str, Any] = {
        "tables": 0,
        "columns": 0,
        "values": len(every),
        "shared_identity": 0,
        "kept_tables": [],
        "kept_columns": [],
        "held_tables": sorted(kept_of),
    }
    verdict.sql[sname] = report
    with engine.connect() as conn:
        for tname, spec in sorted(system.tables.items()):
            if spec.erase is TableErase.keep:
                report["kept_tables"].append(
                    {"table": tname, "exception": spec.exception and spec.exception.value}
                )
                continue
            kept = {
                c
                for c, col in spec.columns.items()
                if spec.erase is TableErase.mask and col.erase is ColumnErase.keep
            }
            report["kept_columns"] += [
                {"table": tname, "column": c, "exception": spec.columns[c].exception.value}
                for c in sorted(kept)
                if spec.columns[c].exception is not None
            ]
            joined = _join(md, system, tname)
            columns = [c for c in joined.base.columns if _text_like(c) and c.name not in kept]
            report["tables"] += 1
            report["columns"] += len(columns)
            unheld = _not_held(joined, kept_of.get(tname, set()))
            if columns and every:
                _search_table(
                    conn, sname, tname, spec, joined, columns, by_tenant, consumers, verdict, unheld
                )
            checked = {t: ks - exempt.get(tname, set()) for t, ks in consumers.items()}
            _key_check(conn, sname, tname, spec, joined, checked, verdict)
        _short_contact_ids(conn, md, sname, system, values, verdict, kept_of)


def _not_held(joined: _Joined, consumers: set[str]) -> sa.ColumnElement:
    """Rows not kept under a legal hold (R19): not owned by one of the held consumers. Never
    NULL (an orphan, whose consumer cannot be told, is searched)."""
    typed = typed_values(joined.consumer, sorted(consumers))
    if not typed:
        return sa.true()
    return sa.or_(joined.consumer.is_(None), joined.consumer.not_in(typed))


def _search_table(
    conn, sname, tname, spec, joined, columns, by_tenant, consumers, verdict, unheld=None
):
    """Rows of each tenant holding one of its values; then rows whose tenant cannot be told
    (an orphan whose parent is gone), against every tenant's values."""
    low = _haystack(columns)
    digits = _digits(low)
    identity_cols = {c for c, col in spec.columns.items() if col.identity is not None}
    passes = [
        (tenant, _tenant_filter(joined, tenant), vs) for tenant, vs in sorted(by_tenant.items())
    ]
    if joined.tenant.table is not joined.base or joined.tenant.nullable:
        passes.append((None, joined.tenant.is_(None), [v for vs in by_tenant.values() for v in vs]))
    for tenant, where, values in passes:
        erased = consumers.get(tenant, set()) if tenant is not None else set()
        for i in range(0, len(values), SQL_TERMS):
            chunk = values[i : i + SQL_TERMS]
            stmt = (
                sa.select(joined.consumer, *columns)
                .select_from(joined.from_clause)
                .where(where)
                .where(unheld if unheld is not None else sa.true())
                .where(sa.or_(*(_term(v, low, digits) for v in chunk)))
            )
            for row in conn.execute(stmt):
                consumer, cells = row[0], row[1:]
                for col, cell in zip(columns, cells, strict=True):
                    hits = [v for v in chunk if _found_in(v, cell)]
                    if not hits:
                        continue
                    shared = (  # another consumer's own identity, one we only found (module doc)
                        tenant is not None
                        and col.name in identity_cols
                        and consumer is not None
                        and str(consumer) not in erased
                        and not any(v.given for v in hits)
                    )
                    if shared:
                        verdict.sql[sname]["shared_identity"] += 1
                    else:
                        verdict.residue[f"{sname}:{tname}.{col.name}"] += 1


def _key_check(conn, sname, tname, spec, joined, consumers, verdict) -> None:
    """Rows still referencing an erased consumer where the map says they are erased."""
    if spec.erase is TableErase.mask:
        if joined.depth != 1:
            return  # the kept row references the consumer through a parent: kept by the map
        rel = spec.relation
        col = spec.columns.get(rel.column) if rel else None
        if col is None or col.erase is ColumnErase.keep:
            return  # the reference itself is kept (R19)
    keys = sorted({k for ks in consumers.values() for k in ks})
    if not keys or joined.depth > 1:
        return  # deeper rows are reached through their parents (searched above when orphaned)
    typed = typed_values(joined.consumer, keys)
    for i in range(0, len(typed), 1000):
        stmt = (
            sa.select(sa.func.count())
            .select_from(joined.from_clause)
            .where(joined.consumer.in_(typed[i : i + 1000]))
        )
        n = int(conn.execute(stmt).scalar() or 0)
        if n:
            verdict.residue[f"{sname}:{tname}.{joined.consumer.name}"] += n


def _short_contact_ids(conn, md, sname, system, values, verdict, kept_of=None) -> None:
    """Contact ids too short to search as text: no mapped contact_id column may still equal
    one in its tenant (erase: keep tables and kept columns excepted)."""
    short = [v for v in values if v.kind is IdentityType.contact_id and not v.spellings]
    if not short:
        return
    for tname, spec in sorted(system.tables.items()):
        if spec.erase is TableErase.keep:
            continue
        joined = _join(md, system, tname)
        for cname, col in spec.columns.items():
            if col.identity is not IdentityType.contact_id or col.erase is ColumnErase.keep:
                continue
            column = joined.base.c[cname]
            for value in short:
                try:
                    typed = typed_value(column, value.text)
                except KeyTypeError:
                    continue
                stmt = (
                    sa.select(sa.func.count())
                    .select_from(joined.from_clause)
                    .where(_tenant_filter(joined, value.tenant))
                    .where(_not_held(joined, (kept_of or {}).get(tname, set())))
                    .where(column == typed)
                )
                n = int(conn.execute(stmt).scalar() or 0)
                if n:
                    verdict.residue[f"{sname}:{tname}.{cname}"] += n


# --- the whole batch ------------------------------------------------------------------------------


def verify(
    dm: DataMap,
    engines: dict[str, Engine],
    store_clients: dict[str, Any],
    targets: TargetsLike,
    shard_verdicts: list[dict[str, Any]] | None = None,
) -> Verdict:
    """Search every mapped SQL system and every log store for the batch's targets."""
    values = wanted_values(targets)
    verdict = Verdict()
    active = targets.active_refs()
    if not active:
        return verdict  # every request deferred (R19): nothing was erased, nothing to verify
    held: dict[str, dict[str, list[str]]] = getattr(targets, "held", {}) or {}
    for sname, system in sorted(dm.systems.items()):
        consumers: dict[str, set[str]] = defaultdict(set)
        for ref in active:
            tenant = str(targets.requests[ref]["client_id"])
            consumers[tenant] |= {str(c) for c in targets.consumers.get(sname, {}).get(ref, [])}
        verify_system(
            engines[sname], sname, system, values, consumers, verdict, held.get(sname) or None
        )
    per_store = {
        name: wanted_values(targets, store=name)
        for name, store in dm.stores.items()
        if isinstance(store, LogStore)
    }
    verify_logs(dm, store_clients, values, list(shard_verdicts or []), verdict, per_store)
    return verdict


def statement(dm: DataMap, verdict: Verdict, values: list[Value]) -> dict[str, Any]:
    """The receipt's account of the independent search (one request's values): how, how much,
    what was skipped and why. Counts and names only."""
    by_kind = Counter(v.kind.value for v in values if v.spellings)
    spellings = sum(len(v.spellings) for v in values)
    short = sum(1 for v in values if not v.spellings)
    out: list[dict[str, Any]] = []
    for name, counts in sorted(verdict.logs.items()):
        out.append(
            {
                "store": name,
                "method": (
                    f"independent raw-byte search of {counts['versions']} decompressed object "
                    f"versions ({counts['objects']} objects) for {sum(by_kind.values())} values "
                    f"with variants ({spellings} spellings: e-mails in any case, phones in E.164 "
                    "and national forms, ids as given)"
                ),
                "objects": counts["objects"],
                "versions": counts["versions"],
                "bytes": counts["bytes"],
                "residue": 0,
            }
        )
    for sname, report in sorted(verdict.sql.items()):
        out.append(
            {
                "system": sname,
                "method": (
                    f"text columns of {report['tables']} tables ({report['columns']} columns, "
                    "reflected from the database, mapped or not) searched in SQL within the "
                    f"request's tenant for {sum(by_kind.values())} values with variants; rows of "
                    "erased tables checked for the consumers' keys"
                ),
                "tables": report["tables"],
                "columns": report["columns"],
                "residue": 0,
                "skipped": [
                    {**k, "why": "erase: keep", "rule": "R19"} for k in report["kept_tables"]
                ]
                + [{**k, "why": "erase: keep", "rule": "R19"} for k in report["kept_columns"]]
                + [
                    {"table": t, "why": "rows kept under a legal hold", "rule": "R19"}
                    for t in report.get("held_tables", [])
                ],
                "other_consumers_identity": report["shared_identity"],
            }
        )
    for name, store in sorted(dm.stores.items()):
        if isinstance(store, BackupStore):
            out.append(
                {
                    "store": name,
                    "skipped": "backups are kept and not searched: tombstoned, the deletion is "
                    "re-applied on restore",
                    "rule": "R18",
                }
            )
        elif isinstance(store, RecordingStore):
            out.append(
                {"store": name, "method": "every version of each erased recording key listed"}
            )
    return {
        "values": dict(sorted(by_kind.items())),
        "short_ids": (
            f"{short} record or contact ids shorter than {MIN_ID_CHARS} digits (or "
            f"{MIN_MIXED_ID_CHARS} characters) are not searched as bytes or text (they would "
            "match unrelated numbers); verified in SQL instead: no row of an erased table "
            "references the consumer's key and no contact id column still holds them"
        ),
        "searched": out,
    }
