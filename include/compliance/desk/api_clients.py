"""Who may call the client API: one credential per business, kept in an Airflow connection
(or any secrets backend Airflow reads connections from), never in code or in the data map.

Connection `compliance_api_<key>` (conn_type `generic`):

- password: the shared secret (HMAC-SHA256 of calls and of our callbacks);
- extra `client_ids`: the CRM tenant ids this business may act for (default: `[<key>]`), so a
  business with several tenants (dealerships of one group) uses one credential, and a call
  about any other tenant's request is refused with 403;
- extra `callback_url`: where status changes are POSTed (https; http only to localhost, for
  tests and the demo);
- extra `rate_limit_per_minute` (default 60) and optionally `ed25519_public_key` (base64 of
  the raw 32 bytes) to sign calls with Ed25519 instead of the shared secret.

A bad connection is refused naming the field, like a bad data map.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

CONN_PREFIX = "compliance_api_"
KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DEFAULT_RATE_PER_MINUTE = 60


class CredentialError(ValueError):
    """A client credential that cannot be used, naming the connection and its field."""


@dataclass(frozen=True)
class ApiClient:
    key: str
    secret: bytes = field(repr=False)
    client_ids: frozenset[str]
    callback_url: str | None = None
    rate_per_minute: int = DEFAULT_RATE_PER_MINUTE
    ed25519_public_key: bytes | None = field(default=None, repr=False)

    def may_act_for(self, client_id: object) -> bool:
        return str(client_id) in self.client_ids


def conn_id(key: str) -> str:
    return CONN_PREFIX + key


def from_connection(key: str, password: str | None, extra: Mapping[str, Any] | None) -> ApiClient:
    where = conn_id(key)
    if not KEY_RE.match(key):
        raise CredentialError(f"{where}: the key must be 1-64 characters of [A-Za-z0-9_.-]")
    if not password or len(password) < 16:
        raise CredentialError(f"{where}.password: a shared secret of 16+ characters is required")
    extra = dict(extra or {})
    ids = extra.get("client_ids", [key])
    if isinstance(ids, (str, int)):
        ids = [ids]
    if not isinstance(ids, list) or not ids or not all(str(i).strip() for i in ids):
        raise CredentialError(f"{where}.extra.client_ids: a non-empty list of tenant ids")
    url = extra.get("callback_url") or None
    if url is not None:
        _check_callback_url(where, str(url))
    rate = extra.get("rate_limit_per_minute", DEFAULT_RATE_PER_MINUTE)
    if not isinstance(rate, int) or isinstance(rate, bool) or not 1 <= rate <= 100_000:
        raise CredentialError(f"{where}.extra.rate_limit_per_minute: an integer 1..100000")
    public = extra.get("ed25519_public_key")
    raw = None
    if public:
        try:
            raw = base64.b64decode(str(public), validate=True)
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise CredentialError(
                f"{where}.extra.ed25519_public_key: base64 of the raw 32-byte public key"
            )
    return ApiClient(
        key=key,
        secret=password.encode(),
        client_ids=frozenset(str(i).strip() for i in ids),
        callback_url=url,
        rate_per_minute=rate,
        ed25519_public_key=raw,
    )


def _check_callback_url(where: str, url: str) -> None:
    parts = urlsplit(url)
    local = parts.hostname in {"127.0.0.1", "localhost", "::1"}
    if parts.scheme != "https" and not (parts.scheme == "http" and local):
        raise CredentialError(
            f"{where}.extra.callback_url: https is required (http only to localhost)"
        )
    if not parts.hostname:
        raise CredentialError(f"{where}.extra.callback_url: no host")


def lookup(ctx: Any, key: str) -> ApiClient | None:
    """The credential named `key` from the context's credential source, or None.

    Raises `CredentialError` when it exists but is unusable (an operator's mistake to fix,
    not a caller's to guess at)."""
    if not KEY_RE.match(key or "") or ctx.credentials is None:
        return None
    found = ctx.credentials(conn_id(key))
    if found is None:
        return None
    password, extra = found
    return from_connection(key, password, extra)
