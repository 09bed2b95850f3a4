"""Queueing and sending deletion notices (R16.3, R16.4): the outbox's moving parts.

`enqueue` queues a batch's notices (body first, then the row); `deliver` sends every due notice of
every request, with backoff, and gives up past the give-up time (ledger `notice_given_up`);
`sweep` drops bodies nobody will send again (R20). See the package docstring for the lifecycle.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, or_, select, update

from compliance.core import ledger
from compliance.core.datamap.model import DataMap
from compliance.core.outputs import delete_many, put_json_many
from compliance.deletion import subprocessors
from compliance.deletion.outbox.parties import (
    OPEN,
    OUTBOX,
    Party,
    Policy,
    notice_key,
    parties,
    request_ref,
)
from compliance.deletion.subprocessors import NO_SENDERS, Senders
from compliance.requests import state

log = logging.getLogger(__name__)

THREADS = 8  # notices in flight at once (latency-bound)
CHUNK = 100  # notices recorded per transaction: a crash re-sends at most this many


def enqueue(
    s3: Any,
    bucket: str,
    dm: DataMap,
    state_engine: Engine,
    hash_key: bytes,
    targets: Any,
    now: datetime,
    *,
    kinds: tuple[str, ...] = ("subprocessor", "recipient"),
    notice_type: str = "deletion",
    extra_rules: tuple[str, ...] = (),
) -> Counter[str]:
    """Queue a batch's notices (its active requests: `QueuedBatch`, or `erasure.Targets`); a
    rerun adds nothing. `kinds`, `notice_type` and `extra_rules` serve client-level notices at
    contract end (`compliance.offboarding.notify`: sub-processors only, no identities)."""
    tally: Counter[str] = Counter()
    refs = targets.active_refs()
    everyone = {n: p for n, p in parties(dm).items() if p.kind in kinds}
    if not refs or not everyone:
        return tally
    existing = state.notices_of(state_engine, [int(r) for r in refs])
    bodies: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    entries: list[ledger.Entry] = []
    for ref in refs:
        pk, req = int(ref), targets.requests[ref]
        client = str(req["client_id"])
        for party in everyone.values():
            if party.name in existing.get(pk, {}):
                continue  # queued by an earlier attempt of this batch (or before the outbox)
            row = {
                "request_pk": pk,
                "subprocessor": party.name,
                "kind": party.kind,
                "attempts": 0,
                "queued_at": now,
            }
            if party.channel is None:  # R16.4: not told, on the record
                rows.append({**row, "channel": "none", "status": "exempt"})
                entries.append(
                    ledger.Entry(
                        "recipient_not_told",
                        request_ref(hash_key, client, req["request_id"]),
                        {
                            "recipient": party.name,
                            "received": party.received,
                            "impossible_or_disproportionate": party.justification,
                            "rules": ["R16.4"],
                        },
                        f"notice-exempt:{pk}:{party.name}",
                    )
                )
                tally["exempt"] += 1
                continue
            bodies[notice_key(pk, party.name)] = subprocessors.payload(
                hash_key,
                party.name,
                ref,
                client,
                targets.identities.get(ref, {}),
                list(party.categories),
                party.rule,
                notice_type,
                extra_rules,
            )
            rows.append(
                {**row, "channel": party.channel, "status": "pending", "next_attempt_at": now}
            )
            tally["queued"] += 1
    put_json_many(s3, bucket, bodies)  # the body first: a queued row never lacks its body
    if rows:
        with state.transaction(state_engine) as conn:
            t = state.cj_notices
            conn.execute(state.insert_if_absent(conn, t), [_full(row) for row in rows])
            if entries:
                ledger.append(conn, hash_key, entries)
    return tally


def _full(row: dict[str, Any]) -> dict[str, Any]:
    """Every insert names the same columns (an executemany needs one shape)."""
    keys = ("next_attempt_at", "last_error_kind", "sent_at", "acked_at", "last_attempt_at")
    return {**dict.fromkeys(keys), **row}


def deliver(
    s3: Any,
    bucket: str,
    dm: DataMap,
    state_engine: Engine,
    hash_key: bytes,
    now: datetime,
    senders: Senders | None = None,
    policy: Policy | None = None,
) -> Counter[str]:
    """Send every due notice of every request (R16.3, R16.4); give up those past their time.
    No `senders`: only webhooks can go out (SNS and e-mail notices wait, `not_configured`)."""
    senders = senders or NO_SENDERS
    policy = policy or Policy()
    everyone = parties(dm)
    tally: Counter[str] = Counter()
    due = _due(state_engine, now)
    give_up: list[tuple[state.NoticeRow, str]] = []
    todo: list[tuple[state.NoticeRow, Party, datetime]] = []
    for row in due:
        party = everyone.get(row.subprocessor)
        if party is None or party.channel is None:
            give_up.append((row, "not_in_datamap"))
            continue
        queued = row.queued_at or row.sent_at or row.last_attempt_at
        if queued is None:  # a notice from before the outbox: its body was never kept
            give_up.append((row, "no_body"))
            continue
        deadline = queued + party.give_up_after(policy)
        if now >= deadline:
            give_up.append((row, row.last_error_kind or "unacknowledged"))
            continue
        todo.append((row, party, deadline))

    def attempt(item: tuple[state.NoticeRow, Party, datetime]) -> tuple[str, str | None, bool]:
        row, party, _ = item
        body = _body(s3, bucket, row)
        if body is None:
            return "lost", None, False
        assert party.channel is not None and party.target is not None
        return subprocessors.send(party.channel, party.target, body, senders)

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        for i in range(0, len(todo), CHUNK):
            chunk = todo[i : i + CHUNK]
            outcomes: dict[int, list[state.Outcome]] = defaultdict(list)
            next_at: dict[tuple[int, str], datetime | None] = {}
            for (row, party, deadline), (status, error, acked) in zip(
                chunk, pool.map(attempt, chunk), strict=True
            ):
                if status == "lost":  # the body is gone (removed by hand?): cannot be sent
                    give_up.append((row, "no_body"))
                    continue
                key = (row.request_pk, row.subprocessor)
                outcomes[row.request_pk].append(
                    (row.subprocessor, party.channel or "", status, error, acked)
                )
                tries = row.attempts + (1 if status in ("sent", "failed") else 0)
                wait = (
                    policy.next_try(tries, now)
                    if status in ("sent", "failed")
                    else now + policy.backoff_base
                )
                next_at[key] = min(wait, deadline)
            recorded = state.record_notices(state_engine, outcomes, at=now, next_at=next_at)
            for rec in recorded:
                tally[rec.status] += 1
            delete_many(
                s3,
                bucket,
                [
                    notice_key(r.request_pk, r.subprocessor)
                    for r in recorded
                    if r.status in state.NOTICE_FINAL
                ],
            )
    if give_up:
        tally["given_up"] += _give_up(s3, bucket, state_engine, hash_key, give_up, now)
    if tally.get("failed") or tally.get("not_configured"):
        log.warning(
            "%d notice(s) failed and %d have no channel configured; retried with backoff (R16.3)",
            tally.get("failed", 0),
            tally.get("not_configured", 0),
        )
    return tally


def _due(engine: Engine, now: datetime) -> list[state.NoticeRow]:
    t = state.cj_notices
    q = (
        select(t)
        .where(
            t.c.status.in_(OPEN),
            or_(t.c.next_attempt_at.is_(None), t.c.next_attempt_at <= now),
        )
        .order_by(t.c.request_pk, t.c.subprocessor)
    )
    with engine.connect() as conn:
        return [state._row(state.NoticeRow, m) for m in conn.execute(q).mappings()]


def _body(s3: Any, bucket: str, row: state.NoticeRow) -> dict[str, Any] | None:
    try:
        got = s3.get_object(Bucket=bucket, Key=notice_key(row.request_pk, row.subprocessor))
    except s3.exceptions.NoSuchKey:
        return None
    return json.loads(got["Body"].read())


def _give_up(
    s3: Any,
    bucket: str,
    engine: Engine,
    hash_key: bytes,
    rows: list[tuple[state.NoticeRow, str]],
    now: datetime,
) -> int:
    """Finish notices unacknowledged past their give-up time: status, ledger entry, one
    transaction; then their bodies go (R20). Only a still-open notice is given up."""
    requests = state.get_requests(engine, sorted({r.request_pk for r, _ in rows}))
    t = state.cj_notices
    done = 0
    with engine.begin() as conn:
        entries = []
        for row, why in rows:
            changed = conn.execute(
                update(t)
                .where(
                    t.c.request_pk == row.request_pk,
                    t.c.subprocessor == row.subprocessor,
                    t.c.status.in_(OPEN),
                )
                .values(
                    status="given_up",
                    given_up_at=now,
                    next_attempt_at=None,
                    last_error_kind=why[:64],
                )
            ).rowcount
            if not changed:
                continue
            done += 1
            req = requests.get(row.request_pk)
            if req is None:
                continue
            entries.append(
                ledger.Entry(
                    "notice_given_up",
                    request_ref(hash_key, req.client_id, req.request_id),
                    {
                        "recipient": row.subprocessor,
                        "kind": row.kind or "subprocessor",
                        "channel": row.channel,
                        "attempts": row.attempts,
                        "last_error": why[:64],
                        "rules": [
                            "R16.3" if (row.kind or "subprocessor") == "subprocessor" else "R16.4"
                        ],
                    },
                    f"notice-given-up:{row.request_pk}:{row.subprocessor}",
                )
            )
        if entries:
            ledger.append(conn, hash_key, entries)
    delete_many(s3, bucket, [notice_key(r.request_pk, r.subprocessor) for r, _ in rows])
    return done


def sweep(s3: Any, bucket: str, state_engine: Engine) -> int:
    """Delete notice bodies nobody will send again: the notice is finished, or its request is
    closed without one (a crash between the body and the row of a batch never resumed). A body
    whose request is still open stays: its row may be being written right now."""
    keys: list[tuple[str, int, str]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=OUTBOX):
        for obj in page.get("Contents", []):
            parts = obj["Key"][len(OUTBOX) :].split("/")
            if len(parts) == 2 and parts[0].isdigit() and parts[1].endswith(".json"):
                keys.append((obj["Key"], int(parts[0]), parts[1][: -len(".json")]))
    if not keys:
        return 0
    pks = sorted({pk for _, pk, _ in keys})
    notices = state.notices_of(state_engine, pks)
    requests = state.get_requests(state_engine, pks)
    gone = []
    for key, pk, name in keys:
        row = notices.get(pk, {}).get(name)
        req = requests.get(pk)
        finished = row is not None and row.status in state.NOTICE_FINAL
        orphan = row is None and (req is None or req.status in ("completed", "rejected"))
        if finished or orphan:
            gone.append(key)
    delete_many(s3, bucket, gone)
    return len(gone)
