"""One request's page on the desk (issue 18, item 2): its status, dates, events and receipts,
and, only when a permitted member of staff asks, its identities.

Why identities are read from the accepted document and nowhere else: the state DB holds keyed
hashes only (R20); the one place a request's identities live while it is worked on is its
accepted inbox document in the workspace (`workspace_layout.accepted_key`), which goes when the
request is answered. So an answered request's page says "no longer held" instead of finding them
elsewhere, and the desk never keeps a copy.

Every identity view is written to the audit ledger before anything is shown (`identities_viewed`:
the request's keyed ref, the client, the type, which fields were shown, and the keyed hash of the
viewing user), never the identities themselves and never the user's name (which may be an
e-mail address). A view that cannot be ledgered shows nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import select

from compliance.core import ledger
from compliance.core import workspace_layout as layout
from compliance.core.context import JobContext
from compliance.core.hashing import keyed_hash
from compliance.desk import reports_list, status
from compliance.requests import notices as notices_mod
from compliance.requests.schema import cj_requests
from compliance.requests.state_rows import NoticeRow, RequestRow, client_text, row_of

ANSWERED = ("completed", "rejected")  # the accepted document (and its identities) is gone
VIEWED = "identities_viewed"


@dataclass(frozen=True)
class Record:
    """One (client, request id, type) on record, as the page shows it."""

    row: RequestRow
    events: list[tuple[str, str]]  # the client-facing steps (compliance.desk.status)
    ledger: list[tuple[int, datetime, str]]  # (seq, at, kind) of the entries about it
    notices: list[NoticeRow] = field(default_factory=list)

    @property
    def dates(self) -> dict[str, date | datetime | None]:
        r = self.row
        return {
            "received": r.received_at,
            "accepted": r.accepted_at,
            "acknowledge by (R2)": r.ack_due,
            "respond by (R3)": r.response_due,
            "extension noticed (R4)": r.extension_notice_at,
            "extended to (R4)": r.extended_due,
            "answered": r.completed_at,
        }


@dataclass(frozen=True)
class RequestPage:
    client_id: str
    request_id: str
    records: list[Record]
    receipts: list[str]


def request_ref(hash_key: bytes, client_id: str, request_id: str, type_: str) -> str:
    """The keyed ref the ledger files a request under (as intake and the watchdog do)."""
    return keyed_hash(hash_key, "request", f"{client_id}\x1f{request_id}\x1f{type_}")


def _rows(ctx: JobContext, client_id: str, request_id: str) -> list[RequestRow]:
    t = cj_requests
    q = (
        select(t)
        .where(t.c.client_id == client_text(client_id), t.c.request_id == request_id)
        .order_by(t.c.type)
    )
    with ctx.state.connect() as conn:
        return [row_of(RequestRow, m) for m in conn.execute(q).mappings()]


def page(ctx: JobContext, client_id: str, request_id: str) -> RequestPage | None:
    """What one request's page shows; None when no request of that id is on record."""
    rows = _rows(ctx, client_id, request_id)
    if not rows:
        return None
    sent = notices_mod.notices_of(ctx.state, [r.id for r in rows])
    records = []
    for row in rows:
        ref = request_ref(ctx.hash_key, row.client_id, row.request_id, row.type)
        entries = [(e.seq, e.at, e.kind) for e in ledger.entries(ctx.state, ref=ref)]
        records.append(
            Record(
                row,
                status.events(row),
                entries,
                sorted(sent.get(row.id, {}).values(), key=lambda n: n.subprocessor),
            )
        )
    receipts = reports_list.receipts_of(ctx, rows[0].client_id, request_id)
    return RequestPage(rows[0].client_id, request_id, records, receipts)


@dataclass(frozen=True)
class Identities:
    held: bool
    values: dict[str, list[str]]  # field -> values (a phone's other spellings too)
    note: str
    seq: int  # the ledger entry that recorded this view


def show_identities(
    ctx: JobContext, client_id: str, request_id: str, type_: str, viewer: str
) -> Identities:
    """Read one request's identities for a permitted viewer, ledgering the view first.

    Raises LookupError when no such request is on record (nothing is ledgered then)."""
    rows = [r for r in _rows(ctx, client_id, request_id) if r.type == type_]
    if not rows:
        raise LookupError("no such request on record")
    row = rows[0]
    values: dict[str, list[str]] = {}
    if row.status in ANSWERED:
        held, note = False, "No longer held: the request was answered and its document removed."
    else:
        doc = _accepted(ctx, layout.accepted_key(row.client_id, row.request_id, row.type))
        held = doc is not None
        note = (
            "From the request's accepted document."
            if held
            else ("Not held in the workspace: the request's accepted document is not there.")
        )
        for name, value in ((doc or {}).get("identities") or {}).items():
            items = value if isinstance(value, list) else [value]
            values[str(name)] = [str(v) for v in items if v not in (None, "")]
    entry = ledger.Entry(
        VIEWED,
        request_ref(ctx.hash_key, row.client_id, row.request_id, row.type),
        {
            "client_id": row.client_id,
            "type": row.type,
            "viewer": keyed_hash(ctx.hash_key, "desk_user", viewer),
            "held": held,
            "fields": sorted(values),
            "rules": ["R20", "R22"],
        },
    )
    (seq,) = ledger.append(ctx.state, ctx.hash_key, [entry])
    return Identities(held, values, note, seq)


def _accepted(ctx: JobContext, key: str) -> dict[str, Any] | None:
    ws = ctx.workspace
    try:
        body = ws.s3.get_object(Bucket=ws.bucket, Key=key)["Body"].read()
    except ws.s3.exceptions.NoSuchKey:
        return None
    doc = json.loads(body)
    return doc if isinstance(doc, dict) else None


def bundle_viewed(ctx: JobContext, key: str, viewer: str) -> int:
    """Ledger one opening of an access bundle (all of a consumer's data) by a permitted viewer:
    the bundle's key names the client and the request id, never the consumer."""
    entry = ledger.Entry(
        "bundle_viewed",
        keyed_hash(ctx.hash_key, "workspace_key", key),
        {"key": key, "viewer": keyed_hash(ctx.hash_key, "desk_user", viewer), "rules": ["R20"]},
    )
    return ledger.append(ctx.state, ctx.hash_key, [entry])[0]
