"""The notice outbox (R16.3, R16.4): retried with backoff until acknowledged or given up, the
receipt re-issued on a change of status, the watchdog's notice alerts, and R16.4 recipients.

Before the outbox a failed or unconfigured notice was recorded once and never tried again, and
recipients who got the data through us (R16.4) were not modelled; every test here fails there.
"""

from __future__ import annotations

import http.server
import json
import threading
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
import yaml

from compliance.core import ledger
from compliance.core.context import JobContext, Workspace
from compliance.core.datamap.model import DataMap, Recipient, SubProcessor
from compliance.core.datamap.validate import check_text, load_datamap
from compliance.core.outputs import put_json
from compliance.core.settings import REPO_ROOT, Settings
from compliance.core.stores.sql import engine_from_url
from compliance.deletion import outbox
from compliance.deletion.erasure import Targets
from compliance.requests import batches, state

KEY = b"unit-outbox-key"
BUCKET = "cj-outbox-unit"
T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
EMAIL = "dana.outbox@example.com"
DEMO = REPO_ROOT / "config" / "datamap.yaml"


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Fails the first `fail` POSTs with 503, then acknowledges; keeps every body."""

    fail = 2
    bodies: list[dict] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        type(self).bodies.append(body)
        if len(type(self).bodies) <= type(self).fail:
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
def flaky():
    _Flaky.bodies = []
    _Flaky.fail = 2
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/deletions", _Flaky
    server.shutdown()


@pytest.fixture
def engine(sqlite_url):
    eng = engine_from_url(sqlite_url.replace("crm.db", "state.db"))
    state.create_state_schema(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def bucket(s3):
    s3.create_bucket(Bucket=BUCKET)
    return s3


def _map(url: str, **sp_extra):
    dm = load_datamap(DEMO)
    esp = SubProcessor(
        name="esp_mailer",
        channel="webhook",
        target=url,
        categories=["identifiers"],
        purpose="e-mail campaigns",
        **sp_extra,
    )
    broker = Recipient(
        name="old_broker",
        categories=["identifiers"],
        received="a 2023 lead export",
        impossible_or_disproportionate="Dissolved in 2024, no successor and no contact channel.",
    )
    return dm.model_copy(update={"subprocessors": [esp], "recipients": [broker]})


def _completed_request(engine, s3, dm) -> tuple[int, Targets]:
    """One completed deletion request with its receipt, as finalize leaves it."""
    keys = state.insert_requests(
        engine,
        [state.NewRequest("7", "DEL-9", "delete", "ccpa", T0 - timedelta(days=2), "accepted/x")],
    )
    pk = keys[("7", "DEL-9", "delete")]
    targets = Targets("del-1")
    targets.requests[str(pk)] = {"pk": pk, "client_id": "7", "request_id": "DEL-9"}
    targets.identities[str(pk)] = {"email": [EMAIL]}
    outbox.enqueue(s3, BUCKET, dm, engine, KEY, targets, T0)
    return pk, targets


def _finish(engine, s3, dm, pk) -> None:
    state.set_status(engine, [pk], "completed", completed_at=T0)
    receipt = {"request_id": "DEL-9", **outbox.receipt_sections(dm, state.notices(engine, pk))}
    put_json(s3, BUCKET, outbox.receipt_key("7", "DEL-9"), receipt)


def _receipt(s3, key="receipts/7/DEL-9.delete.json") -> dict:
    return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def _kinds(engine) -> list[str]:
    return [e.kind for e in ledger.entries(engine)]


def test_failing_notice_is_retried_with_backoff_until_acknowledged(engine, bucket, flaky):
    """R16.3: fails, waits base, fails, waits 2*base, acknowledged; receipt v2, v1 kept."""
    url, server = flaky
    s3, dm = bucket, _map(url)
    pk, _ = _completed_request(engine, s3, dm)
    policy = outbox.Policy()  # 15 min base
    assert outbox.deliver(s3, BUCKET, dm, engine, KEY, T0, policy=policy)["failed"] == 1
    _finish(engine, s3, dm, pk)
    first = state.notices(engine, pk)["esp_mailer"]
    assert (first.status, first.attempts, first.last_error_kind) == ("failed", 1, "http_503")
    assert first.next_attempt_at == T0 + timedelta(minutes=15)

    assert outbox.deliver(s3, BUCKET, dm, engine, KEY, T0 + timedelta(minutes=10)) == {}
    at2 = T0 + timedelta(minutes=15)
    assert outbox.deliver(s3, BUCKET, dm, engine, KEY, at2, policy=policy)["failed"] == 1
    second = state.notices(engine, pk)["esp_mailer"]
    assert second.next_attempt_at == at2 + timedelta(minutes=30)  # base * 2^(attempts - 1)
    assert outbox.reissue(s3, BUCKET, dm, engine, KEY, at2) == 0  # failed -> failed: no change
    assert outbox.deliver(s3, BUCKET, dm, engine, KEY, at2 + timedelta(minutes=29)) == {}

    at3 = at2 + timedelta(minutes=30)
    got = outbox.deliver(s3, BUCKET, dm, engine, KEY, at3, policy=policy)
    assert got == {"acknowledged": 1}
    assert outbox.reissue(s3, BUCKET, dm, engine, KEY, at3) == 1
    assert outbox.reissue(s3, BUCKET, dm, engine, KEY, at3) == 0  # a rerun re-issues nothing

    now = _receipt(s3)
    assert now["receipt_version"] == 2 and now["previous_version"].endswith(".delete.v1.json")
    assert now["subprocessors"]["esp_mailer"]["status"] == "acknowledged"
    assert now["subprocessors"]["esp_mailer"]["attempts"] == 3
    assert now["recipients"]["old_broker"]["status"] == "exempt"  # R16.4, kept as it was
    old = _receipt(s3, "receipts/7/DEL-9.delete.v1.json")
    assert old["subprocessors"]["esp_mailer"]["status"] == "failed"
    assert _kinds(engine).count("receipt_reissued") == 1
    # the body is gone once acknowledged; three identical notices, only what the contract needs
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="outbox/")
    assert len(server.bodies) == 3 and all(b == server.bodies[0] for b in server.bodies)
    assert set(server.bodies[0]) == {
        "type", "request_ref", "client_id", "identities", "categories", "rules"
    }  # fmt: skip
    assert server.bodies[0]["identities"] == {"email": [EMAIL]}
    assert "DEL-9" not in json.dumps(server.bodies[0])  # our request id is not sent, a keyed ref
    assert outbox.deliver(s3, BUCKET, dm, engine, KEY, at3 + timedelta(days=3)) == {}


def test_unacknowledged_notice_is_given_up_at_the_configured_day(engine, bucket, flaky):
    """The data map's `give_up_after_days`: then given_up, ledgered, alerted, receipt re-issued."""
    url, server = flaky
    server.fail = 10**6
    s3, dm = bucket, _map(url, give_up_after_days=1)
    pk, _ = _completed_request(engine, s3, dm)
    outbox.deliver(s3, BUCKET, dm, engine, KEY, T0)
    _finish(engine, s3, dm, pk)
    later = T0 + timedelta(hours=12)
    outbox.deliver(s3, BUCKET, dm, engine, KEY, later)
    assert state.notices(engine, pk)["esp_mailer"].status == "failed"
    nxt = state.notices(engine, pk)["esp_mailer"].next_attempt_at
    assert nxt <= T0 + timedelta(days=1)  # the backoff never jumps past the give-up time

    end = T0 + timedelta(days=1, minutes=1)
    assert outbox.deliver(s3, BUCKET, dm, engine, KEY, end)["given_up"] == 1
    row = state.notices(engine, pk)["esp_mailer"]
    assert (row.status, row.next_attempt_at) == ("given_up", None)
    assert "notice_given_up" in _kinds(engine)
    assert outbox.reissue(s3, BUCKET, dm, engine, KEY, end) == 1
    assert _receipt(s3)["subprocessors"]["esp_mailer"]["status"] == "given_up"
    found = outbox.watch(dm, engine, end, T0 + timedelta(hours=13), None, outbox.Policy())
    assert [(a.problem, a.name, a.request_id) for a in found] == [
        ("given_up", "esp_mailer", "DEL-9")
    ]
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="outbox/")
    sent = len(server.bodies)
    outbox.deliver(s3, BUCKET, dm, engine, KEY, end + timedelta(days=2))
    assert len(server.bodies) == sent  # never again


