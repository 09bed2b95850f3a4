"""The deadline watchdog: which open requests have reached an alert threshold (R2-R4, G1),
and the recording of the one extension R4 allows. The rules themselves (due dates, thresholds,
the extension window) are `compliance.requests.deadlines`.

Every open or deferred request has two clocks, both set by intake from the business's receipt
(R1): acknowledge by `ack_due` (R2, 10 days) and respond by `response_due` (R3, 45 days; G1 one
month), or by `extended_due` after the one extension R4 allows. The watchdog runs daily and
alerts when a clock *reaches* a threshold (default 7 and 2 days left) or runs out (overdue):

- a threshold is reached on the day the days left fall to it, so a daily watchdog alerts
  exactly once per threshold; when runs were missed, the most urgent threshold crossed since
  the last check is reported (a run that was skipped never swallows an alert);
- a request accepted after the last check is new to the watchdog: it is reported at the most
  urgent level it is already at (a late-forwarded request can arrive already overdue);
- an overdue *response* is repeated on every run until the request is closed or extended: it
  is a breach that needs action today. An overdue *acknowledgement* is reported once: the
  acknowledgement is the business's step and the state database cannot see it being done.

Days are calendar days, due dates are the last permitted day (0 days left = due today), and no
roll-forward is applied (conservative, as in `compliance.requests.deadlines`).

Extensions are recorded by `extend`: `compliance.requests.transitions.record_extension`
enforces R4 (one only, with a reason, noticed within the first period), and an entry goes to
the audit ledger.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Engine

from compliance.core import ledger
from compliance.core.alerts import RUNBOOK, Alert
from compliance.core.hashing import keyed_hash
from compliance.core.outputs import put_json, put_summary
from compliance.core.statedb import to_utc
from compliance.requests import request_queries, transitions
from compliance.requests.deadlines import (
    DEFAULT_THRESHOLDS,
    NOTICE_SKEW,
    OVERDUE,
    local_notice,
    reached,
)
from compliance.requests.state_rows import (
    REQUEST_TYPES,
    ExtensionRefused,
    RequestRow,
    client_text,
)

ACK = "acknowledge"  # R2
RESPOND = "respond"  # R3, R4, G1


@dataclass(frozen=True)
class DueAlert:
    """One request whose clock reached a level; ids and dates only, never consumer data."""

    request_pk: int
    client_id: str  # the tenant id as text (state DB)
    request_id: str
    type: str
    jurisdiction: str
    status: str
    clock: str  # ACK or RESPOND
    due: date
    days_left: int
    level: str  # OVERDUE or the threshold in days, as text ("7", "2")
    extended: bool

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["due"] = self.due.isoformat()
        return out

    def line(self) -> str:
        if self.days_left < 0:
            when = f"overdue by {-self.days_left} day(s)"
        elif self.days_left == 0:
            when = "due today"
        else:
            when = f"{self.days_left} day(s) left"
        ext = ", extended (R4)" if self.extended else ""
        return (
            f"- client {self.client_id} request {self.request_id} ({self.type}, "
            f"{self.jurisdiction}, {self.status}{ext}): {self.clock} by {self.due.isoformat()}, "
            f"{when}"
        )


# --------------------------------------------------------------------------- the check


def check(
    rows: Iterable[RequestRow],
    today: date,
    last_check: datetime | None,
    thresholds: Sequence[int] = DEFAULT_THRESHOLDS,
) -> list[DueAlert]:
    """Alerts due today for these requests (only open and deferred ones count).

    `last_check` is when the previous successful watchdog run started (None: there was none,
    so everything at a level is reported).
    """
    last = to_utc(last_check) if last_check is not None else None
    gap = (today - last.date()).days if last is not None else None
    out: list[DueAlert] = []
    for row in rows:
        if row.status not in ("open", "deferred"):
            continue
        new = last is None or (row.accepted_at is not None and to_utc(row.accepted_at) > last)
        clocks = [(ACK, row.ack_due, False), (RESPOND, row.due, True)]
        for clock, due, repeat in clocks:
            if due is None:
                continue
            days_left = (due - today).days
            hit = reached(days_left, thresholds, None if new else gap, repeat)
            if hit is None:
                continue
            out.append(
                DueAlert(
                    request_pk=row.id,
                    client_id=row.client_id,
                    request_id=row.request_id,
                    type=row.type,
                    jurisdiction=row.jurisdiction,
                    status=row.status,
                    clock=clock,
                    due=due,
                    days_left=days_left,
                    level=hit,
                    extended=row.extended_due is not None,
                )
            )
    out.sort(key=lambda a: (a.days_left, a.clock != RESPOND, a.client_id, a.request_id))
    return out


def watch(
    engine: Engine,
    today: date,
    last_check: datetime | None,
    thresholds: Sequence[int] = DEFAULT_THRESHOLDS,
) -> list[DueAlert]:
    """`check` over every open and deferred request of every type in the state database."""
    rows: list[RequestRow] = []
    for type_ in REQUEST_TYPES:
        rows.extend(request_queries.actionable_requests(engine, type_))
    return check(rows, today, last_check, thresholds)


def counts(items: Iterable[DueAlert]) -> dict[str, int]:
    """Alert counts by clock and level, e.g. {"respond:overdue": 1, "acknowledge:2": 3}."""
    out: dict[str, int] = {}
    for item in items:
        key = f"{item.clock}:{item.level}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def digest(items: Sequence[DueAlert], today: date, thresholds: Sequence[int]) -> Alert | None:
    """One message for the day's alerts (None when there are none), most urgent first."""
    if not items:
        return None
    overdue = sum(1 for i in items if i.level == OVERDUE)
    soon = len(items) - overdue
    subject = f"[compliance] request deadlines {today.isoformat()}: {overdue} overdue, {soon} near"
    body = [
        f"Open requests whose deadline reached an alert level today ({today.isoformat()}); "
        f"levels: {', '.join(f'{t} days' for t in thresholds)}, overdue.",
        "",
        *(item.line() for item in items),
        "",
        "Respond (R3) or record the one extension R4 allows (DAG request_extension) before the "
        "due date; acknowledge (R2) within 10 days of receipt.",
        f"What to do: {RUNBOOK}, section 'Request deadline alerts'.",
    ]
    return Alert(subject, "\n".join(body), "deadline")


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Report:
    """What one watchdog run found; stored as JSON so the notify step can resend it as is."""

    as_of: date
    last_check: datetime | None
    thresholds: tuple[int, ...]
    alerts: tuple[DueAlert, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(),
            "last_check": self.last_check.isoformat() if self.last_check else None,
            "thresholds": list(self.thresholds),
            "alerts": [a.to_dict() for a in self.alerts],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        return cls(
            as_of=date.fromisoformat(data["as_of"]),
            last_check=datetime.fromisoformat(data["last_check"]) if data["last_check"] else None,
            thresholds=tuple(data["thresholds"]),
            alerts=tuple(
                DueAlert(**{**a, "due": date.fromisoformat(a["due"])}) for a in data["alerts"]
            ),
        )


def report_key(day: date) -> str:
    return f"deadlines/{day.isoformat()}/watchdog.json"


def write_report(s3: Any, bucket: str, report: Report) -> dict[str, Any]:
    """Store the report and the DAG summary; return the summary (counts and the S3 key)."""
    key = report_key(report.as_of)
    uri = put_json(s3, bucket, key, report.to_dict())
    summary = {
        "as_of": report.as_of.isoformat(),
        "alerts": len(report.alerts),
        "by_level": counts(report.alerts),
        "report": uri,
        "key": key,
    }
    put_summary(s3, bucket, "deadline_watchdog", summary)
    return summary


def read_report(s3: Any, bucket: str, key: str) -> Report:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return Report.from_dict(json.loads(body))


@dataclass(frozen=True)
class Extension:
    request_pk: int
    client_id: str
    request_id: str
    type: str
    extended_due: date
    notice_at: datetime  # UTC
    notice_day: date | None = None  # the business's local day of the notice (R4)

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_pk": self.request_pk,
            "client_id": self.client_id,
            "request_id": self.request_id,
            "type": self.type,
            "extended_due": self.extended_due.isoformat(),
            "notice_at": self.notice_at.isoformat(),
            "notice_day": self.notice_day.isoformat() if self.notice_day else None,
        }


