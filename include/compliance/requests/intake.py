"""Intake of consumer-request documents forwarded by business clients (deletion and access).

Pure Python: the caller reads the bytes (S3, API...) and owns every store; this module turns bytes
into `Accepted` requests (normalised, with due dates) or `Rejected` ones (a reason code, the field,
a message for a compliance officer). The format is documented in `docs/requests.md`.

Design choices (cite rule ids from the requirements digest):

* Strict: unknown fields are refused (`unknown_field`), so a misspelt `jurisdiction` or an
  OpenDSR name such as `subject_request_id` never silently falls back to a default.
* One reason per rejected document: the first failing check in a fixed order (structure, then
  `request_id`, `client_id`, `type`, `jurisdiction`, dates, verification, minors, identities,
  `look_back`, `notes`), with the most specific code for that field.
* Identity values never leave through a rejection: messages name the field and the rule, not the
  value (library error texts, which quote the input, are never used), and `Accepted.__repr__`
  hides identities and notes. What must leave a task (dedupe keys) is a keyed hash
  (`compliance.core.hashing.keyed_hash`).
* R1: every due date is computed from `received_at` (the business's receipt), see `deadlines`.
* R5: only verified requests are accepted; an access request verified only for categories
  (`verification.level: categories`) is accepted and answered with categories only, a deletion
  so verified is refused. R24: under-13 subjects need a guardian verification.
"""

from __future__ import annotations

import calendar
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any

import phonenumbers
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

from compliance.core.datamap.model import IdentityType
from compliance.core.hashing import keyed_hash

__all__ = [
    "INVALID_SUBMISSION",
    "Accepted",
    "Deadlines",
    "Identities",
    "Jurisdiction",
    "LookBack",
    "Reason",
    "Rejected",
    "RequestType",
    "Result",
    "Verification",
    "add_months",
    "collected_since",
    "deadlines",
    "dedupe_key",
    "find_duplicates",
    "identity_keys",
    "parse_documents",
    "received_day",
    "request_key",
    "validate_request",
]

# --------------------------------------------------------------------------------------------
# Vocabulary


class RequestType(StrEnum):
    delete = "delete"
    access = "access"


class Jurisdiction(StrEnum):
    ccpa = "ccpa"
    gdpr = "gdpr"


class LookBack(StrEnum):
    """How far back an access request reaches (R9 for the CCPA, G2 for the GDPR)."""

    default = "default"  # CCPA: the 12 months before received_at (R9)
    since_2022 = "since_2022"  # CCPA on the consumer's request: since 2022-01-01 (R9)
    all = "all"  # GDPR: all personal data, no look-back limit (G2)


class Reason(StrEnum):
    """Why a document was rejected (one per document). Meanings: docs/requests.md."""

    too_large = "too_large"
    encoding = "encoding"
    invalid_json = "invalid_json"
    not_an_object = "not_an_object"
    unknown_field = "unknown_field"
    missing_field = "missing_field"
    wrong_type = "wrong_type"
    bad_text = "bad_text"
    bad_request_id = "bad_request_id"
    unknown_client = "unknown_client"
    inactive_client = "inactive_client"
    client_mismatch = "client_mismatch"
    unknown_type = "unknown_type"
    unknown_jurisdiction = "unknown_jurisdiction"
    bad_date = "bad_date"
    received_in_future = "received_in_future"
    received_too_old = "received_too_old"
    not_verified = "not_verified"
    verified_before_received = "verified_before_received"
    minor_without_guardian_verification = "minor_without_guardian_verification"
    no_identity = "no_identity"
    malformed_email = "malformed_email"
    malformed_phone = "malformed_phone"
    malformed_contact_id = "malformed_contact_id"
    bad_look_back = "bad_look_back"
    bad_verification_level = "bad_verification_level"
    duplicate = "duplicate"


# Refusals that are invalid submissions, not denials (R23 counts them apart): the document is
# not a well-formed request from the business that filed it (bytes, JSON, shape, a field's
# format, implausible dates, another client's folder), so nothing was decided about the
# consumer's request. The other refusals are denials of a readable request on a substantive
# basis: unverifiable (R5, R24) or a contract no longer active (R6, R27). `duplicate` is never
# logged (the original request is the one on record).
INVALID_SUBMISSION = frozenset(
    {
        Reason.too_large,
        Reason.encoding,
        Reason.invalid_json,
        Reason.not_an_object,
        Reason.unknown_field,
        Reason.missing_field,
        Reason.wrong_type,
        Reason.bad_text,
        Reason.bad_request_id,
        Reason.unknown_client,
        Reason.client_mismatch,
        Reason.unknown_type,
        Reason.unknown_jurisdiction,
        Reason.bad_date,
        Reason.received_in_future,
        Reason.received_too_old,
        Reason.no_identity,
        Reason.malformed_email,
        Reason.malformed_phone,
        Reason.malformed_contact_id,
        Reason.bad_look_back,
        Reason.bad_verification_level,
    }
)


# --------------------------------------------------------------------------------------------
# Limits and tolerances (documented in docs/requests.md)

MAX_BYTES = 64 * 1024  # per document (a whole JSON file, or one NDJSON line)
MAX_DOCUMENTS = 10_000  # per input; more is refused as a whole (too_large)
MAX_DEPTH = 16  # JSON nesting; the format needs 3
CLOCK_SKEW = timedelta(minutes=5)  # how far in the future a timestamp may be (clocks differ)
# A verification (or forwarding) may be stamped up to this long *before* received_at: businesses
# often report receipt with day granularity or in another timezone. Anything earlier is a
# verification of something else (R5) and is refused.
ORDER_TOLERANCE = timedelta(hours=24)
EARLIEST_RECEIVED = datetime(2020, 1, 1, tzinfo=UTC)  # CCPA effective date
SINCE_2022 = datetime(2022, 1, 1, tzinfo=UTC)  # R9
MAX_NOTES = 2000
MAX_LABEL = 128  # verification.method, verification.verified_by

REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")  # used with fullmatch
CONTACT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
PHONE_RE = re.compile(r"\+?[0-9 ().-]{4,32}")
MAX_CLIENT_ID = 255  # characters of a client id (the state DB's column)
MAX_CLIENT_INT = 2**63 - 1  # a JSON integer client id: a CRM's BIGINT at most
SAFE_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")  # a key name we may echo in a message
DATE_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.][0-9]{1,6})?)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})?"
)

