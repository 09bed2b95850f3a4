"""Delivery guards (R12) and the shared intake's repeat policy for access requests (R7)."""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from compliance.access import deliver
from compliance.core.stores.sql import engine_from_url
from compliance.requests import inbox, state

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("days", [0, 8, 30, -1, True, 2.5, "7"])
def test_link_lifetime_refuses_anything_but_1_to_7_days(days):
    with pytest.raises(deliver.LinkExpiryRefused):
        deliver.link_lifetime(days)


def test_link_lifetime_default_and_bounds():
    assert deliver.link_lifetime(None) == timedelta(days=7)
    assert deliver.link_lifetime(1) == timedelta(days=1)
    assert deliver.link_lifetime(7) == timedelta(days=7)


def test_presigned_link_is_sigv4_bounded_and_works(s3):
    s3.create_bucket(Bucket="cj-link-test")
    s3.put_object(Bucket="cj-link-test", Key="access/1/R-1/bundle.zip", Body=b"PK zip bytes")
    url = deliver.presign(s3, "cj-link-test", "access/1/R-1/bundle.zip", timedelta(days=3))
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == [str(3 * 86400)]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    with urllib.request.urlopen(url, timeout=10) as resp:  # the local moto server
        assert resp.read() == b"PK zip bytes"


def test_presign_refuses_an_unbounded_client():
    class SigV2:
        def generate_presigned_url(self, *_a, **_k):
            return "http://s3.example/b/k?AWSAccessKeyId=x&Signature=y&Expires=9999999999"

    with pytest.raises(deliver.LinkNotBounded):
        deliver.presign(SigV2(), "b", "k", timedelta(days=1))


def _access_doc(request_id: str, **identities) -> bytes:
    at = (NOW - timedelta(days=1)).isoformat()
    return json.dumps(
        {
            "request_id": request_id,
            "client_id": 1,
            "type": "access",
            "identities": identities,
            "received_at": at,
            "verification": {"method": "email_link", "verified_at": at, "verified_by": "portal"},
        }
    ).encode()


def test_a_finished_access_request_does_not_make_a_new_one_a_duplicate(s3, tmp_path):
    """R7: a consumer may ask to know again; only an *open* request for the same identities
    makes a new one a duplicate (the access run flags the third in 12 months instead)."""
    engine = engine_from_url(f"sqlite:///{tmp_path / 'state.db'}")
    state.create_state_schema(engine)
    bucket = "cj-r7-test"
    s3.create_bucket(Bucket=bucket)

    def ingest(key: str, body: bytes) -> inbox.IntakeSummary:
        s3.put_object(Bucket=bucket, Key=f"inbox/1/{key}", Body=body)
        return inbox.ingest(s3, bucket, {1: True}, engine, b"k", NOW)

    assert ingest("a.json", _access_doc("A-1", email="jo@example.com")).accepted == 1
    # while A-1 is open, the same identity again is a duplicate
    second = ingest("b.json", _access_doc("A-2", email="jo@example.com"))
    assert second.accepted == 0 and second.by_reason == {"duplicate": 1}
    (row,) = state.actionable_requests(engine, "access")
    state.set_status(engine, [row.id], "completed")
    # once A-1 is delivered, asking again is a new request, not a duplicate
    third = ingest("c.json", _access_doc("A-3", email="JO@example.com"))
    assert third.accepted == 1 and third.rejected == 0
    assert len(state.actionable_requests(engine, "access")) == 1  # A-3, open
    engine.dispose()
