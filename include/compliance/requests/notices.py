"""Sub-processor and recipient notices of a deletion (R16.3, R16.4): one row per request and
party, written by the outbox, acknowledged by staff."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Engine,
    bindparam,
    select,
    tuple_,
    update,
)
from sqlalchemy.engine import Connection

from compliance.core.statedb import insert_if_absent, to_utc, transaction, utcnow
from compliance.requests.schema import (
    cj_notices,
)
from compliance.requests.state_rows import (
    NOTICE_FINAL,
    TOKEN,
    NoticeRow,
    check_choice,
    chunks,
    row_of,
)

# --------------------------------------------------------------------------- notices


Outcome = tuple[str, str, str, str | None, bool]  # sub-processor, channel, status, error, acked


def record_notice(
    bind: Engine | Connection,
    request_pk: int,
    subprocessor: str,
    channel: str,
    status: str,
    error_kind: str | None = None,
    at: datetime | None = None,
    acknowledged: bool = False,
) -> NoticeRow:
    """Record the outcome of telling a sub-processor to delete (R16.3) or that none is set up.

    `sent` and `failed` count as attempts; `sent_at` keeps the first successful send; an
    `acknowledged` notice is never downgraded by a later rerun. `acknowledged=True` records a
    send answered with an acknowledgement in the same write (two writes could be split by a
    crash, and a notice marked sent is never sent again). `error_kind` is a short code
    (an exception class or HTTP status), never a message that could carry personal data.
    """
    outcome = (subprocessor, channel, status, error_kind, acknowledged)
    return record_notices(bind, {request_pk: [outcome]}, at=at)[0]


def record_notices(
    bind: Engine | Connection,
    outcomes: Mapping[int, Iterable[Outcome]],
    at: datetime | None = None,
    next_at: Mapping[tuple[int, str], datetime | None] | None = None,
) -> list[NoticeRow]:
    """Many requests' notice outcomes (rules of `record_notice`), recorded in one transaction
    with a handful of statements whatever their number: the notices of a chunk of requests are
    recorded together right after they were sent.

    `next_at` ((request pk, sub-processor) -> when) is the outbox's next try (R16.3 backoff),
    written in the same statement as the outcome; a finished notice (`NOTICE_FINAL`) is never
    changed, and an acknowledged one has no next try."""
    todo = [(pk, *o) for pk, outs in outcomes.items() for o in outs]
    for _pk, _sp, _channel, status, error_kind, acked in todo:
        check_choice("status", status, ("sent", "failed", "not_configured"))
        if acked and status != "sent":
            raise ValueError("only a sent notice can be acknowledged")
        if error_kind is not None and not TOKEN.match(error_kind.lower()):
            raise ValueError("error_kind must be a short code such as 'timeout' or 'http_503'")
    if not todo:
        return []
    when = to_utc(at) if at else utcnow()
    t = cj_notices
    keys = list(dict.fromkeys((pk, sp) for pk, sp, *_ in todo))
    with transaction(bind) as conn:
        conn.execute(
            insert_if_absent(conn, t),
            [
                {"request_pk": pk, "subprocessor": sp, "channel": ch, "status": st, "attempts": 0}
                for pk, sp, ch, st, *_ in {(o[0], o[1]): o for o in reversed(todo)}.values()
            ],
        )
        current = _notices_for_update(conn, keys)
        for pk, sp, channel, status, error_kind, acked in todo:  # in order, as separate calls
            cur = current[(pk, sp)]
            if cur["status"] in NOTICE_FINAL:
                continue
            cur.update(status=status, channel=channel, last_attempt_at=when)
            if next_at is not None and (pk, sp) in next_at:
                cur["next_attempt_at"] = next_at[(pk, sp)]
            if status in {"sent", "failed"}:
                cur["attempts"] += 1
            if status == "sent":
                cur["sent_at"] = cur["sent_at"] or when
                cur["last_error_kind"] = None
                if acked:
                    cur.update(status="acknowledged", acked_at=when, next_attempt_at=None)
            elif status == "failed":
                cur["last_error_kind"] = error_kind or "unknown"
            else:
                cur["last_error_kind"] = error_kind
        changed = (
            "status",
            "channel",
            "attempts",
            "sent_at",
            "last_error_kind",
            "acked_at",
            "last_attempt_at",
            "next_attempt_at",
        )
        conn.execute(
            update(t)
            .where(t.c.request_pk == bindparam("k_pk"), t.c.subprocessor == bindparam("k_sp"))
            .values({c: bindparam(f"v_{c}") for c in changed}),
            [
                {"k_pk": pk, "k_sp": sp, **{f"v_{c}": current[(pk, sp)][c] for c in changed}}
                for pk, sp in keys
            ],
        )
        stored = _notices_for_update(conn, keys)
    return [row_of(NoticeRow, stored[(pk, sp)]) for pk, sp, *_ in todo]


def _notices_for_update(
    conn: Connection, keys: list[tuple[int, str]]
) -> dict[tuple[int, str], dict[str, Any]]:
    t = cj_notices
    out: dict[tuple[int, str], dict[str, Any]] = {}
    for chunk in chunks(keys):
        q = select(t).where(tuple_(t.c.request_pk, t.c.subprocessor).in_(chunk)).with_for_update()
        for m in conn.execute(q).mappings():
            out[(m["request_pk"], m["subprocessor"])] = dict(m)
    return out


def acknowledge(
    engine: Engine, request_pk: int, subprocessor: str, at: datetime | None = None
) -> bool:
    """Record a sub-processor's confirmation; True if this call recorded it."""
    t = cj_notices
    where = (t.c.request_pk == request_pk, t.c.subprocessor == subprocessor)
    with engine.begin() as conn:
        status = conn.execute(select(t.c.status).where(*where)).scalar_one_or_none()
        if status is None:
            raise LookupError(f"no notice to {subprocessor} for request {request_pk}")
        return bool(
            conn.execute(
                update(t)
                .where(*where, t.c.status != "acknowledged")
                .values(
                    status="acknowledged",
                    acked_at=to_utc(at) if at else utcnow(),
                    next_attempt_at=None,  # the outbox stops (R16.3); a late ack after give-up
                )  # counts too: the receipt is re-issued either way
            ).rowcount
        )


def notices(engine: Engine, request_pk: int) -> dict[str, NoticeRow]:
    """The notices of one request, by sub-processor."""
    return notices_of(engine, [request_pk]).get(request_pk, {})


def notices_of(engine: Engine, pks: Iterable[int]) -> dict[int, dict[str, NoticeRow]]:
    """The notices of many requests: request pk -> sub-processor -> notice."""
    out: dict[int, dict[str, NoticeRow]] = {}
    with engine.connect() as conn:
        for chunk in chunks(sorted(set(pks))):
            q = select(cj_notices).where(cj_notices.c.request_pk.in_(chunk))
            for m in conn.execute(q).mappings():
                out.setdefault(m["request_pk"], {})[m["subprocessor"]] = row_of(NoticeRow, m)
    return out
