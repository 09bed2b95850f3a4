"""Alerts (compliance.core.alerts, plugins/compliance_channels.py, plugins/compliance_alerts.py):
what they say, where they go.

No consumer data in any message: exception texts and run confs are where it would leak from,
so both are fed in with a consumer's e-mail and phone and must not come out.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from types import SimpleNamespace

import airflow  # noqa: F401  (puts the plugins folder on sys.path, as in every component)
import pytest

import compliance_alerts
import compliance_channels
from compliance.core import alerts
from compliance_channels import AirflowChannels

EMAIL = "jane.consumer@example.com"
PHONE = "+14155550123"
CHANNEL_ENV = [
    "COMPLIANCE_ALERT_EMAIL",
    "COMPLIANCE_ALERT_SLACK_CONN",
    "COMPLIANCE_ALERT_SNS_TOPIC",
    "COMPLIANCE_ALERT_CONN",
]


@pytest.fixture(autouse=True)
def no_channels(monkeypatch):
    for var in CHANNEL_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(alerts, "_warned", False)
    monkeypatch.setattr(compliance_channels, "connection_extra", lambda conn_id: None)


@pytest.fixture
def captured(monkeypatch):
    """Record (channel, alert) instead of talking to a server.

    Wraps the core's `dispatch`, which every copy of the plugin module calls, and swaps the
    plugin's own senders for recorders (a test's stand-in, like a broken sender, stays). A patch
    on `compliance_channels.SENDERS` alone is not enough: Airflow's plugin manager re-imports
    plugins/ files under the same names, so after an earlier test loaded the plugins, the
    callback can hold another copy of the module than this test imported."""
    sent: list[tuple[str, alerts.Alert]] = []
    real = alerts.dispatch

    def recorder(name: str):
        return lambda alert, settings: sent.append((name, alert))

    def dispatch(alert, settings, senders, *args, **kwargs):
        swapped = {
            name: recorder(name)
            if getattr(fn, "__module__", "").endswith("compliance_channels")
            else fn
            for name, fn in senders.items()
        }
        return real(alert, settings, swapped, *args, **kwargs)

    monkeypatch.setattr(alerts, "dispatch", dispatch)
    return sent


class CrmError(Exception):
    """Stands in for a driver error whose text echoes the statement's parameters."""

    reason = "crm_unreachable"


def _ti(**kw):
    base = {
        "dag_id": "deletion_requests",
        "task_id": "erase_system",
        "run_id": "manual__2026-11-20T10:00:00+00:00",
        "try_number": 3,
        "map_index": 2,
        "log_url": "http://127.0.0.1:8080/dags/deletion_requests/runs/x/tasks/erase_system",
    }
    base.update(kw)
    return SimpleNamespace(**base)


def _no_pii(alert: alerts.Alert) -> None:
    text = alert.subject + alert.body
    assert EMAIL not in text and "jane" not in text.lower()
    assert PHONE not in text and "5550123" not in text


# --------------------------------------------------------------------------- messages


def test_failure_message_names_the_task_and_never_the_exception_text():
    exc = CrmError(f"UPDATE contacts SET email = NULL WHERE email = '{EMAIL}' OR phone = {PHONE}")
    ctx = {"ti": _ti(), "exception": exc, "params": {"email": EMAIL, "phone": PHONE}}
    alert = alerts.failure_message(ctx)
    assert alert.subject == (
        "[compliance] deletion_requests.erase_system[2] failed "
        "(run manual__2026-11-20T10:00:00+00:00)"
    )
    assert "Try: 3" in alert.body
    assert "Error: CrmError (crm_unreachable)" in alert.body
    assert "Log: http://127.0.0.1:8080/dags/deletion_requests/" in alert.body
    assert "docs/operations.md" in alert.body
    _no_pii(alert)


