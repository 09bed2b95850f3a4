"""One lifecycle for the request batches of every job (deletion, access): plan once, resume
after a crash, and never resume under a different data map.

A batch is a row in `cj_batches` (status planned -> finished) plus its targets document in the
workspace (`batches/<id>/targets.json`, encrypted like every workspace object): who is in it,
what was resolved, what each mapped task fans out over. The row and the requests that point at
it are written in one transaction after the document, so a crash between the two leaves an
orphan document, never a batch without its targets.

The targets document records the sha256 of the data map it was planned against. Resuming under
another map could erase by a mapping nobody planned with (a column renamed, a table added), so
`load_targets` refuses; the operator re-plans explicitly (the DAG form's `replan` option),
which abandons the old batch and plans its open requests afresh (docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from compliance.core import workspace_layout
from compliance.core.context import Workspace
from compliance.core.outputs import put_json
from compliance.core.workspace_layout import BATCHES as BATCHES
from compliance.requests import state


class MapChanged(RuntimeError):
    """A planned batch met a data map other than the one it was planned with."""

    def __init__(self, batch_id: str, planned: str, current: str) -> None:
        super().__init__(
            f"batch {batch_id} was planned with data map {planned[:12]}, the current map is "
            f"{current[:12]}: it is not resumed under another map. Restore that map to finish "
            "the batch, or re-plan it (the run form's `replan` option)."
        )
        self.batch_id = batch_id


def targets_key(batch_id: str) -> str:
    return workspace_layout.targets_key(batch_id)


def pending(
    engine: Engine, kind: str | tuple[str, ...]
) -> tuple[str | None, list[state.RequestRow]]:
    """The planned batch to resume (the oldest, if a crash left several) and every actionable
    request of `kind` (open, deferred, partial); several kinds share one batch (the access run
    plans portability requests with its own, G3)."""
    kinds = (kind,) if isinstance(kind, str) else kind
    rows = sorted(
        (r for k in kinds for r in state.actionable_requests(engine, k)), key=lambda r: r.id
    )
    planned = sorted({r.batch_id for r in rows if r.batch_id and _is_planned(engine, r.batch_id)})
    return (planned[0] if planned else None), rows


def to_plan(
    engine: Engine, kind: str | tuple[str, ...], *, replan: bool
) -> tuple[str | None, list[state.RequestRow]]:
    """`pending`, with the operator's explicit re-plan applied: the planned batch (if any) is
    abandoned, and None comes back so the caller plans every actionable request afresh."""
    resume, rows = pending(engine, kind)
    if resume and replan:
        abandon(engine, resume)
        resume = None
    return resume, rows


def _is_planned(engine: Engine, batch_id: str) -> bool:
    found = state.get_batch(engine, batch_id)
    return found is not None and found.status == "planned"


def new_batch_id(prefix: str, rows: list[state.RequestRow], now: datetime) -> str:
    """`<prefix>-<UTC time>-<digest of the request ids>`: sortable, and two runs planning the
    same requests in the same second agree."""
    digest = hashlib.sha256(",".join(str(r.id) for r in rows).encode()).hexdigest()[:8]
    return f"{prefix}-{state.to_utc(now):%Y%m%dT%H%M%S}-{digest}"


def store_targets(ws: Workspace, batch_id: str, doc: dict[str, Any], datamap_hash: str) -> None:
    """Write the targets document, stamped with the map's digest (before the batch row)."""
    put_json(ws.s3, ws.bucket, targets_key(batch_id), {**doc, "datamap_hash": datamap_hash})


def load_targets(ws: Workspace, batch_id: str, datamap_hash: str | None) -> dict[str, Any]:
    """The stored document without its stamp; `MapChanged` when it was planned with another
    map (`datamap_hash=None` skips the check: readers that change nothing)."""
    body = ws.s3.get_object(Bucket=ws.bucket, Key=targets_key(batch_id))["Body"].read()
    doc = json.loads(body)
    planned = doc.pop("datamap_hash", None)
    if datamap_hash is not None and planned is not None and planned != datamap_hash:
        raise MapChanged(batch_id, planned, datamap_hash)
    return doc


def abandon(engine: Engine, batch_id: str) -> bool:
    """Re-plan explicitly: the batch is finished without receipts. Its requests still point at
    it but are actionable, so the next `pending` finds no batch to resume and plans them afresh
    (what the old batch already erased stays erased; the new one converges on the rest)."""
    return state.finish_batch(engine, batch_id)
