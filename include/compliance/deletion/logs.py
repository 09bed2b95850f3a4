"""One scanning engine for JSON-lines gzip log objects: erasure (drop or redact) and access reports.

A line matches request reference R when its tenant field equals R's tenant AND one of its identity
fields (the store's `fields` that have an `identity`) holds one of R's values of that identity type
(e-mails compared case-insensitively). Lines of another tenant, or without the tenant field, never
match. Matching is decided on the parsed line, never on a substring. Fields (the tenant field too)
are paths (`compliance.core.datamap.paths`): `actor.email`, `recipients[].email`, `meta\\.v2.ip`,
so an
identity nested in objects or arrays is matched like a top-level one (issue 14).

Speed: most lines match nothing, so no line is parsed unless a byte-level pre-filter says it may
match. Objects are decompressed (isal when installed) in blocks of whole lines; one regular
expression pulls every identity field's value out of the lower-cased block in C, and a set
intersection with the target values tells whether the block can hold a match at all. Only then are
the candidate lines located and parsed. The pre-filter works on each path's last key (its leaf key):
`"email": "..."` is extracted wherever it stands, at any depth, so it over-approximates the lines a
nested path can match and never misses one. It errs only on the side of candidates: lines where the
fast extraction could be wrong (an identity value or a key holding a JSON escape, a non-ASCII
e-mail, an identity field holding an array) are always parsed. The parser keeps every key at every
depth, duplicates included, so a duplicated identity key cannot hide a value.

Erasure (`rewrite_object`) keeps every non-matching line byte for byte: the output is the input's
decompressed bytes with the matching lines cut out (or replaced by their redaction, which replaces
exactly the values at the personal fields' paths and keeps every other byte). The compressed
input is spooled while it is scanned, so an object is read from S3 once; an object without a match
is never written. A rewrite is a conditional PUT (If-Match on the ETag that was scanned) carrying
`Metadata {"cj-rewritten": batch_id}`, followed by the deletion of the key's non-current versions;
`clean_versions` finishes that deletion after a crash.

What leaves this module for XCom or logs (`ObjectResult.to_dict`, `ShardResult.to_dict`, `repr`)
holds counts, keys and request references only, never a line or an identity value.
"""

from __future__ import annotations

import bisect
import gzip
import json
import logging
import re
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal
from urllib.parse import urlencode

from botocore.exceptions import ClientError

from compliance.core import checkpoints
from compliance.core.datamap import paths as fpaths
from compliance.core.datamap.model import IdentityType, LogStore
from compliance.core.stores.s3 import delete_versions, list_keys, list_prefixes

try:  # isal's igzip is a drop-in for gzip, several times faster both ways
    from isal import igzip as _gzip
    from isal.isal_zlib import error as _IsalError

    COMPRESS_LEVEL = 1  # isal's scale is 0-3; 1 is about zlib's 2-3 in size, far faster
    _CORRUPT: tuple[type[BaseException], ...] = (
        gzip.BadGzipFile,
        EOFError,
        zlib.error,
        _IsalError,
    )
except ImportError:  # pragma: no cover - isal is in requirements
    _gzip = gzip  # type: ignore[misc]
    COMPRESS_LEVEL = 3
    _CORRUPT = (gzip.BadGzipFile, EOFError, zlib.error)

log = logging.getLogger(__name__)

REWRITTEN_META = "cj-rewritten"  # user metadata on a version this module wrote
REDACTED = "[redacted]"
READ_SIZE = 4 << 20  # decompressed bytes read at a time (then cut at the last newline)
SCAN_SIZE = 128 << 10  # bytes pre-filtered at a time: locating one hit costs a search over this
FEW_VALUES = 16  # target values up to which the pre-filter searches them one by one
SPOOL_MEMORY = 32 << 20  # spooled files (input copy, output) move to disk beyond this
PUT_LIMIT = 5 << 30  # S3's single-PUT limit; larger outputs go up as a multipart upload
PART_SIZE = 64 << 20

