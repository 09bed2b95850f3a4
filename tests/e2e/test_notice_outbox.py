"""Deletion notices as an outbox, end to end (R16.3, R16.4), on SQLite and PostgreSQL.

A sub-processor's webhook fails twice, then acknowledges. Before the outbox the first failure
was final: the request completed, the next run planned only open requests, and nobody tried
again. Here: the deletion run's notice fails and the request still completes (its data is
erased); the watchdog retries (fails again) and reports it; the next deletion run retries
(acknowledged) and re-issues the receipt, keeping the first version. The notices carry only
what the contract needs, and the R16.4 recipient of the demo map is recorded as not told.
"""

from __future__ import annotations

import http.server
import json
import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from compliance.core.settings import REPO_ROOT
from compliance.deletion import subprocessors

from .test_deletion_requests import NOW, _doc, _expected, _pick_targets


class _FailsTwice(http.server.BaseHTTPRequestHandler):
    """The ESP's deletion webhook, down for its first two notices, then acknowledging."""

    bodies: list[dict] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        _FailsTwice.bodies.append(body)
        if len(_FailsTwice.bodies) <= 2:
            self.send_response(503)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"acknowledged": true}')

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_esp(tmp_path, monkeypatch):
    """The demo map with its ESP pointing at a webhook that fails twice, then acknowledges."""
    _FailsTwice.bodies = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FailsTwice)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    text = (REPO_ROOT / "config" / "datamap.yaml").read_text()
    text = text.replace("http://127.0.0.1:8719/", f"http://127.0.0.1:{server.server_port}/")
    path = tmp_path / "datamap.yaml"
    path.write_text(text)
    monkeypatch.setenv("COMPLIANCE_DATAMAP", str(path))
    yield _FailsTwice.bodies
    server.shutdown()


def _notices(url: str) -> dict[str, tuple]:
    eng = sa.create_engine(url)
    with eng.connect() as c:
        rows = c.execute(
            sa.text("select subprocessor, status, attempts, kind from cj_notices")
        ).all()
    eng.dispose()
    return {r[0]: tuple(r[1:]) for r in rows}


def _state_text(url: str) -> str:
    eng = sa.create_engine(url)
    out = []
    with eng.connect() as c:
        for table in ("cj_requests", "cj_notices", "cj_ledger"):
            out += [repr(tuple(r)) for r in c.execute(sa.text(f"select * from {table}"))]
    eng.dispose()
    return "\n".join(out)


def test_failing_webhook_is_retried_until_acknowledged(stack, flaky_esp, monkeypatch):
    from compliance import runtime

    monkeypatch.setenv("COMPLIANCE_NOTICE_ALERT_DAYS", "0")  # the watchdog lists every open one
    clock = {"now": NOW}
    monkeypatch.setattr(runtime, "now", lambda: clock["now"])
    mt_client, email = _pick_targets(stack.db_url)["multi_tenant"]
    expected = _expected(stack.db_url, mt_client, "lower(email) = :e", {"e": email})
    stack.s3.put_object(
        Bucket=stack.bucket,
        Key=f"inbox/{mt_client}/one.json",
        Body=json.dumps(_doc("DEL-1", mt_client, email=email)).encode(),
    )
    key = f"receipts/{mt_client}/DEL-1.delete.json"

    def receipt(k: str = key) -> dict:
        return json.loads(stack.s3.get_object(Bucket=stack.bucket, Key=k)["Body"].read())

    # 1. the deletion run: data erased, the request completes; the ESP's notice failed
    assert stack.run_dag("deletion_requests", {"dry_run": False}).state == "success"
    notices = _notices(stack.state_url)
    assert notices["esp_mailer"] == ("failed", 1, "subprocessor")
    assert notices["payment_gateway"][0] == "not_configured"  # no SMTP connection here
    assert notices["former_analytics_vendor"] == ("exempt", 0, "recipient")  # R16.4
    first = receipt()
    assert first["subprocessors"]["esp_mailer"]["status"] == "failed"
    assert first["subprocessors"]["esp_mailer"]["attempts"] == 1
    vendor = first["recipients"]["former_analytics_vendor"]
    assert vendor["status"] == "exempt" and "dissolved" in vendor["impossible_or_disproportionate"]
    assert vendor["rule"] == "R16.4"

    # 2. the watchdog an hour later: retried (fails again), and reported
    clock["now"] = NOW + timedelta(hours=1)
    assert stack.run_dag("deadline_watchdog").state == "success"
    assert _notices(stack.state_url)["esp_mailer"] == ("failed", 2, "subprocessor")
    day = clock["now"].date().isoformat()
    report = json.loads(
        stack.s3.get_object(Bucket=stack.bucket, Key=f"deadlines/{day}/notices.json")["Body"].read()
    )
    problems = {(a["problem"], a["name"]) for a in report["alerts"]}
    assert ("unacknowledged", "esp_mailer") in problems
    assert ("channel_not_configured", "payment_gateway") in problems
    assert receipt().get("receipt_version", 1) == 1  # failed -> failed: not re-issued

    # 3. the next deletion run (no new request): retried, acknowledged, receipt re-issued
    clock["now"] = NOW + timedelta(hours=2)
    assert stack.run_dag("deletion_requests", {"dry_run": False}).state == "success"
    assert _notices(stack.state_url)["esp_mailer"] == ("acknowledged", 3, "subprocessor")
    now = receipt()
    assert now["receipt_version"] == 2
    assert now["subprocessors"]["esp_mailer"]["status"] == "acknowledged"
    assert now["subprocessors"]["esp_mailer"]["attempts"] == 3
    assert now["counts"] == first["counts"]  # the rest of the receipt is the first one's
    kept = receipt(now["previous_version"])
    assert kept["subprocessors"]["esp_mailer"]["status"] == "failed"
    left = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="outbox/").get("Contents", [])
    assert not any(o["Key"].endswith("/esp_mailer.json") for o in left)  # finished: body gone

    # the notices: the same body three times, the contract's fields, this consumer's identities
    assert len(flaky_esp) == 3 and all(b == flaky_esp[0] for b in flaky_esp)
    assert set(flaky_esp[0]) == set(subprocessors.PAYLOAD_FIELDS)
    assert "DEL-1" not in json.dumps(flaky_esp[0])  # a keyed request_ref, not our request id
    allowed = (
        expected["emails"]
        | {str(p) for p in expected["phones"]}
        | {str(x) for x in expected["external"]}
        | {str(i) for i in expected["ids"]}
    )
    sent = {v.lower() for vs in flaky_esp[0]["identities"].values() for v in vs}
    assert email.lower() in sent and sent <= {a.lower() for a in allowed}
    # no identity in the state DB or the ledger (R20): only keyed hashes and codes
    text = _state_text(stack.state_url).lower()
    assert not any(v.lower() in text for v in expected["emails"] | expected["phones"])
    kinds = _state_text(stack.state_url)
    assert "recipient_not_told" in kinds and "receipt_reissued" in kinds
