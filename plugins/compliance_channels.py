"""How the jobs reach people, with Airflow's hooks: staff alerts and sub-processors' e-mail.

`AirflowChannels` implements `compliance.core.context.Channels`; `compliance.runtime.context()`
puts one in every task's `JobContext` (`ctx.channels`), and the notifiers of
`compliance_alerts` (failure callbacks, Deadline Alerts) use one too. What an alert says and
which channels are configured is `compliance.core.alerts` (plain Python, tested without
Airflow); this module only holds the senders, so the product never imports Airflow.

Lives in `plugins/` because every Airflow component (workers, dag-processor, triggerer) has the
plugins folder on its path. The providers' hooks are imported when a message is sent: every DAG
file imports `compliance_alerts` (and so this module) at parse time, which must stay cheap.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from airflow.sdk import BaseHook

from compliance.core import alerts
from compliance.core.alerts import Alert


def connection_extra(conn_id: str) -> Mapping[str, Any] | None:
    """The `extra` of an Airflow connection, or None if it does not exist or cannot be read."""
    try:
        return BaseHook.get_connection(conn_id).extra_dejson
    except Exception:  # absent connection, or no Airflow context (a shell, a unit test)
        return None


def _send_email(alert: Alert, settings: Mapping[str, str]) -> None:
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    recipients = [a.strip() for a in settings["email"].split(",") if a.strip()]
    with SmtpHook(smtp_conn_id=settings["smtp_conn"]) as hook:
        hook.send_email_smtp(
            to=recipients,
            subject=alert.subject,
            html_content=f"<pre>{html.escape(alert.body)}</pre>",
            from_email=settings["from_email"],
            custom_headers={"X-Compliance-Alert": alert.kind},
        )


def _send_slack(alert: Alert, settings: Mapping[str, str]) -> None:
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

    hook = SlackWebhookHook(slack_webhook_conn_id=settings["slack_conn"])
    hook.send(text=f"*{alert.subject}*\n```{alert.body}```")


def _send_sns(alert: Alert, settings: Mapping[str, str]) -> None:
    from airflow.providers.amazon.aws.hooks.sns import SnsHook

    SnsHook(aws_conn_id=settings["aws_conn"]).publish_to_target(
        target_arn=settings["sns_topic"],
        message=alert.body,
        subject=alert.subject[:99],  # SNS subjects are limited to 100 characters
        message_attributes={"kind": alert.kind},
    )


# Channel name -> sender; tests replace entries to record instead of sending.
SENDERS: dict[str, alerts.Sender] = {
    "email": _send_email,
    "slack": _send_slack,
    "sns": _send_sns,
}


class AirflowChannels:
    """`Channels` over Airflow connections: settings from `env` (`Settings.env`), else from the
    `compliance_alerts` connection's extra; read on first use, so building a task's context
    costs no connection lookup."""

    def __init__(self, env: Mapping[str, str], lookup: alerts.ConnectionLookup | None = None):
        self._env = env
        self._lookup = lookup or connection_extra
        self._settings: dict[str, str] | None = None

    @property
    def settings(self) -> dict[str, str]:
        if self._settings is None:
            self._settings = alerts.alert_settings(self._env, self._lookup)
        return self._settings

    def configured(self) -> list[str]:
        return alerts.configured_channels(self.settings)

    def alert(self, alert: Alert) -> list[str]:
        """Every configured channel is tried; a broken one never hides the others."""
        return alerts.dispatch(alert, self.settings, SENDERS, alerts.config_connection(self._env))

    def email(self, conn_id: str, to: str, subject: str, html: str) -> None:
        """One e-mail through the SMTP connection `conn_id`; the hook raises when not sent."""
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        with SmtpHook(smtp_conn_id=conn_id) as hook:
            hook.send_email_smtp(to=to, subject=subject, html_content=html)
