"""Checks of a request document's fields other than identities: ids, client, type,
jurisdiction, dates (R1), verification (R5, R24), minors, look-back (R9) and notes. Each raises
`FieldRejected` with one reason; messages name the field and rule, never the value."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from compliance.requests.json_input import safe_name
from compliance.requests.request_format import (
    ALIASES,
    CLOCK_SKEW,
    DATE_RE,
    EARLIEST_RECEIVED,
    LEVEL_SPECIFIC,
    MAX_CLIENT_ID,
    MAX_CLIENT_INT,
    MAX_LABEL,
    MAX_NOTES,
    ORDER_TOLERANCE,
    REQUEST_ID_RE,
    SUBJECT_FIELDS,
    VERIFICATION_FIELDS,
    VERIFICATION_LEVELS,
    Jurisdiction,
    LookBack,
    Reason,
    RequestType,
    Verification,
)

# --------------------------------------------------------------------------------------------
# Field checks


class FieldRejected(Exception):
    def __init__(self, reason: Reason, field: str | None, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field
        self.message = message


def json_type(value: object) -> str:
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


def wrong_type(path: str, expected: str, value: object, rule: str) -> FieldRejected:
    return FieldRejected(
        Reason.wrong_type, path, f"{path} must be {expected}, not {json_type(value)} ({rule})"
    )


def check_fields(obj: dict[str, Any], allowed: Iterable[str], prefix: str) -> None:
    allowed = set(allowed)
    for key in obj:
        if key in allowed:
            continue
        name = safe_name(key)
        path = f"{prefix}{name}" if name else None
        shown = f"{prefix}{name}" if name else f"a field of {prefix.rstrip('.') or 'the document'}"
        hint = f"; did you mean {ALIASES[key]}?" if prefix == "" and key in ALIASES else ""
        raise FieldRejected(
            Reason.unknown_field,
            path,
            f"{shown} is not a known field{hint} (docs/requests.md; unknown fields are refused "
            "so nothing is silently ignored, R1)",
        )


def _text(value: object, path: str, limit: int, rule: str, *, multiline: bool = False) -> str:
    if not isinstance(value, str):
        raise wrong_type(path, "a string", value, rule)
    value = value.strip()
    if not value or len(value) > limit:
        raise FieldRejected(
            Reason.bad_text, path, f"{path} must hold 1 to {limit} characters ({rule})"
        )
    for ch in value:
        if multiline and ch in "\n\t":
            continue
        if unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co", "Cn"}:
            raise FieldRejected(
                Reason.bad_text,
                path,
                f"{path} contains control, formatting or unassigned characters ({rule})",
            )
    return value


def _datetime(value: object, path: str, rule: str, *, keep_offset: bool = False) -> datetime:
    """ISO 8601 date-time with a timezone -> aware datetime in UTC (or in the offset the sender
    used, with `keep_offset`, for the day of receipt). Never echoes the value."""
    if not isinstance(value, str):
        raise wrong_type(path, "an ISO 8601 date-time string", value, rule)
    problem = f"{path} must be an ISO 8601 date-time with a timezone, e.g. 2025-03-01T10:00:00Z"
    if not DATE_RE.fullmatch(value):
        raise FieldRejected(Reason.bad_date, path, f"{problem} ({rule})")
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise FieldRejected(
                Reason.bad_date, path, f"{problem}; the timezone is missing ({rule})"
            )
        utc = parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # 2025-02-30, 0001-01-01T00:00+01:00...
        raise FieldRejected(Reason.bad_date, path, f"{problem} ({rule})") from None
    return parsed if keep_offset else utc


def request_id_of(doc: dict[str, Any]) -> str:
    if "request_id" not in doc:
        raise FieldRejected(Reason.missing_field, "request_id", "request_id is missing (R22)")
    value = doc["request_id"]
    if not isinstance(value, str):
        raise wrong_type("request_id", "a string", value, "R22")
    if not REQUEST_ID_RE.fullmatch(value) or ".." in value:
        raise FieldRejected(
            Reason.bad_request_id,
            "request_id",
            "request_id must be 1 to 64 characters from A-Z a-z 0-9 . _ : -, start with a letter "
            "or digit and not contain '..' (it names files; R22)",
        )
    return value


def client_id_value(value: object) -> str | None:
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


def client_texts(clients: Mapping[Any, bool]) -> Mapping[str, bool]:
    """`clients` keyed by text (a mapping keyed by integers is accepted and converted)."""
    if all(isinstance(k, str) for k in clients):
        return clients
    return {client_key(k): bool(v) for k, v in clients.items()}


def client_id_of(
    doc: dict[str, Any], clients: Mapping[str, bool], source_client: str | None
) -> str:
    if "client_id" not in doc:
        raise FieldRejected(Reason.missing_field, "client_id", "client_id is missing (R6)")
    raw = doc["client_id"]
    if isinstance(raw, str) and (problem := _client_text_problem(raw)) is not None:
        raise FieldRejected(Reason.bad_text, "client_id", f"client_id {problem} (R6)")
    value = client_id_value(raw)
    if value is None:
        got = "a negative or oversized integer" if isinstance(raw, int) else json_type(raw)
        raise FieldRejected(
            Reason.wrong_type,
            "client_id",
            f"client_id must be a string (the client's id as our records spell it) or a "
            f"non-negative integer, not {got} (R6)",
        )
    if value not in clients:
        raise FieldRejected(
            Reason.unknown_client,
            "client_id",
            "client_id is not one of our business clients; we act only on requests from the "
            "businesses we serve (R6)",
        )
    if not clients[value]:
        raise FieldRejected(
            Reason.inactive_client,
            "client_id",
            "client_id names a client whose contract is not active; we may use data only for an "
            "active contract's purposes (R6, R27)",
        )
    if source_client is not None and value != source_client:
        raise FieldRejected(
            Reason.client_mismatch,
            "client_id",
            "client_id differs from the client the document was received from; a client may "
            "only send requests for itself (R6)",
        )
    return value


def type_of(doc: dict[str, Any]) -> RequestType:
    if "type" not in doc:
        raise FieldRejected(Reason.missing_field, "type", "type is missing (R1)")
    value = doc["type"]
    if not isinstance(value, str):
        raise wrong_type("type", "a string", value, "R1")
    try:
        return RequestType(value)
    except ValueError:
        raise FieldRejected(
            Reason.unknown_type,
            "type",
            'type must be "delete", "access" or "portability" (R1, G3)',
        ) from None


def jurisdiction_of(doc: dict[str, Any]) -> Jurisdiction:
    value = doc.get("jurisdiction")
    if value is None:
        return Jurisdiction.ccpa
    if not isinstance(value, str):
        raise wrong_type("jurisdiction", "a string", value, "G1")
    try:
        return Jurisdiction(value)
    except ValueError:
        raise FieldRejected(
            Reason.unknown_jurisdiction,
            "jurisdiction",
            'jurisdiction must be "ccpa" (the default) or "gdpr" (R3, G1)',
        ) from None


def received_at_of(doc: dict[str, Any], now: datetime) -> datetime:
    """The business's receipt, with the offset it reported (kept for the day of receipt)."""
    if "received_at" not in doc:
        raise FieldRejected(
            Reason.missing_field,
            "received_at",
            "received_at is missing; every deadline starts from it (R1)",
        )
    received = _datetime(doc["received_at"], "received_at", "R1", keep_offset=True)
    if received < EARLIEST_RECEIVED:
        raise FieldRejected(
            Reason.received_too_old,
            "received_at",
            "received_at is before 2020-01-01, when the CCPA took effect; check the date (R1)",
        )
    if received > now + CLOCK_SKEW:
        raise FieldRejected(
            Reason.received_in_future,
            "received_at",
            "received_at is in the future; it must be when the business received the request (R1)",
        )
    return received


