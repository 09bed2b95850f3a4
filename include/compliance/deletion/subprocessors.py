"""Telling our own service providers (R16.3) and other recipients (R16.4) to delete: channels.

Each sub-processor in the data map, and each recipient that is to be told, gets one notice per
request by its channel: an HTTP webhook (a JSON POST; a 2xx answer with `{"acknowledged": true}`
counts as acknowledged), an SNS topic, or e-mail through the SMTP connection named by
`COMPLIANCE_SUBPROCESSOR_SMTP_CONN` (`Settings.subprocessor_smtp_conn`), sent by the
deployment's `Channels` (Airflow's SMTP hook in `plugins/compliance_channels.py`; nothing here
knows Airflow). The notice must carry the identities (the recipient cannot find the data
otherwise), so it is sent over the channel and never logged; everything else in it is a keyed
hash (`request_ref`), the tenant id, the categories and the rules.

What is sent when, the retries with backoff, the give-up and the receipts re-issued on a change
of status are the outbox's (`compliance.deletion.outbox`); this module only builds and sends one
notice.
A failed channel never fails the erasure: it is recorded and retried.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from compliance.core.hashing import keyed_hash

if TYPE_CHECKING:
    from compliance.core.context import Channels, JobContext

TIMEOUT = 10
SUBJECT = "Deletion request (R16)"
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
    notice_type: str = "deletion",
    extra_rules: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The notice body: the identities to find the consumer by (the contract needs them), a
    `request_ref` keyed per recipient (stable, so a repeat can be recognised; it reveals neither
    our request id nor another recipient's ref), the tenant, the categories they hold. A
    client-level notice (`notice_type` "contract_end", docs/offboarding.md) has no identities:
    the whole tenant's data goes."""
    return {
        "type": notice_type,
        "request_ref": keyed_hash(hash_key, "subprocessor", f"{name}\x1f{ref}"),
        "client_id": client_id,
        "identities": identities,
        "categories": categories,
        "rules": [rule, *extra_rules],
    }


@dataclass(frozen=True)
class Senders:
    """What this deployment can send notices with: an SNS client, the staff `Channels` (for
    e-mail) and the SMTP connection id they send through. A channel missing here is not an
    error: its notices wait, `not_configured`, until it is set up (the outbox re-checks)."""

    sns: Any = None
    channels: Channels | None = None
    smtp_conn: str | None = None

    @classmethod
    def of(cls, ctx: JobContext) -> Senders:
        return cls(ctx.sns, ctx.channels, ctx.settings.subprocessor_smtp_conn)


NO_SENDERS = Senders()


def channel_missing(channel: str, senders: Senders) -> str | None:
    """Why a channel cannot be used here (a short code), or None when it can."""
    if channel == "sns" and senders.sns is None:
        return "no_sns_client"
    if channel == "email" and not (senders.smtp_conn and senders.channels is not None):
        return "no_smtp_connection"
    return None


def send(
    channel: str, target: str, payload: dict[str, Any], senders: Senders
) -> tuple[str, str | None, bool]:
    """Send one notice: (status, error kind, acknowledged); never raises. The error kind is a
    short code (an exception class, `http_503`), never a message that could echo the payload."""
    missing = channel_missing(channel, senders)
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
            senders.sns.publish(TopicArn=target, Message=json.dumps(payload), Subject=SUBJECT)
            return "sent", None, False
        assert senders.channels is not None and senders.smtp_conn  # channel_missing checked
        senders.channels.email(
            senders.smtp_conn, target, SUBJECT, f"<pre>{json.dumps(payload, indent=2)}</pre>"
        )
        return "sent", None, False
    except urllib.error.HTTPError as exc:  # the status only: a body may echo the payload
        return "failed", f"http_{exc.code}", False
    except Exception as exc:  # the kind only: messages may echo the payload
        return "failed", type(exc).__name__, False
