"""The client_callbacks DAG's tasks: sync (status changes into the outbox) -> deliver (signed
POSTs with backoff). Logic: `compliance.desk.callbacks` (issue 18, item 1; R1-R4, R19, R21).

Counts only go to XCom: never a request id, a URL or an answer's text.
"""

from __future__ import annotations

from typing import Any

from compliance.core.context import JobContext
from compliance.desk import callbacks

# Attempts per run: at every 5 minutes with 10 s timeouts on 8 threads, a run stays well inside
# its interval even when every endpoint times out.
DELIVER_LIMIT = 500


def sync(ctx: JobContext) -> dict[str, Any]:
    """Queue one callback per status change of every request submitted through the API."""
    return callbacks.sync(ctx.state, ctx.now())


def deliver(ctx: JobContext) -> dict[str, Any]:
    """Send what is due, in order per request; alert staff about what stays unacknowledged."""
    return callbacks.deliver(ctx, ctx.now(), DELIVER_LIMIT)
