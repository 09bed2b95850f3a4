"""Batches (one planning pass over requests or retention), their plans and erased-line counts,
and the tombstones that stop erased identities from coming back (R20)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Engine,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.engine import Connection

from compliance.core.statedb import insert_if_absent, to_utc, transaction, utcnow
from compliance.requests.schema import (
    cj_batch_lines,
    cj_batch_plan,
    cj_batches,
    cj_tombstones,
)
from compliance.requests.state_rows import (
    BATCH_KINDS,
    BatchRow,
    PlanRow,
    check_choice,
    chunks,
    client_text,
    row_of,
)

# --------------------------------------------------------------------------- batches


def plan_batch(
    bind: Engine | Connection,
    batch_id: str,
    kind: str,
    plan_rows: Iterable[PlanRow | Mapping[str, Any]],
    created_at: datetime | None = None,
) -> list[PlanRow]:
    """Write a batch and its plan once; return the stored plan.

    If the batch exists (a rerun after a crash) nothing is written and the plan stored the
    first time is returned, so receipts report the same planned counts however often a batch
    is retried (executions after the first find fewer rows to delete).
    """
    check_choice("kind", kind, BATCH_KINDS)
    rows = [r if isinstance(r, PlanRow) else PlanRow(**r) for r in plan_rows]
    with transaction(bind) as conn:
        created = conn.execute(
            insert_if_absent(conn, cj_batches).values(
                batch_id=batch_id,
                kind=kind,
                created_at=to_utc(created_at) if created_at else utcnow(),
                status="planned",
            )
        ).rowcount
        if created:
            if rows:
                conn.execute(
                    cj_batch_plan.insert(),
                    [{"batch_id": batch_id, **r.__dict__} for r in rows],
                )
        else:
            stored_kind = conn.execute(
                select(cj_batches.c.kind).where(cj_batches.c.batch_id == batch_id)
            ).scalar_one()
            if stored_kind != kind:
                raise ValueError(f"batch {batch_id} exists with kind {stored_kind}, not {kind}")
        return _plan(conn, batch_id)


def _plan(conn: Connection, batch_id: str) -> list[PlanRow]:
    q = (
        select(cj_batch_plan)
        .where(cj_batch_plan.c.batch_id == batch_id)
        .order_by(cj_batch_plan.c.id)
    )
    return [row_of(PlanRow, m) for m in conn.execute(q).mappings()]


def batch_plan(engine: Engine, batch_id: str) -> list[PlanRow]:
    """The plan written by `plan_batch` (empty if the batch is unknown)."""
    with engine.connect() as conn:
        return _plan(conn, batch_id)


def get_batch(engine: Engine, batch_id: str) -> BatchRow | None:
    with engine.connect() as conn:
        m = conn.execute(select(cj_batches).where(cj_batches.c.batch_id == batch_id)).mappings()
        row = m.first()
    return row_of(BatchRow, row) if row else None


def finish_batch(
    bind: Engine | Connection, batch_id: str, finished_at: datetime | None = None
) -> bool:
    """Mark a batch done; True if this call did it (False on a rerun)."""
    with transaction(bind) as conn:
        if _batch_status(conn, batch_id) is None:
            raise LookupError(f"unknown batch {batch_id}")
        return bool(
            conn.execute(
                update(cj_batches)
                .where(cj_batches.c.batch_id == batch_id, cj_batches.c.status != "done")
                .values(status="done", finished_at=to_utc(finished_at) if finished_at else utcnow())
            ).rowcount
        )


def _batch_status(conn: Connection, batch_id: str) -> str | None:
    return conn.execute(
        select(cj_batches.c.status).where(cj_batches.c.batch_id == batch_id)
    ).scalar_one_or_none()


def record_lines(
    engine: Engine, batch_id: str, store: str, object_key: str, per_ref: Mapping[str, int]
) -> None:
    """Replace what one log object's rewrite erased for each request of a batch."""
    t = cj_batch_lines
    with engine.begin() as conn:
        conn.execute(
            t.delete().where(
                t.c.batch_id == batch_id, t.c.store == store, t.c.object_key == object_key
            )
        )
        rows = [
            {
                "batch_id": batch_id,
                "store": store,
                "object_key": object_key,
                "request_pk": int(ref),
                "lines": n,
            }
            for ref, n in per_ref.items()
            if n
        ]
        if rows:
            conn.execute(t.insert(), rows)


def batch_lines(engine: Engine, batch_id: str) -> dict[int, dict[str, int]]:
    """Log lines erased per request and store in a batch, over every run that worked on it."""
    t = cj_batch_lines
    q = (
        select(t.c.request_pk, t.c.store, func.sum(t.c.lines))
        .where(t.c.batch_id == batch_id)
        .group_by(t.c.request_pk, t.c.store)
    )
    out: dict[int, dict[str, int]] = {}
    with engine.connect() as conn:
        for pk, store, n in conn.execute(q):
            out.setdefault(int(pk), {})[store] = int(n)
    return out


# --------------------------------------------------------------------------- tombstones

Tombstone = tuple[str, str, str]  # (client_id as text, kind, keyed hash)


def add_tombstones(
    bind: Engine | Connection,
    system: str,
    by_request: Mapping[int | None, Iterable[Tombstone]],
    created_at: datetime | None = None,
) -> int:
    """Remember erased identities of one system (R18, R20), per request (None: no request);
    return how many were new.

    Only keyed hashes are stored: enough to re-apply the deletion when a backup is restored,
    useless for anything else. Insert-if-absent on (system, client_id, kind, hash); a tombstone
    two requests share keeps the first one's link. A batch's tombstones take a few statements.
    """
    when = to_utc(created_at) if created_at else utcnow()
    first: dict[Tombstone, int | None] = {}
    for pk, stones in by_request.items():
        for c, k, h in stones:
            first.setdefault((client_text(c), k, h), pk)
    t = cj_tombstones
    with transaction(bind) as conn:
        held: set[Tombstone] = set()
        for chunk in chunks(list(first)):
            q = select(t.c.client_id, t.c.kind, t.c.hash).where(
                t.c.system == system, tuple_(t.c.client_id, t.c.kind, t.c.hash).in_(chunk)
            )
            held.update((client_text(c), k, h) for c, k, h in conn.execute(q))
        new = [stone for stone in first if stone not in held]
        for chunk in chunks(new):
            conn.execute(
                insert_if_absent(conn, t),
                [
                    {"system": system, "client_id": c, "kind": k, "hash": h,
                     "request_pk": first[(c, k, h)], "created_at": when}
                    for c, k, h in chunk
                ],
            )  # fmt: skip
    return len(new)


def tombstone_hashes(
    engine: Engine, system: str, client_id: object | None = None
) -> set[Tombstone]:
    """Every tombstone of a system (optionally one tenant) as (client_id, kind, hash)."""
    q = select(cj_tombstones.c.client_id, cj_tombstones.c.kind, cj_tombstones.c.hash).where(
        cj_tombstones.c.system == system
    )
    if client_id is not None:
        q = q.where(cj_tombstones.c.client_id == client_text(client_id))
    with engine.connect() as conn:
        return {(client_text(c), k, h) for c, k, h in conn.execute(q)}
