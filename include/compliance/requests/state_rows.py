"""What the state database holds, as Python sees it: the allowed values (types, statuses,
transitions), the refusals (`StateError`) and one frozen row type per table. No queries: every
state module (requests, transitions, batches, notices) builds on these."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from typing import Any

REQUEST_TYPES = ("delete", "access", "portability")  # portability: G3, GDPR only
JURISDICTIONS = ("ccpa", "gdpr")
STATUSES = ("open", "deferred", "partial", "completed", "rejected")
BATCH_KINDS = ("delete", "access", "retention")
BATCH_STATUSES = ("planned", "done")
NOTICE_STATUSES = (
    "pending",  # queued in the outbox, not tried yet (compliance.deletion.outbox)
    "sent",
    "acknowledged",
    "failed",
    "not_configured",
    "given_up",  # the give-up time passed unacknowledged (R16.3; alerted, ledgered)
    "exempt",  # R16.4 recipient not told: impossible or disproportionate, justification kept
)
# Notices that are finished: never sent again (`compliance.deletion.outbox`).
NOTICE_FINAL = ("acknowledged", "given_up", "exempt")

# What the request log records for a rejected document whose type or jurisdiction could not
# be read from it (R22): never a guess from the S3 key or a default (issue 15).
UNKNOWN = "unknown"

# Statuses of requests still being worked on. Only these make a new request with the same
# identities a duplicate: a consumer whose data was erased and collected again may ask again,
# and that is a new request (R16, R20); a finished access request is R7's repeat, flagged by
# the access run, not refused. Any non-terminal status added later counts too.
DEDUPE_STATUSES = tuple(s for s in STATUSES if s not in ("completed", "rejected"))
# Statuses of requests accepted from the business (not refused): they keep their request id
# (a request id is processed once) and count for R7's "twice in 12 months".
ACCEPTED_STATUSES = tuple(s for s in STATUSES if s != "rejected")

TRANSITIONS: dict[str, frozenset[str]] = {
    "open": frozenset({"deferred", "partial", "completed", "rejected"}),
    "deferred": frozenset({"open", "completed", "rejected"}),
    "partial": frozenset({"open", "deferred", "completed", "rejected"}),
    "completed": frozenset(),
    "rejected": frozenset(),
}


TOKEN = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
IN_CHUNK = 500


# --------------------------------------------------------------------------- errors


class StateError(Exception):
    """A refused state change; `reason_code` is machine-readable, the message is for people."""

    def __init__(self, reason_code: str, message: str) -> None:
        super().__init__(f"{reason_code}: {message}")
        self.reason_code = reason_code
        self.message = message


class ExtensionRefused(StateError):
    """R4: the extension is invalid (second one, late or missing notice, no reason...)."""


class TransitionRefused(StateError):
    """The status change is not allowed (a terminal status, or a missing reason code)."""


def client_text(value: object) -> str:
    """A client id as the state DB keeps it: text (`7` -> `"7"`, a UUID in its canonical form)."""
    return value if isinstance(value, str) else str(value)


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class NewRequest:
    """A request as intake accepts (or rejects) it; `keys` are its keyed dedupe hashes."""

    client_id: str  # the tenant id as text (an int is accepted and converted)
    request_id: str
    type: str
    jurisdiction: str
    received_at: datetime | None  # None only for a rejected document without one (R22)
    source: str
    status: str = "open"
    reason_code: str | None = None
    received_on: date | None = None
    accepted_at: datetime | None = None  # when intake registered it (the watchdog's "new")
    ack_due: date | None = None
    response_due: date | None = None
    subject_hash: str | None = None
    look_back: str | None = None
    forwarded_at: datetime | None = None
    verification_method: str | None = None
    verified_at: datetime | None = None
    verified_by_hash: str | None = None
    guardian_method: str | None = None
    guardian_verified_at: datetime | None = None
    guardian_verified_by_hash: str | None = None
    previous_requests: str | None = None
    completed_at: datetime | None = None  # a refusal at intake: the response date (R22)
    keys: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "client_id", client_text(self.client_id))
        check_choice("status", self.status, STATUSES)
        # A rejected document may not say what it is (R22): `unknown`, never a guess.
        rejected = self.status == "rejected"
        check_choice("type", self.type, (*REQUEST_TYPES, *((UNKNOWN,) if rejected else ())))
        check_choice(
            "jurisdiction", self.jurisdiction, (*JURISDICTIONS, *((UNKNOWN,) if rejected else ()))
        )
        if self.received_at is None and not rejected:
            raise ValueError("received_at is required (R1); only a refusal may lack it")
        if not self.request_id or len(self.request_id) > 64:
            raise ValueError("request_id must be 1..64 characters")
        if self.status in {"rejected", "deferred", "partial"} and not self.reason_code:
            raise ValueError(f"a {self.status} request needs a reason_code")


@dataclass(frozen=True)
class RequestRow:
    id: int
    client_id: str
    request_id: str
    type: str
    jurisdiction: str
    status: str
    reason_code: str | None
    received_at: datetime  # None only on a rejected row (R22, unknown receipt)
    received_on: date | None
    accepted_at: datetime | None
    ack_due: date | None
    response_due: date | None
    extension_notice_at: datetime | None
    extension_reason: str | None
    extended_due: date | None
    completed_at: datetime | None
    batch_id: str | None
    source: str
    subject_hash: str | None
    look_back: str | None
    forwarded_at: datetime | None = None
    verification_method: str | None = None
    verified_at: datetime | None = None
    verified_by_hash: str | None = None
    guardian_method: str | None = None
    guardian_verified_at: datetime | None = None
    guardian_verified_by_hash: str | None = None
    previous_requests: str | None = None

    @property
    def receipt_day(self) -> date:
        """Day 1 of the deadlines: `received_on` if intake stored it, else the UTC day."""
        return self.received_on or self.received_at.date()

    @property
    def due(self) -> date | None:
        """The deadline in force: the extended one after a valid R4 extension."""
        return self.extended_due or self.response_due


@dataclass(frozen=True)
class PlanRow:
    """One line of a batch plan: how many rows/objects a target is planned to lose or export."""

    request_pk: int | None
    system: str
    target: str
    planned: int


@dataclass(frozen=True)
class BatchRow:
    batch_id: str
    kind: str
    created_at: datetime
    status: str
    finished_at: datetime | None


@dataclass(frozen=True)
class NoticeRow:
    request_pk: int
    subprocessor: str
    channel: str
    status: str
    attempts: int
    last_error_kind: str | None
    sent_at: datetime | None
    acked_at: datetime | None
    kind: str | None = None  # the outbox's columns (R16.3, R16.4); None on rows from before
    queued_at: datetime | None = None
    last_attempt_at: datetime | None = None
    next_attempt_at: datetime | None = None
    given_up_at: datetime | None = None
    reported_status: str | None = None


def row_of(cls: type, mapping: Mapping[str, Any]) -> Any:
    out = {f.name: mapping[f.name] for f in fields(cls)}
    if "client_id" in out and out["client_id"] is not None:
        out["client_id"] = client_text(out["client_id"])
    return cls(**out)


def check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)} (got {value!r})")


def chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