def test_failure_message_reason_code_from_the_cause_only_if_it_is_a_code():
    try:
        try:
            raise CrmError("x")
        except CrmError as inner:
            raise RuntimeError(f"failed for {EMAIL}") from inner
    except RuntimeError as outer:
        alert = alerts.failure_message({"ti": _ti(map_index=-1), "exception": outer})
    assert "Error: RuntimeError (crm_unreachable)" in alert.body
    assert "erase_system failed" in alert.subject
    free_text = ValueError("x")
    free_text.reason = f"bad address {EMAIL}"  # not a code: never forwarded
    alert = alerts.failure_message({"ti": _ti(), "exception": free_text})
    assert "Error: ValueError\n" in alert.body
    _no_pii(alert)


def test_failure_message_survives_a_broken_log_url():
    class Ti:
        dag_id, task_id, run_id, try_number, map_index = "d", "t", "r", 1, -1

        @property
        def log_url(self):
            raise RuntimeError("no config")

    alert = alerts.failure_message({"ti": Ti(), "exception": None})
    assert "Log: \n" in alert.body and "Error: unknown" in alert.body


def test_deadline_missed_message_reads_ids_not_conf():
    ctx = {
        "dag_run": {
            "dag_id": "data_inventory",
            "dag_run_id": "scheduled__2026-11-20T00:00:00+00:00",
            "state": "running",
            "queued_at": "2026-11-20T00:00:05+00:00",
            "conf": {"email": EMAIL, "phone": PHONE},
        },
        "deadline": {"id": "x", "deadline_time": "2026-11-20T04:00:05+00:00"},
    }
    alert = alerts.deadline_missed_message(ctx, "240 min after queued", "http://af:8080/")
    assert alert.kind == "deadline_missed"
    assert "data_inventory run scheduled__2026-11-20T00:00:00+00:00 missed" in alert.subject
    assert "Deadline: 2026-11-20T04:00:05+00:00 (240 min after queued)" in alert.body
    assert "http://af:8080/dags/data_inventory/runs/scheduled__2026" in alert.body
    _no_pii(alert)


# --------------------------------------------------------------------------- configuration


def test_environment_configures_channels():
    env = {
        "COMPLIANCE_ALERT_EMAIL": "dpo@example.org",
        "COMPLIANCE_ALERT_SNS_TOPIC": "arn:aws:sns:us-east-1:000000000000:alerts",
    }
    settings = alerts.alert_settings(env, lookup=lambda c: pytest.fail("no lookup expected"))
    assert alerts.configured_channels(settings) == ["email", "sns"]
    assert settings["smtp_conn"] == "smtp_default" and settings["aws_conn"] == "aws_default"


def test_connection_configures_channels_when_environment_does_not():
    seen = []

    def lookup(conn_id):
        seen.append(conn_id)
        return {"slack_conn": "slack_alerts", "email": "dpo@example.org", "other": 1}

    settings = alerts.alert_settings({"COMPLIANCE_ALERT_CONN": "my_alerts"}, lookup)
    assert seen == ["my_alerts"]
    assert alerts.configured_channels(settings) == ["email", "slack"]
    assert (
        alerts.alert_settings({})
        == alerts.alert_settings({}, lambda c: None)
        == {
            "smtp_conn": "smtp_default",
            "from_email": "compliance-jobs@localhost",
            "aws_conn": "aws_default",
        }
    )


# --------------------------------------------------------------------------- dispatch


def _channels() -> AirflowChannels:
    import os

    return AirflowChannels(os.environ, lookup=lambda conn_id: None)


def test_nothing_configured_is_silent_with_one_warning(caplog, captured):
    caplog.set_level(logging.INFO, logger="compliance.core.alerts")
    alert = alerts.Alert("[compliance] x failed", "body")
    assert _channels().configured() == []
    assert _channels().alert(alert) == []
    assert _channels().alert(alert) == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no alert channel configured" in warnings[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert captured == []