# Characters refused in e-mail addresses even where a library would accept them (see _email).
ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\ufeff")
WILDCARDS = frozenset("*%?")  # glob / SQL LIKE wildcards: an identity names one address
REGION_RE = re.compile(r"[A-Za-z]{2}")  # phone_region: ISO 3166-1 alpha-2
BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})

TOP_FIELDS = frozenset(
    {
        "request_id",
        "client_id",
        "type",
        "identities",
        "received_at",
        "forwarded_at",
        "verification",
        "jurisdiction",
        "subject",
        "guardian_verification",
        "look_back",
        "notes",
        "phone_region",
    }
)
IDENTITY_FIELDS = (IdentityType.email, IdentityType.phone, IdentityType.contact_id)
VERIFICATION_FIELDS = ("method", "verified_at", "verified_by")
# R5: how far the business could verify the consumer. "specific_pieces" (the default, and every
# document written before the field existed): to the degree a request for specific pieces
# needs. "categories": only to the reasonable degree a request for categories needs, so an
# access request is answered with categories only (Reg 7024(a)-(b)); a deletion is refused.
LEVEL_SPECIFIC = "specific_pieces"
LEVEL_CATEGORIES = "categories"
VERIFICATION_LEVELS = (LEVEL_SPECIFIC, LEVEL_CATEGORIES)
SUBJECT_FIELDS = ("is_minor", "under_13")
# Names used by OpenDSR/OpenCompliance (and common variants): a hint in the unknown_field message.
ALIASES = {
    "subject_request_id": "request_id",
    "subject_request_type": "type",
    "submitted_time": "received_at",
    "subject_identities": "identities",
    "regulation": "jurisdiction",
    "controller_id": "client_id",
}


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Deadlines:
    """Due dates of one request, all computed from the business's receipt (R1).

    `received_on` is day 1. `ack_due` (R2), `response_due` (R3 / G1) and `extended_due`, the
    latest date allowed with the single extension (R4 / G1), are inclusive last days.
    """

    received_on: date
    ack_due: date
    response_due: date
    extended_due: date


@dataclass(frozen=True)
class Identities:
    """The consumer's identities, normalised (see `docs/requests.md`, Normalisation).

    `repr` shows only which kinds are present, never the values.
    """

    email: str | None = None
    phone: str | None = None  # E.164
    contact_id: str | None = None
    # Other spellings of the same phone, kept so that a CRM storing numbers as the client sent
    # them (national form, dashes) still matches: as sent, its digits, its national digits.
    phone_variants: tuple[str, ...] = ()

    def items(self) -> Iterator[tuple[IdentityType, str]]:
        """One normalised value per kind: what dedupe keys and subject hashes are made of."""
        for kind in IDENTITY_FIELDS:
            value = getattr(self, kind.value)
            if value is not None:
                yield kind, value

    def match_items(self) -> Iterator[tuple[IdentityType, str]]:
        """Every value to search for: the normalised ones, then the phone's other spellings."""
        yield from self.items()
        for variant in self.phone_variants:
            yield IdentityType.phone, variant

    def as_doc(self) -> dict[str, str | list[str]]:
        """As the accepted request document stores them: a string per kind, or for a phone
        with other spellings a list, E.164 first (`identity_pairs` reads both shapes)."""
        doc: dict[str, str | list[str]] = {k.value: v for k, v in self.items()}
        if self.phone is not None and self.phone_variants:
            doc[IdentityType.phone.value] = [self.phone, *self.phone_variants]
        return doc

    @property
    def kinds(self) -> tuple[IdentityType, ...]:
        return tuple(kind for kind, _ in self.items())

    def __repr__(self) -> str:
        return f"Identities(kinds={[k.value for k in self.kinds]})"


@dataclass(frozen=True)
class Verification:
    """How the business verified the request (R5) or the guardian of an under-13 subject (R24)."""

    method: str
    verified_at: datetime  # aware, UTC
    verified_by: str
    level: str = LEVEL_SPECIFIC  # R5: "specific_pieces" or "categories" (verification only)

    @property
    def categories_only(self) -> bool:
        """R5: verified only for categories; an access request gets no specific pieces."""
        return self.level == LEVEL_CATEGORIES


@dataclass(frozen=True)
class Accepted:
    """A valid, verified, normalised request. Datetimes are aware and in UTC."""

    source: str
    line: int | None  # 1-based NDJSON line; None when the input held a single document
    request_id: str
    client_id: str  # the tenant id as the CRM spells it (text; a JSON integer in decimal)
    type: RequestType
    jurisdiction: Jurisdiction
    identities: Identities
    received_at: datetime
    forwarded_at: datetime | None
    verification: Verification
    guardian_verification: Verification | None
    is_minor: bool
    under_13: bool
    look_back: LookBack | None  # access only
    collected_since: datetime | None  # access only: start of the search window; None = all data
    due: Deadlines
    notes: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Rejected:
    """A refused document. `message` names the field and the rule, never an identity value."""

    source: str
    line: int | None
    reason: Reason
    field: str | None
    message: str
    request_id: str | None = None  # only when it could be read and is in the safe charset
    client_id: str | None = None  # only when it could be read as a client id (safe text)
    # What the document says it is, read field by field whatever else failed, for the request
    # log (R22, R23); None when that field cannot be read (logged as unknown, never guessed).
    type: str | None = None
    jurisdiction: str | None = None
    received_at: datetime | None = None  # aware, UTC; only a plausible receipt (R1 checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "line": self.line,
            "reason": self.reason.value,
            "field": self.field,
            "message": self.message,
            "request_id": self.request_id,
            "client_id": self.client_id,
        }


Result = Accepted | Rejected


# --------------------------------------------------------------------------------------------
# Deadlines


