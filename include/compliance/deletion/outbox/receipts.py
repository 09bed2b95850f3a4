"""Receipts that follow their notices (R16.3, R16.4): the receipt's notice sections, and a new
receipt version whenever a notice's status changes after the request completed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, or_, select, update

from compliance.core import ledger
from compliance.core.datamap.model import DataMap
from compliance.core.outputs import put_json
from compliance.deletion.outbox.parties import RECEIPTS, parties, receipt_key, request_ref
from compliance.requests import state


def receipt_sections(dm: DataMap, notices: Mapping[str, state.NoticeRow]) -> dict[str, Any]:
    """The receipt's `subprocessors` (R16.3) and `recipients` (R16.4) sections: per name its
    status and attempts; for a recipient not told, how it got the data and why it is not told."""
    everyone = parties(dm)
    out: dict[str, dict[str, Any]] = {"subprocessors": {}, "recipients": {}}
    for name, n in sorted(notices.items()):
        party = everyone.get(name)
        kind = n.kind or (party.kind if party else "subprocessor")
        entry: dict[str, Any] = {"status": n.status}
        if n.status == "exempt":
            entry["received"] = party.received if party else None
            entry["impossible_or_disproportionate"] = party.justification if party else None
        else:
            entry.update(
                channel=n.channel,
                attempts=n.attempts,
                acknowledged_at=n.acked_at.isoformat() if n.acked_at else None,
                given_up_at=n.given_up_at.isoformat() if n.given_up_at else None,
                last_error=n.last_error_kind,
            )
        entry["rule"] = "R16.3" if kind == "subprocessor" else "R16.4"
        out["subprocessors" if kind == "subprocessor" else "recipients"][name] = entry
    return out


def _statuses(doc: Mapping[str, Any]) -> dict[str, str]:
    """name -> status in a receipt's sections (older receipts held the status as a string)."""
    out = {}
    for section in ("subprocessors", "recipients"):
        for name, entry in (doc.get(section) or {}).items():
            out[name] = entry if isinstance(entry, str) else entry.get("status")
    return out


def reissue(
    s3: Any, bucket: str, dm: DataMap, state_engine: Engine, hash_key: bytes, now: datetime
) -> int:
    """Re-issue the receipt of every completed request whose notice statuses changed since its
    receipt was written; return how many were re-issued.

    The previous version is kept beside the receipt (`.v<N>.json`) and the new one says which
    version it is and which it replaces; `receipt_reissued` goes to the ledger. A receipt that
    already shows the current statuses (finalize wrote it after the change, or a crash came
    after the write) is only marked as reported."""
    t = state.cj_notices
    q = select(t.c.request_pk).where(
        or_(t.c.reported_status.is_(None), t.c.reported_status != t.c.status)
    )
    with state_engine.connect() as conn:
        pks = sorted({pk for (pk,) in conn.execute(q)})
    if not pks:
        return 0
    requests = {
        pk: r for pk, r in state.get_requests(state_engine, pks).items() if r.status == "completed"
    }
    notices = state.notices_of(state_engine, list(requests))
    reissued = 0
    for pk, req in sorted(requests.items()):
        key = receipt_key(req.client_id, req.request_id)
        try:
            doc = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except s3.exceptions.NoSuchKey:
            continue  # not written yet: finalize writes it with the statuses of the day
        rows = notices.get(pk, {})
        sections = receipt_sections(dm, rows)
        version = int(doc.get("receipt_version", 1))
        if _statuses(doc) != _statuses(sections):
            kept = f"{RECEIPTS}{req.client_id}/{req.request_id}.delete.v{version}.json"
            put_json(s3, bucket, kept, doc)
            version += 1
            doc = {
                **doc,
                **sections,
                "receipt_version": version,
                "reissued_at": now.isoformat(),
                "previous_version": kept,
                "reissue_reason": "a sub-processor or recipient notice changed status "
                "(R16.3, R16.4)",
            }
            put_json(s3, bucket, key, doc)
            reissued += 1
        with state_engine.begin() as conn:
            if version > 1:
                ledger.append(
                    conn,
                    hash_key,
                    [
                        ledger.Entry(
                            "receipt_reissued",
                            request_ref(hash_key, req.client_id, req.request_id),
                            {
                                "receipt": key,
                                "version": version,
                                "notices": _statuses(doc),
                                "rules": ["R16.3", "R16.4"],
                            },
                            f"receipt:{pk}:v{version}",
                        )
                    ],
                )
            for name, n in rows.items():  # only the status the receipt now shows
                conn.execute(
                    update(t)
                    .where(t.c.request_pk == pk, t.c.subprocessor == name, t.c.status == n.status)
                    .values(reported_status=n.status)
                )
    return reissued