def _email_processor_map() -> DataMap:
    """The demo map with one e-mail sub-processor and no recipients."""
    processor = SubProcessor(
        name="payments",
        channel="email",
        target="privacy@payments.example",
        categories=["commercial"],
        purpose="card payments",
    )
    return load_datamap(DEMO).model_copy(update={"subprocessors": [processor], "recipients": []})


def test_not_configured_channel_is_retried_and_alerted(engine, bucket):
    """An e-mail sub-processor without an SMTP connection: `not_configured`, re-checked at the
    base interval, reported by the watchdog as a channel and, after the alert age, a notice."""
    s3 = bucket
    dm = _email_processor_map()
    pk, _ = _completed_request(engine, s3, dm)
    assert outbox.deliver(s3, BUCKET, dm, engine, KEY, T0) == {"not_configured": 1}
    row = state.notices(engine, pk)["payments"]
    assert (row.attempts, row.last_error_kind) == (0, "no_smtp_connection")
    assert row.next_attempt_at == T0 + timedelta(minutes=15)
    policy = outbox.Policy(alert_after=timedelta(days=2))
    early = outbox.watch(dm, engine, T0 + timedelta(days=1), None, None, policy)
    assert [a.problem for a in early] == ["channel_not_configured"]
    late = outbox.watch(dm, engine, T0 + timedelta(days=2), None, None, policy)
    assert sorted(a.problem for a in late) == ["channel_not_configured", "unacknowledged"]
    message = outbox.digest(late, T0.date())
    assert message is not None and "no_smtp_connection" in message.body
    assert EMAIL not in message.body and "DEL-9" in message.body


