"""Status callbacks' outbox (compliance.desk.callbacks, issue 18 item 1) on SQLite and
PostgreSQL: which events `sync` queues for a request submitted through the client API (R1-R4,
R19, R21), that a rerun adds nothing, and that two overlapping deliveries never claim one row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select

from compliance.desk import callback_outbox, callbacks
from compliance.requests import state
from compliance.requests.schema import cj_api_requests, cj_callbacks
from compliance.requests.state import NewRequest

RECEIVED = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
NOW = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)
CLIENT = "7"


def _submitted(state_engine, request_id: str, type_: str = "delete", key: str = "acme") -> None:
    """What the API writes when it accepts a document (`cj_api_requests`)."""
    with state_engine.begin() as conn:
        conn.execute(
            insert(cj_api_requests).values(
                client_id=CLIENT,
                request_id=request_id,
                type=type_,
                api_key=key,
                body_sha256="0" * 64,
                submitted_at=RECEIVED,
            )
        )


def _intake(state_engine, request_id: str, type_: str = "delete", **kw) -> int:
    """What intake writes when it accepts (or refuses) the document."""
    base = {
        "client_id": CLIENT,
        "request_id": request_id,
        "type": type_,
        "jurisdiction": "ccpa",
        "received_at": RECEIVED,
        "accepted_at": RECEIVED + timedelta(hours=1),
        "ack_due": RECEIVED.date() + timedelta(days=9),
        "response_due": RECEIVED.date() + timedelta(days=44),
        "source": f"inbox/{CLIENT}/{request_id}.json",
    }
    base.update(kw)
    return state.insert_requests(state_engine, [NewRequest(**base)])[(CLIENT, request_id, type_)]


def _events(state_engine, request_id: str) -> list[tuple[str, str]]:
    c = cj_callbacks
    q = (
        select(c.c.event, c.c.detail)
        .where(c.c.client_id == CLIENT, c.c.request_id == request_id)
        .order_by(c.c.id)
    )
    with state_engine.connect() as conn:
        return [tuple(r) for r in conn.execute(q).all()]


def test_received_only_before_intake(state_engine):
    _submitted(state_engine, "r1")
    counts = callbacks.sync(state_engine, NOW)
    assert counts == {"requests": 1, "events_seen": 1, "queued": 1}
    assert _events(state_engine, "r1") == [("received", "")]


def test_acknowledged_after_intake_then_extended_then_completed(state_engine):
    _submitted(state_engine, "r2")
    callbacks.sync(state_engine, NOW)
    pk = _intake(state_engine, "r2")
    assert callbacks.sync(state_engine, NOW)["queued"] == 1
    assert _events(state_engine, "r2") == [("received", ""), ("acknowledged", "")]
    # R4: the extension's free-text reason never goes out, only its code.
    state.record_extension(state_engine, pk, RECEIVED + timedelta(days=30), "volume of records")
    callbacks.sync(state_engine, NOW)
    assert _events(state_engine, "r2")[-1] == ("extended", "r4_extension")
    state.set_status(state_engine, [pk], "completed", completed_at=NOW)
    callbacks.sync(state_engine, NOW)
    assert _events(state_engine, "r2") == [
        ("received", ""),
        ("acknowledged", ""),
        ("extended", "r4_extension"),
        ("completed", ""),
    ]
    # A finished request is no longer read: its outbox holds a final event.
    assert callbacks.sync(state_engine, NOW) == {}


def test_deferred_carries_the_hold_code(state_engine):
    _submitted(state_engine, "r3")
    pk = _intake(state_engine, "r3")
    state.set_status(state_engine, [pk], "deferred", reason_code="legal_hold")  # R19
    callbacks.sync(state_engine, NOW)
    assert _events(state_engine, "r3") == [
        ("received", ""),
        ("acknowledged", ""),
        ("deferred", "legal_hold"),
    ]


def test_denied_with_its_reason_and_never_acknowledged(state_engine):
    _submitted(state_engine, "r4", "access")
    _intake(
        state_engine, "r4", "access", status="rejected", reason_code="unverified", completed_at=NOW
    )  # R21: the basis of the denial
    callbacks.sync(state_engine, NOW)
    assert _events(state_engine, "r4") == [("received", ""), ("denied", "unverified")]


def test_rerun_adds_no_rows_and_only_api_requests_count(state_engine, monkeypatch):
    monkeypatch.setattr(callbacks, "CHUNK", 2)  # several keyset pages
    for i in range(5):
        _submitted(state_engine, f"p{i}")
    _intake(state_engine, "p1")
    _intake(state_engine, "not-via-api")  # an inbox document: no callbacks, no credential
    first = callbacks.sync(state_engine, NOW)
    assert first == {"requests": 5, "events_seen": 6, "queued": 6}
    again = callbacks.sync(state_engine, NOW + timedelta(minutes=5))
    assert again == {"requests": 5, "events_seen": 6, "queued": 0}
    with state_engine.connect() as conn:
        rows = conn.execute(select(cj_callbacks)).mappings().all()
    assert len(rows) == 6
    assert {r["request_id"] for r in rows} == {f"p{i}" for i in range(5)}
    assert all(r["created_at"] == NOW and r["attempts"] == 0 for r in rows)
    assert all(r["api_key"] == "acme" and r["acked_at"] is None for r in rows)


def test_claims_take_the_head_of_each_request_once(state_engine):
    _submitted(state_engine, "c1")
    _intake(state_engine, "c1")
    callbacks.sync(state_engine, NOW)
    first = callback_outbox.claim(state_engine, NOW, 10)
    # Only `received`: `acknowledged` waits until it is acknowledged (order kept).
    assert [(d.request_id, d.event) for d in first] == [("c1", "received")]
    assert first[0].request is not None and first[0].request.status == "open"
    # An overlapping run finds nothing to claim: the row now waits for the lease.
    assert callback_outbox.claim(state_engine, NOW, 10) == []
    callback_outbox.settle(state_engine, NOW, [(first[0], "acked", 200)])
    second = callback_outbox.claim(state_engine, NOW, 10)
    assert [d.event for d in second] == ["acknowledged"]
    # The first run's lease is gone: a late settle of it changes nothing.
    callback_outbox.settle(state_engine, NOW, [(first[0], "failed", 500)])
    with state_engine.connect() as conn:
        row = (
            conn.execute(select(cj_callbacks).where(cj_callbacks.c.event == "received"))
            .mappings()
            .one()
        )
    assert (row["attempts"], row["last_status"], row["acked_at"]) == (1, 200, NOW)
    assert row["next_attempt_at"] is None


def test_backoff_doubles_caps_and_never_skips_the_24h_mark():
    due = callback_outbox.Due(
        1, "k", CLIENT, "r", "delete", "received", "", NOW, 0, None, NOW, None
    )
    waits = []
    at = NOW
    for attempts in range(12):
        d = callback_outbox.Due(
            1, "k", CLIENT, "r", "delete", "received", "", NOW, attempts, None, at, None
        )
        nxt = callback_outbox.next_attempt(d, at)
        waits.append(nxt - at)
        at = nxt
    assert waits[:4] == [timedelta(minutes=m) for m in (1, 2, 4, 8)]
    assert max(waits) <= timedelta(hours=6)
    # The schedule lands exactly on the 24 h mark once, where the alert check runs.
    marks = [NOW + sum(waits[: i + 1], timedelta()) for i in range(len(waits))]
    assert NOW + timedelta(hours=24) in marks
    assert callback_outbox.crossed(due, NOW + timedelta(hours=24))
    late = callback_outbox.Due(
        1,
        "k",
        CLIENT,
        "r",
        "delete",
        "received",
        "",
        NOW,
        9,
        NOW + timedelta(hours=24),
        NOW,
        None,
    )
    assert not callback_outbox.crossed(late, NOW + timedelta(hours=30))
