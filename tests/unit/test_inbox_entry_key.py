"""Entered requests wait in the inbox under a key unique to (type, tenant, request id) (R22).

A sanitised name alone mapped different requests to one file, so the second was refused as a
duplicate while the first waited (found by the second-world desk test's review)."""

from __future__ import annotations

import json

import pytest

from compliance.requests.inbox import entry_key, legacy_entry_key, names_request


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (("delete", "acme", "east-1"), ("delete", "acme-east", "1")),
        (("delete", "zürich-süd", "R-1"), ("delete", "zärich-säd", "R-1")),
        (("delete", "a b", "1"), ("delete", "a_b", "1")),
        (("delete", "1", "R-1"), ("access", "1", "R-1")),
    ],
)
def test_different_requests_get_different_inbox_keys(one, other):
    assert entry_key(*one) != entry_key(*other)


def test_the_key_is_stable_readable_and_in_the_staff_inbox():
    key = entry_key("delete", 6, "OVER-1")
    assert key == entry_key("delete", "6", "OVER-1")  # tenant ids compared as text
    assert key.startswith("inbox/ui/delete-6-OVER-1-") and key.endswith(".json")
    assert "/" not in key.removeprefix("inbox/ui/")


def test_a_document_under_the_old_name_counts_only_for_the_request_it_names():
    """The name before the digest is shared by 'acme'/'east-1' and 'acme-east'/'1': a document
    found there is theirs only if its own fields say so (upgrade path, R22)."""
    assert legacy_entry_key("delete", "acme", "east-1") == legacy_entry_key(
        "delete", "acme-east", "1"
    )
    raw = json.dumps({"type": "delete", "client_id": "acme-east", "request_id": "1"}).encode()
    assert names_request(raw, "delete", "acme-east", "1")
    assert not names_request(raw, "delete", "acme", "east-1")
    assert not names_request(raw, "access", "acme-east", "1")
    untyped = json.dumps({"client_id": 6, "request_id": "R-1"}).encode()
    assert names_request(untyped, "delete", "6", "R-1")  # ids compared as text
    assert not names_request(b"not json", "delete", "6", "R-1")
    assert not names_request(b"[1]", "delete", "6", "R-1")