def add_months(day: date, months: int) -> date:
    """Same day `months` later, clamped to the month's last day (31 Jan + 1 -> 28/29 Feb)."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def received_day(received_at: datetime | date) -> date:
    """The calendar day of receipt: the earlier of the day in the offset the business reported
    and the UTC day, so a deadline can only come early, never late (R1, R3)."""
    if isinstance(received_at, datetime):
        if received_at.tzinfo is None or received_at.utcoffset() is None:
            raise ValueError("received_at must be timezone-aware")
        return min(received_at.date(), received_at.astimezone(UTC).date())
    return received_at


def deadlines(received_at: datetime | date, jurisdiction: Jurisdiction | str = "ccpa") -> Deadlines:
    """Due dates from the business's receipt (R1); neither forwarding nor verification stops it.

    CCPA: acknowledge within 10 calendar days (R2's safe SLA, never later than 10 business
    days); respond by received_on + 44 days, counting receipt as day 1 (R3, the conservative
    reading of "45 days"); one extension to at most 90 days, i.e. received_on + 89 (R4).
    GDPR: respond within one calendar month, the same day next month clamped to the month's end
    (15 Jan -> 15 Feb; 31 Jan -> 28/29 Feb), extendable by two further months (G1). The GDPR sets
    no acknowledgement deadline; the same 10-day SLA is used. No roll-forward over weekends or
    holidays in either case (conservative).
    """
    received_on = received_day(received_at)
    jurisdiction = Jurisdiction(jurisdiction)
    ack_due = received_on + timedelta(days=10)
    if jurisdiction is Jurisdiction.gdpr:
        return Deadlines(
            received_on, ack_due, add_months(received_on, 1), add_months(received_on, 3)
        )
    return Deadlines(
        received_on, ack_due, received_on + timedelta(days=44), received_on + timedelta(days=89)
    )


def collected_since(
    received_on: date, look_back: LookBack | str, jurisdiction: Jurisdiction | str = "ccpa"
) -> datetime | None:
    """Start of an access request's window (R9, G2), rounded down to midnight UTC (wider, never
    narrower). None means no limit."""
    look_back = LookBack(look_back)
    if look_back is LookBack.all or Jurisdiction(jurisdiction) is Jurisdiction.gdpr:
        return None
    if look_back is LookBack.since_2022:
        return SINCE_2022
    return datetime.combine(add_months(received_on, -12), time(), tzinfo=UTC)


# --------------------------------------------------------------------------------------------
# Parsing bytes into JSON values


class _Invalid(Exception):
    """A document that cannot become a JSON object; carries the reason and a safe message."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _safe_name(name: object) -> str | None:
    return name if isinstance(name, str) and SAFE_NAME_RE.fullmatch(name) else None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            name = _safe_name(key)
            shown = f"key {name!r}" if name else "a key"
            raise _Invalid(
                Reason.invalid_json,
                f"the JSON object repeats {shown}; parsers disagree on which value wins, so the "
                "document is ambiguous (R1)",
            )
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise _Invalid(
        Reason.invalid_json, f"{name} is not a JSON number (RFC 8259); send a valid document (R1)"
    )


def _depth(text: str) -> int:
    """Maximum nesting of arrays/objects, ignoring brackets inside strings."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _load(raw: bytes, max_bytes: int) -> Any:
    """Bytes of one document -> JSON value, strictly (no BOM, no NaN, no duplicate keys)."""
    if len(raw) > max_bytes:
        raise _Invalid(
            Reason.too_large,
            f"the document is {len(raw)} bytes, more than the limit of {max_bytes} (R1)",
        )
    if raw.startswith(b"\xef\xbb\xbf") or raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _Invalid(
            Reason.encoding,
            "the document starts with a byte-order mark; send UTF-8 without a BOM (R1)",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Invalid(
            Reason.encoding, f"the document is not valid UTF-8 (byte {exc.start}) (R1)"
        ) from None
    if not text.strip():
        raise _Invalid(Reason.invalid_json, "the document is empty (R1)")
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(text) > MAX_DEPTH:
        raise _Invalid(
            Reason.invalid_json, f"the document is nested deeper than {MAX_DEPTH} levels (R1)"
        )
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        # exc.msg is a fixed phrase ("Expecting value"...), never the document's content.
        raise _Invalid(
            Reason.invalid_json,
            f"the document is not valid JSON: {exc.msg.removesuffix(' at')} at line {exc.lineno} "
            f"column {exc.colno} (R1)",
        ) from None
    except (ValueError, RecursionError):  # e.g. an integer of thousands of digits
        raise _Invalid(
            Reason.invalid_json, "the document is not valid JSON: a value is out of range (R1)"
        ) from None


def _parses_whole(raw: bytes, max_bytes: int) -> bool:
    """Whether the whole input is one JSON value (syntax only), to tell JSON from NDJSON."""
    if len(raw) > max_bytes:
        return False
    try:
        json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return False
    return True


def _documents(raw: bytes, max_bytes: int) -> list[tuple[int | None, bytes]]:
    """Split an input into documents: one JSON value, or NDJSON lines (blank lines skipped)."""
    lines = [
        (number, line.rstrip(b"\r"))
        for number, line in enumerate(raw.split(b"\n"), start=1)
        if line.strip(b" \t\r")
    ]
    if len(lines) <= 1 or _parses_whole(raw, max_bytes):
        return [(None, raw)]
    return [(number, line) for number, line in lines]


# --------------------------------------------------------------------------------------------
# Field checks


class _Reject(Exception):
    def __init__(self, reason: Reason, field: str | None, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field
        self.message = message


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "an unsupported value"


def _wrong_type(path: str, expected: str, value: object, rule: str) -> _Reject:
    return _Reject(
        Reason.wrong_type, path, f"{path} must be {expected}, not {_json_type(value)} ({rule})"
    )


def _check_fields(obj: dict[str, Any], allowed: Iterable[str], prefix: str) -> None:
    allowed = set(allowed)
    for key in obj:
        if key in allowed:
            continue
        name = _safe_name(key)
        path = f"{prefix}{name}" if name else None
        shown = f"{prefix}{name}" if name else f"a field of {prefix.rstrip('.') or 'the document'}"
        hint = f"; did you mean {ALIASES[key]}?" if prefix == "" and key in ALIASES else ""
        raise _Reject(
            Reason.unknown_field,
            path,
            f"{shown} is not a known field{hint} (docs/requests.md; unknown fields are refused "
            "so nothing is silently ignored, R1)",
        )


def _text(value: object, path: str, limit: int, rule: str, *, multiline: bool = False) -> str:
    if not isinstance(value, str):
        raise _wrong_type(path, "a string", value, rule)
    value = value.strip()
    if not value or len(value) > limit:
        raise _Reject(Reason.bad_text, path, f"{path} must hold 1 to {limit} characters ({rule})")
    for ch in value:
        if multiline and ch in "\n\t":
            continue
        if unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co", "Cn"}:
            raise _Reject(
                Reason.bad_text,
                path,
                f"{path} contains control, formatting or unassigned characters ({rule})",
            )
    return value


def _datetime(value: object, path: str, rule: str, *, keep_offset: bool = False) -> datetime:
    """ISO 8601 date-time with a timezone -> aware datetime in UTC (or in the offset the sender
    used, with `keep_offset`, for the day of receipt). Never echoes the value."""
    if not isinstance(value, str):
        raise _wrong_type(path, "an ISO 8601 date-time string", value, rule)
    problem = f"{path} must be an ISO 8601 date-time with a timezone, e.g. 2025-03-01T10:00:00Z"
    if not DATE_RE.fullmatch(value):
        raise _Reject(Reason.bad_date, path, f"{problem} ({rule})")
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise _Reject(Reason.bad_date, path, f"{problem}; the timezone is missing ({rule})")
        utc = parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # 2025-02-30, 0001-01-01T00:00+01:00...
        raise _Reject(Reason.bad_date, path, f"{problem} ({rule})") from None
    return parsed if keep_offset else utc


def _request_id(doc: dict[str, Any]) -> str:
    if "request_id" not in doc:
        raise _Reject(Reason.missing_field, "request_id", "request_id is missing (R22)")
    value = doc["request_id"]
    if not isinstance(value, str):
        raise _wrong_type("request_id", "a string", value, "R22")
    if not REQUEST_ID_RE.fullmatch(value) or ".." in value:
        raise _Reject(
            Reason.bad_request_id,
            "request_id",
            "request_id must be 1 to 64 characters from A-Z a-z 0-9 . _ : -, start with a letter "
            "or digit and not contain '..' (it names files; R22)",
        )
    return value


def _client_id_value(value: object) -> str | None:
    """The client id as text, or None when it is not one: a JSON string as the CRM spells it
    (compared exactly: "01" is neither "1" nor the integer tenant 1), or a plain non-negative
    JSON integer, which stands for its decimal text. Only safe text is returned (it may be
    echoed in a rejection and names S3 folders)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value) if 0 <= value <= MAX_CLIENT_INT else None
    if isinstance(value, str) and _client_text_problem(value) is None:
        return value
    return None


