"""What the state DB keeps of a request beyond its deadlines, and how receipts show it.

R1 asks for `forwarded_at` and `verified` to be stored, R5 for requests acted on only once the
business verified them, R24 for a minor's parent or guardian to be verified by a documented
method. Intake checks all of it (`compliance.requests.intake`); this module turns what it checked
into
columns of `cj_requests` that hold no personal data (R20's minimal record):

- times as they are (UTC);
- a verification method as a short code (`email_link`, `id_document`): the business's own label,
  lower-cased, blanks as `_`, kept only when it is a code; free text that could name someone
  (`called Jane at home`) is recorded as `other`;
- who verified as a keyed hash bound to the client (`compliance.core.hashing.keyed_hash`): the
  business can show which of its staff or systems it was by hashing its own list, and nobody
  else can read it;
- the earlier requests of the same type for the same identities (a consumer erased before asks
  again, R16/R20; R7's repeats) as the keyed refs the ledger files them under, never ids.

Receipts (deletion and access) show these fields via `receipt_fields`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from compliance.core import ledger
from compliance.core.hashing import keyed_hash
from compliance.requests import intake, state

OTHER = "other"
_CODE = re.compile(r"[a-z0-9][a-z0-9_.:]{0,63}")
_BLANKS = re.compile(r"[\s\-/]+")


def method_code(text: str) -> str:
    """A verification method as a code: `"Email link"` -> `email_link`; anything that is not a
    short code (names, addresses, numbers, sentences) -> `other` (R5, R24; no PII stored)."""
    code = _BLANKS.sub("_", text.strip().lower()).strip("_")
    # A code is a few words, never a number that could be a phone or an account (> 6 digits).
    if not _CODE.fullmatch(code) or code.count("_") > 5 or sum(map(str.isdigit, code)) > 6:
        return OTHER
    try:
        ledger.reject_pii(text, "method")
    except ValueError:
        return OTHER
    return code


def verifier_hash(hash_key: bytes, client_id: str, who: str) -> str:
    """Keyed hash of who verified, bound to the client (the same staff id at two clients gives
    two hashes)."""
    return keyed_hash(hash_key, "verified_by", f"{client_id}\x1f{who}")


def request_ref(hash_key: bytes, client_id: str, request_id: str, type_: str) -> str:
    """The keyed ref the ledger files a request under (`inbox._ref`, `deletion.finalize`)."""
    return keyed_hash(hash_key, "request", f"{client_id}\x1f{request_id}\x1f{type_}")


def columns(item: intake.Accepted, hash_key: bytes) -> dict[str, Any]:
    """The `cj_requests` columns of R1/R5/R24's records for an accepted request."""
    out: dict[str, Any] = {
        "forwarded_at": item.forwarded_at,
        "verification_method": method_code(item.verification.method),
        "verified_at": item.verification.verified_at,
        "verified_by_hash": verifier_hash(hash_key, item.client_id, item.verification.verified_by),
    }
    guardian = item.guardian_verification
    if guardian is not None:
        out |= {
            "guardian_method": method_code(guardian.method),
            "guardian_verified_at": guardian.verified_at,
            "guardian_verified_by_hash": verifier_hash(
                hash_key, item.client_id, guardian.verified_by
            ),
        }
    return out


def previous(
    items: Sequence[intake.Accepted],
    holders: Mapping[str, list[tuple[int, state.RequestKey]]],
    hash_key: bytes,
) -> dict[int, str | None]:
    """id(item) -> the space-separated keyed refs of the earlier requests that hold any of its
    identity keys: registered ones (`state.requests_holding_keys`, by pk) and then those earlier
    in the same intake, earliest first; None when there are none."""
    seen = {key: list(found) for key, found in holders.items()}
    after = 1 + max((pk for found in holders.values() for pk, _ in found), default=0)
    out: dict[int, str | None] = {}
    for position, item in enumerate(items, start=after):
        me = (item.client_id, item.request_id, item.type.value)
        keys = sorted(intake.identity_keys(item, hash_key))
        earlier = sorted({(pk, h) for key in keys for pk, h in seen.get(key, []) if h != me})
        refs = dict.fromkeys(request_ref(hash_key, *h) for _, h in earlier)
        out[id(item)] = " ".join(refs) or None
        for key in keys:
            if all(h != me for _, h in seen.setdefault(key, [])):
                seen[key].append((position, me))
    return out


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def receipt_fields(row: state.RequestRow) -> dict[str, Any]:
    """What a receipt shows of the stored records (R1, R5, R24, R20): codes, times, keyed
    hashes. Rows stored before these columns existed show nulls, not guesses."""
    guardian = None
    if row.guardian_method is not None:
        guardian = {
            "method": row.guardian_method,
            "verified_at": _when(row.guardian_verified_at),
            "verified_by_hash": row.guardian_verified_by_hash,
            "rule": "R24",
        }
    return {
        "request_record": {
            "received_at": _when(row.received_at),
            "forwarded_at": _when(row.forwarded_at),
            "verification": {
                "method": row.verification_method,
                "verified_at": _when(row.verified_at),
                "verified_by_hash": row.verified_by_hash,
                "rule": "R5",
            },
            "guardian_verification": guardian,
            "rules": ["R1", "R5", "R24"],
        },
        # A repeat request (data collected again after an erasure; R7 for access) links the
        # earlier ones by the keyed refs their ledger entries carry (R20).
        "previous_requests": (row.previous_requests or "").split(),
    }
