"""What an alert says and where it goes: failure alerts, missed run deadlines, request deadlines.

Every message names Airflow objects only (DAG, task, run, try, log link, deadline) and, for
request deadlines, the business's request id: never a consumer's data. Exception *messages* may
quote data (a SQL error echoes its parameters), so only the exception's class and our own
PII-free reason code are forwarded.

Channels (see docs/operations.md), each configured by environment or by the optional Airflow
connection `compliance_alerts` (COMPLIANCE_ALERT_CONN renames it; its `extra` holds the same keys
in lowercase without the prefix, e.g. {"email": "...", "sns_topic": "..."}); the environment wins:

- e-mail: COMPLIANCE_ALERT_EMAIL (comma-separated recipients) through the SMTP connection
  COMPLIANCE_ALERT_SMTP_CONN (default `smtp_default`), sender COMPLIANCE_ALERT_FROM;
- Slack: COMPLIANCE_ALERT_SLACK_CONN, the id of a `slackwebhook` connection;
- SNS: COMPLIANCE_ALERT_SNS_TOPIC (topic ARN) through COMPLIANCE_ALERT_AWS_CONN (`aws_default`).

With none configured nothing is sent and nothing fails: one warning per process says so, the
first time an alert would have gone out.

Plain Python: the settings come from a mapping (`Settings.env`), and the senders are handed in.
The Airflow senders (SMTP, Slack, SNS hooks) live in `plugins/compliance_channels.py`, which
implements `compliance.core.context.Channels` with the `dispatch` below; the jobs reach it
through `ctx.channels` and never know which hooks stand behind it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compliance.core.context import Channels

log = logging.getLogger(__name__)

RUNBOOK = "docs/operations.md"
DEFAULT_CONFIG_CONN = "compliance_alerts"
# Setting name -> environment variable. Connection extras use the setting name.
_ENV = {
    "email": "COMPLIANCE_ALERT_EMAIL",
    "smtp_conn": "COMPLIANCE_ALERT_SMTP_CONN",
    "from_email": "COMPLIANCE_ALERT_FROM",
    "slack_conn": "COMPLIANCE_ALERT_SLACK_CONN",
    "sns_topic": "COMPLIANCE_ALERT_SNS_TOPIC",
    "aws_conn": "COMPLIANCE_ALERT_AWS_CONN",
}
_DEFAULTS = {
    "smtp_conn": "smtp_default",
    "from_email": "compliance-jobs@localhost",
    "aws_conn": "aws_default",
}
_CHANNEL_KEY = {"email": "email", "slack": "slack_conn", "sns": "sns_topic"}
_warned = False


@dataclass(frozen=True)
class Alert:
    """One message for every channel; `kind` lets subscribers filter (failure, deadline...)."""

    subject: str
    body: str
    kind: str = "failure"


# --------------------------------------------------------------------------- messages


def _reason_code(exc: BaseException | None) -> str | None:
    """Our errors carry a PII-free reason code (`reason` or `reason_code`), maybe on the cause."""
    for err in (exc, getattr(exc, "__cause__", None)):
        for attr in ("reason", "reason_code"):
            value = getattr(err, attr, None)
            value = getattr(value, "value", value)  # enum reasons (intake.Reason)
            if isinstance(value, str) and value.replace("_", "").replace("-", "").isalnum():
                return value[:64]
    return None


def failure_message(context: Mapping[str, Any]) -> Alert:
    """A task failed: who, where, which try, the log link, the error's class and reason code."""
    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")
    task_id = getattr(ti, "task_id", "?")
    run_id = getattr(ti, "run_id", None) or getattr(context.get("dag_run"), "run_id", "?")
    try_number = getattr(ti, "try_number", "?")
    map_index = getattr(ti, "map_index", -1)
    try:
        log_url = getattr(ti, "log_url", "") or ""
    except Exception:  # a log link is nice to have; never let it stop the alert
        log_url = ""
    exc = context.get("exception")
    kind = type(exc).__name__ if isinstance(exc, BaseException) else "unknown"
    reason = _reason_code(exc) if isinstance(exc, BaseException) else None
    task = task_id if map_index in (-1, None) else f"{task_id}[{map_index}]"
    subject = f"[compliance] {dag_id}.{task} failed (run {run_id})"
    lines = [
        f"DAG: {dag_id}",
        f"Task: {task}",
        f"Run: {run_id}",
        f"Try: {try_number}",
        f"Error: {kind}" + (f" ({reason})" if reason else ""),
        f"Log: {log_url}",
        f"What to do: {RUNBOOK}, section 'Task failed'.",
    ]
    return Alert(subject, "\n".join(lines), "failure")


