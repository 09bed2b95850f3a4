"""An offboarding approval rejected or timed out: staff are alerted (R27, G4 Art. 28(3)(g)).

The DAG's `alert_not_approved` task runs only when the approval skipped `approved` (and execute)
(tests/dags/test_client_offboarding.py proves the wiring; tests/e2e/test_client_offboarding.py
answers the approval for real). Here: the job function it calls sends one alert through the
staff channels, recorded at `compliance.core.alerts.dispatch` as tests/unit/test_alerts.py does,
naming the clients and the report; a dry run or an empty plan says nothing; every channel
refusing it fails the task.
"""

from __future__ import annotations

from types import SimpleNamespace

import airflow  # noqa: F401  (puts the plugins folder on sys.path, as in every component)
import pytest

import compliance_channels
from compliance.core import alerts
from compliance.jobs import offboarding as jobs
from compliance.offboarding import notify
from compliance_channels import AirflowChannels

PLANNED = {
    "run_id": "off-20261120T040000",
    "action": "delete",
    "dry_run": False,
    "clients": ["8", "12"],
    "report_key": "reports/offboarding/off-20261120T040000.json",
}


@pytest.fixture
def sent(monkeypatch):
    """(channel, alert) for every alert dispatched; the plugin's senders swapped for recorders."""
    monkeypatch.setattr(compliance_channels, "connection_extra", lambda conn_id: None)
    monkeypatch.setattr(alerts, "_warned", False)
    got: list[tuple[str, alerts.Alert]] = []
    real = alerts.dispatch

    def dispatch(alert, settings, senders, *args, **kwargs):
        swapped = {name: (lambda a, s, n=name: got.append((n, a))) for name in senders}
        return real(alert, settings, swapped, *args, **kwargs)

    monkeypatch.setattr(alerts, "dispatch", dispatch)
    return got


def _ctx(env: dict[str, str]) -> SimpleNamespace:
    return SimpleNamespace(channels=AirflowChannels(env, lookup=lambda conn_id: None))


ENV = {
    "COMPLIANCE_ALERT_EMAIL": "dpo@example.org",
    "COMPLIANCE_ALERT_SNS_TOPIC": "arn:aws:sns:us-east-1:000000000000:a",
}


def test_not_approved_alerts_every_channel(sent):
    result = jobs.not_approved(_ctx(ENV), PLANNED)
    assert result == {"sent": ["email", "sns"], "alerted": True, "clients": 2}
    assert [c for c, _ in sent] == ["email", "sns"]
    alert = sent[0][1]
    assert alert.kind == "offboarding" and "not approved" in alert.subject
    assert PLANNED["run_id"] in alert.subject and notify.WHY in alert.body
    assert "Clients: 8, 12." in alert.body and PLANNED["report_key"] in alert.body
    assert "R27" in alert.body and "legal hold (R19)" in alert.body


def test_nothing_waiting_for_approval_sends_nothing(sent):
    assert jobs.not_approved(_ctx(ENV), {**PLANNED, "dry_run": True})["alerted"] is False
    assert jobs.not_approved(_ctx(ENV), {**PLANNED, "clients": []})["alerted"] is False
    assert jobs.not_approved(_ctx(ENV), None)["alerted"] is False
    assert sent == []


def test_every_channel_refusing_fails_the_task(monkeypatch):
    """A silent failure would hide that an ended client's data stays: the task goes red."""
    monkeypatch.setattr(alerts, "dispatch", lambda *args, **kwargs: [])
    with pytest.raises(RuntimeError, match="no alert channel accepted"):
        jobs.not_approved(_ctx(ENV), PLANNED)
