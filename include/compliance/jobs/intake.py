"""The request DAGs' shared first task: the trigger form's document (if any) joins the S3
inbox, then the whole inbox is validated in one pass (`compliance.requests.inbox.ingest`)."""

from __future__ import annotations

import json
from typing import Any

from compliance.core.context import JobContext
from compliance.requests import inbox


def intake(ctx: JobContext, form_params: dict[str, Any], type_: str) -> dict[str, Any]:
    ws = ctx.workspace
    form = inbox.form_document(form_params, type_)
    if form is not None:
        inbox.submit(ws.s3, ws.bucket, form, f"{type_}-{form['request_id']}")
    summary = inbox.ingest(ws.s3, ws.bucket, clients(ctx), ctx.state, ctx.hash_key, ctx.now())
    return summary.to_dict()


def examine(ctx: JobContext, form_params: dict[str, Any], type_: str) -> Any:
    """What `intake` would do, read only (a dry run): the form's document is examined in place."""
    form = inbox.form_document(form_params, type_)
    extra = []
    if form is not None:
        key = inbox.submission_key(f"{type_}-{form['request_id']}")
        extra.append((key, json.dumps(form).encode()))
    ws = ctx.workspace
    return inbox.examine(ws.s3, ws.bucket, clients(ctx), ctx.state, ctx.hash_key, ctx.now(), extra)


def clients(ctx: JobContext) -> dict[str, bool]:
    """Every client of the first SQL system and whether it is active (R27)."""
    name = sorted(ctx.datamap.systems)[0]
    return inbox.load_clients(ctx.engine(name), ctx.datamap.systems[name])
