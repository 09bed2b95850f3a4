"""The callback outbox's rows: which are due, claiming them, recording outcomes, backoff
(`compliance.desk.callbacks` tells the story; this is its state DB side)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, case, exists, or_, select, update
from sqlalchemy.orm import aliased

from compliance.desk import status
from compliance.requests.schema import cj_api_requests, cj_callbacks, cj_requests
from compliance.requests.state_rows import RequestRow, row_of

BACKOFF_BASE = timedelta(minutes=1)
BACKOFF_CAP = timedelta(hours=6)
ALERT_AFTER = timedelta(hours=24)
LEASE = timedelta(minutes=15)  # a claimed row is due again after this if its run died
RANK = {event: i for i, event in enumerate(status.EVENTS)}


@dataclass(frozen=True)
class Due:
    """One claimed callback: the outbox row as read, the lease that owns it, its body parts."""

    id: int
    api_key: str
    client_id: str
    request_id: str
    type: str
    event: str
    detail: str
    created_at: datetime
    attempts: int
    last_attempt_at: datetime | None
    lease: datetime
    request: RequestRow | None


def next_attempt(due: Due, now: datetime) -> datetime:
    """Exponential backoff from the attempt just made; the 24 h mark is never skipped over."""
    tries = due.attempts + 1
    wait = min(BACKOFF_BASE * (2 ** min(tries - 1, 20)), BACKOFF_CAP)
    mark = due.created_at + ALERT_AFTER
    return min(now + wait, mark) if now < mark else now + wait


def crossed(due: Due, now: datetime) -> bool:
    """This failed attempt is the first past the row's 24 h mark (so it alerts, once)."""
    mark = due.created_at + ALERT_AFTER
    return now >= mark and (due.last_attempt_at is None or due.last_attempt_at < mark)


def claim(engine: Engine, now: datetime, limit: int) -> list[Due]:
    """Due rows that head their request's unacknowledged events, each claimed by moving its
    `next_attempt_at` to a lease only if it still holds the value read (compare-and-set)."""
    c = cj_callbacks
    p = aliased(c)
    rank = case(RANK, value=c.c.event, else_=len(RANK))
    p_rank = case(RANK, value=p.c.event, else_=len(RANK))
    earlier = exists().where(
        p.c.client_id == c.c.client_id,
        p.c.request_id == c.c.request_id,
        p.c.acked_at.is_(None),
        or_(
            p.c.created_at < c.c.created_at,
            and_(p.c.created_at == c.c.created_at, p_rank < rank),
            and_(p.c.created_at == c.c.created_at, p_rank == rank, p.c.id < c.c.id),
        ),
    )
    a, r = cj_api_requests, cj_requests
    q = (
        select(c, a.c.type.label("api_type"), r.c.id.label("pk"))
        .select_from(
            c.outerjoin(
                a, and_(a.c.client_id == c.c.client_id, a.c.request_id == c.c.request_id)
            ).outerjoin(
                r,
                and_(
                    r.c.client_id == c.c.client_id,
                    r.c.request_id == c.c.request_id,
                    r.c.type == a.c.type,
                ),
            )
        )
        .where(c.c.acked_at.is_(None), c.c.next_attempt_at <= now, ~earlier)
        .order_by(c.c.next_attempt_at, c.c.id)
        .limit(limit)
    )
    lease = now + LEASE
    out: list[Due] = []
    with engine.begin() as conn:
        found = conn.execute(q).mappings().all()
        pks = [m["pk"] for m in found if m["pk"] is not None]
        requests = _requests(conn, pks)
        for m in found:
            took = conn.execute(
                update(c)
                .where(
                    c.c.id == m["id"],
                    c.c.acked_at.is_(None),
                    c.c.next_attempt_at == m["next_attempt_at"],
                )
                .values(next_attempt_at=lease)
            ).rowcount
            if took != 1:
                continue  # another run claimed it between our read and our update
            out.append(
                Due(
                    id=m["id"],
                    api_key=m["api_key"],
                    client_id=str(m["client_id"]),
                    request_id=m["request_id"],
                    type=m["api_type"] or "unknown",
                    event=m["event"],
                    detail=m["detail"] or "",
                    created_at=m["created_at"],
                    attempts=m["attempts"] or 0,
                    last_attempt_at=m["last_attempt_at"],
                    lease=lease,
                    request=requests.get(m["pk"]),
                )
            )
    return out


def _requests(conn: Any, pks: Iterable[int]) -> Mapping[int, RequestRow]:
    wanted = sorted(set(pks))
    if not wanted:
        return {}
    rows = conn.execute(select(cj_requests).where(cj_requests.c.id.in_(wanted))).mappings()
    return {m["id"]: row_of(RequestRow, m) for m in rows}


def settle(engine: Engine, now: datetime, results: list[tuple[Due, str, int | None]]) -> None:
    """Record each outcome (`acked`, `failed`, `waiting`: a URL-less credential, re-checked
    later, no attempt counted) only where our lease still holds, so a slower run never
    overwrites a later claim."""
    if not results:
        return
    c = cj_callbacks
    with engine.begin() as conn:
        for due, outcome, code in results:
            values: dict[str, Any]
            if outcome == "waiting":
                values = {"next_attempt_at": now + BACKOFF_CAP}
            else:
                values = {
                    "attempts": c.c.attempts + 1,
                    "last_attempt_at": now,
                    "last_status": code,
                    "next_attempt_at": None if outcome == "acked" else next_attempt(due, now),
                }
                if outcome == "acked":
                    values["acked_at"] = now
            conn.execute(
                update(c).where(c.c.id == due.id, c.c.next_attempt_at == due.lease).values(values)
            )
