"""Sample request documents for the demo world: real consumers' identities, plus bad ones.

What a client would forward: a few verified deletion and access requests for consumers that
exist, and documents that must be refused (unverified, unknown client, malformed e-mail, received
in the future, a child without guardian verification). Identities come from the seeded CRM and are
only written into the inbox, never printed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine


def _doc(
    request_id: str, client_id: int, type_: str, received: datetime, **identities: str
) -> dict:
    at = received.isoformat()
    return {
        "request_id": request_id,
        "client_id": client_id,
        "type": type_,
        "identities": identities,
        "received_at": at,
        "verification": {"method": "email_link", "verified_at": at, "verified_by": "client-staff"},
    }


def sample_inbox(
    engine: Engine, type_: str, count: int, now: datetime | None = None
) -> dict[str, bytes]:
    """inbox key -> document bytes: `count` valid requests of `type_` spread over clients (for
    deletion, plus one for a consumer under a scoped legal hold when the world has one), and
    five invalid ones. Deterministic for a given world."""
    now = now or datetime.now(UTC)
    received = now - timedelta(days=2)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "select c.client_id, c.email, c.phone, c.external_id from contacts c "
                "join clients k on k.client_id = c.client_id where k.active "
                "and c.email is not null and c.is_child = false order by c.contact_id"
            )
        ).all()
        inactive = conn.execute(
            sa.text("select min(client_id) from clients where not active")
        ).scalar()
        # A consumer whose messages are under a legal hold (R19): the deletion run erases the
        # rest and keeps the messages, with a receipt that says what was kept and why.
        held = conn.execute(
            sa.text(
                "select c.client_id, c.email, c.phone, c.external_id from legal_holds h "
                "join contacts c on c.contact_id = h.contact_id "
                "join clients k on k.client_id = c.client_id where k.active "
                "and h.scope = 'messages' and (h.expires_at is null or h.expires_at > :now) "
                "and c.email is not null and c.is_child = false order by h.hold_id limit 1"
            ),
            {"now": now.replace(tzinfo=None)},
        ).first()
    step = max(1, len(rows) // max(count, 1))
    chosen = rows[::step][:count]
    if type_ == "delete" and held is not None and tuple(held) not in {tuple(r) for r in chosen}:
        chosen.append(held)  # one more: the partial erasure
    by_client: dict[int, list[dict[str, Any]]] = {}
    for i, (client_id, email, phone, external_id) in enumerate(chosen):
        prefix = "DEL" if type_ == "delete" else "ACC"
        ident = [{"email": email}, {"phone": phone}, {"contact_id": external_id}][i % 3]
        if not next(iter(ident.values())):
            ident = {"email": email}
        by_client.setdefault(int(client_id), []).append(
            _doc(f"{prefix}-{1000 + i}", int(client_id), type_, received, **ident)
        )
    out = {
        f"inbox/{client}/{type_}-batch.ndjson": "\n".join(json.dumps(d) for d in docs).encode()
        for client, docs in by_client.items()
    }
    first_client = int(chosen[0][0]) if chosen else 1
    bad = {
        "unverified": {
            k: v
            for k, v in _doc("BAD-1", first_client, type_, received, email="a@example.com").items()
            if k != "verification"
        },
        "unknown-client": _doc("BAD-2", 999_999, type_, received, email="b@example.com"),
        "malformed-email": _doc("BAD-3", first_client, type_, received, email="not-an-address"),
        "future": _doc(
            "BAD-4", first_client, type_, now + timedelta(days=3), email="c@example.com"
        ),
    }
    if inactive is not None:
        bad["inactive-client"] = _doc(
            "BAD-5", int(inactive), type_, received, email="d@example.com"
        )
    for name, doc in bad.items():
        out[f"inbox/ui/{type_}-{name}.json"] = json.dumps(doc).encode()
    return out
