"""The request DAGs' shared first task: the whole S3 inbox is validated in one pass
(`compliance.requests.inbox.ingest`).

A run may name one request staff entered on the staff page (`request_ref` in its conf,
`compliance.requests.staff_entry`): its document is already in the inbox, so the run only reports
where that request stands. Identities never travel through a run's conf (issue 16): a DAG's
form has no identity field, and a reference that is not one stops the run before it reads
anything.
"""

from __future__ import annotations

from typing import Any

from compliance.core.context import JobContext
from compliance.requests import inbox, staff_entry


def intake(ctx: JobContext, form_params: dict[str, Any], type_: str) -> dict[str, Any]:
    ref = staff_entry.run_ref(form_params)
    ws = ctx.workspace
    summary = inbox.ingest(ws.s3, ws.bucket, clients(ctx), ctx.state, ctx.hash_key, ctx.now())
    out = summary.to_dict()
    if ref is not None:
        out["request"] = {"status": staff_entry.lookup(ctx, ref, type_, {})}
    return out


def examine(ctx: JobContext, form_params: dict[str, Any], type_: str) -> Any:
    """What `intake` would do, read only (a dry run); a referenced request must be waiting in
    the inbox or be on record."""
    ref = staff_entry.run_ref(form_params)
    ws = ctx.workspace
    exam = inbox.examine(ws.s3, ws.bucket, clients(ctx), ctx.state, ctx.hash_key, ctx.now())
    if ref is not None:
        staff_entry.lookup(ctx, ref, type_, {key: raw for key, raw, _ in exam.documents})
    return exam


def clients(ctx: JobContext) -> dict[str, bool]:
    """Every client of the first SQL system and whether it is active (R27)."""
    return staff_entry.registry(ctx)