def deadline_missed_message(
    context: Mapping[str, Any], expected: str | None = None, base_url: str | None = None
) -> Alert:
    """An Airflow Deadline Alert fired: a run had not finished by its deadline.

    `context` is what the scheduler hands the triggerer: `dag_run` (the REST API's DAGRun
    model as JSON) and `deadline`. Only ids and times are read; the run's `conf` (which may hold
    a form's consumer e-mail) is never touched. `base_url` is the UI's address
    (AIRFLOW__API__BASE_URL, from `Settings.env`); without it the link is relative.
    """
    run = context.get("dag_run") or {}
    deadline = context.get("deadline") or {}
    dag_id = str(run.get("dag_id", "?"))
    run_id = str(run.get("dag_run_id") or run.get("run_id") or "?")
    state = str(run.get("state", "?"))
    due = deadline.get("deadline_time", "?")
    if isinstance(due, datetime):
        due = due.isoformat()
    base = (base_url or "").rstrip("/")
    link = f"{base}/dags/{dag_id}/runs/{run_id}" if base else f"/dags/{dag_id}/runs/{run_id}"
    subject = f"[compliance] {dag_id} run {run_id} missed its deadline"
    lines = [
        f"DAG: {dag_id}",
        f"Run: {run_id}",
        f"State: {state}",
        f"Queued at: {run.get('queued_at', '?')}",
        f"Deadline: {due}" + (f" ({expected})" if expected else ""),
        f"Run: {link}",
        f"What to do: {RUNBOOK}, section 'Run missed its deadline'.",
    ]
    return Alert(subject, "\n".join(lines), "deadline_missed")


# --------------------------------------------------------------------------- configuration

ConnectionLookup = Callable[[str], Mapping[str, Any] | None]
Sender = Callable[[Alert, Mapping[str, str]], None]


def alert_settings(
    env: Mapping[str, str], lookup: ConnectionLookup | None = None
) -> dict[str, str]:
    """Channel settings: `env` (`Settings.env`) first, then the `compliance_alerts` connection's
    extra, read by `lookup` (Airflow's connections in `compliance_channels`; none: skipped).

    The connection is only consulted when the environment names no channel at all, so a
    deployment configured by environment never pays for (or depends on) a connection lookup.
    """
    out = {name: env[var] for name, var in _ENV.items() if env.get(var)}
    if lookup is not None and not any(out.get(key) for key in _CHANNEL_KEY.values()):
        extra = lookup(config_connection(env)) or {}
        for name in _ENV:
            value = extra.get(name)
            if isinstance(value, str) and value and name not in out:
                out[name] = value
    for name, value in _DEFAULTS.items():
        out.setdefault(name, value)
    return out


def config_connection(env: Mapping[str, str]) -> str:
    """The Airflow connection whose extra may configure the channels."""
    return env.get("COMPLIANCE_ALERT_CONN") or DEFAULT_CONFIG_CONN


def configured_channels(settings: Mapping[str, str]) -> list[str]:
    return [channel for channel, key in _CHANNEL_KEY.items() if settings.get(key)]


def warn_once_unconfigured(conn_id: str = DEFAULT_CONFIG_CONN) -> bool:
    """Log the 'nothing configured' warning once per process; True if it was logged now."""
    global _warned
    if _warned:
        return False
    _warned = True
    log.warning(
        "no alert channel configured (COMPLIANCE_ALERT_EMAIL / _SLACK_CONN / _SNS_TOPIC or "
        "connection %s): alerts are not sent; see %s",
        conn_id,
        RUNBOOK,
    )
    return True


# --------------------------------------------------------------------------- sending


def dispatch(
    alert: Alert,
    settings: Mapping[str, str],
    senders: Mapping[str, Sender],
    config_conn: str = DEFAULT_CONFIG_CONN,
) -> list[str]:
    """Send to every configured channel through `senders`; return the channels that took it.

    A broken channel never hides the others (each is tried, its failure logged by class only).
    Nothing configured is not an error: one warning per process, then silence.
    """
    channels = configured_channels(settings)
    if not channels:
        warn_once_unconfigured(config_conn)
        log.info("alert not sent (no channel configured): %s", alert.subject)
        return []
    sent = []
    for channel in channels:
        try:
            senders[channel](alert, settings)
            sent.append(channel)
        except Exception as exc:
            # Class only: a channel's error text can echo the message or the endpoint's reply.
            log.error("alert channel %s failed: %s", channel, type(exc).__name__)
    log.info("alert sent to %s: %s", ", ".join(sent) or "no channel", alert.subject)
    return sent


def send_digest(channels: Channels | None, message: Alert | None, what: str) -> dict[str, Any]:
    """Send a watchdog's digest (deadlines, holds, notices): `{"sent": [channels]}`.

    Fails when channels are configured and none accepted it, so the task is retried and shows
    red rather than staying silent about a deadline. No message: nothing to say, nothing sent.
    No channels object (a job run outside Airflow without one): only logged.
    """
    if message is None:
        return {"sent": []}
    if channels is None:
        log.info("alert not sent (no channels in this context): %s", message.subject)
        return {"sent": []}
    sent = channels.alert(message)
    if channels.configured() and not sent:
        raise RuntimeError(f"no alert channel accepted the {what}")
    return {"sent": sent}
