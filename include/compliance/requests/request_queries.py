"""Request rows: insert what intake accepted, find them by key, status or batch (R7, R22)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Engine,
    func,
    select,
    tuple_,
)

from compliance.core.statedb import insert_if_absent, to_utc
from compliance.requests.schema import (
    cj_request_keys,
    cj_requests,
)
from compliance.requests.state_rows import (
    ACCEPTED_STATUSES,
    DEDUPE_STATUSES,
    REQUEST_TYPES,
    NewRequest,
    RequestRow,
    check_choice,
    chunks,
    client_text,
    row_of,
)

# --------------------------------------------------------------------------- requests

RequestKey = tuple[str, str, str]  # (client_id as text, request_id, type)


def insert_requests(
    engine: Engine, rows: Iterable[NewRequest | Mapping[str, Any]]
) -> dict[RequestKey, int]:
    """Insert requests that are not there yet; return the pk of every row, new or existing.

    First write wins: an existing (client_id, request_id, type) keeps its stored fields, so a
    rerun of intake cannot move a deadline or reopen a rejected request. Dedupe keys are added
    insert-if-absent for all rows, so a rerun converges.
    """
    reqs = [r if isinstance(r, NewRequest) else NewRequest(**r) for r in rows]
    out: dict[RequestKey, int] = {}
    if not reqs:
        return out
    t = cj_requests
    with engine.begin() as conn:  # a few statements per chunk, not a few per request
        for chunk in chunks(reqs):
            conn.execute(
                insert_if_absent(conn, t),
                [
                    {f.name: getattr(r, f.name) for f in fields(NewRequest) if f.name != "keys"}
                    for r in chunk
                ],
            )
            wanted = list(dict.fromkeys((r.client_id, r.request_id, r.type) for r in chunk))
            q = select(t.c.client_id, t.c.request_id, t.c.type, t.c.id).where(
                tuple_(t.c.client_id, t.c.request_id, t.c.type).in_(wanted)
            )
            out.update({(client_text(c), rid, typ): pk for c, rid, typ, pk in conn.execute(q)})
            keys = {
                (out[(r.client_id, r.request_id, r.type)], key) for r in chunk for key in r.keys
            }
            if keys:
                conn.execute(
                    insert_if_absent(conn, cj_request_keys),
                    [{"request_pk": pk, "key": key} for pk, key in sorted(keys)],
                )
    return out


def existing_dedupe_keys(
    engine: Engine, keys: Iterable[str], statuses: Sequence[str] = DEDUPE_STATUSES
) -> set[str]:
    """The subset of `keys` already held by a request in `statuses` (default: the requests still
    being worked on, `DEDUPE_STATUSES`)."""
    wanted = sorted(set(keys))
    found: set[str] = set()
    with engine.connect() as conn:
        for chunk in chunks(wanted):
            q = (
                select(cj_request_keys.c.key)
                .join(cj_requests, cj_requests.c.id == cj_request_keys.c.request_pk)
                .where(
                    cj_request_keys.c.key.in_(chunk),
                    cj_requests.c.status.in_(tuple(statuses)),
                )
            )
            found.update(conn.execute(q).scalars())
    return found


def requests_holding_keys(
    engine: Engine, keys: Iterable[str], statuses: Sequence[str] = ACCEPTED_STATUSES
) -> dict[str, list[tuple[int, RequestKey]]]:
    """key -> (pk, (client_id, request_id, type)) of every request in `statuses` holding it,
    earliest first: what a repeat request links to (R20, R7)."""
    wanted = sorted(set(keys))
    out: dict[str, list[tuple[int, RequestKey]]] = {}
    t, k = cj_requests, cj_request_keys
    with engine.connect() as conn:
        for chunk in chunks(wanted):
            q = (
                select(k.c.key, t.c.id, t.c.client_id, t.c.request_id, t.c.type)
                .join(t, t.c.id == k.c.request_pk)
                .where(k.c.key.in_(chunk), t.c.status.in_(tuple(statuses)))
                .order_by(t.c.id)
            )
            for key, pk, client, rid, typ in conn.execute(q):
                out.setdefault(key, []).append((pk, (client_text(client), rid, typ)))
    return out


def open_requests(engine: Engine, type: str) -> list[RequestRow]:
    """Open requests of one type, earliest deadline first."""
    check_choice("type", type, REQUEST_TYPES)
    due = func.coalesce(cj_requests.c.extended_due, cj_requests.c.response_due)
    q = (
        select(cj_requests)
        .where(cj_requests.c.status == "open", cj_requests.c.type == type)
        .order_by(due.is_(None), due, cj_requests.c.id)  # same NULL order on both backends
    )
    with engine.connect() as conn:
        return [row_of(RequestRow, m) for m in conn.execute(q).mappings()]


def request_keys(engine: Engine, pks: Iterable[int]) -> dict[int, set[str]]:
    """The dedupe keys registered with each request."""
    wanted = sorted(set(pks))
    out: dict[int, set[str]] = {pk: set() for pk in wanted}
    with engine.connect() as conn:
        for chunk in chunks(wanted):
            q = select(cj_request_keys.c.request_pk, cj_request_keys.c.key).where(
                cj_request_keys.c.request_pk.in_(chunk)
            )
            for pk, key in conn.execute(q):
                out[pk].add(key)
    return out


def actionable_requests(engine: Engine, type: str) -> list[RequestRow]:
    """Open, deferred and partial requests of one type: deferrals and partial erasures are
    re-examined on every run (R19: an ended hold releases them)."""
    check_choice("type", type, REQUEST_TYPES)
    q = (
        select(cj_requests)
        .where(
            cj_requests.c.status.in_(("open", "deferred", "partial")), cj_requests.c.type == type
        )
        .order_by(cj_requests.c.id)
    )
    with engine.connect() as conn:
        return [row_of(RequestRow, m) for m in conn.execute(q).mappings()]


def batch_requests(engine: Engine, batch_id: str) -> list[RequestRow]:
    """The requests a batch was planned for (their current status)."""
    q = select(cj_requests).where(cj_requests.c.batch_id == batch_id).order_by(cj_requests.c.id)
    with engine.connect() as conn:
        return [row_of(RequestRow, m) for m in conn.execute(q).mappings()]


def get_requests(engine: Engine, pks: Iterable[int]) -> dict[int, RequestRow]:
    wanted = sorted(set(pks))
    out: dict[int, RequestRow] = {}
    with engine.connect() as conn:
        for chunk in chunks(wanted):
            for m in conn.execute(
                select(cj_requests).where(cj_requests.c.id.in_(chunk))
            ).mappings():
                out[m["id"]] = row_of(RequestRow, m)
    return out


def find_requests(engine: Engine, keys: Iterable[RequestKey]) -> dict[RequestKey, RequestRow]:
    """Requests by their natural key (client_id, request_id, type); absent ones are left out."""
    wanted = sorted({(client_text(c), rid, typ) for c, rid, typ in keys})
    out: dict[RequestKey, RequestRow] = {}
    with engine.connect() as conn:
        for chunk in chunks(wanted):
            cond = tuple_(cj_requests.c.client_id, cj_requests.c.request_id, cj_requests.c.type)
            for m in conn.execute(select(cj_requests).where(cond.in_(list(chunk)))).mappings():
                row = row_of(RequestRow, m)
                out[(row.client_id, row.request_id, row.type)] = row
    return out


def subject_request_count(
    engine: Engine, client_id: object, subject_hash: str, type: str, since: datetime
) -> int:
    """R7: how many accepted requests of `type` one consumer made since `since` (repeat flag)."""
    q = select(func.count()).where(
        cj_requests.c.client_id == client_text(client_id),
        cj_requests.c.subject_hash == subject_hash,
        cj_requests.c.type == type,
        cj_requests.c.status.in_(ACCEPTED_STATUSES),
        cj_requests.c.received_at >= to_utc(since),
    )
    with engine.connect() as conn:
        return int(conn.execute(q).scalar_one())