def _client_text_problem(value: str) -> str | None:
    """Why a client id string cannot be one (tenant ids may be any text the CRM uses, Unicode
    included, but never invisible or misleading characters), or None."""
    if not value or len(value) > MAX_CLIENT_ID:
        return f"must hold 1 to {MAX_CLIENT_ID} characters"
    if value != value.strip():
        return "must not start or end with blanks"
    if value in (".", "..") or "/" in value or "\\" in value:
        return "must not contain '/' or '\\' or be '.' or '..' (it names S3 folders)"
    for ch in value:
        if unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}:
            return "contains control, zero-width, bidirectional-override or unassigned characters"
    return None


def client_key(value: object) -> str:
    """A tenant registry key or a known client id as the text intake compares: `7` -> "7"."""
    return value if isinstance(value, str) else str(value)


def _client_texts(clients: Mapping[Any, bool]) -> Mapping[str, bool]:
    """`clients` keyed by text (a mapping keyed by integers is accepted and converted)."""
    if all(isinstance(k, str) for k in clients):
        return clients
    return {client_key(k): bool(v) for k, v in clients.items()}


def _client_id(doc: dict[str, Any], clients: Mapping[str, bool], source_client: str | None) -> str:
    if "client_id" not in doc:
        raise _Reject(Reason.missing_field, "client_id", "client_id is missing (R6)")
    raw = doc["client_id"]
    if isinstance(raw, str) and (problem := _client_text_problem(raw)) is not None:
        raise _Reject(Reason.bad_text, "client_id", f"client_id {problem} (R6)")
    value = _client_id_value(raw)
    if value is None:
        got = "a negative or oversized integer" if isinstance(raw, int) else _json_type(raw)
        raise _Reject(
            Reason.wrong_type,
            "client_id",
            f"client_id must be a string (the client's id as our records spell it) or a "
            f"non-negative integer, not {got} (R6)",
        )
    if value not in clients:
        raise _Reject(
            Reason.unknown_client,
            "client_id",
            "client_id is not one of our business clients; we act only on requests from the "
            "businesses we serve (R6)",
        )
    if not clients[value]:
        raise _Reject(
            Reason.inactive_client,
            "client_id",
            "client_id names a client whose contract is not active; we may use data only for an "
            "active contract's purposes (R6, R27)",
        )
    if source_client is not None and value != source_client:
        raise _Reject(
            Reason.client_mismatch,
            "client_id",
            "client_id differs from the client the document was received from; a client may "
            "only send requests for itself (R6)",
        )
    return value


def _type(doc: dict[str, Any]) -> RequestType:
    if "type" not in doc:
        raise _Reject(Reason.missing_field, "type", "type is missing (R1)")
    value = doc["type"]
    if not isinstance(value, str):
        raise _wrong_type("type", "a string", value, "R1")
    try:
        return RequestType(value)
    except ValueError:
        raise _Reject(
            Reason.unknown_type, "type", 'type must be "delete" or "access" (R1)'
        ) from None


def _jurisdiction(doc: dict[str, Any]) -> Jurisdiction:
    value = doc.get("jurisdiction")
    if value is None:
        return Jurisdiction.ccpa
    if not isinstance(value, str):
        raise _wrong_type("jurisdiction", "a string", value, "G1")
    try:
        return Jurisdiction(value)
    except ValueError:
        raise _Reject(
            Reason.unknown_jurisdiction,
            "jurisdiction",
            'jurisdiction must be "ccpa" (the default) or "gdpr" (R3, G1)',
        ) from None


def _received_at(doc: dict[str, Any], now: datetime) -> datetime:
    """The business's receipt, with the offset it reported (kept for the day of receipt)."""
    if "received_at" not in doc:
        raise _Reject(
            Reason.missing_field,
            "received_at",
            "received_at is missing; every deadline starts from it (R1)",
        )
    received = _datetime(doc["received_at"], "received_at", "R1", keep_offset=True)
    if received < EARLIEST_RECEIVED:
        raise _Reject(
            Reason.received_too_old,
            "received_at",
            "received_at is before 2020-01-01, when the CCPA took effect; check the date (R1)",
        )
    if received > now + CLOCK_SKEW:
        raise _Reject(
            Reason.received_in_future,
            "received_at",
            "received_at is in the future; it must be when the business received the request (R1)",
        )
    return received


def _forwarded_at(doc: dict[str, Any], received: datetime, now: datetime) -> datetime | None:
    value = doc.get("forwarded_at")
    if value is None:
        return None
    forwarded = _datetime(value, "forwarded_at", "R1")
    if forwarded > now + CLOCK_SKEW:
        raise _Reject(Reason.bad_date, "forwarded_at", "forwarded_at is in the future (R1)")
    if forwarded < received - ORDER_TOLERANCE:
        raise _Reject(
            Reason.bad_date,
            "forwarded_at",
            "forwarded_at is before received_at; a request cannot be forwarded before the "
            "business received it (R1)",
        )
    return forwarded