def test_recipient_not_told_is_in_the_ledger_once(engine, bucket, flaky):
    """R16.4: the justification goes to the ledger and the receipt; a rerun adds nothing."""
    s3, dm = bucket, _map(flaky[0])
    pk, targets = _completed_request(engine, s3, dm)
    outbox.enqueue(s3, BUCKET, dm, engine, KEY, targets, T0 + timedelta(hours=1))  # a rerun
    entries = [e for e in ledger.entries(engine) if e.kind == "recipient_not_told"]
    assert len(entries) == 1 and entries[0].payload["rules"] == ["R16.4"]
    assert "Dissolved" in entries[0].payload["impossible_or_disproportionate"]
    section = outbox.receipt_sections(dm, state.notices(engine, pk))["recipients"]
    assert section["old_broker"]["status"] == "exempt"
    assert section["old_broker"]["received"] == "a 2023 lead export"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="outbox/")["Contents"]]
    assert keys == [f"outbox/{pk}/esp_mailer.json"]  # no body for a recipient not told


def test_backoff_is_capped_and_the_policy_refuses_bad_settings():
    p = outbox.Policy()
    assert p.next_try(1, T0) == T0 + timedelta(minutes=15)
    assert p.next_try(3, T0) == T0 + timedelta(hours=1)
    assert p.next_try(500, T0) == T0 + timedelta(hours=24)
    assert outbox.Policy.from_env({"COMPLIANCE_NOTICE_GIVE_UP_DAYS": "10"}).give_up_after == (
        timedelta(days=10)
    )
    with pytest.raises(outbox.PolicyInvalid, match="COMPLIANCE_NOTICE_GIVE_UP_DAYS"):
        outbox.Policy.from_env({"COMPLIANCE_NOTICE_GIVE_UP_DAYS": "0"})
    with pytest.raises(outbox.PolicyInvalid, match="whole number"):
        outbox.Policy.from_env({"COMPLIANCE_NOTICE_BACKOFF_MINUTES": "soon"})


def _check_recipients(recipients: list[dict]) -> set[tuple[str, str]]:
    doc = yaml.safe_load(DEMO.read_text())
    doc["recipients"] = recipients
    _, issues = check_text(yaml.safe_dump(doc))
    return {(i.rule, i.location) for i in issues}


def test_validator_requires_a_channel_or_a_justification_for_each_recipient():
    """R16.4: told like a sub-processor, or why that is impossible; not both, not neither."""
    base = {"name": "broker", "categories": ["identifiers"], "received": "a lead export"}
    why = "Dissolved in 2024, no successor and no contact channel."
    assert _check_recipients([{**base, "impossible_or_disproportionate": why}]) == set()
    hook = {"channel": "webhook", "target": "https://broker.example/deletions"}
    assert _check_recipients([{**base, **hook}]) == set()
    assert ("recipient-notice", "recipients.0") in _check_recipients([base])
    both = {**base, **hook, "impossible_or_disproportionate": why}
    assert ("recipient-notice", "recipients.0") in _check_recipients([both])
    short = {**base, "impossible_or_disproportionate": "too hard"}
    assert ("recipient-notice", "recipients.0.impossible_or_disproportionate") in (
        _check_recipients([short])
    )
    half = {**base, "channel": "webhook"}
    assert ("recipient-notice", "recipients.0.target") in _check_recipients([half])
    bad = {**base, "channel": "email", "target": "not an address"}
    assert ("bad-target", "recipients.0.target") in _check_recipients([bad])
    clash = {**base, "name": "esp_mailer", "impossible_or_disproportionate": why}
    assert ("duplicate-name", "recipients.0.name") in _check_recipients([clash])


