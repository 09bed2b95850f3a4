"""Signed calls between a client and the desk, both ways: the client's API calls and our
callbacks to the client (issue 18, item 1).

Why a signature and not a bearer token: a token copied from a log or a proxy works until it is
revoked; a signature covers one method, one path, one body and one moment, and a nonce makes it
single-use. The scheme is the common one (Stripe, Slack, OpenDSR's callbacks): HMAC-SHA256 over a
canonical string with a shared secret, or an Ed25519 signature when the client registered a
public key instead of relying on the shared secret alone.

Canonical string, one field per line:

    v1
    <METHOD>
    <path, with ?query if any>
    <timestamp: unix seconds>
    <nonce: 16-128 characters of [A-Za-z0-9_-]>
    <sha256 hex of the body (of b"" when there is none)>

Headers: `X-Compliance-Client` (the credential's key), `X-Compliance-Timestamp`,
`X-Compliance-Nonce`, `X-Compliance-Signature` (`v1=<hex>` for HMAC, `ed25519=<base64>`).
The replay window is checked here; whether a nonce was already used is the state DB's job
(`compliance.desk.api_calls`), since several api-server workers must agree on it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

SCHEME = "v1"
CLIENT = "X-Compliance-Client"
TIMESTAMP = "X-Compliance-Timestamp"
NONCE = "X-Compliance-Nonce"
SIGNATURE = "X-Compliance-Signature"
HEADERS = (CLIENT, TIMESTAMP, NONCE, SIGNATURE)
WINDOW_SECONDS = 300  # a signature older or newer than this is refused (clock skew allowed)
NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


class SignatureRefused(Exception):
    """Why a call is not accepted as signed: `code` is a stable reason code (401 problems)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def canonical(method: str, path: str, timestamp: int | str, nonce: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body or b"").hexdigest()
    return "\n".join((SCHEME, method.upper(), path, str(timestamp), nonce, digest)).encode()


def hmac_signature(secret: bytes, message: bytes) -> str:
    return "v1=" + hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign(
    secret: bytes,
    key: str,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The four headers of a signed call (the client's side, and our callbacks)."""
    return _headers(
        key, method, path, body, now, nonce, lambda message: hmac_signature(secret, message)
    )


def sign_ed25519(
    private_key: bytes,
    key: str,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The same headers signed with an Ed25519 private key (raw 32 bytes)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    signer = Ed25519PrivateKey.from_private_bytes(private_key)
    return _headers(
        key,
        method,
        path,
        body,
        now,
        nonce,
        lambda message: "ed25519=" + base64.b64encode(signer.sign(message)).decode(),
    )


def _headers(
    key: str,
    method: str,
    path: str,
    body: bytes,
    now: float | None,
    nonce: str | None,
    signature: Callable[[bytes], str],
) -> dict[str, str]:
    ts = int(time.time() if now is None else now)
    nonce = nonce or secrets.token_urlsafe(18)
    message = canonical(method, path, ts, nonce, body)
    return {CLIENT: key, TIMESTAMP: str(ts), NONCE: nonce, SIGNATURE: signature(message)}


@dataclass(frozen=True)
class Signed:
    """A call whose signature checked out: who sent it, and the nonce to record once."""

    key: str
    timestamp: int
    nonce: str


def verify(
    headers: Mapping[str, str],
    method: str,
    path: str,
    body: bytes,
    *,
    secret: bytes | None,
    ed25519_public_key: bytes | None = None,
    now: float | None = None,
) -> Signed:
    """Check one call's signature and its window; raises `SignatureRefused` with a reason code.

    `headers` must be case-insensitive (Starlette's are). The secret and key belong to the
    credential named by the `X-Compliance-Client` header, looked up by the caller."""
    key, ts, nonce, sig = (headers.get(h) for h in (CLIENT, TIMESTAMP, NONCE, SIGNATURE))
    if not (key and ts and nonce and sig):
        raise SignatureRefused(
            "missing_signature", f"{CLIENT}, {TIMESTAMP}, {NONCE} and {SIGNATURE} are required"
        )
    try:
        when = int(ts)
    except ValueError:
        raise SignatureRefused("bad_timestamp", f"{TIMESTAMP} must be unix seconds") from None
    clock = time.time() if now is None else now
    if abs(clock - when) > WINDOW_SECONDS:
        raise SignatureRefused(
            "stale_timestamp",
            f"{TIMESTAMP} is more than {WINDOW_SECONDS} s from the server's clock",
        )
    if not NONCE_RE.match(nonce):
        raise SignatureRefused("bad_nonce", f"{NONCE} must be 16-128 characters of [A-Za-z0-9_-]")
    message = canonical(method, path, when, nonce, body)
    if sig.startswith("ed25519=") and ed25519_public_key:
        if not _ed25519_ok(ed25519_public_key, sig.removeprefix("ed25519="), message):
            raise SignatureRefused("bad_signature", "the Ed25519 signature does not match")
    elif sig.startswith("v1=") and secret:
        expected = hmac_signature(secret, message).encode()
        if not hmac.compare_digest(sig.encode("utf-8", "replace"), expected):  # any header text
            raise SignatureRefused("bad_signature", "the HMAC-SHA256 signature does not match")
    else:
        raise SignatureRefused("bad_signature", "unknown signature scheme for this client")
    return Signed(key, when, nonce)


def _ed25519_ok(public_key: bytes, signature_b64: str, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            base64.b64decode(signature_b64, validate=True), message
        )
    except (InvalidSignature, ValueError):
        return False
    return True
