"""What a failure alert says and where it goes.

The message names the DAG, task, run, try and log link, and the exception's *class*: exception
messages may quote data, so they are never forwarded (no PII in alerts). Channels are configured by
environment: e-mail (COMPLIANCE_ALERT_EMAIL through the `smtp_default` connection), Slack
(COMPLIANCE_ALERT_SLACK_CONN, a slack-webhook connection id) and SNS (COMPLIANCE_ALERT_SNS_TOPIC).
With none configured, alerts are only logged, and a warning says so once per process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)
_warned = False


@dataclass(frozen=True)
class Alert:
    subject: str
    body: str


def failure_message(context: dict[str, Any]) -> Alert:
    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")
    task_id = getattr(ti, "task_id", "?")
    run_id = getattr(ti, "run_id", None) or getattr(context.get("dag_run"), "run_id", "?")
    try_number = getattr(ti, "try_number", "?")
    map_index = getattr(ti, "map_index", -1)
    log_url = getattr(ti, "log_url", "") or ""
    exc = context.get("exception")
    kind = type(exc).__name__ if exc is not None else "unknown"
    reason = getattr(exc, "reason", None)  # our own errors carry a PII-free reason code
    task = task_id if map_index in (-1, None) else f"{task_id}[{map_index}]"
    subject = f"[compliance] {dag_id}.{task} failed (run {run_id})"
    lines = [
        f"DAG: {dag_id}",
        f"Task: {task}",
        f"Run: {run_id}",
        f"Try: {try_number}",
        f"Error: {kind}" + (f" ({reason})" if isinstance(reason, str) else ""),
        f"Log: {log_url}",
        "See docs/operations.md for what this alert means and what to do.",
    ]
    return Alert(subject, "\n".join(lines))


def configured_channels() -> list[str]:
    env = os.environ
    channels = []
    if env.get("COMPLIANCE_ALERT_EMAIL"):
        channels.append("email")
    if env.get("COMPLIANCE_ALERT_SLACK_CONN"):
        channels.append("slack")
    if env.get("COMPLIANCE_ALERT_SNS_TOPIC"):
        channels.append("sns")
    return channels


def dispatch(alert: Alert) -> list[str]:
    """Send to every configured channel; a broken channel never hides the others."""
    global _warned
    channels = configured_channels()
    if not channels:
        if not _warned:
            log.warning("no alert channel configured (COMPLIANCE_ALERT_*); alerts are only logged")
            _warned = True
        log.error("ALERT %s", alert.subject)
        return []
    sent = []
    for channel in channels:
        try:
            _SENDERS[channel](alert)
            sent.append(channel)
        except Exception:
            log.exception("alert channel %s failed", channel)
    return sent


def _send_email(alert: Alert) -> None:
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    conn_id = os.environ.get("COMPLIANCE_ALERT_SMTP_CONN", "smtp_default")
    with SmtpHook(smtp_conn_id=conn_id) as hook:
        hook.send_email_smtp(
            to=os.environ["COMPLIANCE_ALERT_EMAIL"],
            subject=alert.subject,
            html_content=f"<pre>{alert.body}</pre>",
            from_email=os.environ.get("COMPLIANCE_ALERT_FROM", "compliance-jobs@localhost"),
        )


def _send_slack(alert: Alert) -> None:
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

    hook = SlackWebhookHook(slack_webhook_conn_id=os.environ["COMPLIANCE_ALERT_SLACK_CONN"])
    hook.send(text=f"*{alert.subject}*\n```{alert.body}```")


def _send_sns(alert: Alert) -> None:
    from airflow.providers.amazon.aws.hooks.sns import SnsHook

    conn_id = os.environ.get("COMPLIANCE_ALERT_AWS_CONN", "aws_default")
    SnsHook(aws_conn_id=conn_id).publish_to_target(
        target_arn=os.environ["COMPLIANCE_ALERT_SNS_TOPIC"],
        message=alert.body,
        subject=alert.subject[:99],
    )


_SENDERS = {"email": _send_email, "slack": _send_slack, "sns": _send_sns}