def forwarded_at_of(doc: dict[str, Any], received: datetime, now: datetime) -> datetime | None:
    value = doc.get("forwarded_at")
    if value is None:
        return None
    forwarded = _datetime(value, "forwarded_at", "R1")
    if forwarded > now + CLOCK_SKEW:
        raise FieldRejected(Reason.bad_date, "forwarded_at", "forwarded_at is in the future (R1)")
    if forwarded < received - ORDER_TOLERANCE:
        raise FieldRejected(
            Reason.bad_date,
            "forwarded_at",
            "forwarded_at is before received_at; a request cannot be forwarded before the "
            "business received it (R1)",
        )
    return forwarded


def verification_of(
    value: object, path: str, received: datetime, now: datetime, rule: str, missing: Reason
) -> Verification:
    """`verification` (R5) or `guardian_verification` (R24); `missing` is the reason code for an
    absent or incomplete one."""
    what = "the guardian's verification" if rule == "R24" else "verification"
    if value is None:
        raise FieldRejected(
            missing,
            path,
            f"{path} is missing: {what} by the business is required before we act ({rule})",
        )
    if not isinstance(value, dict):
        raise wrong_type(path, "an object {method, verified_at, verified_by}", value, rule)
    # `level` is the business's R5 statement about the consumer; a guardian is verified or not.
    levels = ("level",) if rule == "R5" else ()
    check_fields(value, (*VERIFICATION_FIELDS, *levels), f"{path}.")
    for key in VERIFICATION_FIELDS:
        if value.get(key) is None:
            raise FieldRejected(
                missing,
                f"{path}.{key}",
                f"{path}.{key} is missing: {what} must say how, when and by whom ({rule})",
            )
    method = _text(value["method"], f"{path}.method", MAX_LABEL, rule)
    verified_by = _text(value["verified_by"], f"{path}.verified_by", MAX_LABEL, rule)
    verified_at = _datetime(value["verified_at"], f"{path}.verified_at", rule)
    if verified_at > now + CLOCK_SKEW:
        raise FieldRejected(
            Reason.bad_date, f"{path}.verified_at", f"{path}.verified_at is in the future ({rule})"
        )
    if verified_at < received - ORDER_TOLERANCE:
        raise FieldRejected(
            Reason.verified_before_received,
            f"{path}.verified_at",
            f"{path}.verified_at is more than {int(ORDER_TOLERANCE.total_seconds() // 3600)} "
            f"hours before received_at; a verification must be of this request ({rule})",
        )
    level = value.get("level")
    if level is None:
        level = LEVEL_SPECIFIC  # back-compatible: documents before the field were full checks
    elif not isinstance(level, str):
        raise wrong_type(f"{path}.level", '"specific_pieces" or "categories"', level, rule)
    elif level not in VERIFICATION_LEVELS:
        raise FieldRejected(
            Reason.bad_verification_level,
            f"{path}.level",
            f'{path}.level must be "specific_pieces" or "categories" (exact, lower case); it '
            f"says how far the business verified the consumer ({rule})",
        )
    return Verification(
        method=method, verified_at=verified_at, verified_by=verified_by, level=level
    )