def test_every_configured_channel_gets_the_alert(monkeypatch, captured):
    monkeypatch.setenv("COMPLIANCE_ALERT_EMAIL", "dpo@example.org")
    monkeypatch.setenv("COMPLIANCE_ALERT_SLACK_CONN", "slack_alerts")
    monkeypatch.setenv("COMPLIANCE_ALERT_SNS_TOPIC", "arn:aws:sns:us-east-1:000000000000:a")
    alert = alerts.Alert("s", "b")
    assert _channels().alert(alert) == ["email", "slack", "sns"]
    assert captured == [("email", alert), ("slack", alert), ("sns", alert)]


def test_a_broken_channel_does_not_hide_the_others(monkeypatch, captured, caplog):
    monkeypatch.setenv("COMPLIANCE_ALERT_EMAIL", "dpo@example.org")
    monkeypatch.setenv("COMPLIANCE_ALERT_SNS_TOPIC", "arn:aws:sns:us-east-1:000000000000:a")

    def broken(alert, settings):
        raise ConnectionRefusedError(f"535 auth failed for {EMAIL}")

    monkeypatch.setitem(compliance_channels.SENDERS, "email", broken)
    assert _channels().alert(alerts.Alert("s", "b")) == ["sns"]
    assert "alert channel email failed: ConnectionRefusedError" in caplog.text
    assert EMAIL not in caplog.text


def test_core_dispatch_takes_its_senders():
    """The core never imports a sender: dispatch is handed them (Airflow's, or a test's)."""
    got = []
    settings = alerts.alert_settings({"COMPLIANCE_ALERT_SLACK_CONN": "s"})
    sent = alerts.dispatch(alerts.Alert("s", "b"), settings, {"slack": lambda a, s: got.append(a)})
    assert sent == ["slack"] and len(got) == 1


class _FakeChannels:
    def __init__(self, configured: list[str], accept: bool) -> None:
        self._configured, self._accept, self.sent = configured, accept, []

    def configured(self) -> list[str]:
        return self._configured

    def alert(self, alert: alerts.Alert) -> list[str]:
        self.sent.append(alert)
        return list(self._configured) if self._accept else []

    def email(self, conn_id: str, to: str, subject: str, html: str) -> None:
        raise AssertionError("not used")


def test_send_digest_fails_only_when_every_configured_channel_failed():
    msg = alerts.Alert("s", "b", "deadline")
    assert alerts.send_digest(_FakeChannels(["sns"], True), msg, "digest") == {"sent": ["sns"]}
    assert alerts.send_digest(_FakeChannels([], False), msg, "digest") == {"sent": []}
    assert alerts.send_digest(_FakeChannels(["sns"], True), None, "digest") == {"sent": []}
    assert alerts.send_digest(None, msg, "digest") == {"sent": []}
    with pytest.raises(RuntimeError, match="no alert channel accepted the deadline digest"):
        alerts.send_digest(_FakeChannels(["sns"], False), msg, "deadline digest")


def test_channels_email_goes_through_the_smtp_hook(monkeypatch):
    calls = []

    class Hook:
        def __init__(self, smtp_conn_id):
            calls.append(("conn", smtp_conn_id))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def send_email_smtp(self, **kw):
            calls.append(("send", kw))

    monkeypatch.setattr("airflow.providers.smtp.hooks.smtp.SmtpHook", Hook)
    AirflowChannels({}).email("smtp_sub", "dpo@vendor.example", "Deletion request (R16)", "<p/>")
    assert calls == [
        ("conn", "smtp_sub"),
        (
            "send",
            {
                "to": "dpo@vendor.example",
                "subject": "Deletion request (R16)",
                "html_content": "<p/>",
            },
        ),
    ]


def test_failure_callback_dispatches(monkeypatch, captured):
    monkeypatch.setenv("COMPLIANCE_ALERT_SNS_TOPIC", "arn:aws:sns:us-east-1:000000000000:a")
    compliance_alerts.on_failure({"ti": _ti(), "exception": CrmError(EMAIL)})
    ((channel, alert),) = captured
    assert channel == "sns" and "erase_system[2] failed" in alert.subject
    _no_pii(alert)


# --------------------------------------------------------------------------- Deadline Alerts


