"""Admitting one signed call to the client API: who sent it, was it sent before, and does the
sender still have calls left this minute (issue 18, item 1).

Why the state DB and not memory: the api-server runs several workers (and possibly several
hosts); a nonce seen by one must be refused by all, and a rate limit kept per worker would
multiply by their number. One row per call in `cj_api_calls` (primary key (api_key, nonce))
does both: the insert *is* the replay check (a second insert of the same nonce fails on every
backend, whichever worker tries), and counting a key's rows of the last minute is its rate.

Rows are kept for twice the signature window: a signature stamped up to `WINDOW_SECONDS` ahead
of our clock (skew allowed by `signing.verify`) stays valid for up to twice the window after it
arrives, and its nonce must be remembered as long as that.

Errors are RFC 9457 problem details (`Problem`), each with a stable reason code; their text
never carries an identity (only codes, counts and the header names).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from compliance.core.context import JobContext
from compliance.desk import api_clients, signing
from compliance.desk.api_clients import ApiClient
from compliance.requests.schema import cj_api_calls

log = logging.getLogger(__name__)

RATE_SECONDS = 60  # the rate limit counts the calls of the last minute
KEEP_SECONDS = 2 * signing.WINDOW_SECONDS  # see the module's docstring
PROBLEM_TYPE = "urn:compliance-jobs:problem:"  # + the reason code (docs/api.md lists them)
PROBLEM_MEDIA = "application/problem+json"


class Problem(Exception):
    """An RFC 9457 problem: HTTP status, reason code, title and detail (no identity in either),
    optional per-field `errors` (validation) and response headers (Retry-After)."""

    def __init__(
        self,
        status: int,
        reason: str,
        title: str,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.title = title
        self.detail = detail
        self.errors = errors
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": PROBLEM_TYPE + self.reason,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "reason": self.reason,
        }
        if self.errors is not None:
            out["errors"] = self.errors
        return out


def unauthorized(reason: str, detail: str) -> Problem:
    return Problem(401, reason, "The call is not signed by a known client", detail)


def authenticate(
    ctx: JobContext, method: str, path: str, headers: Mapping[str, str], body: bytes
) -> ApiClient:
    """The credential a call is signed with, after its signature, window, nonce and rate were
    checked; raises `Problem` (401 or 429) otherwise. `headers` case-insensitive."""
    if not all(headers.get(h) for h in signing.HEADERS):
        raise unauthorized(
            "missing_signature", "the headers " + ", ".join(signing.HEADERS) + " are required"
        )
    key = str(headers.get(signing.CLIENT))
    try:
        client = api_clients.lookup(ctx, key)
    except api_clients.CredentialError as exc:  # names the connection's field, never a secret
        log.error("client API: unusable credential: %s", exc)
        raise Problem(
            500,
            "credential_unusable",
            "The client's credential is misconfigured",
            "the operator must fix this client's connection; see the api-server's log",
        ) from None
    if client is None:
        raise unauthorized("unknown_client", f"no client credential by the {signing.CLIENT} given")
    try:
        signed = signing.verify(
            headers,
            method,
            path,
            body,
            secret=client.secret,
            ed25519_public_key=client.ed25519_public_key,
            now=ctx.now().timestamp(),
        )
    except signing.SignatureRefused as exc:
        raise unauthorized(exc.code, exc.detail) from None
    admit(ctx.state, client, signed, ctx.now())
    return client


def admit(engine: Engine, client: ApiClient, signed: signing.Signed, now: datetime) -> None:
    """Record the call's nonce once (a replay inside the window -> 401 `replayed`), then count
    the key's calls of the last minute (over its limit -> 429 `rate_limited`, Retry-After).

    A refused (rate-limited) call keeps its row: its nonce is spent like any other, and a
    client that keeps calling while limited stays limited until it backs off."""
    try:
        with engine.begin() as conn:
            conn.execute(
                delete(cj_api_calls).where(
                    cj_api_calls.c.at < now - timedelta(seconds=KEEP_SECONDS)
                )
            )
            conn.execute(
                insert(cj_api_calls).values(api_key=client.key, nonce=signed.nonce, at=now)
            )
    except IntegrityError:
        raise unauthorized(
            "replayed", f"this {signing.NONCE} was used before; sign every call with a new one"
        ) from None
    since = now - timedelta(seconds=RATE_SECONDS)
    recent = (cj_api_calls.c.api_key == client.key) & (cj_api_calls.c.at > since)
    with engine.connect() as conn:
        count = int(conn.execute(select(func.count()).where(recent)).scalar_one())
        if count <= client.rate_per_minute:
            return
        # The next call fits once all but (limit - 1) of these calls have left the minute.
        frees = conn.execute(
            select(cj_api_calls.c.at)
            .where(recent)
            .order_by(cj_api_calls.c.at)
            .offset(count - client.rate_per_minute)
            .limit(1)
        ).scalar_one_or_none()
    wait = (frees or now) + timedelta(seconds=RATE_SECONDS) - now
    retry = max(1, math.ceil(wait.total_seconds()))
    raise Problem(
        429,
        "rate_limited",
        "Too many calls",
        f"this client may make {client.rate_per_minute} calls a minute; retry after {retry} s",
        headers={"Retry-After": str(retry)},
    )


def prune(engine: Engine, now: datetime) -> int:
    """Forget the calls older than twice the window (also done on every admitted call)."""
    with engine.begin() as conn:
        gone = conn.execute(
            delete(cj_api_calls).where(cj_api_calls.c.at < now - timedelta(seconds=KEEP_SECONDS))
        )
    return int(gone.rowcount or 0)
