"""Status callbacks over real HTTP (issue 18, item 1): a local endpoint verifies every call's
signature (`signing.verify`) and records it; failures are retried with backoff, events keep
their order, no body carries an identity or free text, the 24 h alert fires once, and the
`client_callbacks` DAG delivers through a real `dag.test()` run with the credential in an
Airflow connection."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from compliance.core.stores.sql import engine_from_url
from compliance.desk import callbacks, signing
from compliance.requests import state
from compliance.requests.schema import cj_api_requests, cj_callbacks
from compliance.requests.state import NewRequest

SECRET = "callback-secret-0123456789"
CLIENT = "7"
T0 = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)
FREE_TEXT = "jane.roe@example.com asked by phone"  # must never reach a client


@dataclass
class Endpoint:
    """The client's callback endpoint: scripted answers, every verified call recorded."""

    url: str
    answers: list[int] = field(default_factory=list)  # popped per call; then 200
    calls: list[dict[str, Any]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    ep = Endpoint("")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                signing.verify(self.headers, "POST", self.path, body, secret=SECRET.encode())
            except signing.SignatureRefused as exc:
                ep.refused.append(exc.code)
                self.send_response(401)
                self.end_headers()
                return
            code = ep.answers.pop(0) if ep.answers else 200
            doc = json.loads(body)
            ep.calls.append({**doc, "_answer": code, "_key": self.headers[signing.CLIENT]})
            ep.raw.append(body)
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ep.url = f"http://127.0.0.1:{server.server_port}/hooks/compliance?tenant=7"
    yield ep
    server.shutdown()
    server.server_close()


class Recorder:
    """A `Channels` that keeps the staff alerts it was asked to send."""

    def __init__(self) -> None:
        self.alerts: list[Any] = []

    def configured(self) -> list[str]:
        return ["email"]

    def alert(self, alert: Any) -> list[str]:
        self.alerts.append(alert)
        return ["email"]

    def email(self, conn_id: str, to: str, subject: str, html: str) -> None:
        raise AssertionError("callbacks send no e-mail")


def _ctx(state_engine, creds: dict[str, dict[str, Any] | None]) -> SimpleNamespace:
    def credentials(conn_id: str):
        found = creds.get(conn_id.removeprefix("compliance_api_"))
        return None if found is None else (SECRET, found)

    return SimpleNamespace(state=state_engine, credentials=credentials, channels=Recorder())


def _submit(state_engine, request_id: str, key: str = "acme", accept: bool = True) -> int | None:
    with state_engine.begin() as conn:
        conn.execute(
            insert(cj_api_requests).values(
                client_id=CLIENT,
                request_id=request_id,
                type="delete",
                api_key=key,
                body_sha256="0" * 64,
                submitted_at=T0,
            )
        )
    if not accept:
        return None
    new = NewRequest(
        client_id=CLIENT,
        request_id=request_id,
        type="delete",
        jurisdiction="ccpa",
        received_at=T0 - timedelta(hours=2),
        accepted_at=T0 - timedelta(hours=1),
        response_due=(T0 + timedelta(days=44)).date(),
        source=f"inbox/{CLIENT}/{request_id}.json",
    )
    return state.insert_requests(state_engine, [new])[(CLIENT, request_id, "delete")]


def _rows(state_engine, request_id: str) -> dict[str, Any]:
    q = select(cj_callbacks).where(cj_callbacks.c.request_id == request_id)
    with state_engine.connect() as conn:
        return {m["event"]: m for m in conn.execute(q).mappings().all()}


def test_retried_with_backoff_in_order_signed_and_without_identities(state_engine, endpoint):
    ctx = _ctx(state_engine, {"acme": {"client_ids": [CLIENT], "callback_url": endpoint.url}})
    pk = _submit(state_engine, "r1")
    state.record_extension(state_engine, pk, T0 - timedelta(minutes=30), FREE_TEXT)  # R4
    callbacks.sync(state_engine, T0)
    endpoint.answers = [500, 503, 500]
    at, nexts = T0, []
    for _ in range(3):
        counts = callbacks.deliver(ctx, at, 50)
        assert counts["failed"] == 1 and "acknowledged" not in counts
        row = _rows(state_engine, "r1")["received"]
        nexts.append(row["next_attempt_at"] - at)
        assert callbacks.deliver(ctx, at + timedelta(seconds=30), 50) == {}  # not due yet
        at = row["next_attempt_at"]
    assert nexts == [timedelta(minutes=1), timedelta(minutes=2), timedelta(minutes=4)]
    # Now it answers: `received`, then the events it was holding back, in one run.
    counts = callbacks.deliver(ctx, at, 50)
    assert counts == {"attempted": 3, "acknowledged": 3}
    assert [c["event"] for c in endpoint.calls] == ["received"] * 4 + ["acknowledged", "extended"]
    assert [c["_answer"] for c in endpoint.calls] == [500, 503, 500, 200, 200, 200]
    rows = _rows(state_engine, "r1")
    assert (rows["received"]["attempts"], rows["received"]["last_status"]) == (4, 200)
    assert all(r["acked_at"] == at and r["next_attempt_at"] is None for r in rows.values())
    # Completed after that: one more callback, once; a rerun sends nothing.
    state.set_status(state_engine, [pk], "completed", completed_at=at)
    callbacks.sync(state_engine, at)
    assert callbacks.deliver(ctx, at + timedelta(minutes=5), 50) == {
        "attempted": 1,
        "acknowledged": 1,
    }
    assert callbacks.deliver(ctx, at + timedelta(minutes=10), 50) == {}
    assert [c["event"] for c in endpoint.calls][-1] == "completed"
    assert endpoint.refused == []  # every signature checked out, path and query included
    extended = next(c for c in endpoint.calls if c["event"] == "extended")
    assert extended["detail"] == "r4_extension"
    assert extended["extended_due"] == extended["request"]["extended_due"] is not None
    done = endpoint.calls[-1]
    assert done["request"]["status"] == "completed" and done["detail"] is None
    assert set(done) - {"_answer", "_key"} == {"event", "detail", "request", "sent_at"}
    assert set(done["request"]) == {
        "client_id",
        "request_id",
        "type",
        "status",
        "reason_code",
        "received_at",
        "acknowledged_at",
        "response_due",
        "extended_due",
        "completed_at",
    }
    for raw in endpoint.raw:  # no identity, no free text
        assert b"jane" not in raw and b"@" not in raw and b"phone" not in raw
    assert ctx.channels.alerts == []


def test_unacknowledged_for_24h_alerts_once_and_keeps_retrying(state_engine, endpoint):
    ctx = _ctx(state_engine, {"acme": {"client_ids": [CLIENT], "callback_url": endpoint.url}})
    _submit(state_engine, "down-1")
    _submit(state_engine, "down-2", accept=False)
    callbacks.sync(state_engine, T0)
    endpoint.answers = [500] * 1000
    at, runs = T0, 0
    while at <= T0 + timedelta(hours=40) and runs < 100:
        callbacks.deliver(ctx, at, 50)
        runs += 1
        with state_engine.connect() as conn:
            at = conn.execute(  # the heads; `acknowledged` waits behind `received`
                select(func.min(cj_callbacks.c.next_attempt_at)).where(
                    cj_callbacks.c.event == "received"
                )
            ).scalar_one()
    alerts = ctx.channels.alerts
    assert len(alerts) == 1, [a.subject for a in alerts]
    alert = alerts[0]
    assert alert.kind == "callback" and "acme" in alert.subject
    assert "http_500 x2" in alert.body and "event_received x2" in alert.body
    assert "down-1" not in alert.body and "down-2" not in alert.body
    rows = [*_rows(state_engine, "down-1").values(), *_rows(state_engine, "down-2").values()]
    received = [r for r in rows if r["event"] == "received"]
    assert all(r["acked_at"] is None and r["attempts"] > 12 for r in received)
    assert all(r["last_attempt_at"] > T0 + timedelta(hours=30) for r in received)  # retried
    assert _rows(state_engine, "down-1")["acknowledged"]["attempts"] == 0  # waits its turn
    assert runs < 40  # backoff, not a call every 5 minutes


def test_unknown_credential_and_no_url(state_engine, endpoint):
    ctx = _ctx(state_engine, {"quiet": {"client_ids": [CLIENT]}})  # no callback_url; "gone" missing
    _submit(state_engine, "q1", key="quiet", accept=False)
    _submit(state_engine, "g1", key="gone", accept=False)
    callbacks.sync(state_engine, T0)
    counts = callbacks.deliver(ctx, T0, 50)
    assert counts == {
        "no_callback_url": 1,
        "attempted": 1,
        "failed": 1,
        "credential_unknown": 1,
        "alerts": 1,
    }
    assert endpoint.calls == []
    [alert] = ctx.channels.alerts
    assert "gone" in alert.subject and "credential_unknown x1" in alert.body
    rows = {**_rows(state_engine, "q1"), **{"gone": _rows(state_engine, "g1")["received"]}}
    assert rows["received"]["attempts"] == 0  # a client without a URL: re-checked later
    assert rows["received"]["next_attempt_at"] == T0 + timedelta(hours=6)
    assert rows["gone"]["attempts"] == 1 and rows["gone"]["acked_at"] is None  # kept
    # The next run does not alert again about the same row.
    callbacks.deliver(ctx, T0 + timedelta(minutes=1), 50)
    assert len(ctx.channels.alerts) == 1


def test_dag_delivers_to_the_registered_endpoint(stack, endpoint, monkeypatch):
    conn = {
        "conn_type": "generic",
        "password": SECRET,
        "extra": {"client_ids": [CLIENT], "callback_url": endpoint.url},
    }
    monkeypatch.setenv("AIRFLOW_CONN_COMPLIANCE_API_ACME", json.dumps(conn))
    state_engine = engine_from_url(stack.state_url)
    state.create_state_schema(state_engine)
    _submit(state_engine, "dag-1")
    run = stack.run_dag("client_callbacks")
    assert run.state == "success"
    assert [(c["event"], c["_key"]) for c in endpoint.calls] == [
        ("received", "acme"),
        ("acknowledged", "acme"),
    ]
    assert endpoint.refused == []
    assert all(r["acked_at"] is not None for r in _rows(state_engine, "dag-1").values())
    state_engine.dispose()


def test_an_alert_no_channel_took_fails_the_task(state_engine, endpoint):
    class Deaf(Recorder):
        def alert(self, alert: Any) -> list[str]:
            self.alerts.append(alert)
            return []  # configured, but nothing accepted it

    ctx = _ctx(state_engine, {})
    ctx.channels = Deaf()
    _submit(state_engine, "x1", key="gone", accept=False)
    callbacks.sync(state_engine, T0)
    with pytest.raises(RuntimeError, match="no alert channel accepted 1"):
        callbacks.deliver(ctx, T0, 50)
    assert _rows(state_engine, "x1")["received"]["attempts"] == 1  # recorded before the failure
    assert len(ctx.channels.alerts) == 1