def _verification(
    value: object, path: str, received: datetime, now: datetime, rule: str, missing: Reason
) -> Verification:
    """`verification` (R5) or `guardian_verification` (R24); `missing` is the reason code for an
    absent or incomplete one."""
    what = "the guardian's verification" if rule == "R24" else "verification"
    if value is None:
        raise _Reject(
            missing,
            path,
            f"{path} is missing: {what} by the business is required before we act ({rule})",
        )
    if not isinstance(value, dict):
        raise _wrong_type(path, "an object {method, verified_at, verified_by}", value, rule)
    # `level` is the business's R5 statement about the consumer; a guardian is verified or not.
    levels = ("level",) if rule == "R5" else ()
    _check_fields(value, (*VERIFICATION_FIELDS, *levels), f"{path}.")
    for key in VERIFICATION_FIELDS:
        if value.get(key) is None:
            raise _Reject(
                missing,
                f"{path}.{key}",
                f"{path}.{key} is missing: {what} must say how, when and by whom ({rule})",
            )
    method = _text(value["method"], f"{path}.method", MAX_LABEL, rule)
    verified_by = _text(value["verified_by"], f"{path}.verified_by", MAX_LABEL, rule)
    verified_at = _datetime(value["verified_at"], f"{path}.verified_at", rule)
    if verified_at > now + CLOCK_SKEW:
        raise _Reject(
            Reason.bad_date, f"{path}.verified_at", f"{path}.verified_at is in the future ({rule})"
        )
    if verified_at < received - ORDER_TOLERANCE:
        raise _Reject(
            Reason.verified_before_received,
            f"{path}.verified_at",
            f"{path}.verified_at is more than {int(ORDER_TOLERANCE.total_seconds() // 3600)} "
            f"hours before received_at; a verification must be of this request ({rule})",
        )
    level = value.get("level")
    if level is None:
        level = LEVEL_SPECIFIC  # back-compatible: documents before the field were full checks
    elif not isinstance(level, str):
        raise _wrong_type(f"{path}.level", '"specific_pieces" or "categories"', level, rule)
    elif level not in VERIFICATION_LEVELS:
        raise _Reject(
            Reason.bad_verification_level,
            f"{path}.level",
            f'{path}.level must be "specific_pieces" or "categories" (exact, lower case); it '
            f"says how far the business verified the consumer ({rule})",
        )
    return Verification(
        method=method, verified_at=verified_at, verified_by=verified_by, level=level
    )


def _check_level(verification: Verification, kind: RequestType, jurisdiction: Jurisdiction) -> None:
    """R5: a request verified only for categories is acted on only as a CCPA access request
    for categories (Reg 7024(a)-(b)). A deletion needs the consumer verified (Reg 7022(a)) and
    is refused as today: we never erase on a partial verification, the business decides. The
    GDPR has no categories-only answer (Art. 12(2), (6): the controller verifies or refuses)."""
    if not verification.categories_only:
        return
    if kind is RequestType.delete:
        raise _Reject(
            Reason.not_verified,
            "verification.level",
            'verification.level is "categories": a deletion needs the consumer verified, '
            "not only to the degree a request for categories needs; the business may deny it "
            "or verify further (R5)",
        )
    if jurisdiction is not Jurisdiction.ccpa:
        raise _Reject(
            Reason.not_verified,
            "verification.level",
            'verification.level "categories" is the CCPA\'s answer to a request it could not '
            "verify for specific pieces (R5); a GDPR request is verified or refused (Art. 12)",
        )


def _subject(doc: dict[str, Any]) -> tuple[bool, bool]:
    value = doc.get("subject")
    if value is None:
        return False, False
    if not isinstance(value, dict):
        raise _wrong_type("subject", "an object {is_minor, under_13}", value, "R24")
    _check_fields(value, SUBJECT_FIELDS, "subject.")
    flags = []
    for key in SUBJECT_FIELDS:
        flag = value.get(key)
        if flag is None:
            flag = False
        if not isinstance(flag, bool):
            raise _wrong_type(f"subject.{key}", "true or false", flag, "R24")
        flags.append(flag)
    is_minor, under_13 = flags
    # An under-13 subject is a minor even if is_minor says otherwise: the stricter reading wins.
    return is_minor or under_13, under_13


def _malformed_email(hint: str) -> _Reject:
    return _Reject(
        Reason.malformed_email,
        "identities.email",
        f"identities.email is not a valid e-mail address: {hint} (R5)",
    )


def _script(ch: str) -> str | None:
    """Unicode script of a letter (or non-ASCII digit), from its character name; None for the
    script-neutral characters (ASCII digits, punctuation, combining marks)."""
    category = unicodedata.category(ch)
    if ch.isascii():
        return "LATIN" if ch.isalpha() else None
    if not (category.startswith("L") or category == "Nd"):
        return None
    word = unicodedata.name(ch, "UNKNOWN").split(" ", 1)[0]
    return {"CJK": "HAN", "KATAKANA-HIRAGANA": "KATAKANA"}.get(word, word)


# Script mixes that are normal within one word (UTS #39 "highly restrictive"): Latin with the
# scripts of Japanese, Chinese and Korean writing. Anything else mixed is a homoglyph risk.
ALLOWED_MIXES = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)
# Lower-case non-Latin letters that look like Latin ones (a subset of Unicode's confusables).
LATIN_LOOKALIKES = frozenset(
    # Cyrillic a c e o p x y i j s d h l q w
    "\u0430\u0441\u0435\u043e\u0440\u0445\u0443\u0456\u0458\u0455\u0501\u04bb\u04cf\u051b\u051d"
    # Greek o a i v p k u
    "\u03bf\u03b1\u03b9\u03bd\u03c1\u03ba\u03c5"
    # Armenian o u n h
    "\u0585\u057d\u0578\u0570"
)


