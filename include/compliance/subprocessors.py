"""Telling our own service providers to delete in the same way (R16.3), and tracking it.

Each sub-processor in the data map gets one notice per request, by its channel: an HTTP webhook
(a JSON POST; a 2xx answer with `{"acknowledged": true}` counts as acknowledged), an SNS topic, or
e-mail through the `smtp_default` connection. The notice must carry the identities (the recipient
cannot find the data otherwise), so it is sent over the channel and never logged. Status per
(request, sub-processor) lives in the state DB; a rerun skips notices already sent. A failed
channel never fails the erasure: it is recorded, and the deadline watchdog chases it.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import Engine

from compliance import state
from compliance.datamap.model import DataMap, SubProcessor
from compliance.hashing import keyed_hash

log = logging.getLogger(__name__)
TIMEOUT = 10
THREADS = 8  # requests whose notices are in flight at once
CHUNK = 100  # requests whose notices are recorded in one transaction


def notify_all(
    dm: DataMap,
    state_engine: Engine,
    hash_key: bytes,
    requests: dict[str, dict[str, Any]],
    identities: dict[str, dict[str, list[str]]],
    sns_client: Any = None,
) -> dict[str, int]:
    """Send every missing notice; returns counts by status (no identities, no refs).

    Requests go CHUNK at a time: their notices are sent side by side (THREADS requests at once,
    each request's notices in turn), then recorded in one transaction, so a crash re-sends at
    most the notices of the chunk in hand (at-least-once, never lost; `request_ref` is stable,
    so a recipient can recognise a repeat)."""
    tally: Counter[str] = Counter()
    done = state.notices_of(state_engine, [int(ref) for ref in requests])

    def send(ref: str) -> list[state.Outcome]:
        outcomes = []
        for sp in dm.subprocessors:
            prev = done.get(int(ref), {}).get(sp.name)
            if prev is not None and prev.status in ("sent", "acknowledged"):
                continue
            payload = {
                "type": "deletion",
                "request_ref": keyed_hash(hash_key, "subprocessor", f"{sp.name}\x1f{ref}"),
                "client_id": requests[ref]["client_id"],
                "identities": identities.get(ref, {}),
                "categories": [c.value for c in sp.categories],
                "rules": ["R16"],
            }
            outcomes.append((sp.name, sp.channel, *_send(sp, payload, sns_client)))
        return outcomes

    for ref in requests:
        for sp in dm.subprocessors:
            prev = done.get(int(ref), {}).get(sp.name)
            if prev is not None and prev.status in ("sent", "acknowledged"):
                tally["already_" + prev.status] += 1
    refs = list(requests)
    with ThreadPoolExecutor(max_workers=THREADS) as pool:  # latency-bound: overlap the sends
        for i in range(0, len(refs), CHUNK):
            chunk = refs[i : i + CHUNK]
            sent = {
                int(ref): outs
                for ref, outs in zip(chunk, pool.map(send, chunk), strict=True)
                if outs
            }
            for row in state.record_notices(state_engine, sent):
                tally[row.status] += 1
    if tally.get("failed"):
        log.warning(
            "%d sub-processor notice(s) failed; they are retried on the next run", tally["failed"]
        )
    return dict(tally)


def _send(
    sp: SubProcessor, payload: dict[str, Any], sns_client: Any
) -> tuple[str, str | None, bool]:
    try:
        if sp.channel == "webhook":
            req = urllib.request.Request(  # noqa: S310 - the target's scheme is validated
                sp.target,
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
        if sp.channel == "sns":
            if sns_client is None:
                return "not_configured", "no_sns_client", False
            sns_client.publish(
                TopicArn=sp.target, Message=json.dumps(payload), Subject="Deletion request (R16)"
            )
            return "sent", None, False
        conn_id = os.environ.get("COMPLIANCE_SUBPROCESSOR_SMTP_CONN")
        if not conn_id:
            return "not_configured", "no_smtp_connection", False
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        with SmtpHook(smtp_conn_id=conn_id) as hook:
            hook.send_email_smtp(
                to=sp.target,
                subject="Deletion request (R16)",
                html_content=f"<pre>{json.dumps(payload, indent=2)}</pre>",
            )
        return "sent", None, False
    except Exception as exc:  # the kind only: messages may echo the payload
        return "failed", type(exc).__name__, False
