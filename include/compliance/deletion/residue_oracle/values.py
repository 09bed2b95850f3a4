"""What the residue oracle looks for, and what it says (R16.1): target values with their
spellings (`Value`), and the verdict (`Verdict`: counts, keys and names, never a value).

Spellings are the oracle's own (e-mails lower-cased, phones in every common form from
`phonenumbers`, ids only when long enough to be searched as text); nothing here is shared with
the eraser's matching (`compliance.core.logfiles`), on purpose: see the package's docstring.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import phonenumbers

from compliance.core.datamap.model import (
    IdentityType,
)

MIN_ID_CHARS = 8  # ids of digits only: shorter ones would match unrelated numbers
MIN_MIXED_ID_CHARS = 4  # ids with a letter or symbol ("C-3-000123")

_WORD = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789") | frozenset(range(0x80, 0x100))


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


@functools.lru_cache(maxsize=1 << 16)
def phone_spellings(value: str) -> frozenset[str]:
    """E.164, international, national and the common NANP spellings of one phone number.
    Cached: every mapped verify_logs task of a worker asks for the batch's same phones, and
    parsing and formatting them took more than the search of a day folder (issue 19)."""
    out = {value.strip().lower()}
    try:
        number = phonenumbers.parse(value, "US")
    except phonenumbers.NumberParseException:
        digits = re.sub(r"\D", "", value)
        return frozenset(out | ({digits} if len(digits) >= 7 else set()))
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
    return frozenset(s.lower() for s in out if s)


def unglued(low: bytes, i: int, needle: bytes) -> bool:
    """`needle` at offset `i` of `low` is not glued to a letter or digit on a letter-or-digit
    edge (so "12" is not found inside "3124")."""
    if i > 0 and needle[0] in _WORD and low[i - 1] in _WORD:
        return False
    end = i + len(needle)
    return not (end < len(low) and needle[-1] in _WORD and low[end] in _WORD)


def bounded(low: bytes, needle: bytes) -> Iterator[int]:
    """Offsets of `needle` in `low` not glued to a letter or digit on a letter-or-digit edge."""
    i = low.find(needle)
    while i >= 0:
        if unglued(low, i, needle):
            yield i
        i = low.find(needle, i + 1)


@dataclass
class Value:
    """One target value of one tenant: how it is searched. Holds an identity: never leaves."""

    kind: IdentityType
    text: str
    tenant: str
    given: bool = False  # the request named it (not only found on the consumer's rows)

    @property
    def spellings(self) -> frozenset[str]:
        if self.kind is IdentityType.email:
            return frozenset({self.text.strip().lower()})
        if self.kind is IdentityType.phone:
            return phone_spellings(self.text)
        return frozenset({self.text.strip().lower()} if searchable_id(self.text) else ())


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
    backups: dict[str, dict[str, int]] = field(default_factory=dict)  # rewritten store -> counts
    unreadable: list[str] = field(default_factory=list)  # "store:key" that could not be read

    @property
    def clean(self) -> bool:
        return not self.residue and not self.unreadable

    def describe(self) -> str:
        """The failure message: where and how many, never what."""
        parts = [f"{where} ({n})" for where, n in sorted(self.residue.items())]
        parts += [f"{where} (unreadable, cannot be verified)" for where in sorted(self.unreadable)]
        return "; ".join(parts)