def _email(value: object) -> str:
    """Validate and normalise an e-mail address; refuse lookalikes.

    1. Refuse invisible and formatting characters before anything else: zero-width space,
       (non-)joiners, word joiner and BOM (U+200B-U+200D, U+2060, U+FEFF), bidi overrides, and
       any control, surrogate, private-use, unassigned or space character. They make two
       different addresses look identical.
    2. Refuse compatibility characters (NFKC differs from NFC): full-width letters, ligatures,
       mathematical alphanumerics, superscripts.
    3. Refuse wildcards (`*`, `%`, `?`): valid in an RFC 5322 local part, but an identity
       names one address, and a pattern character could match others wherever values are
       compared as patterns.
    4. Syntax only (`_email_syntax`): `email_validator` without deliverability checks, and
       special-use, reserved or non-resolving domains (`.test`, `.local`, `.internal`,
       `.invalid`, `localhost`, typo domains such as `gmial.com`) accepted: these are identities
       the CRM holds, to be matched, not addresses to mail. Its error text quotes the address,
       so it is never passed on. IDNA (xn--) domains come back in Unicode, so the next checks
       see the real letters. Never a network lookup.
    5. Lower-case the normalised form (NFC): every store is matched case-insensitively, and
       tombstones and dedupe keys are hashes of this one spelling (R7, R20).
    6. Script check on the local part and on each domain label: letters must come from one script
       (or Latin with Han/Kana, Han/Bopomofo or Han/Hangul, as UTS #39 "highly restrictive"
       allows): "jane" spelt with a Cyrillic "a" (U+0430) is refused; all-Cyrillic or all-Han
       addresses such as "ivan@primer.rf" written in Cyrillic are accepted.
    7. Whole-script lookalikes: when the address mixes scripts across parts, a non-Latin part made
       only of Latin-lookalike letters ("ace" in Cyrillic next to "example.com") is refused.
    """
    if not isinstance(value, str):
        raise _wrong_type("identities.email", "a string", value, "R5")
    value = value.strip()
    if len(value) > 320:
        raise _malformed_email("it is longer than 320 characters")
    if any(ch in ZERO_WIDTH or unicodedata.category(ch) in BAD_CATEGORIES for ch in value):
        raise _malformed_email("it contains spaces, invisible, formatting or control characters")
    if unicodedata.normalize("NFKC", value) != unicodedata.normalize("NFC", value):
        raise _malformed_email("it contains full-width or other compatibility characters")
    if any(ch in WILDCARDS for ch in value):
        raise _malformed_email("it contains a wildcard character (*, % or ?)")
    try:
        normalized = _email_syntax(value).lower()
    except EmailNotValidError:
        raise _malformed_email("the syntax is invalid (one address, local-part@domain)") from None
    local, _, domain = normalized.rpartition("@")
    parts = [local, *domain.split(".")]
    part_scripts = []
    for part in parts:
        scripts = {s for s in map(_script, part) if s}
        if len(scripts) > 1 and not any(scripts <= mix for mix in ALLOWED_MIXES):
            raise _malformed_email("it mixes letters of different scripts (possible lookalike)")
        part_scripts.append(scripts)
    everything = set().union(*part_scripts)
    if len(everything) > 1 and not any(everything <= mix for mix in ALLOWED_MIXES):
        for part, scripts in zip(parts, part_scripts, strict=True):
            letters = [ch for ch in part if _script(ch)]
            if scripts and scripts != {"LATIN"} and all(ch in LATIN_LOOKALIKES for ch in letters):
                raise _malformed_email(
                    "a part is written only with letters that imitate Latin ones (possible "
                    "lookalike)"
                )
    return normalized


def _email_syntax(value: str) -> str:
    """`email_validator`'s syntax checks and normalisation (NFC, IDNA) alone.

    Even with deliverability checks off the library refuses the special-use names it lists
    (`.arpa`, `.invalid`, `.local`, `localhost`, `.onion`, `.test`): a special-use suffix is
    swapped for a neutral one of the same shape for the check and put back after, so the rest
    of the address is still checked. Single-label domains are accepted (`jane@localhost`).
    """
    local, _, domain = value.rpartition("@")
    lowered = domain.lower()
    suffix = ""
    for name in SPECIAL_USE_DOMAIN_NAMES:
        if lowered == name or lowered.endswith("." + name):
            suffix = name
            break
    probe = f"{local}@{domain[: len(domain) - len(suffix)]}{'a' * len(suffix)}"
    normalized = validate_email(
        probe if suffix else value,
        check_deliverability=False,
        test_environment=True,
        globally_deliverable=False,
    ).normalized
    return normalized[: len(normalized) - len(suffix)] + suffix if suffix else normalized


def _phone_region(doc: dict[str, Any]) -> str | None:
    """The region a national phone number is read in (ISO 3166-1 alpha-2), when given."""
    value = doc.get("phone_region")
    if value is None:
        return None
    if not isinstance(value, str):
        raise _wrong_type("phone_region", "a string", value, "R5")
    region = value.strip().upper()
    if not REGION_RE.fullmatch(region) or region not in phonenumbers.SUPPORTED_REGIONS:
        raise _Reject(
            Reason.malformed_phone,
            "phone_region",
            "phone_region must be an ISO 3166-1 alpha-2 country code with a telephone "
            'numbering plan, such as "US", "GB" or "DE" (R5)',
        )
    return region


def _phone(value: object, region: str | None = None) -> tuple[str, tuple[str, ...]]:
    """(E.164, other spellings) of a phone number: read in `region` (the request's
    `phone_region`, else US), checked against the numbering plan's offline metadata (never a
    network lookup). The other spellings are the number as sent, its digits and its national
    digits: a CRM that stores numbers as-is still matches (any-CRM)."""
    if not isinstance(value, str):
        raise _wrong_type("identities.phone", "a string", value, "R5")
    value = value.strip()
    problem = (
        "identities.phone is not a valid phone number (digits, spaces, + ( ) . - only; national "
        "numbers are read in phone_region, US when it is not given) (R5)"
    )
    if not PHONE_RE.fullmatch(value):
        raise _Reject(Reason.malformed_phone, "identities.phone", problem)
    try:
        number = phonenumbers.parse(value, region or "US")
    except phonenumbers.NumberParseException:
        raise _Reject(Reason.malformed_phone, "identities.phone", problem) from None
    if not phonenumbers.is_valid_number(number):
        raise _Reject(Reason.malformed_phone, "identities.phone", problem)
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    spellings = [value, re.sub(r"[^0-9]", "", value), *_written_forms(number)]
    variants = tuple(dict.fromkeys(v for v in spellings if v and v != e164))
    return e164, variants