_NUMBER = re.compile(rb"-?[0-9]+")
_BEFORE_NUMBER = frozenset((b":", b" ", b"\t", b"[", b","))
_AFTER_NUMBER = frozenset((b",", b"}", b"]", b" ", b"\t", b"\r", b"\n"))
_REDACTED_JSON = json.dumps(REDACTED)
_NO_REFS: frozenset[str] = frozenset()


class LogFormatError(Exception):
    """An object under a log store is not gzip-compressed JSON lines (nothing was changed)."""


class ObjectChanged(Exception):
    """The object changed between its scan and its rewrite (If-Match failed): run again."""


# --- targets -----------------------------------------------------------------------------------


def _norm_target(itype: IdentityType, value: Any) -> str:
    text = str(value).strip()
    return text.lower() if itype is IdentityType.email else text


class Targets:
    """Who to look for: per tenant, identities (type, value) each tied to a request reference.

    Built from `{tenant: [(IdentityType, value, ref), ...]}`; the tenant is the string form of the
    client id. Values are expected normalised (e-mails lower-case, phones E.164, ids as strings);
    e-mails are lower-cased again and blanks dropped, to be safe.
    """

    def __init__(
        self, by_tenant: Mapping[Any, Iterable[tuple[IdentityType | str, Any, str]]]
    ) -> None:
        index: dict[str, dict[IdentityType, dict[str, set[str]]]] = {}
        for tenant, identities in by_tenant.items():
            for itype_raw, value, ref in identities:
                itype = IdentityType(itype_raw)
                norm = _norm_target(itype, value)
                if not norm:
                    continue
                table = index.setdefault(str(tenant), {}).setdefault(itype, {})
                table.setdefault(norm, set()).add(str(ref))
        self._index = {
            tenant: {
                itype: {value: frozenset(refs) for value, refs in table.items()}
                for itype, table in by_type.items()
            }
            for tenant, by_type in index.items()
        }
        self._matchers: dict[tuple[Any, ...], _Matcher] = {}

    @property
    def tenants(self) -> frozenset[str]:
        return frozenset(self._index)

    @property
    def refs(self) -> frozenset[str]:
        return frozenset(
            ref
            for by_type in self._index.values()
            for table in by_type.values()
            for refs in table.values()
            for ref in refs
        )

    def values(self, itype: IdentityType) -> frozenset[str]:
        """Every value of `itype`, over all tenants (for the pre-filter)."""
        return frozenset(v for by_type in self._index.values() for v in by_type.get(itype, ()))

    def lookup(self, tenant: str, itype: IdentityType, value: str) -> frozenset[str]:
        """References looking for `value` (already normalised) of `itype` in `tenant`."""
        return self._index.get(tenant, {}).get(itype, {}).get(value, _NO_REFS)

    def __len__(self) -> int:
        return sum(len(t) for by_type in self._index.values() for t in by_type.values())

    def __bool__(self) -> bool:
        return bool(self._index)

    def __repr__(self) -> str:  # no identity values: this may reach a log
        return f"Targets(tenants={len(self._index)}, identities={len(self)}, refs={len(self.refs)})"


# --- the engine --------------------------------------------------------------------------------


