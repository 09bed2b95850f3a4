"""R10 from every source: find values an access report must never show, wherever they sit.

The data map's `withhold` keeps mapped columns and log paths from ever leaving their store
(`access.gather`). This module is the second line, for everything the map does not name: the
free text of a log line or a message, an unmapped JSON key, a backup row. Every text member of a
bundle passes through `Scanner.redact_text` before it is written (`access.bundle`), and the
report's record values through `Scanner.redact_value` (with the field name as context), so a
value is replaced by a statement of its type ("[withheld: social security number held]") and
counted for the report's partial-denial section (R14).

Which kinds are withheld depends on the jurisdiction (G2): `WITHHELD_BY_JURISDICTION`.

The patterns, and their limits (precision first: a report flooded with false "withheld" marks
hides the consumer's own data, which R8 asks us to give):

- SSN: `123-45-6789` with dashes (area not 000, 666 or 9xx, group not 00, serial not 0000),
  or 9 digits (dashes or spaces optional) after a keyword (`ssn`, `social security`). Not: 9
  bare digits without a keyword (too many ids look like that).
- ITIN: `9xx-7x-xxxx` with dashes, IRS group ranges (50-65, 70-88, 90-92, 94-99).
- Payment card: 13-19 digits, ungrouped or in the issuers' groupings (4-4-4-4[-3], 4-6-5,
  4-6-4) with one kind of separator, a known issuer prefix (Visa, Mastercard, Amex, Discover,
  Diners, JCB, UnionPay) and a valid Luhn check digit. Not: other issuers; digits running into
  letters, dashes or other digits (hex digests, uuids).
- Routing number: 9 digits with a valid ABA checksum and a Federal Reserve prefix (00-12,
  21-32, 61-72, 80) after a keyword (`routing`, `aba`, `rtn`, `transit`). Not: a bare 9-digit
  number (1 in 10 random numbers passes the checksum).
- Bank account: 4-17 digits after a keyword (`bank account`, `account number`, `acct`); an
  IBAN (upper case, mod-97 valid) anywhere. Not: US account numbers without a keyword (they
  have neither format nor checksum).
- Driver's licence: 5-15 letters and digits (at least 4 digits) after `driver's licence` /
  `license`, `DL#`, `DLN`, `licence number`. Not: state formats without a keyword (`A1234567`
  is also an order number).
- Passport: 6-9 letters and digits (at least 5 digits) after `passport`.
- Medicare MBI: the CMS format anywhere (`1EG4-TE5-MK73`: 11 characters, no S L O I B Z,
  dashes optional), upper case only.
- Medical record / health plan id: 6-20 letters, digits and dashes (at least 4 digits) after
  `medical record`, `MRN`, `member id`, `health plan`, `insurance id`, `policy number`,
  `medicaid`, `medicare`. A `member_id` field of a loyalty scheme would be withheld too.

A keyword also counts when it is the field's name (`{"ssn": "123456789"}`, a column
`routing_number`). Phone numbers (10-11 digits), ISO timestamps, epoch milliseconds (issuer
prefix 1), IP addresses, uuids and hex digests do not match; `tests/unit/test_access_r10.py`
holds true positives, checksum negatives and the demo data's ordinary values.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from compliance.core.datamap.model import Withhold

# -- the policy per jurisdiction (G2) ------------------------------------------------------------

ALL_KINDS = frozenset(Withhold)
CREDENTIALS = frozenset({Withhold.password, Withhold.security_answer, Withhold.biometric})

# jurisdiction -> the kinds of value its access reports withhold. CCPA: every R10 kind (Reg
# 7024(d)). GDPR: Art. 15(3) gives a copy of all personal data, so the consumer's own government,
# financial and medical numbers are disclosed (in the encrypted bundle behind an expiring link,
# R12); Art. 15(4) limits the copy only where it would adversely affect others' rights: the
# credentials (password hashes, security answers) and the voiceprint template used to
# authenticate callers would let whoever intercepts the copy impersonate the consumer to the
# business, so they are withheld on that basis, with the business's security duty (Art. 32).
WITHHELD_BY_JURISDICTION: dict[str, frozenset[Withhold]] = {
    "ccpa": ALL_KINDS,
    "gdpr": CREDENTIALS,
}
BASIS: dict[str, dict[str, str]] = {
    "ccpa": {
        "rule": "R10",
        "basis": "Cal. Code Regs. tit. 11, 7024(d)",
        "text": (
            "The law forbids disclosing these values in a response to a request to know; we "
            "say that they are held, and of which type, instead."
        ),
    },
    "gdpr": {
        "rule": "G2",
        "basis": "GDPR Art. 15(4) (with Art. 32, security of processing)",
        "text": (
            "These are credentials (a password hash, security answers, a voiceprint template): "
            "a copy of them would let anyone who obtained the report impersonate you, which "
            "would adversely affect your rights and those of others. Every other piece of your "
            "personal data, including identification and account numbers, is in this copy "
            "(Art. 15(3))."
        ),
    },
}


# A declared (`withhold`) value the gather did not copy although the jurisdiction shows its kind:
# a log line's withheld path (a line can concern several people, `access.gather`). Said so.
NOT_READ = {
    "rule": "G2",
    "basis": "GDPR Art. 15(4) (the rights of others), with Art. 32",
    "text": (
        "This value is of a kind we copy out of its store only where it is yours alone: a log "
        "line can concern several people, so its value cannot be attributed to you. The "
        "business can give it to you through a separately verified channel; ask it."
    ),
}


def basis_for(jurisdiction: str, kind: Withhold | str) -> dict[str, str]:
    """Why a value of `kind` is withheld from a report of `jurisdiction`: the jurisdiction's
    basis when its policy withholds the kind, else `NOT_READ` (shown kind, value not copied)."""
    if Withhold(kind) in withheld_kinds(jurisdiction):
        return basis(jurisdiction)
    return NOT_READ


def withheld_kinds(jurisdiction: str) -> frozenset[Withhold]:
    """The kinds withheld for a request of `jurisdiction`; unknown: the strictest (CCPA's)."""
    return WITHHELD_BY_JURISDICTION.get(jurisdiction, ALL_KINDS)


def shown_kinds(jurisdiction: str) -> frozenset[Withhold]:
    """The `withhold` kinds a report of `jurisdiction` shows (G2): none for the CCPA."""
    return ALL_KINDS - withheld_kinds(jurisdiction)


def disclosed_row(row: dict[str, Any], shown: frozenset[Withhold]) -> dict[str, Any]:
    """One gathered row as one request sees it: the declared values its jurisdiction shows
    (`row["disclosable"]`, read only when some request of the batch may see them) become
    ordinary values, every other one stays "held" only. The row is not changed."""
    disclosable = row.get("disclosable") or {}
    own = {c: v for c, (kind, v) in disclosable.items() if kind in shown and v not in (None, "")}
    out = {k: v for k, v in row.items() if k != "disclosable"}
    if own:
        out["values"] = {**row["values"], **own}
        out["withheld"] = [c for c in row["withheld"] if c not in own]
    return out


def basis(jurisdiction: str) -> dict[str, str]:
    return BASIS.get(jurisdiction, BASIS["ccpa"])


# -- the patterns --------------------------------------------------------------------------------

_EDGE_L = r"(?<![0-9A-Za-z_-])"
_EDGE_R = r"(?![0-9A-Za-z_-])"
# a keyword, then up to ~12 characters of punctuation or filler words before the value
_GAP = r"(?:[\s\"':=#.,()\-]|\b(?:no|num|number|is|was|of|id|member)\b){0,12}?"


def _kw(words: str) -> str:
    return rf"(?i:\b(?:{words}))" + _GAP


@dataclass(frozen=True)
class Kind:
    """One pattern type: its name (the statement), the R10 kind, and its checks."""

    name: str
    statement: str
    withhold: Withhold
    regex: re.Pattern[str]
    check: Callable[[str], bool] = lambda _v: True
    keyword: re.Pattern[str] | None = None  # a field name that makes a bare value this type
    bare: re.Pattern[str] | None = None  # the value alone, when the field name is the keyword


def _digits(value: str) -> str:
    return re.sub(r"\D", "", value)


def luhn(number: str) -> bool:
    digits = [int(c) for c in _digits(number)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return bool(digits) and total % 10 == 0


def aba(number: str) -> bool:
    """An ABA routing number: 9 digits, weights 3 7 1, a Federal Reserve prefix."""
    d = [int(c) for c in _digits(number)]
    if len(d) != 9:
        return False
    prefix = d[0] * 10 + d[1]
    if not (prefix <= 12 or 21 <= prefix <= 32 or 61 <= prefix <= 72 or prefix == 80):
        return False
    return (3 * (d[0] + d[3] + d[6]) + 7 * (d[1] + d[4] + d[7]) + d[2] + d[5] + d[8]) % 10 == 0


_CARD_PREFIX = re.compile(
    r"4|5[1-5]|2(?:2[2-9][1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)|3[47]|6011|64[4-9]|65|"
    r"3(?:0[0-5]|[68])|35(?:2[89]|[3-8]\d)|62"
)
# issuer prefix -> the lengths its numbers have (an 18-digit "37..." is no Amex)
_CARD_LENGTHS: tuple[tuple[str, range | tuple[int, ...]], ...] = (
    ("34", (15,)),
    ("37", (15,)),
    ("4", (13, 16, 19)),
    ("5", (16,)),
    ("2", (16,)),
    ("6", range(16, 20)),
    ("30", range(14, 20)),
    ("36", range(14, 20)),
    ("38", range(14, 20)),
    ("35", range(16, 20)),
)
_CARD_GROUPS = {(4, 4, 4, 4), (4, 4, 4, 4, 3), (4, 6, 5), (4, 6, 4), (4, 4, 4, 1), (4, 4, 4, 2)}


def card(value: str) -> bool:
    digits = _digits(value)
    if not 13 <= len(digits) <= 19 or not _CARD_PREFIX.match(digits):
        return False
    seps = set(re.findall(r"\D", value))
    if len(seps) > 1:
        return False
    if seps and tuple(len(g) for g in re.split(r"\D", value)) not in _CARD_GROUPS:
        return False
    if not any(digits.startswith(p) and len(digits) in n for p, n in _CARD_LENGTHS):
        return False
    return luhn(digits)


def ssn(value: str) -> bool:
    d = _digits(value)
    return (
        len(d) == 9
        and d[:3] not in {"000", "666"}
        and d[0] != "9"
        and d[3:5] != "00"
        and d[5:] != "0000"
    )


def itin(value: str) -> bool:
    d = _digits(value)
    group = int(d[3:5]) if len(d) == 9 else -1
    return (
        len(d) == 9
        and d[0] == "9"
        and (50 <= group <= 65 or 70 <= group <= 88 or 90 <= group <= 92 or 94 <= group <= 99)
    )


def iban(value: str) -> bool:
    compact = re.sub(r"[\s-]", "", value).upper()
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


def _some_digits(n: int) -> Callable[[str], bool]:
    return lambda v: sum(c.isdigit() for c in v) >= n


_MBI_A = "AC-HJKMNP-RT-Y"  # letters allowed in an MBI (no S L O I B Z)
_MBI = rf"[1-9][{_MBI_A}][{_MBI_A}0-9]\d-?[{_MBI_A}][{_MBI_A}0-9]\d-?[{_MBI_A}]{{2}}\d{{2}}"

_SSN_WORDS = r"ssn|social[\s_-]*security(?:[\s_-]*(?:number|no|num|#))?|soc[\s_-]*sec"
_ROUTING_WORDS = r"routing|aba|rtn|transit"
_ACCOUNT_WORDS = r"bank[\s_-]*account|account[\s_-]*(?:number|no|num|#)|acct|iban"
# as a field name, `acct` alone is too loose (`acct_id` is usually our own key)
_ACCOUNT_KEYS = r"bank[\s_-]*account|(?:account|acct)[\s_-]*(?:number|no|num)|iban"
_DL_WORDS = (
    r"driver'?s?[\s_-]*licen[cs]e(?:[\s_-]*(?:number|no|num|#))?|dl[\s_#-]*no|dln|dl#|"
    r"licen[cs]e[\s_-]*(?:number|no|num|#)"
)
_PASSPORT_WORDS = r"passport"
_MEDICAL_WORDS = (
    r"medical[\s_-]*record|mrn|member[\s_-]*id|health[\s_-]*plan|insurance[\s_-]*id|"
    r"policy[\s_-]*(?:number|no)|medicaid|medicare"
)

KINDS: tuple[Kind, ...] = (
    Kind(
        "mbi",
        "Medicare beneficiary identifier",
        Withhold.medical_id,
        re.compile(_EDGE_L + rf"({_MBI})" + _EDGE_R),
    ),
    Kind(
        "iban",
        "international bank account number (IBAN)",
        Withhold.financial_account,
        re.compile(
            _EDGE_L + r"([A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?)" + _EDGE_R
        ),
        iban,
    ),
    Kind(
        "card",
        "payment card number",
        Withhold.financial_account,
        re.compile(_EDGE_L + r"(\d(?:[ -]?\d){12,18})" + _EDGE_R),
        card,
    ),
    Kind(
        "itin",
        "taxpayer identification number",
        Withhold.government_id,
        re.compile(_EDGE_L + r"(9\d{2}-\d{2}-\d{4})" + _EDGE_R),
        itin,
    ),
    Kind(
        "ssn",
        "social security number",
        Withhold.government_id,
        re.compile(
            _EDGE_L
            + r"(\d{3}-\d{2}-\d{4})"
            + _EDGE_R
            + "|"
            + _kw(_SSN_WORDS)
            + r"(\d{3}[ -]?\d{2}[ -]?\d{4})"
            + _EDGE_R
        ),
        ssn,
        re.compile(rf"(?i)(?:^|[^a-z])(?:{_SSN_WORDS})(?:$|[^a-z])"),
        re.compile(r"(\d{3}[ -]?\d{2}[ -]?\d{4})"),
    ),
    Kind(
        "routing",
        "bank routing number",
        Withhold.financial_account,
        re.compile(_kw(_ROUTING_WORDS) + r"(\d{9})" + _EDGE_R),
        aba,
        re.compile(rf"(?i)(?:^|[^a-z])(?:{_ROUTING_WORDS})(?:$|[^a-z])"),
        re.compile(r"(\d{9})"),
    ),
    Kind(
        "account",
        "bank account number",
        Withhold.financial_account,
        re.compile(_kw(_ACCOUNT_WORDS) + r"(\d{4,17})" + _EDGE_R),
        keyword=re.compile(rf"(?i)(?:^|[^a-z])(?:{_ACCOUNT_KEYS})(?:$|[^a-z])"),
        bare=re.compile(r"(\d{4,17})"),
    ),
    Kind(
        "drivers_licence",
        "drivers licence number",
        Withhold.government_id,
        re.compile(_kw(_DL_WORDS) + r"((?=[A-Za-z]*\d)[A-Za-z0-9]{5,15})" + _EDGE_R),
        _some_digits(4),
        re.compile(rf"(?i)(?:^|[^a-z])(?:{_DL_WORDS}|drivers?[\s_-]*licen[cs]e)(?:$|[^a-z])"),
        re.compile(r"([A-Za-z0-9]{5,15})"),
    ),
    Kind(
        "passport",
        "passport number",
        Withhold.government_id,
        re.compile(_kw(_PASSPORT_WORDS) + r"((?=[A-Za-z]*\d)[A-Za-z0-9]{6,9})" + _EDGE_R),
        _some_digits(5),
        re.compile(rf"(?i)(?:{_PASSPORT_WORDS})"),
        re.compile(r"([A-Za-z0-9]{6,9})"),
    ),
    Kind(
        "medical",
        "medical record or health plan number",
        Withhold.medical_id,
        re.compile(
            _kw(_MEDICAL_WORDS) + r"((?=[A-Za-z-]*\d)[A-Za-z0-9][A-Za-z0-9-]{5,19})" + _EDGE_R
        ),
        _some_digits(4),
        re.compile(rf"(?i)(?:^|[^a-z])(?:{_MEDICAL_WORDS})(?:$|[^a-z])"),
        re.compile(r"([A-Za-z0-9][A-Za-z0-9-]{5,19})"),
    ),
)
KIND_BY_NAME = {k.name: k for k in KINDS}


def statement(kind: Kind) -> str:
    """What replaces a value: its type, never the value (R10: "with particularity")."""
    return f"[withheld: {kind.statement} held]"


# -- the scanner ---------------------------------------------------------------------------------


@dataclass
class Scanner:
    """Redacts the kinds `withhold` names; counts what it replaced, per pattern type."""

    withhold: frozenset[Withhold] = ALL_KINDS
    found: Counter[str] = field(default_factory=Counter)

    @classmethod
    def for_jurisdiction(cls, jurisdiction: str) -> Scanner:
        return cls(withheld_kinds(jurisdiction))

    def _kinds(self) -> list[Kind]:
        return [k for k in KINDS if k.withhold in self.withhold]

    def redact_text(self, text: str, context: str = "") -> str:
        """`text` with every recognised value replaced by its statement. `context` (a field
        name) counts as the keyword of keyword-bound types when the whole value is one."""
        if not text or not any(c.isdigit() for c in text):
            return text
        for kind in self._kinds():
            if context and kind.keyword and kind.bare and kind.keyword.search(context):
                whole = kind.bare.fullmatch(text.strip())
                if whole and kind.check(whole.group(1)):
                    self.found[kind.name] += 1
                    return statement(kind)
            text = kind.regex.sub(lambda m, k=kind: self._replace(m, k), text)
        return text

    def _replace(self, match: re.Match[str], kind: Kind) -> str:
        group = next(i for i in range(1, (match.re.groups or 0) + 1) if match.group(i))
        value = match.group(group)
        if not kind.check(value):
            return match.group(0)
        self.found[kind.name] += 1
        start, end = match.start(group) - match.start(0), match.end(group) - match.start(0)
        whole = match.group(0)
        return whole[:start] + statement(kind) + whole[end:]

    def redact_value(self, value: Any, context: str = "") -> Any:
        """A JSON value with every string (and every number's text) inside it redacted; dict
        keys give their values context (an unmapped `{"ssn": ...}` key). Keys themselves are
        scanned too: a value used as a key is still a value."""
        if isinstance(value, str):
            return self.redact_text(value, context)
        if isinstance(value, bool) or value is None or isinstance(value, float):
            return value
        if isinstance(value, int):
            text = str(value)
            out = self.redact_text(text, context)
            return value if out == text else out
        if isinstance(value, dict):
            return {
                self.redact_text(str(k)): self.redact_value(v, str(k)) for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.redact_value(v, context) for v in value]
        return value

    def summary(self) -> list[dict[str, Any]]:
        """What was replaced, per type, for the report (counts only, never values)."""
        return [
            {
                "type": name,
                "kind": KIND_BY_NAME[name].withhold.value,
                "statement": statement(KIND_BY_NAME[name]),
                "values": n,
            }
            for name, n in sorted(self.found.items())
        ]
