"""A status callback's signature, checked without `compliance.desk.signing` (issue 18, item 1).

tests/e2e/test_client_callbacks.py verifies callbacks with `signing.verify`, the module that
signs them: a mistake shared by both sides (a field dropped from the canonical string, the body
hashed after a re-encoding) would pass there and fail at every client. Here the expected
HMAC-SHA256 is computed the way a client reads docs/api.md ("Signing": six lines joined by
`\\n`, no trailing newline: `v1`, the method, the path with `?query`, the timestamp, the nonce,
the hex sha256 of the exact body) and docs/callbacks.md ("The call": over the callback URL's path
with its query; the credential's `password` is the secret), once with `hmac`/`hashlib` and once
with the `openssl dgst -sha256 -hmac` command line docs/api.md shows for curl, for a callback
the real sender (`callbacks.deliver` -> `callback_http.post`) delivered to a local HTTP server.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import insert

from compliance.desk import callbacks
from compliance.requests.schema import cj_api_requests

from ..conftest import IN_CI
from .recorder import recording_endpoint

SECRET = "callback-secret-by-hand-0123"  # the connection's password (docs/api.md)
KEY = "acme"
CLIENT = "7"
# A path with an encoded space and a query with an encoded slash: both must be signed as sent.
PATH_AND_QUERY = "/hooks/dsr%20status?tenant=7&ref=a%2Fb"


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """The signature does not depend on the state DB's backend."""
    return sqlite_url


@pytest.fixture
def received() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A client's endpoint that records every call as it arrived and answers 200."""
    calls: list[dict[str, Any]] = []
    with recording_endpoint(calls) as port:
        yield f"http://127.0.0.1:{port}{PATH_AND_QUERY}", calls


def _deliver_one(state_engine, url: str) -> None:
    """One request submitted through the API, its `received` callback sent by the real sender."""
    now = datetime.now(UTC)
    with state_engine.begin() as conn:
        conn.execute(
            insert(cj_api_requests).values(
                client_id=CLIENT,
                request_id="SIG-1",
                type="delete",
                api_key=KEY,
                body_sha256="0" * 64,
                submitted_at=now,
            )
        )
    extra = {"client_ids": [CLIENT], "callback_url": url}
    ctx = SimpleNamespace(
        state=state_engine,
        credentials=lambda conn_id: (SECRET, extra) if conn_id == f"compliance_api_{KEY}" else None,
        channels=None,
    )
    callbacks.sync(state_engine, now)
    assert callbacks.deliver(ctx, now, 10) == {"attempted": 1, "acknowledged": 1}


def _canonical(url: str, timestamp: str, nonce: str, body_sha256: str) -> bytes:
    """docs/api.md's canonical string, written out from the docs (not from signing.py)."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return "\n".join(["v1", "POST", path, timestamp, nonce, body_sha256]).encode()


def _openssl(*args: str, data: bytes) -> str:
    """`openssl dgst ... -hex` over stdin; the hex digest (the last field, as docs/api.md's
    `sed 's/^.* //'`)."""
    out = subprocess.run(
        ["openssl", "dgst", "-sha256", *args, "-hex"],
        input=data,
        capture_output=True,
        check=True,
        timeout=30,
    )
    return out.stdout.decode().split()[-1]


def test_a_delivered_callback_carries_the_documented_hmac(state_engine, received):
    url, calls = received
    _deliver_one(state_engine, url)
    (call,) = calls
    headers, body = call["headers"], call["body"]
    assert call["path"] == PATH_AND_QUERY  # the path and query arrive as registered
    assert headers["X-Compliance-Client"] == KEY
    assert headers["Content-Type"] == "application/json"
    timestamp, nonce = headers["X-Compliance-Timestamp"], headers["X-Compliance-Nonce"]
    assert abs(int(timestamp) - time.time()) < 300  # unix seconds, inside the window
    assert re.fullmatch(r"[A-Za-z0-9_-]{16,128}", nonce)
    scheme, _, signature = headers["X-Compliance-Signature"].partition("=")
    assert scheme == "v1" and re.fullmatch(r"[0-9a-f]{64}", signature)

    message = _canonical(url, timestamp, nonce, hashlib.sha256(body).hexdigest())
    expected = hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(signature, expected)
    # the check can fail: another secret, or another body, gives another signature
    assert hmac.new(b"another-secret-0123456", message, hashlib.sha256).hexdigest() != signature
    tampered = _canonical(url, timestamp, nonce, hashlib.sha256(body + b" ").hexdigest())
    assert hmac.new(SECRET.encode(), tampered, hashlib.sha256).hexdigest() != signature

    # The same with the openssl command line docs/api.md gives clients (body digest included).
    if shutil.which("openssl") is None:
        if IN_CI:
            pytest.fail("CI=true and the openssl command line is missing")
        pytest.skip("openssl command line not installed: the hmac/hashlib check above passed")
    digest = _openssl(data=body)
    assert digest == hashlib.sha256(body).hexdigest()
    by_openssl = _openssl("-hmac", SECRET, data=_canonical(url, timestamp, nonce, digest))
    assert by_openssl == signature
