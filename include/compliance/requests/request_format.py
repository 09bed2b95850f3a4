"""The request document format (docs/requests.md) as data: its vocabulary (types,
jurisdictions, look-backs, rejection reasons), its limits and field names, and the results of
validating one document (`Accepted`, `Rejected`). Shared by the field checks, the identity
checks and `compliance.requests.intake`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any

from compliance.core.datamap.model import IdentityType
from compliance.requests.deadlines import Deadlines, add_months

# --------------------------------------------------------------------------------------------
# Vocabulary


class RequestType(StrEnum):
    delete = "delete"
    access = "access"
    portability = "portability"  # GDPR Art. 20 (G3): what the consumer provided, portable


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
    portability_needs_gdpr = "portability_needs_gdpr"
    bad_transfer_to = "bad_transfer_to"


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
        Reason.portability_needs_gdpr,
        Reason.bad_transfer_to,
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
MAX_URL = 2048  # transfer_to (G3)
# transfer_to must be https; plain http only to the loopback address (local tests, G3)
LOOPBACK_HOSTS = frozenset({"127.0.0.1"})

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
        "transfer_to",
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
    # G3: another controller's endpoint the export is POSTed to (portability only)
    transfer_to: str | None = field(default=None, repr=False)


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
