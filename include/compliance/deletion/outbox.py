"""Deletion notices as an outbox: told until acknowledged, or given up on the record (R16.3, R16.4).

R16.3 says our own sub-processors must be told to delete, and the status tracked per
sub-processor; R16.4 says others who got the data through us must be told too, unless that is
impossible or a disproportionate effort. A notice that failed once and was never tried again
tells nobody, so every notice lives in an outbox until it is *finished*:

- **queued** (`enqueue`, in the deletion run that erases the request): one row per request and
  sub-processor or recipient in `cj_notices` (status `pending`), and the notice body, which must
  carry the identities, encrypted in the workspace bucket at `outbox/<request pk>/<name>.json`.
  The body is written before the row, so a row never lacks its body. A recipient the data map
  says cannot be told gets a finished row `exempt` instead, and its justification goes to the
  ledger (`recipient_not_told`) and the receipt;
- **retried** (`deliver`, on every deletion run for the notices of *every* earlier request, and
  from the daily watchdog): a notice that is not acknowledged is due again at
  `last attempt + base * 2^(attempts - 1)`, capped (`Policy`); a channel not configured here
  (no SNS client, no SMTP connection) is re-checked at the base interval, so it goes out on the
  first run after it is configured. `sent` without an acknowledgement (SNS, e-mail, a webhook
  that does not answer `{"acknowledged": true}`) is repeated too: the same `request_ref`, so the
  recipient recognises it, until someone records the acknowledgement (`state.acknowledge`);
- **finished**: `acknowledged`, or `given_up` once the give-up time passed (per sub-processor or
  recipient `give_up_after_days` in the data map, default `COMPLIANCE_NOTICE_GIVE_UP_DAYS`, 30
  days from queueing); a give-up goes to the ledger (`notice_given_up`) and to the watchdog's
  alerts. The body is deleted when the notice is finished, so identities outlive the request
  only as long as the law still asks us to tell someone (R20).

A request completes when its data is erased (R16.1): the receipt shows each notice's status and
attempts. When a status changes later, `reissue` writes a new receipt version at the same key,
keeps the previous one beside it (`<request>.delete.v<N>.json`), and appends `receipt_reissued`
to the ledger, so what was told to the business can always be reconstructed.

Crash safety: at least once, never lost. A crash after a send and before its record re-sends it
(`request_ref` is stable, so a repeat can be dropped); receipts are compared with the state
before a new version is written, so a crash between writing and marking repeats nothing.
Two runs that overlap (the hourly deletion run and the daily watchdog) may send a due notice
twice, with the same `request_ref`; that is accepted rather than adding a lease that a crash
could strand.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, or_, select, update

from compliance.core import ledger
from compliance.core.alerts import RUNBOOK, Alert
from compliance.core.datamap.model import DataMap
from compliance.core.hashing import keyed_hash
from compliance.core.outputs import delete_many, put_json, put_json_many
from compliance.deletion import subprocessors
from compliance.requests import state

log = logging.getLogger(__name__)

OUTBOX = "outbox/"
RECEIPTS = "receipts/"  # as compliance.deletion.erasure.RECEIPTS (erasure imports this module)
OPEN = ("pending", "sent", "failed", "not_configured")  # retried until final
THREADS = 8  # notices in flight at once (latency-bound)
CHUNK = 100  # notices recorded per transaction: a crash re-sends at most this many
ENV = {
    "base": "COMPLIANCE_NOTICE_BACKOFF_MINUTES",
    "cap": "COMPLIANCE_NOTICE_BACKOFF_CAP_HOURS",
    "give_up": "COMPLIANCE_NOTICE_GIVE_UP_DAYS",
    "alert": "COMPLIANCE_NOTICE_ALERT_DAYS",
}


class PolicyInvalid(ValueError):
    """An outbox setting in the environment is not a whole number in its range."""

    reason = "notice_policy_invalid"


@dataclass(frozen=True)
class Policy:
    """Backoff, give-up and alert age (docs/operations.md, "Deletion notices")."""

    backoff_base: timedelta = timedelta(minutes=15)
    backoff_cap: timedelta = timedelta(hours=24)
    give_up_after: timedelta = timedelta(days=30)
    alert_after: timedelta = timedelta(days=3)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Policy:
        env = os.environ if env is None else env

        def number(key: str, default: int, low: int, high: int) -> int:
            raw = (env.get(ENV[key]) or "").strip()
            if not raw:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise PolicyInvalid(f"{ENV[key]} must be a whole number (got {raw!r})") from None
            if not low <= value <= high:
                raise PolicyInvalid(f"{ENV[key]} must be between {low} and {high} (got {value})")
            return value

        return cls(
            backoff_base=timedelta(minutes=number("base", 15, 1, 24 * 60)),
            backoff_cap=timedelta(hours=number("cap", 24, 1, 24 * 7)),
            give_up_after=timedelta(days=number("give_up", 30, 1, 365)),
            alert_after=timedelta(days=number("alert", 3, 0, 365)),
        )

    def next_try(self, attempts: int, at: datetime) -> datetime:
        """`at + base * 2^(attempts - 1)`, at most `at + cap` (attempts counts this one)."""
        return at + min(self.backoff_base * 2 ** min(max(attempts - 1, 0), 20), self.backoff_cap)


@dataclass(frozen=True)
class Party:
    """A sub-processor (R16.3) or a recipient (R16.4), as the outbox sees it."""

    name: str
    kind: str  # "subprocessor" | "recipient"
    channel: str | None  # None: a recipient not told (`justification`)
    target: str | None
    categories: tuple[str, ...]
    give_up_after_days: int | None = None
    received: str | None = None
    justification: str | None = None

    @property
    def rule(self) -> str:
        return "R16.3" if self.kind == "subprocessor" else "R16.4"

    def give_up_after(self, policy: Policy) -> timedelta:
        if self.give_up_after_days:
            return timedelta(days=self.give_up_after_days)
        return policy.give_up_after


def parties(dm: DataMap) -> dict[str, Party]:
    """Every sub-processor and recipient of the data map, by name (names are unique)."""
    out = {
        sp.name: Party(
            sp.name,
            "subprocessor",
            sp.channel,
            sp.target,
            tuple(c.value for c in sp.categories),
            sp.give_up_after_days,
        )
        for sp in dm.subprocessors
    }
    for rc in dm.recipients:
        told = rc.channel is not None and rc.target
        out.setdefault(
            rc.name,
            Party(
                rc.name,
                "recipient",
                rc.channel if told else None,
                rc.target if told else None,
                tuple(c.value for c in rc.categories),
                rc.give_up_after_days,
                rc.received,
                None if told else (rc.impossible_or_disproportionate or "").strip(),
            ),
        )
    return out


def notice_key(request_pk: int, name: str) -> str:
    return f"{OUTBOX}{request_pk}/{name}.json"


def receipt_key(client_id: str, request_id: str) -> str:
    return f"{RECEIPTS}{client_id}/{request_id}.delete.json"


def request_ref(hash_key: bytes, client_id: str, request_id: str) -> str:
    """The ledger's ref of a deletion request (as intake and finalize write it)."""
    return keyed_hash(hash_key, "request", f"{client_id}\x1f{request_id}\x1fdelete")