def _scalar(value: Any) -> str | None:
    """A JSON scalar as the string a target is compared with (ids may be logged as numbers)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


@dataclass
class _Hit:
    start: int  # offsets in the block; end includes the line's newline when it has one
    end: int
    refs: frozenset[str]
    text: str  # the decoded line without its newline


class _Matcher:
    """The compiled form of (store, targets): pre-filter expressions, value sets, the confirmer."""

    @classmethod
    def get(cls, store: LogStore, targets: Targets) -> _Matcher:
        key = (
            store.tenant_field,
            tuple((name, f.identity) for name, f in store.fields.items()),
        )
        matcher = targets._matchers.get(key)
        if matcher is None:
            matcher = targets._matchers[key] = cls(store, targets)
        return matcher

    def __init__(self, store: LogStore, targets: Targets) -> None:
        self.targets = targets
        self.tenant_path = fpaths.parse(store.tenant_field)  # ValueError: the validator's bad-path
        self.personal = tuple(fpaths.parse(name) for name in store.fields)
        self.id_paths = [
            (fpaths.parse(name), f.identity)
            for name, f in store.fields.items()
            if f.identity is not None and targets.values(f.identity)
        ]
        # The pre-filter looks for each path's leaf key wherever it stands: a superset of the
        # lines holding a value at the path itself.
        self.leaf_keys = {fp.leaf_key for fp, _ in self.id_paths}
        # Top-level fields only (the common case): one pass over the line's members confirms.
        flat = len(self.tenant_path.steps) == 1 and all(
            len(fp.steps) == 1 for fp, _ in self.id_paths
        )
        self.flat = {str(fp.steps[0]): itype for fp, itype in self.id_paths} if flat else None
        values = {
            v.encode().lower()
            for itype in {itype for _, itype in self.id_paths}
            for v in targets.values(itype)
        }
        self.rx_value: re.Pattern[bytes] | None = None
        self.few: list[bytes] | None = None
        if not (self.leaf_keys and values and targets):
            return
        self.values = frozenset(values | {b"["})  # "[": an identity field holding an array
        # Few values (one consumer's request): searching each directly beats extracting every
        # identity field's value, which costs a regex step at every quote of every line.
        self.few = sorted(values) if len(values) <= FEW_VALUES else None

        def alternation(names: Iterable[str]) -> bytes:
            keys = {json.dumps(n, ensure_ascii=False)[1:-1].encode() for n in names}
            return b"|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True))

        ws = rb"[ \t\r]*"
        head = rb'"(?:' + alternation(self.leaf_keys) + rb')"' + ws + rb":" + ws
        # One group: a string value's raw bytes up to its first quote, a bare integer, or "[".
        self.rx_value = re.compile(head + rb'"?((?<=")[^"\n]*|-?[0-9]+|\[)')
        self.rx_array = re.compile(head + rb"\[")
        self.rx_escaped_value = re.compile(head + rb'"[^"\n]*\\')
        # A key spelt with an escape ("em\u0061il"). For plain ASCII names only \u00XX escapes
        # of printable ASCII can spell them, which spares the many non-ASCII escapes in text.
        plain = all(re.fullmatch(r"[A-Za-z0-9_.@$ -]+", n) for n in self.leaf_keys)
        escape = rb"\\u00[2-7][0-9a-fA-F]" if plain else rb"\\"
        self.rx_escaped_key = re.compile(escape + rb'[^"\n]*"' + ws + rb":")
        emails = {fp.leaf_key for fp, t in self.id_paths if t is IdentityType.email}
        self.rx_non_ascii: re.Pattern[bytes] | None = None
        if emails:
            email_head = rb'"(?:' + alternation(emails) + rb')"' + ws + rb":" + ws
            self.rx_non_ascii = re.compile(email_head + rb'"[^"\n]*[\x80-\xff]')

    # The pre-filter -------------------------------------------------------------------------

    def candidates(self, block: bytes) -> list[int]:
        """Start offsets of the lines of `block` (whole lines) that may match, ascending.

        Per slice of about SCAN_SIZE bytes: with few target values, a plain slice is searched
        for each of them (`_few_in`); otherwise every identity field's raw value (string up to its
        first quote, bare integer, or "[") is extracted in C, the values are lower-cased together
        and intersected with the target values; only hits are located (in the lower-cased slice)
        as whole JSON strings. Slices whose identity values hold a backslash or a non-ASCII byte,
        or that hold an escaped key, get their such lines added as candidates whatever they hold.
        """
        rx = self.rx_value
        if rx is None or not block:
            return []
        size = len(block)
        starts: set[int] = set()
        a = 0
        while a < size:
            b = a + SCAN_SIZE
            if b >= size:
                b = size
            else:
                nl = block.find(b"\n", b)
                b = size if nl < 0 else nl + 1
            if self.few is not None and self._few_in(block, a, b, starts):
                a = b
                continue
            vals = rx.findall(block, a, b)
            if vals:
                joined = b"\n".join(vals)  # values never hold a newline
                lowered = joined.lower()
                hits = self.values.intersection(vals if lowered == joined else lowered.split(b"\n"))
                if hits:
                    low = block[a:b].lower()
                    for value in hits:
                        if value == b"[":
                            self._lines_of(self.rx_array, block, a, b, starts)
                        else:
                            self._locate(low, value, a, starts)
                if b"\\" in joined:
                    self._lines_of(self.rx_escaped_value, block, a, b, starts)
                if self.rx_non_ascii is not None and not joined.isascii():
                    self._lines_of(self.rx_non_ascii, block, a, b, starts)
            if block.find(b"\\", a, b) >= 0:
                self._lines_of(self.rx_escaped_key, block, a, b, starts)
            a = b
        return sorted(starts)

    def _few_in(self, block: bytes, a: int, b: int, starts: set[int]) -> bool:
        """Pre-filter a plain slice (ASCII, no backslash) by searching each target value in it,
        lower-cased, as a whole JSON string or bare integer, wherever it stands: a superset of
        the lines whose identity fields hold it, since on such a slice a value's bytes are its
        text. Returns False, doing nothing, for any other slice (escapes, non-ASCII case)."""
        part = block[a:b]
        if not part.isascii() or b"\\" in part:
            return False
        low = part.lower()
        for value in self.few or ():
            if value in low:
                self._locate(low, value, a, starts)
        return True

    @staticmethod
    def _lines_of(rx: re.Pattern[bytes], block: bytes, a: int, b: int, starts: set[int]) -> None:
        for m in rx.finditer(block, a, b):
            starts.add(block.rfind(b"\n", a, m.start()) + 1 or a)

    @staticmethod
    def _locate(low: bytes, value: bytes, base: int, starts: set[int]) -> None:
        """Add the lines of `low` (a lower-cased slice at `base`) holding `value` as a whole
        JSON string or bare integer."""
        find, rfind = low.find, low.rfind
        needle = b'"' + value + b'"'
        i = find(needle)
        while i >= 0:
            starts.add(base + rfind(b"\n", 0, i) + 1)
            nl = find(b"\n", i)
            if nl < 0:
                break
            i = find(needle, nl)
        if _NUMBER.fullmatch(value):
            end = len(low)
            i = find(value)
            while i >= 0:
                j = i + len(value)
                if low[i - 1 : i] in _BEFORE_NUMBER and (
                    j == end or low[j : j + 1] in _AFTER_NUMBER
                ):
                    starts.add(base + rfind(b"\n", 0, i) + 1)
                i = find(value, j)

    # The confirmation ------------------------------------------------------------------------

    def confirm(self, line: bytes) -> tuple[frozenset[str], str]:
        """The refs that `line` (without its newline) matches; raises ValueError if not JSON.

        Every value at each identity path counts, at any depth, a duplicated key's every value
        included; the tenant is any scalar at the tenant path (an array there is no tenant).
        """
        text = line.decode("utf-8")  # UnicodeDecodeError is a ValueError
        if text.lstrip(" \t\r")[:1] != "{":
            raise ValueError("not a JSON object")
        try:
            pairs = json.loads(text, object_pairs_hook=list)
        except RecursionError:
            raise ValueError("nested too deeply to parse") from None
        refs: set[str] = set()
        if self.flat is not None:
            key = self.tenant_path.steps[0]
            tenants = {t for k, v in pairs if k == key and (t := _scalar(v)) is not None}
            for tenant in tenants:
                for k, v in pairs:
                    itype = self.flat.get(k)
                    if itype is None:
                        continue
                    for item in v if isinstance(v, list) else (v,):
                        s = _scalar(item)
                        if s is not None:
                            refs |= self.targets.lookup(tenant, itype, _norm_log(itype, s))
            return (frozenset(refs) if refs else _NO_REFS), text
        tenants = {
            t
            for v in fpaths.values(pairs, self.tenant_path, arrays=False)
            if (t := _scalar(v)) is not None
        }
        if tenants:
            for path, itype in self.id_paths:
                for item in fpaths.values(pairs, path):
                    s = _scalar(item)
                    if s is not None:
                        norm = _norm_log(itype, s)
                        for tenant in tenants:
                            refs |= self.targets.lookup(tenant, itype, norm)
        return (frozenset(refs) if refs else _NO_REFS), text

    def scan(self, block: bytes) -> tuple[list[_Hit], int]:
        """The matching lines of `block` (whole lines), and how many candidates were not JSON."""
        hits: list[_Hit] = []
        malformed = 0
        size = len(block)
        for start in self.candidates(block):
            nl = block.find(b"\n", start)
            end = size if nl < 0 else nl + 1
            try:
                refs, text = self.confirm(block[start : end if nl < 0 else nl])
            except ValueError:
                malformed += 1
                continue
            if refs:
                hits.append(_Hit(start, end, refs, text))
        return hits, malformed

    def redact(self, hit: _Hit) -> str:
        """The line with every value at a personal field's path replaced by "[redacted]" (still
        JSON); every other character stays as it was. A value inside another redacted value (a
        path below a mapped object) goes with it. An array at a path is redacted whole."""
        text, out, prev = hit.text, [], 0
        for start, end in fpaths.spans_of(text, self.personal):  # in order, disjoint
            out.append(text[prev:start])
            out.append(_REDACTED_JSON)
            prev = end
        out.append(text[prev:])
        return "".join(out)


def _norm_log(itype: IdentityType, value: str) -> str:
    return value.lower() if itype is IdentityType.email else value


def scan_lines(
    lines: Iterable[bytes], store: LogStore, targets: Targets
) -> Iterator[tuple[bytes, frozenset[str]]]:
    """Each line with the references it matches (an empty set for most lines).

    The same engine as the object functions: lines are grouped into blocks for the pre-filter.
    An item is one line, with or without its newline.
    """
    matcher = _Matcher.get(store, targets)
    batch: list[bytes] = []
    size = 0
    for line in lines:
        batch.append(line)
        size += len(line)
        if size >= SCAN_SIZE:
            yield from _scan_batch(matcher, batch)
            batch, size = [], 0
    if batch:
        yield from _scan_batch(matcher, batch)


def _scan_batch(matcher: _Matcher, batch: list[bytes]) -> Iterator[tuple[bytes, frozenset[str]]]:
    parts, starts, pos = [], [], 0
    for line in batch:
        starts.append(pos)
        part = line if line.endswith(b"\n") else line + b"\n"
        parts.append(part)
        pos += len(part)
    hits, _ = matcher.scan(b"".join(parts))
    refs_at: dict[int, frozenset[str]] = {}
    if hits:
        for hit in hits:  # an item holding several lines gets the union of their refs
            i = bisect.bisect_right(starts, hit.start) - 1
            refs_at[i] = refs_at.get(i, _NO_REFS) | hit.refs
    for i, line in enumerate(batch):
        yield line, refs_at.get(i, _NO_REFS)


# --- reading and writing objects -----------------------------------------------------------------


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


def _line_blocks(stream: Any, key: str) -> Iterator[tuple[int, bytes]]:
    """(offset, block) of whole lines from a decompressing stream; the last may lack '\\n'."""
    carry: list[bytes] = []  # the start of a line that continues in the next read
    offset = 0
    while True:
        try:
            chunk = stream.read(READ_SIZE)
        except _CORRUPT as exc:
            raise LogFormatError(f"{key}: not a readable gzip object ({exc})") from exc
        if not chunk:
            if carry:
                yield offset, b"".join(carry)
            return
        cut = chunk.rfind(b"\n") + 1
        if cut == 0:  # no line ends in this read (a line longer than READ_SIZE)
            carry.append(chunk)
            continue
        if carry:
            block = b"".join((*carry, memoryview(chunk)[:cut]))
        else:
            block = chunk if cut == len(chunk) else chunk[:cut]
        carry = [chunk[cut:]] if cut < len(chunk) else []
        yield offset, block
        offset += len(block)


class _GzipSpool:
    """Output written through gzip into a spooled temporary file (memory, then disk)."""

    def __init__(self) -> None:
        self.file = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115
        self.gz = _gzip.GzipFile(
            fileobj=self.file, mode="wb", compresslevel=COMPRESS_LEVEL, mtime=0
        )

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


@dataclass
class ObjectResult:
    key: str
    lines_in: int = 0
    lines_matched: int = 0  # lines dropped or redacted (or, for a scan, that would be)
    per_ref: dict[str, int] = field(default_factory=dict)
    rewritten: bool = False
    bytes_in: int = 0  # compressed size read
    bytes_out: int = 0  # compressed size written (0 when not rewritten)
    versions_deleted: int = 0
    malformed: int = 0  # candidate lines (holding a target value) that are not JSON: kept as is

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _get(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    return s3.get_object(Bucket=bucket, Key=key)


def scan_object(s3: Any, store: LogStore, bucket: str, key: str, targets: Targets) -> ObjectResult:
    """Count the lines of one object that match (read only)."""
    matcher = _Matcher.get(store, targets)
    resp = _get(s3, bucket, key)
    result = ObjectResult(key=key, bytes_in=int(resp.get("ContentLength", 0)))
    counts: Counter[str] = Counter()
    with _gzip.GzipFile(fileobj=resp["Body"], mode="rb") as gz:
        for _offset, block in _line_blocks(gz, key):
            result.lines_in += _count_lines(block)
            hits, malformed = matcher.scan(block)
            result.malformed += malformed
            result.lines_matched += len(hits)
            for hit in hits:
                counts.update(hit.refs)
    result.per_ref = dict(sorted(counts.items()))
    return result


def _count_lines(block: bytes) -> int:
    return block.count(b"\n") + (0 if block.endswith(b"\n") else 1)


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
    matcher = _Matcher.get(store, targets)
    resp = _get(s3, bucket, key)
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
    body: Any, matcher: _Matcher, erase: str, result: ObjectResult
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
        with _gzip.GzipFile(fileobj=tee, mode="rb") as gz:
            for offset, block in _line_blocks(gz, result.key):
                result.lines_in += _count_lines(block)
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
    with _gzip.GzipFile(fileobj=copy, mode="rb") as gz:
        while length > 0:
            chunk = gz.read(min(READ_SIZE, length))
            if not chunk:
                raise LogFormatError(f"{key}: the spooled copy ended early")
            out.write(chunk)
            length -= len(chunk)


def _write_edited(
    out: _GzipSpool, block: bytes, hits: list[_Hit], matcher: _Matcher, erase: str
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
    extra: dict[str, Any] = {
        "Metadata": {**original.get("Metadata", {}), REWRITTEN_META: batch_id},
        "ServerSideEncryption": "AES256",
    }
    for name in ("ContentType", "ContentEncoding", "CacheControl", "ContentDisposition"):
        if original.get(name):
            extra[name] = original[name]
    if original.get("StorageClass"):
        extra["StorageClass"] = original["StorageClass"]
    if original.get("TagCount"):
        tags = s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
        extra["Tagging"] = urlencode({t["Key"]: t["Value"] for t in tags})
    etag = original["ETag"]
    try:
        if size <= PUT_LIMIT:
            resp = s3.put_object(Bucket=bucket, Key=key, Body=body, IfMatch=etag, **extra)
        else:
            resp = _multipart(s3, bucket, key, body, etag, extra)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
            raise ObjectChanged(f"s3://{bucket}/{key} changed while it was scrubbed") from exc
        raise
    return resp.get("VersionId")


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


# --- shards ----------------------------------------------------------------------------------


def _strptime_pattern(partition: str) -> str:
    return partition.replace("%F", "%Y-%m-%d")


def day_prefixes(
    s3: Any, store: LogStore, since: date | None = None, until: date | None = None
) -> list[str]:
    """The day folders under `store.prefix` (oldest first), within [since, until] if given.

    Folders are found by listing, one level per '/' of the partition pattern, and dated by
    parsing their name with it; folders that do not parse are ignored.
    """
    if isinstance(since, datetime):
        since = since.date()
    if isinstance(until, datetime):
        until = until.date()
    pattern = _strptime_pattern(store.partition)
    level = [store.prefix]
    for _ in range(store.partition.count("/")):
        level = [sub for p in level for sub in list_prefixes(s3, store.bucket, p)]
    days: list[tuple[date, str]] = []
    for prefix in level:
        try:
            day = datetime.strptime(prefix[len(store.prefix) :], pattern).date()
        except ValueError:
            continue
        if (since is None or day >= since) and (until is None or day <= until):
            days.append((day, prefix))
    return [prefix for _, prefix in sorted(days)]


@dataclass
class ShardResult:
    """What one scrub of a day folder did: counts and keys only (XCom-safe)."""

    bucket: str
    day_prefix: str
    mode: str  # drop_line: lines_removed were dropped; redact: they were redacted
    objects: int = 0
    objects_rewritten: int = 0
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
) -> ShardResult:
    """Rewrite every object under one day folder, clean old versions, then verify.

    The verification lists the folder again and scans it for residual matching lines
    (`residue`, must be 0). verify="changed" scans only objects that were rewritten, or whose
    ETag/size/mtime differ from when they were scanned (new or modified since): the others were
    scanned clean moments before, byte for byte the same.
    """
    started = time.monotonic()
    result = ShardResult(bucket=store.bucket, day_prefix=day_prefix, mode=store.erase)
    counts: Counter[str] = Counter()
    clean: set[tuple[str, str, int, Any]] = set()
    for obj in list_keys(s3, store.bucket, day_prefix):
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


# --- access reports ---------------------------------------------------------------------------


def _timestamp(value: Any) -> datetime | None:
    """A log timestamp: ISO 8601 (naive = UTC) or epoch seconds / milliseconds."""
    try:
        if isinstance(value, bool):
            return None
        if isinstance(value, int | float):
            seconds = value / 1000 if abs(value) > 1e11 else value
            return datetime.fromtimestamp(seconds, UTC)
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.strip())
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _aware(moment: datetime | None) -> datetime | None:
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def collect_shard(
    s3: Any,
    store: LogStore,
    day_prefix: str,
    targets: Targets,
    *,
    since: datetime | None,
    until: datetime | None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(ref, parsed line) for each matching line of one day folder inside [since, until].

    A line matching two refs is yielded once per ref (each with its own dict). A line whose
    timestamp field is missing or unreadable is kept (the day folder was chosen by the window):
    an access report errs on the side of disclosing the subject's own data.
    """
    since, until = _aware(since), _aware(until)
    matcher = _Matcher.get(store, targets)
    for obj in list_keys(s3, store.bucket, day_prefix):
        resp = _get(s3, store.bucket, obj["Key"])
        with _gzip.GzipFile(fileobj=resp["Body"], mode="rb") as gz:
            for _offset, block in _line_blocks(gz, obj["Key"]):
                hits, _ = matcher.scan(block)
                for hit in hits:
                    record = json.loads(hit.text)
                    moment = _timestamp(fpaths.first(record, store.timestamp_field))
                    if moment is not None and (
                        (since is not None and moment < since)
                        or (until is not None and moment > until)
                    ):
                        continue
                    for n, ref in enumerate(sorted(hit.refs)):
                        yield ref, (record if n == 0 else json.loads(hit.text))
