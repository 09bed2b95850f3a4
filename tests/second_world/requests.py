"""Request documents for the second world, written from docs/requests.md alone.

The client id is sent as the CRM spells it: a JSON string (`"01"`, `"zürich-süd"`), never a
number. Documents go to `inbox/<client_id>/` in the workspace bucket, as a client would drop them.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any


def document(
    request_id: str,
    client_id: str,
    type_: str,
    received: datetime,
    *,
    jurisdiction: str | None = None,
    look_back: str | None = None,
    **identities: str,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "request_id": request_id,
        "client_id": client_id,
        "type": type_,
        "identities": identities,
        "received_at": received.isoformat(),
        "verification": {
            "method": "email_link",
            "verified_at": received.isoformat(),
            "verified_by": "crm2-privacy-portal",
        },
    }
    if jurisdiction:
        doc["jurisdiction"] = jurisdiction
    if look_back:
        doc["look_back"] = look_back
    return doc


def drop(s3: Any, bucket: str, docs: list[dict[str, Any]], name: str) -> list[str]:
    """One object per client: a single document as JSON, several as NDJSON (docs §3)."""
    by_client: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_client.setdefault(str(doc["client_id"]), []).append(doc)
    keys = []
    for client, items in sorted(by_client.items()):
        if len(items) == 1:
            key, body = f"inbox/{client}/{name}.json", json.dumps(items[0], ensure_ascii=False)
        else:
            key = f"inbox/{client}/{name}.ndjson"
            body = "\n".join(json.dumps(d, ensure_ascii=False) for d in items)
        s3.put_object(Bucket=bucket, Key=key, Body=body.encode())
        keys.append(key)
    return keys
