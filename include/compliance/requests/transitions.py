"""Status changes of a request (open, deferred, partial, completed, rejected) and its one R4
extension; every change is checked against the allowed transitions first."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    Engine,
    select,
    update,
)
from sqlalchemy.engine import Connection

from compliance.core.statedb import to_utc, transaction, utcnow
from compliance.requests.deadlines import extension_window
from compliance.requests.schema import (
    cj_requests,
)
from compliance.requests.state_rows import (
    STATUSES,
    TOKEN,
    TRANSITIONS,
    ExtensionRefused,
    RequestRow,
    TransitionRefused,
    check_choice,
    chunks,
    row_of,
)


def set_status(
    bind: Engine | Connection,
    pks: Iterable[int],
    status: str,
    reason_code: str | None = None,
    batch_id: str | None = None,
    completed_at: datetime | None = None,
) -> int:
    """Move requests to `status`; return how many rows changed.

    All-or-nothing: an unknown pk or a refused transition changes nothing. Reruns converge:
    a row already in a terminal status equal to `status` is left untouched (its `completed_at`
    never moves). For open/deferred rows, given `reason_code`/`batch_id` overwrite the stored
    ones. `rejected` and `deferred` need a reason code (R21: the basis of a denial).
    """
    check_choice("status", status, STATUSES)
    if status in {"rejected", "deferred", "partial"} and not reason_code:
        raise TransitionRefused("reason_required", f"a {status} request needs a reason code")
    if reason_code is not None and not TOKEN.match(reason_code):
        raise ValueError("reason_code must be a short lowercase code (no free text)")
    wanted = sorted(set(pks))
    if not wanted:
        return 0
    when = to_utc(completed_at) if completed_at else utcnow()
    changed = 0
    with transaction(bind) as conn:
        current: dict[int, tuple[str, datetime | None]] = {}
        for chunk in chunks(wanted):
            q = (
                select(cj_requests.c.id, cj_requests.c.status, cj_requests.c.completed_at)
                .where(cj_requests.c.id.in_(chunk))
                .with_for_update()
            )
            current.update({pk: (st, done) for pk, st, done in conn.execute(q)})
        missing = [pk for pk in wanted if pk not in current]
        if missing:
            raise LookupError(f"unknown request pk(s): {missing[:10]}")
        for pk in wanted:
            old = current[pk][0]
            if old != status and status not in TRANSITIONS[old]:
                raise TransitionRefused(
                    "transition_refused", f"request {pk} is {old}; it cannot become {status}"
                )
        same: dict[tuple[tuple[str, Any], ...], list[int]] = defaultdict(list)
        for pk in wanted:
            old, done = current[pk]
            if old == status and not TRANSITIONS[old]:
                continue  # terminal and already there: a rerun
            values: dict[str, Any] = {"status": status}
            if reason_code is not None or status == "open":
                values["reason_code"] = reason_code  # reopening clears a deferral reason
            if batch_id is not None:
                values["batch_id"] = batch_id
            # The response date (R22), kept once set: a denial is a response, and so is a partial
            # erasure under a scoped hold (R23 "complied with in whole or in part"); the rest,
            # erased when the hold ends, does not move the date of that first response.
            if status in ("completed", "rejected", "partial"):
                values["completed_at"] = done or when
            same[tuple(values.items())].append(pk)
        for values_key, group in same.items():  # one UPDATE per chunk of equal changes
            for chunk in chunks(group):
                changed += conn.execute(
                    update(cj_requests)
                    .where(cj_requests.c.id.in_(chunk))
                    .values(**dict(values_key))
                ).rowcount
    return changed


def record_extension(engine: Engine, pk: int, notice_at: datetime | None, reason: str) -> date:
    """Record the one extension R4 allows and return the new due date.

    Refused (ExtensionRefused) when: the notice date is missing, before receipt or after the
    45th day (received_on + 44d); the reason is blank; the request is already extended; or it
    is no longer open/deferred. Day 1 is `received_on` (as intake computed it) or else the
    UTC day of `received_at`; the notice counts by its day in the offset it carries, which
    `deadline_watch.extend` sets to the business's, so it is dated like receipt (R4; a UTC notice
    counts by its UTC day). The notice deadline is never
    later than the stored `response_due` (the end of the first period, R3).
    Rerunning with the same notice and reason is a no-op that returns the same date.
    """
    if notice_at is None:
        raise ExtensionRefused("notice_missing", "R4: an extension needs the date of its notice")
    notice_day = notice_at.date()  # R4: the business's local day when the offset is its own
    notice_at = to_utc(notice_at)
    reason = (reason or "").strip()
    with engine.begin() as conn:
        row = (
            conn.execute(select(cj_requests).where(cj_requests.c.id == pk).with_for_update())
            .mappings()
            .first()
        )
        if row is None:
            raise ExtensionRefused("unknown_request", f"no request with pk {pk}")
        if row["extension_notice_at"] is not None:
            if row["extension_notice_at"] == notice_at and row["extension_reason"] == reason:
                return row["extended_due"]  # a rerun of the same extension
            raise ExtensionRefused("already_extended", "R4: a request may be extended only once")
        if not reason:
            raise ExtensionRefused("reason_missing", "R4: the notice must give the reason")
        if row["status"] not in {"open", "deferred"}:
            raise ExtensionRefused("not_open", f"request {pk} is {row['status']}")
        received_on = row_of(RequestRow, row).receipt_day
        last_notice_day, extended_due = extension_window(row["jurisdiction"], received_on)
        if row["response_due"] is not None:
            last_notice_day = min(last_notice_day, row["response_due"])
        if notice_day < received_on:
            raise ExtensionRefused("notice_before_receipt", "the notice predates the request")
        if notice_day > last_notice_day:
            raise ExtensionRefused(
                "notice_too_late",
                f"R4: the notice must be sent by {last_notice_day.isoformat()} "
                f"(the last day of the first period)",
            )
        conn.execute(
            update(cj_requests)
            .where(cj_requests.c.id == pk)
            .values(
                extension_notice_at=notice_at,
                extension_reason=reason,
                extended_due=extended_due,
            )
        )
    return extended_due
