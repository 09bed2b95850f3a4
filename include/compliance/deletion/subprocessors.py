"""Telling our own service providers (R16.3) and other recipients (R16.4) to delete: channels.

Each sub-processor in the data map, and each recipient that is to be told, gets one notice per
request by its channel: an HTTP webhook (a JSON POST; a 2xx answer with `{"acknowledged": true}`
counts as acknowledged), an SNS topic, or e-mail through the SMTP connection named by
`COMPLIANCE_SUBPROCESSOR_SMTP_CONN`. The notice must carry the identities (the recipient cannot
find the data otherwise), so it is sent over the channel and never logged; everything else in it
is a keyed hash (`request_ref`), the tenant id, the categories and the rules.

What is sent when, the retries with backoff, the give-up and the receipts re-issued on a change
of status are the outbox's (`compliance.deletion.outbox`); this module only builds and sends one
notice.
A failed channel never fails the erasure: it is recorded and retried.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from compliance.core.hashing import keyed_hash

TIMEOUT = 10
SMTP_ENV = "COMPLIANCE_SUBPROCESSOR_SMTP_CONN"
# The fields of a notice (the contract with the recipient): nothing else is ever sent.
PAYLOAD_FIELDS = ("type", "request_ref", "client_id", "identities", "categories", "rules")


def payload(
    hash_key: bytes,
    name: str,
    ref: str,
    client_id: str,
    identities: dict[str, list[str]],
    categories: list[str],
    rule: str,
) -> dict[str, Any]:
    """The notice body: the identities to find the consumer by (the contract needs them), a
    `request_ref` keyed per recipient (stable, so a repeat can be recognised; it reveals neither
    our request id nor another recipient's ref), the tenant, the categories they hold."""
    return {
        "type": "deletion",
        "request_ref": keyed_hash(hash_key, "subprocessor", f"{name}\x1f{ref}"),
        "client_id": client_id,
        "identities": identities,
        "categories": categories,
        "rules": [rule],
    }


def channel_missing(channel: str, sns_client: Any) -> str | None:
    """Why a channel cannot be used here (a short code), or None when it can."""
    if channel == "sns" and sns_client is None:
        return "no_sns_client"
    if channel == "email" and not os.environ.get(SMTP_ENV):
        return "no_smtp_connection"
    return None


def send(
    channel: str, target: str, payload: dict[str, Any], sns_client: Any
) -> tuple[str, str | None, bool]:
    """Send one notice: (status, error kind, acknowledged); never raises. The error kind is a
    short code (an exception class, `http_503`), never a message that could echo the payload."""
    missing = channel_missing(channel, sns_client)
    if missing:
        return "not_configured", missing, False
    try:
        if channel == "webhook":
            req = urllib.request.Request(  # noqa: S310 - the target's scheme is validated
                target,
                data=json.dumps(payload).encode(),
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:  # noqa: S310
                body = resp.read(4096)
            try:
                acked = bool(json.loads(body or b"{}").get("acknowledged"))
            except ValueError:
                acked = False
            return "sent", None, acked
        if channel == "sns":
            sns_client.publish(
                TopicArn=target, Message=json.dumps(payload), Subject="Deletion request (R16)"
            )
            return "sent", None, False
        conn_id = os.environ[SMTP_ENV]
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        with SmtpHook(smtp_conn_id=conn_id) as hook:
            hook.send_email_smtp(
                to=target,
                subject="Deletion request (R16)",
                html_content=f"<pre>{json.dumps(payload, indent=2)}</pre>",
            )
        return "sent", None, False
    except urllib.error.HTTPError as exc:  # the status only: a body may echo the payload
        return "failed", f"http_{exc.code}", False
    except Exception as exc:  # the kind only: messages may echo the payload
        return "failed", type(exc).__name__, False