@pytest.fixture
def deadlines_on(monkeypatch):
    monkeypatch.setenv("COMPLIANCE_DEADLINE_ALERTS", "on")


def test_deadline_alerts_are_off_under_dag_test_unless_asked(monkeypatch):
    """apache/airflow#73428: dag.test() crashes on DAGs with a deadline (3.3.2)."""
    monkeypatch.delenv("COMPLIANCE_DEADLINE_ALERTS", raising=False)
    monkeypatch.setenv("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
    assert compliance_alerts.nightly_deadline("x", timedelta(hours=1)) is None
    monkeypatch.setenv("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
    assert compliance_alerts.nightly_deadline("x", timedelta(hours=1)) is not None
    monkeypatch.setenv("COMPLIANCE_DEADLINE_ALERTS", "off")
    assert compliance_alerts.nightly_deadline("x", timedelta(hours=1)) is None


def test_nightly_deadline_is_measured_from_queued_and_configurable(monkeypatch, deadlines_on):
    from airflow.sdk import AsyncCallback, DeadlineReference

    alert = compliance_alerts.nightly_deadline("data_inventory", timedelta(hours=4))
    assert alert.reference == DeadlineReference.DAGRUN_QUEUED_AT
    assert alert.interval == timedelta(hours=4)
    assert isinstance(alert.callback, AsyncCallback)
    assert alert.callback.path == "compliance_alerts.DeadlineMissed"
    assert alert.callback.kwargs == {"expected": "240 min after queued"}
    monkeypatch.setenv("COMPLIANCE_DEADLINE_MINUTES__DATA_INVENTORY", "90")
    alert = compliance_alerts.nightly_deadline("data_inventory", timedelta(hours=4))
    assert alert.interval == timedelta(minutes=90)
    for bad in ("soon", "-5", "0"):
        monkeypatch.setenv("COMPLIANCE_DEADLINE_MINUTES__DATA_INVENTORY", bad)
        alert = compliance_alerts.nightly_deadline("data_inventory", timedelta(hours=4))
        assert alert.interval == timedelta(hours=4)


def test_the_triggerer_runs_the_deadline_callback(monkeypatch, captured, deadlines_on):
    """The code path of the triggerer: import by dotted path, build with kwargs + context,
    await it (airflow.triggers.callback.CallbackTrigger)."""
    from airflow.models.callback import CallbackState
    from airflow.triggers.callback import CallbackTrigger

    monkeypatch.setenv("COMPLIANCE_ALERT_SNS_TOPIC", "arn:aws:sns:us-east-1:000000000000:a")
    nightly = compliance_alerts.nightly_deadline("data_inventory", timedelta(hours=4))
    context = {
        "dag_run": {"dag_id": "data_inventory", "dag_run_id": "r1", "conf": {"email": EMAIL}},
        "deadline": {"id": "d1", "deadline_time": "2026-11-20T04:00:00+00:00"},
    }
    trigger = CallbackTrigger(
        nightly.callback.path, {**nightly.callback.kwargs, "context": context}
    )

    async def run():
        return [event.payload async for event in trigger.run()]

    events = asyncio.run(run())
    assert events[-1]["state"] == CallbackState.SUCCESS, events
    ((channel, alert),) = captured
    assert channel == "sns" and alert.kind == "deadline_missed"
    assert "data_inventory run r1 missed its deadline" in alert.subject
    _no_pii(alert)


def test_scheduled_dags_carry_a_deadline_alert(deadlines_on):
    """The nightly DAGs of this issue; retention_sweep and statistics_reports to follow."""
    import runpy

    from compliance.core.settings import REPO_ROOT

    for name in ("data_inventory", "deletion_requests", "deadline_watchdog"):
        dag = runpy.run_path(str(REPO_ROOT / "dags" / f"{name}.py"))[name]()
        (deadline,) = dag.deadline if isinstance(dag.deadline, list) else [dag.deadline]
        assert deadline.callback.path == "compliance_alerts.DeadlineMissed", name
