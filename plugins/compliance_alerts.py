"""Failure alerts, run deadlines and DAG defaults that every Airflow component must import.

Lives in `plugins/` because callbacks run in the workers (task failure callbacks), the
dag-processor and the triggerer (Deadline Alerts' async callbacks), which all have the plugins
folder on their path. What a message says is `compliance.core.alerts` (plain Python, tested
without Airflow; it never carries a consumer's data); where it goes is `compliance_channels`
(Airflow's hooks), configured by `Settings.env`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import timedelta
from typing import Any

from airflow.sdk import AsyncCallback, BaseNotifier, DeadlineAlert, DeadlineReference

from compliance.core import alerts
from compliance.core.settings import Settings
from compliance_channels import AirflowChannels

log = logging.getLogger(__name__)


class FailureAlert(BaseNotifier):
    """Sends a PII-free failure message to every channel configured (see compliance.core.alerts)."""

    template_fields = ()

    def notify(self, context: dict[str, Any]) -> None:
        AirflowChannels(Settings.from_env().env).alert(alerts.failure_message(context))


def on_failure(context: dict[str, Any]) -> None:
    FailureAlert().notify(context)


class DeadlineMissed(BaseNotifier):
    """Deadline Alert callback: a run had not finished by its deadline.

    Runs in the triggerer as an AsyncCallback: the triggerer imports this class by its dotted
    path (`compliance_alerts.DeadlineMissed`), builds it with the alert's kwargs plus
    `context` (the run, the deadline) and awaits it. The channels' hooks are synchronous, so
    sending happens in a worker thread and never blocks the triggerer's event loop.
    """

    template_fields = ()

    def __init__(
        self, expected: str | None = None, context: dict[str, Any] | None = None, **_: Any
    ) -> None:
        super().__init__(context=context)
        self.expected = expected

    async def async_notify(self, context: dict[str, Any]) -> None:
        await asyncio.to_thread(self.notify, context)

    def notify(self, context: dict[str, Any]) -> None:
        env = Settings.from_env().env
        message = alerts.deadline_missed_message(
            context, self.expected, env.get("AIRFLOW__API__BASE_URL")
        )
        AirflowChannels(env).alert(message)


def deadline_alerts_enabled() -> bool:
    """Whether DAGs carry their Deadline Alerts in this process (read at parse time).

    Off with COMPLIANCE_DEADLINE_ALERTS=off, and by default under Airflow's unit-test mode:
    on Airflow 3.3.2 `dag.test()` and `airflow dags test` crash at the end of a successful run
    of any DAG that has a deadline (apache/airflow#73428, fix pending in #73430), and neither
    has a scheduler to evaluate deadlines anyway. The scheduler, dag-processor and triggerer
    leave it on. Drop the unit-test default once the fix is released.
    """
    flag = os.environ.get("COMPLIANCE_DEADLINE_ALERTS", "").strip().lower()
    if flag:
        return flag not in {"off", "0", "false", "no"}
    return os.environ.get("AIRFLOW__CORE__UNIT_TEST_MODE", "").strip().lower() != "true"


def nightly_deadline(dag_id: str, default: timedelta) -> DeadlineAlert | None:
    """The Deadline Alert a scheduled DAG carries: alert when a run is not done in time.

    Measured from when the run was queued, so manual runs are covered too. The interval is
    `default` unless COMPLIANCE_DEADLINE_MINUTES__<DAG_ID> (e.g. ..._DATA_INVENTORY=240) says
    otherwise: the environment is read at parse time (no I/O), so a change needs a reparse.
    None (no deadline) when `deadline_alerts_enabled()` says so.
    """
    if not deadline_alerts_enabled():
        return None
    raw = os.environ.get(f"COMPLIANCE_DEADLINE_MINUTES__{dag_id.upper()}", "").strip()
    interval = default
    if raw:
        try:
            interval = timedelta(minutes=float(raw))
        except ValueError:
            log.warning("ignoring COMPLIANCE_DEADLINE_MINUTES__%s=%r", dag_id.upper(), raw)
    if interval <= timedelta(0):
        interval = default
    minutes = int(interval.total_seconds() // 60)
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=interval,
        callback=AsyncCallback(DeadlineMissed, kwargs={"expected": f"{minutes} min after queued"}),
        name=f"{dag_id}_not_finished",
    )


DEFAULT_ARGS: dict[str, Any] = {
    "owner": "compliance-engineering",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
    "on_failure_callback": on_failure,
}