def test_old_state_db_gets_the_outbox_columns(sqlite_url):
    """A cj_notices created before the outbox gains its nullable columns; rerunning is a no-op."""
    eng = engine_from_url(sqlite_url.replace("crm.db", "old.db"))
    with eng.begin() as conn:
        conn.execute(
            sa.text(
                "create table cj_notices (id integer primary key, request_pk integer not null, "
                "subprocessor varchar(64) not null, channel varchar(32) not null, "
                "status varchar(16) not null, attempts integer not null, "
                "last_error_kind varchar(64), sent_at datetime, acked_at datetime)"
            )
        )
        conn.execute(
            sa.text(
                "insert into cj_notices (request_pk, subprocessor, channel, status, attempts) "
                "values (1, 'esp', 'webhook', 'failed', 1)"
            )
        )
    state.create_state_schema(eng)
    state.create_state_schema(eng)
    cols = {c["name"] for c in sa.inspect(eng).get_columns("cj_notices")}
    assert {"kind", "queued_at", "next_attempt_at", "reported_status"} <= cols
    assert state.notices(eng, 1)["esp"].status == "failed"
    eng.dispose()


class _Recorder:
    """A `Channels` that keeps what it was asked to send (the deployment's sends via Airflow)."""

    def __init__(self) -> None:
        self.emails: list[tuple[str, str, str, str]] = []
        self.alerts: list = []

    def configured(self) -> list[str]:
        return ["email"]

    def alert(self, alert) -> list[str]:
        self.alerts.append(alert)
        return ["email"]

    def email(self, conn_id: str, to: str, subject: str, html: str) -> None:
        self.emails.append((conn_id, to, subject, html))


def _ctx(engine, s3, dm, channels, now, **env) -> JobContext:
    settings = Settings.from_env({"COMPLIANCE_HASH_KEY": KEY.decode(), **env})
    return JobContext(
        settings=settings,
        datamap=dm,
        datamap_hash="unit",
        workspace=Workspace(s3, BUCKET),
        state=engine,
        engines={},
        stores={},
        clock=lambda: now,
        run_day=now.date(),
        channels=channels,
    )


def test_email_notices_go_through_the_context_channels(engine, bucket):
    """The job entry points take the context: e-mail notices go out through `ctx.channels` on
    the SMTP connection the settings name; the watchdog's `chase` and `send_alerts` report an
    unacknowledged one through the same channels; the policy comes from `settings.env`."""
    s3 = bucket
    dm = _email_processor_map()
    pk, targets = _completed_request(engine, s3, dm)
    put_json(s3, BUCKET, batches.targets_key(targets.batch_id), asdict(targets))
    channels = _Recorder()
    env = {"COMPLIANCE_SUBPROCESSOR_SMTP_CONN": "smtp_privacy", "COMPLIANCE_NOTICE_ALERT_DAYS": "1"}
    got = outbox.run(_ctx(engine, s3, dm, channels, T0, **env), targets.batch_id)
    assert got["sent"] == 1
    [(conn, to, subject, html)] = channels.emails
    assert (conn, to, subject) == (
        "smtp_privacy",
        "privacy@payments.example",
        "Deletion request (R16)",
    )
    assert EMAIL in html  # the body carries the identities: the recipient needs them
    assert state.notices(engine, pk)["payments"].status == "sent"

    later = T0 + timedelta(days=1)
    summary = outbox.chase(_ctx(engine, s3, dm, channels, later, **env))
    assert summary["delivered"] == {"sent": 1} and summary["by_problem"] == {"unacknowledged": 1}
    assert len(channels.emails) == 2  # due again (backoff), same request_ref
    assert outbox.send_alerts(_ctx(engine, s3, dm, channels, later, **env), summary) == {
        "sent": ["email"]
    }
    [digest] = channels.alerts
    assert "payments" in digest.body and EMAIL not in digest.body

    # Without the SMTP connection in the settings the notice waits, reported as not configured.
    summary = outbox.chase(_ctx(engine, s3, dm, channels, later + timedelta(days=2)))
    assert summary["delivered"] == {"not_configured": 1}
    assert summary["by_problem"]["channel_not_configured"] == 1