# --------------------------------------------------------------------------- the DAG step


def run(
    s3: Any,
    bucket: str,
    dm: DataMap,
    state_engine: Engine,
    hash_key: bytes,
    batch_id: str,
    now: datetime,
    sns_client: Any = None,
    policy: Policy | None = None,
) -> dict[str, int]:
    """The deletion run's notice step: queue this batch's notices, send every due notice of any
    request, re-issue receipts whose notice statuses changed, drop finished bodies. Counts only.
    """
    policy = policy or Policy.from_env()
    tally: Counter[str] = Counter()
    if batch_id:
        from compliance.deletion import erasure  # erasure imports this module for receipt sections

        try:
            targets = erasure.load_targets(s3, bucket, batch_id)
        except s3.exceptions.NoSuchKey:  # finished and cleaned up: queued before finalize ran
            targets = None
        if targets is not None:
            tally.update(enqueue(s3, bucket, dm, state_engine, hash_key, targets, now))
    tally.update(deliver(s3, bucket, dm, state_engine, hash_key, now, sns_client, policy))
    tally["receipts_reissued"] += reissue(s3, bucket, dm, state_engine, hash_key, now)
    sweep(s3, bucket, state_engine)
    return dict(tally)


def enqueue(
    s3: Any,
    bucket: str,
    dm: DataMap,
    state_engine: Engine,
    hash_key: bytes,
    targets: Any,
    now: datetime,
) -> Counter[str]:
    """Queue a batch's notices (`erasure.Targets`: its active requests); a rerun adds nothing."""
    tally: Counter[str] = Counter()
    refs = targets.active_refs()
    everyone = parties(dm)
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
    sns_client: Any = None,
    policy: Policy | None = None,
) -> Counter[str]:
    """Send every due notice of every request (R16.3, R16.4); give up those past their time."""
    policy = policy or Policy.from_env()
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
        return subprocessors.send(party.channel, party.target, body, sns_client)

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


