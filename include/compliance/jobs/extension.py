"""The request extension's task (DAG `request_extension`): record the one extension R4 allows.

A refusal (`ExtensionRefused`: second extension, late or future notice, blank reason or one
quoting personal data...) propagates; the DAG turns it into a failure without retry, because
it is an answer, not an outage.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from compliance.core.context import JobContext
from compliance.requests import deadline_watch


def record(ctx: JobContext, params: Mapping[str, Any]) -> dict[str, Any]:
    """The form's extension, checked against R4 (G1) and written to the request and ledger."""
    done = deadline_watch.extend(
        ctx.state,
        ctx.hash_key,
        str(params["client_id"]),  # tenant ids are text (integer, text or UUID)
        params["request_id"],
        params["type"],
        datetime.fromisoformat(params["notice_at"]),
        params["reason"],
        utc_offset=params.get("notice_utc_offset"),
        now=ctx.now(),  # R4: a notice dated after this is refused
    )
    return done.to_dict()
