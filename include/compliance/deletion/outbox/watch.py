"""What the daily watchdog reports about notices (R16.3, R16.4): open ones too old, give-ups,
channels not configured here; and the one digest message staff get about them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import Engine, or_, select

from compliance.core.alerts import RUNBOOK, Alert
from compliance.core.datamap.model import DataMap
from compliance.deletion import subprocessors
from compliance.deletion.outbox.parties import OPEN, Policy, parties
from compliance.deletion.subprocessors import NO_SENDERS, Senders
from compliance.requests import state


@dataclass(frozen=True)
class NoticeAlert:
    """One notice or channel the watchdog reports; ids, names and codes, never consumer data."""

    problem: str  # unacknowledged | given_up | channel_not_configured
    name: str  # the sub-processor or recipient
    rule: str
    channel: str | None = None
    client_id: str | None = None
    request_id: str | None = None
    status: str | None = None
    attempts: int | None = None
    days: int | None = None  # since queued
    detail: str | None = None  # an error or missing-configuration code

    def line(self) -> str:
        if self.problem == "channel_not_configured":
            return (
                f"- {self.name} ({self.channel}, {self.rule}): channel not configured here "
                f"({self.detail}); its notices wait"
            )
        what = "gave up on" if self.problem == "given_up" else "no acknowledgement from"
        return (
            f"- client {self.client_id} request {self.request_id}: {what} {self.name} "
            f"({self.channel}, {self.rule}), status {self.status}, {self.attempts} attempt(s), "
            f"queued {self.days} day(s) ago"
            + (f", last error {self.detail}" if self.detail else "")
        )


def watch(
    dm: DataMap,
    state_engine: Engine,
    now: datetime,
    last_check: datetime | None,
    senders: Senders | None = None,
    policy: Policy | None = None,
) -> list[NoticeAlert]:
    """What the watchdog reports about notices: open ones older than `alert_after` (every
    run, like an overdue response), give-ups since the last check, and every sub-processor or
    recipient whose channel is not configured here (every run, until it is)."""
    senders = senders or NO_SENDERS
    policy = policy or Policy()
    out: list[NoticeAlert] = []
    for party in parties(dm).values():
        if party.channel is None:
            continue
        missing = subprocessors.channel_missing(party.channel, senders)
        if missing:
            out.append(
                NoticeAlert(
                    "channel_not_configured", party.name, party.rule, party.channel, detail=missing
                )
            )
    t = state.cj_notices
    last = state.to_utc(last_check) if last_check is not None else None
    q = select(t).where(
        or_(
            t.c.status.in_(OPEN),
            t.c.status == "given_up" if last is None else t.c.given_up_at > last,
        )
    )
    with state_engine.connect() as conn:
        rows = [state._row(state.NoticeRow, m) for m in conn.execute(q).mappings()]
    requests = state.get_requests(state_engine, sorted({r.request_pk for r in rows}))
    for n in rows:
        if n.status not in OPEN and n.status != "given_up":
            continue  # acknowledged after it was given up: nothing to chase
        queued = n.queued_at or n.sent_at or n.last_attempt_at
        age = now - queued if queued else None
        if n.status in OPEN and (age is None or age < policy.alert_after):
            continue
        if (
            n.status == "given_up"
            and last is not None
            and not (n.given_up_at and n.given_up_at > last)
        ):
            continue
        req = requests.get(n.request_pk)
        kind = n.kind or "subprocessor"
        out.append(
            NoticeAlert(
                "given_up" if n.status == "given_up" else "unacknowledged",
                n.subprocessor,
                "R16.3" if kind == "subprocessor" else "R16.4",
                n.channel,
                req.client_id if req else None,
                req.request_id if req else None,
                n.status,
                n.attempts,
                age.days if age is not None else None,
                n.last_error_kind,
            )
        )
    order = {"given_up": 0, "unacknowledged": 1, "channel_not_configured": 2}
    out.sort(key=lambda a: (order[a.problem], a.client_id or "", a.request_id or "", a.name))
    return out


def report_key(day: date) -> str:
    return f"deadlines/{day.isoformat()}/notices.json"


def digest(items: Iterable[NoticeAlert], day: date) -> Alert | None:
    """One message for the day's notice problems (None when there are none)."""
    items = list(items)
    if not items:
        return None
    by = Counter(a.problem for a in items)
    subject = (
        f"[compliance] deletion notices {day.isoformat()}: {by['unacknowledged']} "
        f"unacknowledged, {by['given_up']} given up, {by['channel_not_configured']} channel(s) "
        "not configured"
    )
    body = [
        "Sub-processors (R16.3) and recipients (R16.4) told to delete that have not confirmed, "
        "that the outbox gave up on, or whose channel is not configured:",
        "",
        *(a.line() for a in items),
        "",
        f"What to do: {RUNBOOK}, section 'Deletion notices'.",
    ]
    return Alert(subject, "\n".join(body), "deadline")