def check_level(verification: Verification, kind: RequestType, jurisdiction: Jurisdiction) -> None:
    """R5: a request verified only for categories is acted on only as a CCPA access request
    for categories (Reg 7024(a)-(b)). A deletion needs the consumer verified (Reg 7022(a)) and
    is refused as today: we never erase on a partial verification, the business decides. The
    GDPR has no categories-only answer (Art. 12(2), (6): the controller verifies or refuses)."""
    if not verification.categories_only:
        return
    if kind is RequestType.delete:
        raise FieldRejected(
            Reason.not_verified,
            "verification.level",
            'verification.level is "categories": a deletion needs the consumer verified, '
            "not only to the degree a request for categories needs; the business may deny it "
            "or verify further (R5)",
        )
    if jurisdiction is not Jurisdiction.ccpa:
        raise FieldRejected(
            Reason.not_verified,
            "verification.level",
            'verification.level "categories" is the CCPA\'s answer to a request it could not '
            "verify for specific pieces (R5); a GDPR request is verified or refused (Art. 12)",
        )


def subject_of(doc: dict[str, Any]) -> tuple[bool, bool]:
    value = doc.get("subject")
    if value is None:
        return False, False
    if not isinstance(value, dict):
        raise wrong_type("subject", "an object {is_minor, under_13}", value, "R24")
    check_fields(value, SUBJECT_FIELDS, "subject.")
    flags = []
    for key in SUBJECT_FIELDS:
        flag = value.get(key)
        if flag is None:
            flag = False
        if not isinstance(flag, bool):
            raise wrong_type(f"subject.{key}", "true or false", flag, "R24")
        flags.append(flag)
    is_minor, under_13 = flags
    # An under-13 subject is a minor even if is_minor says otherwise: the stricter reading wins.
    return is_minor or under_13, under_13


def look_back_of(
    doc: dict[str, Any], kind: RequestType, jurisdiction: Jurisdiction
) -> LookBack | None:
    value = doc.get("look_back")
    if kind is RequestType.delete:
        if value is not None:
            raise FieldRejected(
                Reason.bad_look_back,
                "look_back",
                "look_back applies to access requests only; a deletion covers all data (R9)",
            )
        return None
    if value is None:
        return LookBack.all if jurisdiction is Jurisdiction.gdpr else LookBack.default
    if not isinstance(value, str):
        raise wrong_type("look_back", "a string", value, "R9")
    try:
        look_back = LookBack(value)
    except ValueError:
        raise FieldRejected(
            Reason.bad_look_back,
            "look_back",
            'look_back must be "default", "since_2022" (CCPA, R9) or "all" (GDPR, G2)',
        ) from None
    if jurisdiction is Jurisdiction.gdpr and look_back is not LookBack.all:
        raise FieldRejected(
            Reason.bad_look_back,
            "look_back",
            'look_back must be "all" (or omitted) for a GDPR access request: no look-back '
            "limit applies (G2)",
        )
    if jurisdiction is Jurisdiction.ccpa and look_back is LookBack.all:
        raise FieldRejected(
            Reason.bad_look_back,
            "look_back",
            'look_back "all" is for GDPR requests; under the CCPA use "default" (12 months) or '
            '"since_2022" (R9)',
        )
    return look_back


def notes_of(doc: dict[str, Any]) -> str | None:
    value = doc.get("notes")
    if value is None:
        return None
    return _text(value, "notes", MAX_NOTES, "R1", multiline=True)
