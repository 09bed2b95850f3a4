"""Alert channels end to end: real DAG runs, a local SMTP server, SNS on moto, a Slack webhook.

- A task fails with a consumer's e-mail and phone in its exception text:
  an e-mail reaches the SMTP server, a message reaches an SQS queue subscribed to the SNS topic,
  a post reaches the Slack webhook, and none of them carries the consumer's data.
- The deadline watchdog over a seeded request set alerts exactly at the thresholds (R2, R3).
- The extension form records one extension and refuses a second or a late one, with the
  reason in the failure alert (R4).
"""

from __future__ import annotations

import email
import email.policy
import http.server
import json
import socketserver
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
import sqlalchemy as sa

from compliance.core.stores.sql import engine_from_url
from compliance.requests import state
from compliance.requests.state import NewRequest

from .conftest import AS_OF

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]

RECIPIENTS = "dpo@compliance.example,oncall@compliance.example"


# --------------------------------------------------------------------------- local servers


class _SmtpSink(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321) for smtplib: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT."""

    messages: list[dict[str, Any]]

    def _reply(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")

    def handle(self) -> None:
        self._reply("220 sink.local ESMTP test sink")
        sender, rcpts = None, []
        while line := self.rfile.readline():
            cmd = line.decode("utf-8", "replace").strip()
            verb = cmd[:4].upper()
            if verb == "EHLO":
                self._reply("250-sink.local\r\n250-8BITMIME\r\n250 SMTPUTF8")
            elif verb == "HELO":
                self._reply("250 sink.local")
            elif verb == "MAIL":
                sender, rcpts = cmd.split(":", 1)[1].strip(), []
                self._reply("250 OK")
            elif verb == "RCPT":
                rcpts.append(cmd.split(":", 1)[1].strip().strip("<>"))
                self._reply("250 OK")
            elif verb == "DATA":
                self._reply("354 end with <CRLF>.<CRLF>")
                lines = []
                while (data := self.rfile.readline()) not in (b".\r\n", b".\n", b""):
                    lines.append(data[1:] if data.startswith(b"..") else data)
                raw = b"".join(lines)
                type(self).messages.append({"from": sender, "to": rcpts, "raw": raw})
                self._reply("250 OK queued")
            elif verb in ("RSET", "NOOP"):
                self._reply("250 OK")
            elif verb == "QUIT":
                self._reply("221 bye")
                return
            else:
                self._reply("502 not implemented")


class _SlackSink(http.server.BaseHTTPRequestHandler):
    posts: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).posts.append({"path": self.path, "body": json.loads(body)})
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Channels:
    smtp: list[dict[str, Any]]
    slack: list[dict[str, Any]]
    sqs: Any
    queue_url: str
    seen_sns: list[dict[str, Any]] = field(default_factory=list)

    def emails(self) -> list[email.message.EmailMessage]:
        return [email.message_from_bytes(m["raw"], policy=email.policy.default) for m in self.smtp]

    def sns(self) -> list[dict[str, Any]]:
        """Messages published to the topic so far (drained from the subscribed SQS queue)."""
        while True:
            got = self.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            ).get("Messages", [])
            if not got:
                return self.seen_sns
            for m in got:
                self.seen_sns.append(json.loads(m["Body"]))
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])

    def everything(self) -> str:
        """All text that left through any channel, for the no-PII assertions."""
        parts = [m["raw"].decode("utf-8", "replace") for m in self.smtp]
        parts += [e.get_body(("html", "plain")).get_content() for e in self.emails()]
        parts += [json.dumps(p) for p in self.slack]
        parts += [json.dumps(m) for m in self.sns()]
        return "\n".join(parts)


@pytest.fixture(scope="module")
def smtp_server() -> Iterator[list[dict[str, Any]]]:
    handler = type("Sink", (_SmtpSink,), {"messages": []})
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    handler.port = server.server_address[1]
    yield handler
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def slack_server() -> Iterator[type[_SlackSink]]:
    handler = type("Slack", (_SlackSink,), {"posts": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    handler.port = server.server_address[1]
    yield handler
    server.shutdown()
    server.server_close()


@pytest.fixture
def channels(stack, smtp_server, slack_server, monkeypatch) -> Channels:
    """All three channels configured the way a deployment would: connections + environment."""
    smtp_server.messages.clear()
    slack_server.posts.clear()
    aws = {"endpoint_url": stack.s3_url, "region_name": "us-east-1"}
    keys = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    sns = boto3.client("sns", **aws, **keys)
    sqs = boto3.client("sqs", **aws, **keys)
    unique = uuid.uuid4().hex[:8]  # the moto server lives for the session: fresh names per test
    topic = sns.create_topic(Name=f"compliance-alerts-{unique}")["TopicArn"]
    queue_url = sqs.create_queue(QueueName=f"compliance-alerts-{unique}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    smtp_conn = {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": smtp_server.port,
        "extra": {"disable_tls": True, "disable_ssl": True, "timeout": 5, "retry_limit": 0},
    }
    slack_conn = {
        "conn_type": "slackwebhook",
        "password": f"http://127.0.0.1:{slack_server.port}/services/T0/B0/test",
    }
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(smtp_conn))
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", json.dumps(slack_conn))
    monkeypatch.setenv("COMPLIANCE_ALERT_EMAIL", RECIPIENTS)
    monkeypatch.setenv("COMPLIANCE_ALERT_SLACK_CONN", "slack_alerts")
    monkeypatch.setenv("COMPLIANCE_ALERT_SNS_TOPIC", topic)
    return Channels(smtp_server.messages, slack_server.posts, sqs, queue_url)


def _bag_dag(dag_id: str, retries: int | None = None):
    from airflow.dag_processing.dagbag import DagBag

    from .conftest import REPO

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags[dag_id]
    if retries is not None:  # the run must fail now, not after two backed-off retries
        for task in dag.tasks:
            task.retries = retries
    return dag


def _state_engine(stack):
    engine = engine_from_url(stack.state_url)
    state.create_state_schema(engine)
    return engine


# --------------------------------------------------------------------------- failure alerts


def test_failing_task_alerts_every_channel_without_consumer_data(stack, channels, monkeypatch):
    from compliance.requests import inbox

    crm = sa.create_engine(stack.db_url)
    with crm.connect() as c:
        _client, address, phone = c.execute(
            sa.text(
                "select client_id, email, phone from contacts where email is not null "
                "and phone is not null order by contact_id limit 1"
            )
        ).one()
    crm.dispose()

    def crash(*args, **kwargs):
        # What a driver error looks like: the statement's parameters echoed back.
        raise sa.exc.OperationalError(
            "SELECT * FROM contacts WHERE email = ? OR phone = ?", (address, phone), None
        )

    monkeypatch.setattr(inbox, "ingest", crash)
    # (the run's form holds no identity since issue 16: the staff page takes them)
    run = _bag_dag("deletion_requests", retries=0).test(run_conf={"dry_run": False})
    assert run.state == "failed"

    (mail,) = channels.emails()
    assert mail["Subject"].startswith("[compliance] deletion_requests.intake failed (run ")
    assert mail["X-Compliance-Alert"] == "failure"
    assert sorted(channels.smtp[0]["to"]) == sorted(RECIPIENTS.split(","))
    text = mail.get_body(("html", "plain")).get_content()
    assert "DAG: deletion_requests" in text and "Task: intake" in text
    assert "Error: OperationalError" in text
    assert "/dags/deletion_requests/runs/" in text  # the log link

    (note,) = channels.sns()
    assert note["Subject"] == mail["Subject"][:99]
    assert "Task: intake" in note["Message"]
    assert note["MessageAttributes"]["kind"]["Value"] == "failure"

    (post,) = channels.slack
    assert "deletion_requests.intake failed" in post["body"]["text"]

    leaked = channels.everything()
    for value in (address, address.split("@")[0], phone, phone[-7:]):
        assert value not in leaked, "consumer data in an alert"


# --------------------------------------------------------------------------- the watchdog


def test_watchdog_alerts_exactly_at_the_thresholds(stack, channels):
    """Responses due at every distance from -3 to 10 days, acks around their 10 days, one
    completed request at a threshold: the digest names exactly the ones at 7, 2 or overdue."""
    engine = _state_engine(stack)
    rows = []
    known = datetime.combine(AS_OF - timedelta(days=20), datetime.min.time(), UTC)
    for d in range(-3, 11):  # response due in d days
        received = AS_OF + timedelta(days=d - 44)
        rows.append(("RSP", d, received, "open"))
    for d in (8, 7, 3, 2, -1, -2):  # acknowledgement due in d days
        rows.append(("ACK", d, AS_OF + timedelta(days=d - 10), "open"))
    rows.append(("DONE", 2, AS_OF + timedelta(days=2 - 44), "completed"))
    state.insert_requests(
        engine,
        [
            NewRequest(
                client_id=5,
                request_id=f"{kind}{d:+d}",
                type="access" if kind == "ACK" else "delete",
                jurisdiction="ccpa",
                status=status,
                received_at=datetime.combine(received, datetime.min.time(), UTC),
                received_on=received,
                accepted_at=min(known, datetime.combine(received, datetime.min.time(), UTC)),
                ack_due=received + timedelta(days=10),
                response_due=received + timedelta(days=44),
                source="ui",
            )
            for kind, d, received, status in rows
        ],
    )
    engine.dispose()
    last_check = datetime.combine(AS_OF - timedelta(days=1), datetime.min.time(), UTC)
    conf = {
        "as_of": AS_OF.isoformat(),
        "last_check": (last_check + timedelta(hours=6)).isoformat(),
        "thresholds": [7, 2],
    }
    run = _bag_dag("deadline_watchdog").test(run_conf=conf)
    assert run.state == "success"

    report = json.loads(
        stack.s3.get_object(Bucket=stack.bucket, Key=f"deadlines/{AS_OF}/watchdog.json")["Body"]
        .read()
        .decode()
    )
    got = {(a["request_id"], a["clock"], a["level"]) for a in report["alerts"]}
    assert got == {
        ("RSP+7", "respond", "7"),
        ("RSP+2", "respond", "2"),
        ("RSP-1", "respond", "overdue"),
        ("RSP-2", "respond", "overdue"),
        ("RSP-3", "respond", "overdue"),
        ("ACK+7", "acknowledge", "7"),
        ("ACK+2", "acknowledge", "2"),
        ("ACK-1", "acknowledge", "overdue"),
    }
    # one deadline mail; the watchdog's other reports (notices, holds, R16.3/R19) are their own
    (mail,) = [m for m in channels.emails() if "request deadlines" in m["Subject"]]
    assert mail["Subject"] == (f"[compliance] request deadlines {AS_OF}: 4 overdue, 4 near")
    body = mail.get_body(("html", "plain")).get_content()
    listed = sorted(
        line.split(" request ")[1].split(" ")[0]
        for line in body.splitlines()
        if " request " in line and line.startswith("- ")
    )
    assert listed == sorted(r for r, _, _ in got)
    (note,) = [n for n in channels.sns() if "request deadlines" in n.get("Subject", "")]
    assert note["MessageAttributes"]["kind"]["Value"] == "deadline"
    summary = json.loads(
        stack.s3.get_object(Bucket=stack.bucket, Key="summaries/deadline_watchdog.json")["Body"]
        .read()
        .decode()
    )
    assert summary["alerts"] == 8


# --------------------------------------------------------------------------- extensions (R4)


def test_extension_form_records_one_and_refuses_a_second_or_a_late_one(stack, channels):
    engine = _state_engine(stack)
    today = datetime.now(UTC)
    pks = state.insert_requests(
        engine,
        [
            NewRequest(
                client_id=6,
                request_id=request_id,
                type="delete",
                jurisdiction="ccpa",
                received_at=today - timedelta(days=age),
                received_on=(today - timedelta(days=age)).date(),
                accepted_at=today - timedelta(days=age),
                ack_due=(today - timedelta(days=age)).date() + timedelta(days=10),
                response_due=(today - timedelta(days=age)).date() + timedelta(days=44),
                source="ui",
            )
            for request_id, age in (("EXT-OK", 20), ("EXT-LATE", 60))
        ],
    )
    dag = _bag_dag("request_extension")
    form = {"client_id": "6", "request_id": "EXT-OK", "type": "delete"}
    notice = (today - timedelta(days=2)).isoformat()
    reason = "Volume: the request spans 6 systems and 3 sub-processors."

    run = dag.test(run_conf={**form, "notice_at": notice, "reason": reason})
    assert run.state == "success"
    key = ("6", "EXT-OK", "delete")  # the state DB keeps client ids as text (any-CRM)
    row = state.get_requests(engine, [pks[key]])[pks[key]]
    assert row.extended_due == (today - timedelta(days=20)).date() + timedelta(days=89)
    assert channels.smtp == []  # nothing to alert about

    second = dag.test(run_conf={**form, "notice_at": today.isoformat(), "reason": "Again please"})
    assert second.state == "failed"
    late_form = {**form, "request_id": "EXT-LATE", "notice_at": notice, "reason": reason}
    late = dag.test(run_conf=late_form)
    assert late.state == "failed"
    subjects = [m["Subject"] for m in channels.emails()]
    bodies = [m.get_body(("html", "plain")).get_content() for m in channels.emails()]
    assert len(subjects) == 2 and all("request_extension.record failed" in s for s in subjects)
    assert "Error: AirflowFailException (already_extended)" in bodies[0]
    assert "Error: AirflowFailException (notice_too_late)" in bodies[1]
    late_key = ("6", "EXT-LATE", "delete")
    late_row = state.find_requests(engine, [late_key])[late_key]
    assert late_row.extended_due is None
    engine.dispose()
