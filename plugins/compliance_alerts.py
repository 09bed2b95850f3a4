"""Failure alerts and DAG defaults that every Airflow component must be able to import.

Lives in `plugins/` because callbacks run in the scheduler, the workers and the triggerer, which
all have the plugins folder on their path. The message text is built by `compliance.alerts`
(plain Python, tested without Airflow) and never carries a consumer's data: DAG, task, run, try,
log link and the exception's class only.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseNotifier

from compliance import alerts

log = logging.getLogger(__name__)


class FailureAlert(BaseNotifier):
    """Sends a PII-free failure message to every channel configured in the environment."""

    template_fields = ()

    def notify(self, context: dict[str, Any]) -> None:
        message = alerts.failure_message(context)
        alerts.dispatch(message)


def on_failure(context: dict[str, Any]) -> None:
    FailureAlert().notify(context)


DEFAULT_ARGS: dict[str, Any] = {
    "owner": "compliance-engineering",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
    "on_failure_callback": on_failure,
}
