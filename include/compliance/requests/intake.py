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

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from compliance.core.hashing import keyed_hash
from compliance.requests.deadlines import Deadlines, add_months, due_dates, received_day

__all__ = [
    "INVALID_SUBMISSION",
    "LEVEL_CATEGORIES",
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
    "dedupe_key",
    "find_duplicates",
    "identity_keys",
    "identity_lists",
    "identity_pairs",
    "parse_documents",
    "received_day",
    "request_key",
    "validate_request",
]

from compliance.requests.fields import (
    FieldRejected,
    check_fields,
    check_level,
    client_id_of,
    client_id_value,
    client_key,
    client_texts,
    forwarded_at_of,
    json_type,
    jurisdiction_of,
    look_back_of,
    notes_of,
    received_at_of,
    request_id_of,
    subject_of,
    type_of,
    verification_of,
)
from compliance.requests.identities import (
    identities_of,
    identity_lists,
    identity_pairs,
)
from compliance.requests.json_input import (
    InvalidInput,
    load_json,
    split_documents,
)
from compliance.requests.portability_fields import check_portability, transfer_to_of
from compliance.requests.request_format import (
    INVALID_SUBMISSION,
    LEVEL_CATEGORIES,
    MAX_BYTES,
    MAX_DOCUMENTS,
    REQUEST_ID_RE,
    TOP_FIELDS,
    Accepted,
    Identities,
    Jurisdiction,
    LookBack,
    Reason,
    Rejected,
    RequestType,
    Result,
    Verification,
    collected_since,
)

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
    clients = client_texts(clients)
    if source_client is not None:
        source_client = client_key(source_client)
    if not isinstance(doc, dict):
        return Rejected(
            source,
            line,
            Reason.not_an_object,
            None,
            f"the document must be a JSON object, not {json_type(doc)} (R1)",
        )
    # Read before any check, for the report back to the client; only safe values are kept.
    safe_id = _request_id_or_none(doc.get("request_id"))
    client = client_id_value(doc.get("client_id"))
    logged = _as_logged(doc, now)
    try:
        check_fields(doc, TOP_FIELDS, "")
        request_id = request_id_of(doc)
        client_id = client_id_of(doc, clients, source_client)
        kind = type_of(doc)
        jurisdiction = jurisdiction_of(doc)
        check_portability(kind, jurisdiction)  # G3: a GDPR right
        received_local = received_at_of(doc, now)
        received = received_local.astimezone(UTC)
        forwarded = forwarded_at_of(doc, received, now)
        verification = verification_of(
            doc.get("verification"), "verification", received, now, "R5", Reason.not_verified
        )
        check_level(verification, kind, jurisdiction)  # R5 categories-only: access, CCPA
        is_minor, under_13 = subject_of(doc)
        guardian: Verification | None = None
        if under_13 or doc.get("guardian_verification") is not None:
            # R24: required under 13; checked like any other field when given for an older one.
            guardian = verification_of(
                doc.get("guardian_verification"),
                "guardian_verification",
                received,
                now,
                "R24",
                Reason.minor_without_guardian_verification if under_13 else Reason.missing_field,
            )
        identities = identities_of(doc)
        look_back = look_back_of(doc, kind, jurisdiction)
        notes = notes_of(doc)
        transfer_to = transfer_to_of(doc, kind)
    except FieldRejected as exc:
        return Rejected(source, line, exc.reason, exc.field, exc.message, safe_id, client, *logged)
    due = due_dates(received_local, jurisdiction)
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
        transfer_to=transfer_to,
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
    for read in (type_of, jurisdiction_of, lambda d: received_at_of(d, now).astimezone(UTC)):
        try:
            value = read(doc)
        except FieldRejected:
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
    clients = client_texts(clients)  # once per input, not per document
    documents = split_documents(raw, max_bytes)
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
            value = load_json(chunk, max_bytes)
        except InvalidInput as exc:
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
