"""The staff dashboard's queries (issue 18, item 2): what is due, what waits, what is held, what
nobody acknowledged, and whether the ledger verifies. Plain Python on a `JobContext`; the page
(`plugins/compliance_dashboard.py`) only renders what these return.

Why here and not in the plugin: the same numbers must come out on SQLite and PostgreSQL, and a
test can check them without a browser. Everything returned is ids, codes, dates and counts:
request ids are the client's own (no consumer identity), a hold names its registry key and its
client, never its consumer (as the hold watchdog does), a notice names its sub-processor.

Deadlines (R3, R4, G1): the deadline in force is `extended_due or response_due` (the one R4
extension moves it), counted in calendar days from today as the deadline watchdog counts them
(`compliance.requests.deadline_watch`: 0 days left = due today). Requests still owing a
response are `open` and `deferred` ones, the watchdog's set; a `partial` request has answered
in part (R16.2) and shows under deferrals with its hold's code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, case, func, or_, select

from compliance.core import ledger
from compliance.core.context import JobContext
from compliance.core.statedb import to_utc
from compliance.desk import reports_list
from compliance.requests import holds as holds_mod
from compliance.requests.schema import cj_notices, cj_requests
from compliance.requests.state_rows import client_text

OWING = ("open", "deferred")  # still owe a response: their deadlines run (R3, R4)
WAITING = ("deferred", "partial")  # postponed or answered in part, with a reason code
BUCKETS = ("overdue", "due_2", "due_7", "later", "extended")
LABELS = {
    "overdue": "Overdue",
    "due_2": "Due within 2 days",
    "due_7": "Due in 3 to 7 days",
    "later": "Due later",
    "extended": "Running on an extended deadline (R4)",
}
LIST_CAP = 50  # rows listed per section; the counts are always exact


@dataclass(frozen=True)
class DueRow:
    """One request owing a response: the client's ids, its deadline in force, days left."""

    client_id: str
    request_id: str
    type: str
    status: str
    due: date
    days_left: int
    extended: bool

    @property
    def ref(self) -> str:
        return f"{self.client_id}/{self.request_id}"


@dataclass(frozen=True)
class Deadlines:
    today: date
    counts: dict[str, int]  # bucket -> requests (exact); `extended` overlaps the others
    rows: dict[str, list[DueRow]]  # bucket -> the first LIST_CAP, earliest deadline first
    undated: int = 0  # owing a response but with no deadline on record (should be none)


def deadlines(engine: Engine, today: date, cap: int = LIST_CAP) -> Deadlines:
    """Requests owing a response, by deadline bucket relative to `today`: overdue (due before
    today), due within 2 days (0-2 left), due in 3-7 days, later; and, across those, the ones
    running on an R4 extension."""
    t = cj_requests
    due = func.coalesce(t.c.extended_due, t.c.response_due)
    owing = t.c.status.in_(OWING)
    two, seven = today + timedelta(days=2), today + timedelta(days=7)
    conds = {
        "overdue": due < today,
        "due_2": and_(due >= today, due <= two),
        "due_7": and_(due > two, due <= seven),
        "later": due > seven,
        "extended": t.c.extended_due.is_not(None),
    }
    counted = [func.coalesce(func.sum(case((c, 1), else_=0)), 0).label(b) for b, c in conds.items()]
    undated = func.coalesce(func.sum(case((due.is_(None), 1), else_=0)), 0).label("undated")
    rows: dict[str, list[DueRow]] = {}
    with engine.connect() as conn:
        totals = conn.execute(select(*counted, undated).where(owing)).mappings().one()
        for bucket, cond in conds.items():
            q = (
                select(
                    t.c.client_id,
                    t.c.request_id,
                    t.c.type,
                    t.c.status,
                    due.label("due"),
                    t.c.extended_due,
                )
                .where(owing, cond)
                .order_by(due, t.c.id)
                .limit(cap)
            )
            rows[bucket] = [
                DueRow(
                    client_text(m["client_id"]),
                    m["request_id"],
                    m["type"],
                    m["status"],
                    m["due"],
                    (m["due"] - today).days,
                    m["extended_due"] is not None,
                )
                for m in conn.execute(q).mappings()
            ]
    counts = {b: int(totals[b]) for b in BUCKETS}
    return Deadlines(today, counts, rows, int(totals["undated"]))


@dataclass(frozen=True)
class Waiting:
    """Deferred and partial requests: how many per (status, reason code), and the oldest."""

    counts: dict[tuple[str, str], int]
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def waiting(engine: Engine, cap: int = LIST_CAP) -> Waiting:
    """Requests deferred (a legal hold, R19) or erased but for what a scoped hold keeps
    (`partial`, R16.2), with their reason codes; the longest-waiting first."""
    t = cj_requests
    due = func.coalesce(t.c.extended_due, t.c.response_due)
    with engine.connect() as conn:
        grouped = conn.execute(
            select(t.c.status, t.c.reason_code, func.count())
            .where(t.c.status.in_(WAITING))
            .group_by(t.c.status, t.c.reason_code)
        ).all()
        listed = conn.execute(
            select(
                t.c.client_id,
                t.c.request_id,
                t.c.type,
                t.c.status,
                t.c.reason_code,
                t.c.received_at,
                due.label("due"),
            )
            .where(t.c.status.in_(WAITING))
            .order_by(t.c.received_at, t.c.id)
            .limit(cap)
        ).mappings()
        rows = [
            {**dict(m), "client_id": client_text(m["client_id"]), "reason_code": m["reason_code"]}
            for m in listed
        ]
    counts = {
        (s, r or "(none)"): int(n) for s, r, n in sorted(grouped, key=lambda g: (g[0], g[1] or ""))
    }
    return Waiting(counts, rows)