# --------------------------------------------------------------------------- receipts


def receipt_sections(dm: DataMap, notices: Mapping[str, state.NoticeRow]) -> dict[str, Any]:
    """The receipt's `subprocessors` (R16.3) and `recipients` (R16.4) sections: per name its
    status and attempts; for a recipient not told, how it got the data and why it is not told."""
    everyone = parties(dm)
    out: dict[str, dict[str, Any]] = {"subprocessors": {}, "recipients": {}}
    for name, n in sorted(notices.items()):
        party = everyone.get(name)
        kind = n.kind or (party.kind if party else "subprocessor")
        entry: dict[str, Any] = {"status": n.status}
        if n.status == "exempt":
            entry["received"] = party.received if party else None
            entry["impossible_or_disproportionate"] = party.justification if party else None
        else:
            entry.update(
                channel=n.channel,
                attempts=n.attempts,
                acknowledged_at=n.acked_at.isoformat() if n.acked_at else None,
                given_up_at=n.given_up_at.isoformat() if n.given_up_at else None,
                last_error=n.last_error_kind,
            )
        entry["rule"] = "R16.3" if kind == "subprocessor" else "R16.4"
        out["subprocessors" if kind == "subprocessor" else "recipients"][name] = entry
    return out


def _statuses(doc: Mapping[str, Any]) -> dict[str, str]:
    """name -> status in a receipt's sections (older receipts held the status as a string)."""
    out = {}
    for section in ("subprocessors", "recipients"):
        for name, entry in (doc.get(section) or {}).items():
            out[name] = entry if isinstance(entry, str) else entry.get("status")
    return out


