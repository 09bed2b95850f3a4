"""The staff alert about status callbacks nobody acknowledged (issue 18, item 1): one per
credential and run that has news, naming the credential key, counts and codes only (never a
request id, never an identity)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Engine, func, select

from compliance.core import alerts
from compliance.core.alerts import Alert
from compliance.desk import api_clients
from compliance.requests.schema import cj_callbacks

RUNBOOK = "docs/callbacks.md"


def send(
    ctx: Any,
    overdue: Mapping[str, Counter[str]],
    unusable: Mapping[str, Counter[str]],
    tally: Counter[str],
) -> None:
    """One staff alert per credential and run that has news: callbacks past 24 h unacknowledged
    for the first time, or a credential that cannot be used. Key, counts and codes only."""
    keys = sorted(set(overdue) | set(unusable))
    if not keys:
        return
    open_counts = _open_counts(ctx.state, keys)
    refused = 0
    for key in keys:
        lines = [f"Credential: {key} (connection {api_clients.conn_id(key)})"]
        late = overdue.get(key, Counter())
        if late:
            n = sum(v for k, v in late.items() if k.startswith("event_"))
            lines.append(f"Callbacks past 24 h unacknowledged (new this run): {n}")
        if unusable.get(key):
            lines.append("Credential problem: " + _codes(unusable[key]))
        lines += [
            f"Callbacks unacknowledged for this credential: {open_counts.get(key, 0)}",
            "Codes: " + _codes(late) if late else "Codes: -",
            "Retries continue with backoff (capped at 6 h) until the client acknowledges.",
            f"What to do: {RUNBOOK}, section 'Alerts'.",
        ]
        what = "not acknowledged" if late else "cannot be delivered"
        subject = f"[compliance] status callbacks to API client {key} {what}"
        tally["alerts"] += 1
        try:
            alerts.send_digest(ctx.channels, Alert(subject, "\n".join(lines), "callback"), what)
        except RuntimeError:
            refused += 1
    if refused:
        # As the watchdog does: a configured channel that took nothing fails the task, which
        # is retried and alerts through Airflow; the rows' claims are already recorded.
        raise RuntimeError(f"no alert channel accepted {refused} callback alert(s)")


def _codes(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())) or "-"


def _open_counts(engine: Engine, keys: list[str]) -> dict[str, int]:
    c = cj_callbacks
    q = (
        select(c.c.api_key, func.count())
        .where(c.c.api_key.in_(keys), c.c.acked_at.is_(None))
        .group_by(c.c.api_key)
    )
    with engine.connect() as conn:
        return {k: n for k, n in conn.execute(q).all()}
