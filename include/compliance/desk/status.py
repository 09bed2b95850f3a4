"""What a client is told about its request: one small vocabulary shared by the API's
`GET /requests/{id}`, the status callbacks and the dashboard (issue 18).

Why not the state DB's statuses as they are: those serve the jobs (`open`, `partial`...); a
client needs the steps the law gives it (R1-R4, R19, R21). Each step is an *event*; the
request's status is its latest event:

- `received`: the document is in our inbox (the API accepted it; intake has not run yet);
- `acknowledged`: intake accepted it as a verified request; the deadlines run (R2, R3);
- `extended`: the deadline was extended once with notice and a reason (R4);
- `deferred`: action is postponed for a recorded code: a legal hold (R19), or part of the
  data is kept under a scoped hold while the rest is gone (`partial`, R16.2);
- `completed`: answered (erased, or the report delivered);
- `denied`: refused, with its reason code (R21, R14).

Events are derived from the request's row, not recorded beside it, so a callback can never
claim a step the state DB does not show.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from compliance.requests.state_rows import RequestRow

EVENTS = ("received", "acknowledged", "extended", "deferred", "completed", "denied")


def events(row: RequestRow | None) -> list[tuple[str, str]]:
    """(event, detail) pairs the row shows, in order; detail is a reason code or ""."""
    out = [("received", "")]
    if row is None:
        return out
    if row.status == "rejected":
        return [*out, ("denied", row.reason_code or "")]
    out.append(("acknowledged", ""))
    if row.extension_notice_at is not None:
        out.append(("extended", "r4_extension"))
    if row.status in {"deferred", "partial"}:
        out.append(("deferred", row.reason_code or row.status))
    elif row.status == "completed":
        out.append(("completed", ""))
    return out


def public_status(row: RequestRow | None) -> str:
    return events(row)[-1][0]


def view(client_id: str, request_id: str, type_: str, row: RequestRow | None) -> dict[str, Any]:
    """The request as the client sees it: ids, status, reason code, dates. Never an identity
    (the row holds none) and never a free-text note."""
    detail = events(row)[-1][1]
    return {
        "client_id": str(client_id),
        "request_id": request_id,
        "type": type_,
        "status": public_status(row),
        "reason_code": detail or None,
        "received_at": _when(row.received_at) if row else None,
        "acknowledged_at": _when(row.accepted_at) if row else None,
        "response_due": _when(row.response_due) if row else None,
        "extended_due": _when(row.extended_due) if row else None,
        "completed_at": _when(row.completed_at) if row else None,
    }


def _when(value: datetime | date | None) -> str | None:
    return value.isoformat() if value is not None else None
