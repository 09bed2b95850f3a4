"""Status callbacks to API clients: an outbox told until the client's endpoint acknowledges
(issue 18, item 1).

Why an outbox and not a POST from the step that changed the status: intake, the deletion and
access runs and the R4 extension each change a request, and none of them should fail or wait
because a client's endpoint is down. So the status changes are *derived* (`status.events`, from
the request's row, R1-R4, R19, R21) and written to `cj_callbacks` by `sync`, and `deliver`
POSTs them, signed like the client's own calls (`signing`), with backoff, until a 2xx answer.

- **sync** (`sync(engine, now)`): one set-based pass over the requests submitted through the API
  (`cj_api_requests`, left-joined to their `cj_requests` row, in keyset chunks); one row per
  event the row shows, insert-if-absent on (client, request, event, detail), so a rerun adds
  nothing. `received` exists as soon as the API accepted the document. Requests whose outbox
  already holds a final event (`completed`, `denied`) are skipped: a final status never changes.
  Rows are written for *every* API-submitted request, whether or not its credential has a
  callback URL today: the credential lives in an Airflow connection the state DB cannot join,
  and a client that registers a URL later is then told its requests' whole history, in order.
- **deliver** (`deliver(ctx, now, limit)`): every due, unacknowledged callback whose earlier
  events of the same request are all acknowledged (order kept: never `completed` before
  `acknowledged`), claimed first with an `UPDATE ... WHERE next_attempt_at = <as read>` so two
  overlapping runs never send the same row (a crash after the claim sends it again after the
  lease: at least once; the body's (request, event, detail) lets the client drop a repeat).
  2xx sets `acked_at`; anything else, a timeout or a connection error counts an attempt and waits
  `BACKOFF_BASE * 2^(attempts-1)`, capped at `BACKOFF_CAP`, never past the row's 24 h mark so the
  alert check runs on time. A credential without a callback URL is re-checked every
  `BACKOFF_CAP` (no attempt counted, no alert: the client chose no callbacks).
- **never silently**: a callback still unacknowledged 24 h after it was queued raises one staff
  alert, at the first failed attempt past the mark (claims make that attempt unique), per
  credential and run: its key, counts, HTTP statuses and event codes, never a request id or an
  identity. A credential that is unknown or unusable (removed, broken connection) keeps its
  rows, counts the attempt and alerts at its rows' first attempt; retries go on in both cases.

The body: `{"event", "detail" (a reason code or null), "request": status.view(...),
"sent_at"}` plus `extended_due` for `extended`. No identity (the state DB holds none) and no
free text (the R4 extension's reason stays out; its code `r4_extension` goes).
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, exists, select, tuple_

from compliance.core.statedb import insert_if_absent, to_utc
from compliance.desk import api_clients, callback_alerts, status
from compliance.desk import callback_outbox as outbox
from compliance.desk.callback_http import post
from compliance.requests.schema import cj_api_requests, cj_callbacks, cj_requests
from compliance.requests.state_rows import RequestRow, row_of

log = logging.getLogger(__name__)

CHUNK = 500  # API requests read per sync statement
TIMEOUT_SECONDS = 10.0
THREADS = 8  # calls in flight at once (latency-bound)
FINAL = ("completed", "denied")


# --------------------------------------------------------------------------- sync


def sync(engine: Engine, now: datetime) -> dict[str, int]:
    """Queue one callback per event each API-submitted request shows; counts only."""
    now = to_utc(now)
    a, r, c = cj_api_requests, cj_requests, cj_callbacks
    finished = exists().where(
        c.c.client_id == a.c.client_id, c.c.request_id == a.c.request_id, c.c.event.in_(FINAL)
    )
    q = (
        select(
            a.c.client_id.label("api_client_id"),
            a.c.request_id.label("api_request_id"),
            a.c.type.label("api_type"),
            a.c.api_key,
            *r.c,
        )
        .select_from(
            a.outerjoin(
                r,
                and_(
                    r.c.client_id == a.c.client_id,
                    r.c.request_id == a.c.request_id,
                    r.c.type == a.c.type,
                ),
            )
        )
        .where(~finished)
        .order_by(a.c.client_id, a.c.request_id)
        .limit(CHUNK)
    )
    tally: Counter[str] = Counter()
    after: tuple[str, str] | None = None
    while True:
        page = q if after is None else q.where(tuple_(a.c.client_id, a.c.request_id) > after)
        with engine.connect() as conn:
            rows = conn.execute(page).mappings().all()
        if not rows:
            break
        queued: list[dict[str, Any]] = []
        for m in rows:
            row = row_of(RequestRow, m) if m["id"] is not None else None
            for event, detail in status.events(row):
                queued.append(
                    {
                        "api_key": m["api_key"],
                        "client_id": m["api_client_id"],
                        "request_id": m["api_request_id"],
                        "event": event,
                        "detail": detail,
                        "created_at": now,
                        "attempts": 0,
                        "next_attempt_at": now,
                    }
                )
        with engine.begin() as conn:
            # RETURNING counts what was new on both dialects (an executemany's rowcount does not).
            added = conn.execute(insert_if_absent(conn, c).returning(c.c.id), queued).all()
        tally["requests"] += len(rows)
        tally["events_seen"] += len(queued)
        tally["queued"] += len(added)
        after = (rows[-1]["api_client_id"], rows[-1]["api_request_id"])
        if len(rows) < CHUNK:
            break
    return dict(tally)


# --------------------------------------------------------------------------- deliver


def deliver(ctx: Any, now: datetime, limit: int = 500) -> dict[str, int]:
    """POST due callbacks (at most `limit` attempts), in order per request; counts only.

    `ctx` needs `state` (engine), `credentials` and `channels` (`JobContext`)."""
    now = to_utc(now)
    tally: Counter[str] = Counter()
    clients: dict[str, api_clients.ApiClient | str | None] = {}
    overdue: dict[str, Counter[str]] = defaultdict(Counter)  # key -> codes, for the alert
    unusable: dict[str, Counter[str]] = defaultdict(Counter)
    # An acknowledged event unblocks the next one of its request: a few passes per run.
    for _ in range(len(status.EVENTS) + 1):
        budget = limit - tally["attempted"] - tally["no_callback_url"]
        if budget <= 0:
            break
        claimed = outbox.claim(ctx.state, now, budget)
        if not claimed:
            break
        for key in {d.api_key for d in claimed} - clients.keys():
            clients[key] = _client(ctx, key)
        waiting = [d for d in claimed if _url_less(clients[d.api_key])]
        sendable = [d for d in claimed if not _url_less(clients[d.api_key])]
        outbox.settle(ctx.state, now, [(d, "waiting", None) for d in waiting])
        tally["no_callback_url"] += len(waiting)
        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            answers = list(pool.map(lambda d: _send(d, clients[d.api_key], now), sendable))
        results: list[tuple[outbox.Due, str, int | None]] = []
        for due, code in zip(sendable, answers, strict=True):
            tally["attempted"] += 1
            ok = code is not None and 200 <= code < 300
            if ok:
                tally["acknowledged"] += 1
                results.append((due, "acked", code))
                continue
            tally["failed"] += 1
            results.append((due, "failed", code))
            client = clients[due.api_key]
            if isinstance(client, str):
                tally[client] += 1
                if due.attempts == 0:
                    unusable[due.api_key][client] += 1
            if outbox.crossed(due, now):
                overdue[due.api_key][_code(client, code)] += 1
                overdue[due.api_key][f"event_{due.event}"] += 1
        outbox.settle(ctx.state, now, results)
    callback_alerts.send(ctx, overdue, unusable, tally)
    return {k: v for k, v in tally.items() if v}


def _client(ctx: Any, key: str) -> api_clients.ApiClient | str:
    """The credential, or the reason code it cannot be used under."""
    try:
        found = api_clients.lookup(ctx, key)
    except api_clients.CredentialError:
        return "credential_invalid"
    return found if found is not None else "credential_unknown"


def _url_less(client: api_clients.ApiClient | str | None) -> bool:
    return isinstance(client, api_clients.ApiClient) and not client.callback_url


def _code(client: api_clients.ApiClient | str | None, answer: int | None) -> str:
    if isinstance(client, str):
        return client
    return f"http_{answer}" if answer is not None else "no_answer"


def _send(due: outbox.Due, client: api_clients.ApiClient | str | None, now: datetime) -> int | None:
    if not isinstance(client, api_clients.ApiClient) or not client.callback_url:
        return None
    return post(client.callback_url, client.secret, client.key, body(due, now), TIMEOUT_SECONDS)


def body(due: outbox.Due, now: datetime) -> bytes:
    """The callback's JSON: event, reason code, the request as the client sees it, when.

    `request` is the request as it stands when the callback is sent: a late `received` may
    already show `status: completed` (the events themselves arrive in order, docs/api.md)."""
    view = status.view(due.client_id, due.request_id, due.type, due.request)
    doc: dict[str, Any] = {
        "event": due.event,
        "detail": due.detail or None,
        "request": view,
        "sent_at": now.isoformat(),
    }
    if due.event == "extended":
        doc["extended_due"] = view["extended_due"]
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