def extend(
    engine: Engine,
    hash_key: bytes,
    client_id: object,
    request_id: str,
    type_: str,
    notice_at: datetime | None,
    reason: str,
    *,
    utc_offset: str | None = None,
    now: datetime | None = None,
) -> Extension:
    """Record the one extension R4 allows for a request, and a ledger entry; return it.

    Refused with `ExtensionRefused` (reason code + message) when: the request is unknown;
    the reason is blank or quotes an e-mail address or phone number (the state database holds
    no personal data); the notice is dated in the future (`notice_in_future`: an extension is
    recorded after its notice went out, R4) or carries no offset; or `record_extension` refuses
    it (second extension, notice missing or outside the first 45 days / first month, request no
    longer open). The notice is dated by the business's local day (`local_notice`), like
    receipt. A rerun of the same extension is a no-op that returns the same due date.
    """
    client_id = client_text(client_id)  # tenant ids are text (an int is accepted)
    key = (client_id, request_id, type_)
    row = request_queries.find_requests(engine, [key]).get(key)
    if row is None:
        raise ExtensionRefused(
            "unknown_request", f"no {type_} request {request_id!r} for client {client_id}"
        )
    text = (reason or "").strip()
    try:
        ledger.reject_pii(text, "reason")
    except ValueError:
        raise ExtensionRefused(
            "reason_has_personal_data",
            "the reason must not quote an e-mail address or phone number",
        ) from None
    if notice_at is None:  # state refuses it too; checked here so `notice` is a datetime
        raise ExtensionRefused("notice_missing", "R4: an extension needs its notice date")
    local = local_notice(notice_at, utc_offset)
    now = to_utc(now) if now is not None else datetime.now(UTC)
    if local > now + NOTICE_SKEW:
        raise ExtensionRefused(
            "notice_in_future",
            f"R4: the notice is dated {local.isoformat()}, in the future; record the extension "
            "after the notice with its reason has been sent",
        )
    # `record_extension` counts the notice by the day of the offset it carries: the local one.
    due = transitions.record_extension(engine, row.id, local, text)
    notice = to_utc(local)
    ref = keyed_hash(hash_key, "request", f"{client_id}\x1f{request_id}\x1f{type_}")  # as inbox
    ledger.append(
        engine,
        hash_key,
        [
            ledger.Entry(
                "request_extended",
                ref,
                {
                    "client_id": client_id,
                    "type": type_,
                    "extended_due": due.isoformat(),
                    "notice_day": local.date().isoformat(),
                    "rules": ["R4"],
                },
                f"extension:{row.id}",
            )
        ],
    )
    return Extension(row.id, client_id, request_id, type_, due, notice, local.date())
