"""Signed calls of the client API (issue 18, item 1): the signature covers the method, the
path with its query, the body and a moment; a nonce is admitted once by every worker alike
(the state DB, SQLite and PostgreSQL); a client's calls of the last minute are its rate.
Credentials from Airflow connections are refused naming the field."""

from __future__ import annotations

import base64
import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from compliance.core.stores.sql import engine_from_url
from compliance.desk import api_calls, api_clients, signing
from compliance.requests.schema import cj_api_calls, create_state_schema

SECRET = b"s3cret-s3cret-s3cret"
NOW = 1_800_000_000.0
PATH = "/compliance/api/v1/requests?client_id=7"


class Headers(dict):
    """Case-insensitive like Starlette's."""

    def get(self, key, default=None):  # type: ignore[override]
        for k, v in self.items():
            if k.lower() == key.lower():
                return v
        return default


def _signed(body: bytes = b'{"a":1}', **kw) -> Headers:
    return Headers(signing.sign(SECRET, "acme", "POST", PATH, body, now=NOW, **kw))


def _verify(headers, method="POST", path=PATH, body=b'{"a":1}', now=NOW, **kw):
    kw.setdefault("secret", SECRET)
    return signing.verify(headers, method, path, body, now=now, **kw)


def test_a_good_signature_is_accepted_with_its_key_and_nonce():
    headers = _signed()
    got = _verify(headers)
    assert (got.key, got.timestamp, got.nonce) == ("acme", int(NOW), headers[signing.NONCE])
    assert headers[signing.SIGNATURE].startswith("v1=")
    # headers arrive in any case (HTTP/2 lower-cases them)
    assert _verify(Headers({k.lower(): v for k, v in headers.items()})).key == "acme"


@pytest.mark.parametrize(
    "change",
    [
        {"body": b'{"a":2}'},
        {"body": b""},
        {"path": "/compliance/api/v1/requests?client_id=8"},
        {"path": "/compliance/api/v1/requests"},
        {"method": "PUT"},
        {"secret": b"another-secret-of-16"},
    ],
)
def test_anything_changed_breaks_the_signature(change):
    with pytest.raises(signing.SignatureRefused) as refused:
        _verify(_signed(), **change)
    assert refused.value.code == "bad_signature"


@pytest.mark.parametrize("skew", [-signing.WINDOW_SECONDS - 1, signing.WINDOW_SECONDS + 1])
def test_a_signature_outside_the_window_is_stale(skew):
    with pytest.raises(signing.SignatureRefused) as refused:
        _verify(_signed(), now=NOW + skew)
    assert refused.value.code == "stale_timestamp"
    assert _verify(_signed(), now=NOW + (skew - 2 if skew > 0 else skew + 2)).key == "acme"


@pytest.mark.parametrize(
    ("header", "value", "code"),
    [
        (signing.NONCE, "short", "bad_nonce"),
        (signing.NONCE, "has spaces in it, sixteen+", "bad_nonce"),
        (signing.TIMESTAMP, "yesterday", "bad_timestamp"),
        (signing.SIGNATURE, "", "missing_signature"),
        (signing.SIGNATURE, "md5=abc", "bad_signature"),
    ],
)
def test_bad_headers_are_named_by_their_code(header, value, code):
    headers = _signed()
    headers[header] = value
    with pytest.raises(signing.SignatureRefused) as refused:
        _verify(headers)
    assert refused.value.code == code


def test_ed25519_signatures_verify_with_the_registered_public_key():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    headers = Headers(signing.sign_ed25519(raw, "acme", "GET", PATH, b"", now=NOW))
    assert headers[signing.SIGNATURE].startswith("ed25519=")
    assert _verify(headers, "GET", body=b"", secret=None, ed25519_public_key=public).key == "acme"
    other = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    for kw in (
        {"ed25519_public_key": other},
        {"ed25519_public_key": public, "path": "/compliance/api/v1/requests"},
        {"ed25519_public_key": None},  # no key registered: the scheme is not this client's
    ):
        with pytest.raises(signing.SignatureRefused) as refused:
            _verify(headers, "GET", body=b"", secret=None, **kw)
        assert refused.value.code == "bad_signature"
    # and a connection carries the public key as base64 of the raw 32 bytes
    conn = api_clients.from_connection(
        "acme", "x" * 16, {"ed25519_public_key": base64.b64encode(public).decode()}
    )
    assert conn.ed25519_public_key == public


@pytest.mark.parametrize(
    ("key", "password", "extra", "field"),
    [
        ("bad key!", "x" * 16, {}, "compliance_api_bad key!: the key"),
        ("acme", "short", {}, "compliance_api_acme.password"),
        ("acme", None, {}, "compliance_api_acme.password"),
        ("acme", "x" * 16, {"client_ids": []}, "compliance_api_acme.extra.client_ids"),
        ("acme", "x" * 16, {"client_ids": {"a": 1}}, "compliance_api_acme.extra.client_ids"),
        (
            "acme",
            "x" * 16,
            {"callback_url": "http://example.com/hook"},
            "compliance_api_acme.extra.callback_url",
        ),
        (
            "acme",
            "x" * 16,
            {"rate_limit_per_minute": "60"},
            "compliance_api_acme.extra.rate_limit_per_minute",
        ),
        (
            "acme",
            "x" * 16,
            {"rate_limit_per_minute": 0},
            "compliance_api_acme.extra.rate_limit_per_minute",
        ),
        (
            "acme",
            "x" * 16,
            {"ed25519_public_key": "bm90IDMyIGJ5dGVz"},
            "compliance_api_acme.extra.ed25519_public_key",
        ),
        (
            "acme",
            "x" * 16,
            {"ed25519_public_key": "%%%"},
            "compliance_api_acme.extra.ed25519_public_key",
        ),
    ],
)
def test_a_bad_credential_is_refused_naming_its_field(key, password, extra, field):
    with pytest.raises(api_clients.CredentialError) as refused:
        api_clients.from_connection(key, password, extra)
    assert str(refused.value).startswith(field)
    assert (password or "§") not in str(refused.value) or password == "x" * 16