def _written_forms(number: phonenumbers.PhoneNumber) -> list[str]:
    """The ways a CRM commonly stores one number as typed: national and international digit
    groups joined by nothing, '-', '.', ' ', and the national '(415) 555-0134' form. A resolver
    compares phone columns as stored (so the CRM's indexes serve), so the request carries each
    spelling instead of the column being normalised (any-CRM)."""
    fmt = phonenumbers.PhoneNumberFormat
    national = phonenumbers.format_number(number, fmt.NATIONAL)
    groups = re.findall(r"[0-9]+", national)
    world = re.findall(r"[0-9]+", phonenumbers.format_number(number, fmt.INTERNATIONAL))
    forms = [national, phonenumbers.format_number(number, fmt.INTERNATIONAL)]
    for sep in ("", "-", ".", " "):
        forms.append(sep.join(groups))
        forms.append(sep.join(world))
        forms.append("+" + sep.join(world))
    if len(groups) > 1:
        forms.append(f"({groups[0]}) {'-'.join(groups[1:])}")
    return forms


def _contact_id(value: object) -> str:
    if not isinstance(value, str):
        raise _wrong_type("identities.contact_id", "a string", value, "R5")
    value = value.strip()
    if not CONTACT_ID_RE.fullmatch(value):
        raise _Reject(
            Reason.malformed_contact_id,
            "identities.contact_id",
            "identities.contact_id must be 1 to 64 characters from A-Z a-z 0-9 . _ : - starting "
            "with a letter or digit (R5)",
        )
    return value


def _identities(doc: dict[str, Any]) -> Identities:
    value = doc.get("identities")
    none = "identities must hold at least one of email, phone, contact_id (R5)"
    if value is None:
        raise _Reject(Reason.no_identity, "identities", none)
    if not isinstance(value, dict):
        raise _wrong_type("identities", "an object {email, phone, contact_id}", value, "R5")
    _check_fields(value, [k.value for k in IDENTITY_FIELDS], "identities.")
    region = _phone_region(doc)
    found: dict[str, Any] = {}
    for kind, check in (
        (IdentityType.email, _email),
        (IdentityType.phone, lambda raw: _phone(raw, region)),
        (IdentityType.contact_id, _contact_id),
    ):
        raw = value.get(kind.value)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            continue  # absent, null and empty all mean "not given"
        checked = check(raw)
        if kind is IdentityType.phone:
            found["phone"], found["phone_variants"] = checked
        else:
            found[kind.value] = checked
    if not any(found.get(k.value) for k in IDENTITY_FIELDS):
        raise _Reject(Reason.no_identity, "identities", none)
    return Identities(**found)


def identity_pairs(stored: Mapping[str, Any]) -> tuple[tuple[IdentityType, str], ...]:
    """(kind, value) of every identity value of a stored request (`Identities.as_doc`: a string
    per kind, or a list), kinds in name order, each kind's values as stored."""
    return tuple(
        (IdentityType(kind), v)
        for kind, values in sorted(stored.items())
        for v in (values if isinstance(values, list) else [values])
    )


def identity_lists(stored: Mapping[str, Any]) -> dict[str, list[str]]:
    """The stored identities as kind -> list of values (what batches keep as `given`)."""
    out: dict[str, list[str]] = {}
    for kind, v in identity_pairs(stored):
        out.setdefault(kind.value, []).append(v)
    return out


def _look_back(
    doc: dict[str, Any], kind: RequestType, jurisdiction: Jurisdiction
) -> LookBack | None:
    value = doc.get("look_back")
    if kind is RequestType.delete:
        if value is not None:
            raise _Reject(
                Reason.bad_look_back,
                "look_back",
                "look_back applies to access requests only; a deletion covers all data (R9)",
            )
        return None
    if value is None:
        return LookBack.all if jurisdiction is Jurisdiction.gdpr else LookBack.default
    if not isinstance(value, str):
        raise _wrong_type("look_back", "a string", value, "R9")
    try:
        look_back = LookBack(value)
    except ValueError:
        raise _Reject(
            Reason.bad_look_back,
            "look_back",
            'look_back must be "default", "since_2022" (CCPA, R9) or "all" (GDPR, G2)',
        ) from None
    if jurisdiction is Jurisdiction.gdpr and look_back is not LookBack.all:
        raise _Reject(
            Reason.bad_look_back,
            "look_back",
            'look_back must be "all" (or omitted) for a GDPR access request: no look-back '
            "limit applies (G2)",
        )
    if jurisdiction is Jurisdiction.ccpa and look_back is LookBack.all:
        raise _Reject(
            Reason.bad_look_back,
            "look_back",
            'look_back "all" is for GDPR requests; under the CCPA use "default" (12 months) or '
            '"since_2022" (R9)',
        )
    return look_back


def _notes(doc: dict[str, Any]) -> str | None:
    value = doc.get("notes")
    if value is None:
        return None
    return _text(value, "notes", MAX_NOTES, "R1", multiline=True)


# --------------------------------------------------------------------------------------------
# Public API


def validate_request(
    doc: object,
    source: str,
    *,
    now: datetime,
    clients: Mapping[str, bool],
    line: int | None = None,
    source_client: str | None = None,
) -> Result:
    """One decoded JSON value -> Accepted or Rejected (the first failing check; never raises)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    clients = _client_texts(clients)
    if source_client is not None:
        source_client = client_key(source_client)
    if not isinstance(doc, dict):
        return Rejected(
            source,
            line,
            Reason.not_an_object,
            None,
            f"the document must be a JSON object, not {_json_type(doc)} (R1)",
        )
    # Read before any check, for the report back to the client; only safe values are kept.
    safe_id = _request_id_or_none(doc.get("request_id"))
    client = _client_id_value(doc.get("client_id"))
    logged = _as_logged(doc, now)
    try:
        _check_fields(doc, TOP_FIELDS, "")
        request_id = _request_id(doc)
        client_id = _client_id(doc, clients, source_client)
        kind = _type(doc)
        jurisdiction = _jurisdiction(doc)
        received_local = _received_at(doc, now)
        received = received_local.astimezone(UTC)
        forwarded = _forwarded_at(doc, received, now)
        verification = _verification(
            doc.get("verification"), "verification", received, now, "R5", Reason.not_verified
        )
        _check_level(verification, kind, jurisdiction)  # R5 categories-only: access, CCPA
        is_minor, under_13 = _subject(doc)
        guardian: Verification | None = None
        if under_13 or doc.get("guardian_verification") is not None:
            # R24: required under 13; checked like any other field when given for an older one.
            guardian = _verification(
                doc.get("guardian_verification"),
                "guardian_verification",
                received,
                now,
                "R24",
                Reason.minor_without_guardian_verification if under_13 else Reason.missing_field,
            )
        identities = _identities(doc)
        look_back = _look_back(doc, kind, jurisdiction)
        notes = _notes(doc)
    except _Reject as exc:
        return Rejected(source, line, exc.reason, exc.field, exc.message, safe_id, client, *logged)
    due = deadlines(received_local, jurisdiction)
    return Accepted(
        source=source,
        line=line,
        request_id=request_id,
        client_id=client_id,
        type=kind,
        jurisdiction=jurisdiction,
        identities=identities,
        received_at=received,
        forwarded_at=forwarded,
        verification=verification,
        guardian_verification=guardian,
        is_minor=is_minor,
        under_13=under_13,
        look_back=look_back,
        collected_since=(
            collected_since(due.received_on, look_back, jurisdiction) if look_back else None
        ),
        due=due,
        notes=notes,
    )


def _as_logged(
    doc: dict[str, Any], now: datetime
) -> tuple[str | None, str | None, datetime | None]:
    """(type, jurisdiction, received_at) as the document gives them, each read on its own so a
    refusal for another field still logs what the request was (R22, R23). A field that is
    absent, of another shape or fails its own check is None (the log says unknown): the type is
    never guessed, and the receipt is never replaced by the time we read it. An absent
    jurisdiction is the format's documented default, the CCPA; an unreadable one is unknown."""
    found: list[Any] = []
    for read in (_type, _jurisdiction, lambda d: _received_at(d, now).astimezone(UTC)):
        try:
            value = read(doc)
        except _Reject:
            value = None
        found.append(value.value if isinstance(value, StrEnum) else value)
    return found[0], found[1], found[2]


