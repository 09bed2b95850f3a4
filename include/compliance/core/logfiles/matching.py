"""The matching rule and its fast path: which lines of a JSON-lines log a request's targets hit.

A line matches request reference R when its tenant field equals R's tenant AND one of its identity
fields (the store's `fields` that have an `identity`) holds one of R's values of that identity type
(e-mails compared case-insensitively). Lines of another tenant, or without the tenant field, never
match. Matching is decided on the parsed line, never on a substring. Fields (the tenant field too)
are paths (`compliance.core.datamap.paths`): `actor.email`, `recipients[].email`, `meta\\.v2.ip`,
so an identity nested in objects or arrays is matched like a top-level one (issue 14).

Speed: most lines match nothing, so no line is parsed unless a byte-level pre-filter says it may
match. One regular expression pulls every identity field's value out of the lower-cased block in
C, and a set intersection with the target values tells whether the block can hold a match at all.
Only then are the candidate lines located and parsed. The pre-filter works on each path's last key
(its leaf key): `"email": "..."` is extracted wherever it stands, at any depth, so it
over-approximates the lines a nested path can match and never misses one. It errs only on the side
of candidates: lines where the fast extraction could be wrong (an identity value or a key holding a
JSON escape, a non-ASCII e-mail, an identity field holding an array) are always parsed. The parser
keeps every key at every depth, duplicates included, so a duplicated identity key cannot hide a
value.

One engine for erasure (R16.1, `compliance.deletion.log_scrub`), access reports (R10) and the
tests' own reading: what one finds, the others find.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from compliance.core.datamap import paths as fpaths
from compliance.core.datamap.model import IdentityType, LogStore
from compliance.core.logfiles.targets import NO_REFS, Targets

REDACTED = "[redacted]"
SCAN_SIZE = 128 << 10  # bytes pre-filtered at a time: locating one hit costs a search over this
FEW_VALUES = 16  # target values up to which the pre-filter searches them one by one

_NUMBER = re.compile(rb"-?[0-9]+")
_BEFORE_NUMBER = frozenset((b":", b" ", b"\t", b"[", b","))
_AFTER_NUMBER = frozenset((b",", b"}", b"]", b" ", b"\t", b"\r", b"\n"))
_REDACTED_JSON = json.dumps(REDACTED)


def _scalar(value: Any) -> str | None:
    """A JSON scalar as the string a target is compared with (ids may be logged as numbers)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


@dataclass
class Hit:
    start: int  # offsets in the block; end includes the line's newline when it has one
    end: int
    refs: frozenset[str]
    text: str  # the decoded line without its newline


class Matcher:
    """The compiled form of (store, targets): pre-filter expressions, value sets, the confirmer."""

    @classmethod
    def get(cls, store: LogStore, targets: Targets) -> Matcher:
        key = (
            store.tenant_field,
            tuple((name, f.identity) for name, f in store.fields.items()),
        )
        matcher = targets.matchers.get(key)
        if matcher is None:
            matcher = targets.matchers[key] = cls(store, targets)
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
            return (frozenset(refs) if refs else NO_REFS), text
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
        return (frozenset(refs) if refs else NO_REFS), text

    def scan(self, block: bytes) -> tuple[list[Hit], int]:
        """The matching lines of `block` (whole lines), and how many candidates were not JSON."""
        hits: list[Hit] = []
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
                hits.append(Hit(start, end, refs, text))
        return hits, malformed

    def redact(self, hit: Hit) -> str:
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
    matcher = Matcher.get(store, targets)
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


def _scan_batch(matcher: Matcher, batch: list[bytes]) -> Iterator[tuple[bytes, frozenset[str]]]:
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
            refs_at[i] = refs_at.get(i, NO_REFS) | hit.refs
    for i, line in enumerate(batch):
        yield line, refs_at.get(i, NO_REFS)
