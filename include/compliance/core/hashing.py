"""Keyed hashes: how identities appear in logs, XComs, receipts, tombstones and the ledger.

An HMAC with a deployment secret (COMPLIANCE_HASH_KEY) rather than a bare SHA-256: e-mails and
phone numbers are guessable, so an unkeyed hash would be reversible by enumeration (R20 asks for a
minimal record used for nothing else). The identity type is part of the message, so an e-mail and
a phone with the same text never collide.
"""

from __future__ import annotations

import hashlib
import hmac


def keyed_hash(key: bytes, kind: str, value: str) -> str:
    return hmac.new(key, f"{kind}\x1f{value}".encode(), hashlib.sha256).hexdigest()


def short(digest: str) -> str:
    """A log-friendly prefix of a keyed hash (enough to correlate, not to reverse)."""
    return digest[:12]