def _request_id_or_none(value: object) -> str | None:
    if isinstance(value, str) and REQUEST_ID_RE.fullmatch(value) and ".." not in value:
        return value
    return None


def parse_documents(
    raw: bytes,
    source: str,
    *,
    now: datetime,
    clients: Mapping[str, bool],
    max_bytes: int = MAX_BYTES,
    max_documents: int = MAX_DOCUMENTS,
    source_client: str | None = None,
) -> list[Result]:
    """Parse one input (a JSON document, or NDJSON: one document per line) into results.

    `source` labels the results (e.g. the S3 key); `clients` maps client_id (as text: the
    tenant registry's key values, `inbox.load_clients`) -> active;
    `source_client`, when given, is the client the input came from (e.g. its inbox prefix) and
    every document must name it. `max_bytes` limits each document (the whole input when it is one
    JSON document, else each line). Results keep the input's order; in NDJSON each non-empty line
    gives one result with its 1-based line number, and a bad line never stops the others. Never
    raises on hostile input.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    clients = _client_texts(clients)  # once per input, not per document
    documents = _documents(raw, max_bytes)
    if len(documents) > max_documents:
        return [
            Rejected(
                source,
                None,
                Reason.too_large,
                None,
                f"the input holds {len(documents)} documents, more than the limit of "
                f"{max_documents}; split it into several files (R1)",
            )
        ]
    results: list[Result] = []
    for line, chunk in documents:
        try:
            value = _load(chunk, max_bytes)
        except _Invalid as exc:
            results.append(Rejected(source, line, exc.reason, None, exc.message))
            continue
        results.append(
            validate_request(
                value, source, now=now, clients=clients, line=line, source_client=source_client
            )
        )
    return results


# --------------------------------------------------------------------------------------------
# Duplicates


def _request_key(client_id: str, request_id: str, hash_key: bytes) -> str:
    return keyed_hash(hash_key, "dedupe:request_id", f"{client_id}\x1f{request_id}")


def _identity_keys(accepted: Accepted, hash_key: bytes) -> set[str]:
    return {
        keyed_hash(
            hash_key, f"dedupe:{kind.value}", f"{accepted.client_id}\x1f{accepted.type}\x1f{value}"
        )
        for kind, value in accepted.identities.items()
    }


def identity_keys(accepted: Accepted, hash_key: bytes) -> set[str]:
    """The identity part of `dedupe_key` (without the request-id key), for callers whose policy
    treats finished requests per identity, e.g. the inbox letting a consumer ask to know again
    (R7)."""
    return _identity_keys(accepted, hash_key)


def request_key(accepted: Accepted, hash_key: bytes) -> str:
    """The request-id part of `dedupe_key`: a client's request id is processed once, whatever
    became of the request (the inbox checks it against every accepted request, finished ones
    included)."""
    return _request_key(accepted.client_id, accepted.request_id, hash_key)


def dedupe_key(accepted: Accepted, hash_key: bytes) -> set[str]:
    """Keyed hashes (never the values) by which a request is recognised again (R7, R20).

    One per normalised identity, each bound to (client_id, type), plus one for
    (client_id, request_id) whatever the type. Store them with open and finished requests and pass
    them back to `find_duplicates` as `existing_keys`; which finished requests count is the
    caller's policy.
    """
    return {_request_key(accepted.client_id, accepted.request_id, hash_key)} | _identity_keys(
        accepted, hash_key
    )


def find_duplicates(
    batch: Iterable[Result], existing_keys: set[str], hash_key: bytes
) -> list[Result]:
    """Mark duplicates in `batch` (order kept; Rejected items pass through unchanged).

    A request is a duplicate when its (client_id, request_id) was already seen, or when every one
    of its identities was already seen for the same client and type: in `existing_keys`, or in an
    earlier Accepted of this batch. A request that brings any new identity is kept: rejecting it
    would leave that identity's data unsearched (R9) or undeleted (R16); re-running the identities
    already handled is harmless because deletion and export are idempotent.
    """
    seen = set(existing_keys)
    out: list[Result] = []
    for item in batch:
        if isinstance(item, Rejected):
            out.append(item)
            continue
        request_key = _request_key(item.client_id, item.request_id, hash_key)
        identity_keys = _identity_keys(item, hash_key)
        reason_field, message = None, None
        if request_key in seen:
            reason_field = "request_id"
            message = (
                "request_id was already received from this client; a request is processed once (R7)"
            )
        elif identity_keys <= seen:
            reason_field = "identities"
            message = (
                f"a {item.type.value} request for the same identities is already open for "
                "this client; it will be answered (R7)"
            )
        if message:
            out.append(
                Rejected(
                    item.source,
                    item.line,
                    Reason.duplicate,
                    reason_field,
                    message,
                    item.request_id,
                    item.client_id,
                )
            )
            continue
        seen |= identity_keys | {request_key}
        out.append(item)
    return out