def test_a_credential_defaults_and_acts_only_for_its_tenants():
    one = api_clients.from_connection("acme", "x" * 16, None)
    assert one.client_ids == {"acme"} and one.rate_per_minute == 60 and one.callback_url is None
    many = api_clients.from_connection(
        "group",
        "x" * 16,
        {"client_ids": [1, "2"], "callback_url": "http://127.0.0.1:9/cb"},
    )
    assert many.may_act_for(1) and many.may_act_for("2") and not many.may_act_for("3")
    assert "x" * 16 not in repr(many)  # the secret stays out of reprs (and so of logs)


# --------------------------------------------------------------------------------------------
# admitting calls: the state DB's rows, on SQLite and PostgreSQL


@pytest.fixture
def state_db(db_url: str, tmp_path):
    """`db_url` is parametrised over SQLite and PostgreSQL (tests/conftest.py)."""
    engine = engine_from_url(db_url)
    create_state_schema(engine)
    yield engine
    engine.dispose()


def _client(rate: int = 60) -> api_clients.ApiClient:
    return api_clients.from_connection("acme", "x" * 16, {"rate_limit_per_minute": rate})


def _call(nonce: str) -> signing.Signed:
    return signing.Signed("acme", int(NOW), nonce)


T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_a_nonce_is_admitted_once(state_db):
    client = _client()
    api_calls.admit(state_db, client, _call("n" * 16), T0)
    with pytest.raises(api_calls.Problem) as refused:
        api_calls.admit(state_db, client, _call("n" * 16), T0 + timedelta(seconds=5))
    assert (refused.value.status, refused.value.reason) == (401, "replayed")
    # another client may use the same nonce: nonces are per key
    other = api_clients.from_connection("beta", "x" * 16, None)
    api_calls.admit(state_db, other, signing.Signed("beta", int(NOW), "n" * 16), T0)


def test_concurrent_replays_admit_exactly_one(state_db):
    """Eight workers race with one nonce: the primary key lets one through, on both backends."""
    client, outcomes, start = _client(rate=1000), [], threading.Barrier(8)

    def attempt() -> None:
        start.wait()
        try:
            api_calls.admit(state_db, client, _call("race" * 5), T0)
            outcomes.append("ok")
        except api_calls.Problem as p:
            outcomes.append(p.reason)
        except sa.exc.OperationalError:  # SQLite's writer lock under a burst: not admitted
            outcomes.append("busy")

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 1, outcomes
    assert set(outcomes) <= {"ok", "replayed", "busy"}


def test_the_rate_limit_counts_the_last_minute_and_says_when_to_retry(state_db):
    client = _client(rate=3)
    for i in range(3):
        api_calls.admit(state_db, client, _call(f"call-{i:012d}"), T0 + timedelta(seconds=i * 10))
    with pytest.raises(api_calls.Problem) as limited:
        api_calls.admit(state_db, client, _call("call-over-limit1"), T0 + timedelta(seconds=30))
    problem = limited.value
    assert (problem.status, problem.reason) == (429, "rate_limited")
    # 4 calls in the minute, limit 3: the next fits once the first two have left (t=10 s + 60)
    assert problem.headers["Retry-After"] == "40"
    assert problem.body()["reason"] == "rate_limited" and problem.body()["status"] == 429
    # a minute after the first calls, there is room again
    api_calls.admit(state_db, client, _call("call-later-00001"), T0 + timedelta(seconds=71))


def test_old_calls_are_pruned_after_twice_the_window(state_db):
    client = _client()
    api_calls.admit(state_db, client, _call("old-call-0000001"), T0)
    keep = timedelta(seconds=api_calls.KEEP_SECONDS)
    api_calls.admit(state_db, client, _call("new-call-0000001"), T0 + keep - timedelta(seconds=1))
    with state_db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(cj_api_calls)).scalar() == 2
    assert api_calls.prune(state_db, T0 + keep + timedelta(seconds=1)) == 1
    with state_db.connect() as conn:
        left = conn.execute(sa.select(cj_api_calls.c.nonce)).scalars().all()
    assert left == ["new-call-0000001"]
    assert api_calls.KEEP_SECONDS >= 2 * signing.WINDOW_SECONDS  # a skewed signature's life


def test_a_non_ascii_signature_header_is_refused_not_a_crash():
    """A header decoded as latin-1 may hold any character: 401 bad_signature, never a 500."""
    headers = signing.sign(b"s" * 16, "acme", "GET", "/p")
    headers[signing.SIGNATURE] = "v1=\xe9" + headers[signing.SIGNATURE][4:]
    with pytest.raises(signing.SignatureRefused) as refused:
        signing.verify(headers, "GET", "/p", b"", secret=b"s" * 16)
    assert refused.value.code == "bad_signature"