def reissue(
    s3: Any, bucket: str, dm: DataMap, state_engine: Engine, hash_key: bytes, now: datetime
) -> int:
    """Re-issue the receipt of every completed request whose notice statuses changed since its
    receipt was written; return how many were re-issued.

    The previous version is kept beside the receipt (`.v<N>.json`) and the new one says which
    version it is and which it replaces; `receipt_reissued` goes to the ledger. A receipt that
    already shows the current statuses (finalize wrote it after the change, or a crash came
    after the write) is only marked as reported."""
    t = state.cj_notices
    q = select(t.c.request_pk).where(
        or_(t.c.reported_status.is_(None), t.c.reported_status != t.c.status)
    )
    with state_engine.connect() as conn:
        pks = sorted({pk for (pk,) in conn.execute(q)})
    if not pks:
        return 0
    requests = {
        pk: r for pk, r in state.get_requests(state_engine, pks).items() if r.status == "completed"
    }
    notices = state.notices_of(state_engine, list(requests))
    reissued = 0
    for pk, req in sorted(requests.items()):
        key = receipt_key(req.client_id, req.request_id)
        try:
            doc = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except s3.exceptions.NoSuchKey:
            continue  # not written yet: finalize writes it with the statuses of the day
        rows = notices.get(pk, {})
        sections = receipt_sections(dm, rows)
        version = int(doc.get("receipt_version", 1))
        if _statuses(doc) != _statuses(sections):
            kept = f"{RECEIPTS}{req.client_id}/{req.request_id}.delete.v{version}.json"
            put_json(s3, bucket, kept, doc)
            version += 1
            doc = {
                **doc,
                **sections,
                "receipt_version": version,
                "reissued_at": now.isoformat(),
                "previous_version": kept,
                "reissue_reason": "a sub-processor or recipient notice changed status "
                "(R16.3, R16.4)",
            }
            put_json(s3, bucket, key, doc)
            reissued += 1
        with state_engine.begin() as conn:
            if version > 1:
                ledger.append(
                    conn,
                    hash_key,
                    [
                        ledger.Entry(
                            "receipt_reissued",
                            request_ref(hash_key, req.client_id, req.request_id),
                            {
                                "receipt": key,
                                "version": version,
                                "notices": _statuses(doc),
                                "rules": ["R16.3", "R16.4"],
                            },
                            f"receipt:{pk}:v{version}",
                        )
                    ],
                )
            for name, n in rows.items():  # only the status the receipt now shows
                conn.execute(
                    update(t)
                    .where(t.c.request_pk == pk, t.c.subprocessor == name, t.c.status == n.status)
                    .values(reported_status=n.status)
                )
    return reissued


# --------------------------------------------------------------------------- watchdog


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
    sns_client: Any = None,
    policy: Policy | None = None,
) -> list[NoticeAlert]:
    """What the watchdog reports about notices: open ones older than `alert_after` (every
    run, like an overdue response), give-ups since the last check, and every sub-processor or
    recipient whose channel is not configured here (every run, until it is)."""
    policy = policy or Policy.from_env()
    out: list[NoticeAlert] = []
    for party in parties(dm).values():
        if party.channel is None:
            continue
        missing = subprocessors.channel_missing(party.channel, sns_client)
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


def chase(
    s3: Any,
    bucket: str,
    dm: DataMap,
    state_engine: Engine,
    hash_key: bytes,
    now: datetime,
    last_check: datetime | None,
    sns_client: Any = None,
) -> dict[str, Any]:
    """The watchdog's notice step: send what is due, re-issue changed receipts, then report
    what needs a person (`watch`) to `deadlines/<day>/notices.json`. Counts and the key."""
    policy = Policy.from_env()
    sent = deliver(s3, bucket, dm, state_engine, hash_key, now, sns_client, policy)
    reissued = reissue(s3, bucket, dm, state_engine, hash_key, now)
    sweep(s3, bucket, state_engine)
    found = watch(dm, state_engine, now, last_check, sns_client, policy)
    key = report_key(now.date())
    put_json(
        s3,
        bucket,
        key,
        {
            "as_of": now.isoformat(),
            "alert_after_days": policy.alert_after.days,
            "alerts": [asdict(a) for a in found],
        },
    )
    return {
        "delivered": dict(sent),
        "receipts_reissued": reissued,
        "alerts": len(found),
        "by_problem": dict(Counter(a.problem for a in found)),
        "key": key,
    }


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


def send_alerts(s3: Any, bucket: str, summary: Mapping[str, Any], day: date) -> dict[str, Any]:
    """Dispatch the notice digest `chase` reported; fail when every configured channel did."""
    from compliance.core import alerts

    if not summary.get("alerts"):
        return {"sent": []}
    doc = json.loads(s3.get_object(Bucket=bucket, Key=summary["key"])["Body"].read())
    message = digest([NoticeAlert(**a) for a in doc["alerts"]], day)
    settings = alerts.alert_settings()
    sent = alerts.dispatch(message, settings) if message else []
    if alerts.configured_channels(settings) and not sent:
        raise RuntimeError("no alert channel accepted the notice digest")
    return {"sent": sent}