@dataclass(frozen=True)
class HeldRow:
    system: str
    hold: str | None  # the registry row's key
    client_id: str
    extent: str  # client-wide | consumer (never which consumer)
    scope: str
    code: str  # an R19 code, or invalid_hold_code
    expires_at: datetime | None
    lapses: bool  # the expiry is R19's 90-day law-enforcement lapse


def active_holds(ctx: JobContext, now: datetime | None = None) -> list[HeldRow]:
    """Legal holds in force now (R19) in every SQL system that keeps a registry, soonest
    expiry first (open-ended holds last)."""
    moment = now or ctx.now()
    out: list[HeldRow] = []
    for name, system in sorted(ctx.datamap.systems.items()):
        if system.holds is None:
            continue
        for h in holds_mod.active_holds(ctx.engine(name), system, moment):
            out.append(
                HeldRow(
                    name,
                    h.ref,
                    h.client_id,
                    "client-wide" if h.client_wide else "consumer",
                    h.scope,
                    h.code,
                    h.expires_at,
                    h.lapses,
                )
            )
    far = datetime.max
    return sorted(
        out,
        key=lambda r: (holds_mod.naive_utc(r.expires_at) if r.expires_at else far, r.system),
    )


@dataclass(frozen=True)
class Unacknowledged:
    """Sub-processor and recipient notices no one acknowledged yet (R16.3)."""

    count: int
    by_status: dict[str, int]
    oldest_days: int | None
    rows: list[dict[str, Any]] = field(default_factory=list)


def unacknowledged(engine: Engine, now: datetime, cap: int = LIST_CAP) -> Unacknowledged:
    """Notices without an acknowledgement, oldest first. `exempt` ones are left out: R16.4's
    recipients not told on purpose owe no answer. A notice's age counts from when it was
    queued (or, on rows from before the outbox, first sent or last tried)."""
    n, r = cj_notices, cj_requests
    since = func.coalesce(n.c.queued_at, n.c.sent_at, n.c.last_attempt_at)
    where = and_(n.c.acked_at.is_(None), or_(n.c.status.is_(None), n.c.status != "exempt"))
    with engine.connect() as conn:
        by_status = {
            s: int(c)
            for s, c in conn.execute(
                select(n.c.status, func.count()).where(where).group_by(n.c.status)
            )
        }
        oldest = conn.execute(select(func.min(since)).where(where)).scalar()
        listed = conn.execute(
            select(
                r.c.client_id,
                r.c.request_id,
                r.c.type,
                n.c.subprocessor,
                n.c.kind,
                n.c.channel,
                n.c.status,
                n.c.attempts,
                since.label("since"),
            )
            .join(r, r.c.id == n.c.request_pk)
            .where(where)
            .order_by(since.is_(None), since, n.c.id)
            .limit(cap)
        ).mappings()
        rows = []
        for m in listed:
            row = {**dict(m), "client_id": client_text(m["client_id"])}
            row["age_days"] = _age(now, m["since"])
            rows.append(row)
    return Unacknowledged(sum(by_status.values()), by_status, _age(now, oldest), rows)


def _age(now: datetime, since: datetime | None) -> int | None:
    if since is None:
        return None
    return max(0, (to_utc(now) - to_utc(since)).days)


@dataclass(frozen=True)
class LedgerCheck:
    ok: bool
    entries: int
    first_bad_seq: int | None
    problem: str | None
    head: str | None  # "SEQ:MAC" of the last entry checked: a checkpoint staff may keep

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "first_bad_seq": self.first_bad_seq,
            "problem": self.problem,
            "head": self.head,
        }


def verify_ledger(ctx: JobContext, expected_head: str | None = None) -> LedgerCheck:
    """Walk the ledger's MAC chain on demand (R20, R22; `ledger.verify`). With a checkpoint
    ("SEQ:MAC", kept from an earlier check) a cut-off tail is found too."""
    want = ledger.Head.parse(expected_head) if expected_head else None
    result = ledger.verify(ctx.state, ctx.hash_key, want)
    return LedgerCheck(
        result.ok,
        result.entries,
        result.first_bad_seq,
        result.problem,
        str(result.head) if result.head else None,
    )


@dataclass(frozen=True)
class Overview:
    """Everything the dashboard shows from the state DB, the hold registries and the bucket."""

    deadlines: Deadlines
    waiting: Waiting
    holds: list[HeldRow]
    notices: Unacknowledged
    files: dict[str, list[Any]]  # "receipts" / "reports" -> newest first (reports_list)


def overview(ctx: JobContext, cap: int = LIST_CAP, files: int = 20) -> Overview:
    now = ctx.now()
    return Overview(
        deadlines(ctx.state, now.date(), cap),
        waiting(ctx.state, cap),
        active_holds(ctx, now),
        unacknowledged(ctx.state, now, cap),
        reports_list.recent(ctx, files),
    )
