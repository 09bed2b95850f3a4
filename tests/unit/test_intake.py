"""Intake of request documents (compliance.requests.intake): parsing, normalisation, reason codes, due dates
(R1-R4, G1), verification (R5), minors (R24), look-back (R9, G2) and duplicates (R7, R20)."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from compliance.core.datamap.model import IdentityType
from compliance.requests.deadlines import due_dates as deadlines
from compliance.requests.intake import (
    Accepted,
    Jurisdiction,
    LookBack,
    Reason,
    Rejected,
    RequestType,
    add_months,
    collected_since,
    dedupe_key,
    find_duplicates,
    identity_lists,
    identity_pairs,
    parse_documents,
    received_day,
    request_key,
    validate_request,
)
from compliance.requests.intake import identity_keys as intake_identity_keys

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
CLIENTS = {"1": True, "2": True, "3": False}  # registry keys as text (inbox.load_clients)
KEY = b"unit-test-hash-key"

DELETE = {
    "request_id": "acme-2025-0001",
    "client_id": 1,
    "type": "delete",
    "identities": {"email": "Jane.Doe@Example.COM", "phone": "(415) 555-0134"},
    "received_at": "2025-03-01T10:00:00-08:00",
    "forwarded_at": "2025-03-02T09:00:00Z",
    "verification": {
        "method": "email_link",
        "verified_at": "2025-03-01T12:00:00-08:00",
        "verified_by": "acme-privacy-portal",
    },
}


def make(**changes) -> dict:
    """DELETE with top-level changes; a value of ... removes the field."""
    doc = copy.deepcopy(DELETE)
    for key, value in changes.items():
        if value is ...:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def parse(doc, **kw) -> Accepted | Rejected:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    (result,) = parse_documents(raw, "inbox/1/req.json", now=NOW, clients=CLIENTS, **kw)
    return result


def accepted(doc, **kw) -> Accepted:
    result = parse(doc, **kw)
    assert isinstance(result, Accepted), result
    return result


def rejected(doc, **kw) -> Rejected:
    result = parse(doc, **kw)
    assert isinstance(result, Rejected), result
    return result


# --------------------------------------------------------------------------------------------
# Valid requests


def test_valid_ccpa_delete():
    req = accepted(DELETE)
    assert req.request_id == "acme-2025-0001"
    assert req.client_id == "1"  # a JSON integer stands for its decimal text (issue 14)
    assert req.type is RequestType.delete
    assert req.jurisdiction is Jurisdiction.ccpa
    assert req.identities.email == "jane.doe@example.com"
    assert req.identities.phone == "+14155550134"
    assert req.identities.contact_id is None
    assert req.received_at == datetime(2025, 3, 1, 18, 0, tzinfo=UTC)
    assert req.received_at.tzinfo is UTC
    assert req.forwarded_at == datetime(2025, 3, 2, 9, 0, tzinfo=UTC)
    assert req.verification.method == "email_link"
    assert req.verification.verified_at == datetime(2025, 3, 1, 20, 0, tzinfo=UTC)
    assert req.verification.verified_by == "acme-privacy-portal"
    assert req.guardian_verification is None
    assert (req.is_minor, req.under_13) == (False, False)
    assert req.look_back is None and req.collected_since is None  # deletion covers all data
    # R1-R4: from the business's receipt, day 1 = 2025-03-01
    assert req.due.received_on == date(2025, 3, 1)
    assert req.due.ack_due == date(2025, 3, 11)
    assert req.due.response_due == date(2025, 4, 14)
    assert req.due.extended_due == date(2025, 5, 29)
    assert req.source == "inbox/1/req.json" and req.line is None


def test_valid_gdpr_access_with_look_back_all():
    doc = make(
        type="access", jurisdiction="gdpr", look_back="all", received_at="2025-01-31T09:00:00+01:00"
    )
    doc["verification"]["verified_at"] = "2025-01-31T10:00:00+01:00"
    req = accepted(doc)
    assert req.type is RequestType.access
    assert req.jurisdiction is Jurisdiction.gdpr
    assert req.look_back is LookBack.all
    assert req.collected_since is None  # G2: no look-back limit
    assert req.due.received_on == date(2025, 1, 31)
    assert req.due.response_due == date(2025, 2, 28)  # G1: one month, clamped
    assert req.due.extended_due == date(2025, 4, 30)


def test_gdpr_access_look_back_defaults_to_all():
    req = accepted(make(type="access", jurisdiction="gdpr"))
    assert req.look_back is LookBack.all and req.collected_since is None


def test_ccpa_access_look_back_default_is_12_months():
    req = accepted(make(type="access"))
    assert req.look_back is LookBack.default
    assert req.collected_since == datetime(2024, 3, 1, tzinfo=UTC)  # R9, widened to midnight


def test_ccpa_access_since_2022():
    req = accepted(make(type="access", look_back="since_2022"))
    assert req.look_back is LookBack.since_2022
    assert req.collected_since == datetime(2022, 1, 1, tzinfo=UTC)


def test_optional_fields_may_be_null():
    doc = make(forwarded_at=None, jurisdiction=None, subject=None, look_back=None, notes=None)
    doc["guardian_verification"] = None
    req = accepted(doc)
    assert req.jurisdiction is Jurisdiction.ccpa and req.forwarded_at is None


def test_client_id_as_numeric_string():
    assert accepted(make(client_id="2")).client_id == "2"


def test_client_id_is_compared_as_the_registry_spells_it():
    """R6: "02" is not client 2 of an integer registry; no leading zeros, signs or blanks."""
    for spelling in ("02", "+2", "2.0", "0x2"):
        assert rejected(make(client_id=spelling)).reason is Reason.unknown_client, spelling
    assert rejected(make(client_id=" 2")).reason is Reason.bad_text


def test_string_tenants_of_a_text_registry():
    """Tenant ids as the CRM spells them: "01" and "1" are distinct tenants, Unicode allowed."""
    clients = {"acme-east": True, "01": True, "1": False, "société-東京": True}

    def one(client_id, **kw):
        raw = json.dumps(make(client_id=client_id)).encode()
        (result,) = parse_documents(raw, "x", now=NOW, clients=clients, **kw)
        return result

    assert one("acme-east").client_id == "acme-east"
    assert one("01").client_id == "01"
    assert one("1").reason is Reason.inactive_client  # "1" is its own (inactive) tenant
    assert one(1).reason is Reason.inactive_client  # the integer 1 is "1", never "01"
    assert one("société-東京").client_id == "société-東京"
    assert one("ACME-EAST").reason is Reason.unknown_client  # exact spelling
    assert one("01", source_client="01").client_id == "01"
    assert one("01", source_client="1").reason is Reason.client_mismatch


@pytest.mark.parametrize(
    "client_id",
    [
        "acme\u200beast",
        "acme\u202eeast",
        "acme\u0000",
        "acme\neast",
        "acme/east",
        "..",
        "",
        "a" * 256,
    ],
)
def test_client_id_with_invisible_or_path_characters_is_bad_text(client_id):
    raw = json.dumps(make(client_id=client_id.encode().decode("unicode_escape"))).encode()
    (result,) = parse_documents(raw, "x", now=NOW, clients={"acmeeast": True, "acme": True})
    assert result.reason is Reason.bad_text and result.field == "client_id", result
    assert "R6" in result.message and result.client_id is None


@pytest.mark.parametrize("client_id", [-1, 2**63, 1.0, True, None, [1], {"id": 1}])
def test_client_id_of_a_wrong_json_type(client_id):
    result = rejected(make(client_id=client_id))
    assert result.reason is Reason.wrong_type and result.field == "client_id"


def test_source_client_matching_is_accepted():
    assert accepted(DELETE, source_client="1").client_id == "1"
    assert accepted(DELETE, source_client=1).client_id == "1"  # an int source is its text


def test_minor_under_13_with_guardian_verification():
    doc = make(
        subject={"is_minor": True, "under_13": True},
        guardian_verification={
            "method": "signed_consent_form",
            "verified_at": "2025-03-02T10:00:00Z",
            "verified_by": "acme-support",
        },
    )
    req = accepted(doc)
    assert (req.is_minor, req.under_13) == (True, True)
    assert req.guardian_verification is not None
    assert req.guardian_verification.method == "signed_consent_form"


def test_minor_13_to_15_needs_no_guardian():
    req = accepted(make(subject={"is_minor": True, "under_13": False}))
    assert (req.is_minor, req.under_13) == (True, False)


def test_under_13_implies_minor():
    doc = make(
        subject={"is_minor": False, "under_13": True},
        guardian_verification=DELETE["verification"],
    )
    assert accepted(doc).is_minor is True


def test_verification_slightly_before_receipt_is_tolerated():
    doc = make()
    doc["verification"]["verified_at"] = "2025-03-01T00:00:00-08:00"  # 10 h before receipt
    assert accepted(doc).verification.verified_at < accepted(doc).received_at


def test_received_within_clock_skew_is_accepted():
    stamp = (NOW + timedelta(minutes=4)).isoformat()
    doc = make(received_at=stamp, forwarded_at=...)
    doc["verification"]["verified_at"] = stamp
    assert accepted(doc).received_at == NOW + timedelta(minutes=4)


def test_notes_kept_but_not_in_repr():
    req = accepted(make(notes="Consumer called twice.\nPlease hurry."))
    assert req.notes == "Consumer called twice.\nPlease hurry."
    assert "hurry" not in repr(req)


def test_accepted_is_frozen_and_repr_hides_identities():
    req = accepted(DELETE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.client_id = 2  # type: ignore[misc]
    text = repr(req)
    assert "jane" not in text.lower() and "4155550134" not in text
    assert "email" in text and "phone" in text  # the kinds are shown
    assert list(req.identities.items()) == [
        (IdentityType.email, "jane.doe@example.com"),
        (IdentityType.phone, "+14155550134"),
    ]
    assert req.identities.kinds == (IdentityType.email, IdentityType.phone)


def test_validate_request_on_a_decoded_object():
    req = validate_request(DELETE, "api", now=NOW, clients=CLIENTS, line=7)
    assert isinstance(req, Accepted) and req.line == 7


def test_now_must_be_aware():
    with pytest.raises(ValueError):
        parse_documents(b"{}", "x", now=datetime(2025, 3, 10), clients=CLIENTS)


# --------------------------------------------------------------------------------------------
# Normalisation


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Jane.Doe@Example.COM", "jane.doe@example.com"),
        ("  jane@example.com  ", "jane@example.com"),
        ("o'brien@example.com", "o'brien@example.com"),  # an apostrophe is legal (RFC 5322)
        ("jane+crm@Sub.Example.org", "jane+crm@sub.example.org"),
        ("\u0438\u0432\u0430\u043d@\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444", None),
        ("\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a", None),  # all-Han address
        ("user@\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444", None),  # Latin + Cyrillic IDN
    ],
)
def test_email_normalisation(raw, normalised):
    req = accepted(make(identities={"email": raw}))
    assert req.identities.email == (normalised or raw.strip().lower())


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("(415) 555-0134", "+14155550134"),
        ("415-555-0134", "+14155550134"),
        ("415.555.0134", "+14155550134"),
        ("+1 415 555 0134", "+14155550134"),
        ("+44 20 7946 0958", "+442079460958"),
    ],
)
def test_phone_normalisation(raw, e164):
    assert accepted(make(identities={"phone": raw})).identities.phone == e164


def test_contact_id_is_stripped():
    req = accepted(make(identities={"contact_id": "  CRM-000042 "}))
    assert req.identities.contact_id == "CRM-000042"


def test_blank_identity_counts_as_absent():
    req = accepted(make(identities={"email": "", "phone": "(415) 555-0134"}))
    assert req.identities.email is None and req.identities.phone == "+14155550134"


# Identity syntax, not deliverability (issue 14): the CRM holds these addresses, so they must be
# matchable; nothing is ever looked up on the network.
@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("jane@shop.test", "jane@shop.test"),  # RFC 2606 special-use
        ("Jane.Doe@Intranet.LOCAL", "jane.doe@intranet.local"),  # mDNS special-use
        ("ops@corp.internal", "ops@corp.internal"),  # private-use TLD
        ("jane@mail.example", "jane@mail.example"),  # reserved example names
        ("jane@foo.invalid", "jane@foo.invalid"),  # RFC 6761 invalid
        ("jane@localhost", "jane@localhost"),  # single label, localhost-like
        ("jane@printer", "jane@printer"),  # single label
        ("jane@gmial.com", "jane@gmial.com"),  # a typo domain is still the identity held
        ("jane@no-such-domain-7f3a9c.com", "jane@no-such-domain-7f3a9c.com"),  # non-resolving
        ("jane@x.onion", "jane@x.onion"),
        ("jane@B\u00fcCHER.test", "jane@b\u00fccher.test"),  # IDN + special-use, NFC, lower
        ("jane@xn--bcher-kva.test", "jane@b\u00fccher.test"),  # IDNA form shown in Unicode
    ],
)
def test_special_use_reserved_and_non_resolving_domains_are_accepted(raw, normalised, monkeypatch):
    import socket

    def no_network(*_a, **_k):
        raise AssertionError("intake must never look a domain up")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "gethostbyname", no_network)
    assert accepted(make(identities={"email": raw})).identities.email == normalised


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("jane*@example.com", "wildcard"),
        ("j%ne@example.com", "wildcard"),
        ("jane?@example.test", "wildcard"),
        ("*@corp.internal", "wildcard"),
        ("jane@example.com,bob@example.com", "syntax"),  # not one address
        ("jane@example.com;bob@example.com", "syntax"),
        ("jane@@shop.local", "syntax"),
        ("jane@[127.0.0.1]", "syntax"),  # a domain literal is not an identity we match
        ("jane@shop..test", "syntax"),
        ("jane@-shop.local", "syntax"),
        ("jane@localhost.", "syntax"),
        ("j\u0430ne@shop.test", "scripts"),  # Cyrillic a, special-use domain or not
        ("jane@sh\u043ep.local", "scripts"),
        ("jane\u200b@shop.test", "invisible"),
        ("jane@shop.test\u202e", "invisible"),  # bidi override
    ],
)
def test_hostile_addresses_are_still_refused_whatever_the_domain(raw, why):
    result = rejected(make(identities={"email": raw}))
    assert (result.reason, result.field) == (Reason.malformed_email, "identities.email")
    assert raw.strip() not in result.message
    words = {
        "wildcard": "wildcard",
        "syntax": "syntax",
        "scripts": "lookalike",
        "invisible": "invisible",
    }
    assert words[why] in result.message


def test_phone_keeps_the_spellings_a_crm_may_store():
    req = accepted(make(identities={"phone": "(415) 555-0134"}))
    assert req.identities.phone == "+14155550134"
    variants = req.identities.phone_variants
    assert variants[:2] == ("(415) 555-0134", "4155550134")  # as sent, then its digits
    assert {"415-555-0134", "415.555.0134", "+1 415-555-0134", "14155550134"} <= set(variants)
    assert "+14155550134" not in variants  # E.164 is the identity itself
    assert list(req.identities.match_items())[-len(variants) :] == [
        (IdentityType.phone, v) for v in variants
    ]
    # dedupe keys and the stored document: E.164 first; a plain list so readers need no intake
    assert list(req.identities.items()) == [(IdentityType.phone, "+14155550134")]
    doc = req.identities.as_doc()
    assert doc == {"phone": ["+14155550134", *variants]}
    assert identity_pairs(json.loads(json.dumps(doc))) == tuple(
        (IdentityType.phone, v) for v in ("+14155550134", *variants)
    )
    assert identity_lists({"email": "a@b.test", "phone": "+14155550134"}) == {
        "email": ["a@b.test"],
        "phone": ["+14155550134"],
    }  # documents stored before this change read the same


def test_phone_variants_do_not_change_duplicate_detection():
    first = accepted(make(identities={"phone": "+1 415 555 0134"}))
    again = accepted(make(request_id="other-1", identities={"phone": "415.555.0134"}))
    key = b"k"
    assert intake_identity_keys(first, key) == intake_identity_keys(again, key)


@pytest.mark.parametrize(
    ("raw", "region", "e164", "national"),
    [
        ("020 7946 0958", "GB", "+442079460958", "02079460958"),
        ("020 7946 0958", "gb", "+442079460958", "02079460958"),  # case-insensitive
        ("030 12345678", "DE", "+493012345678", "03012345678"),
        ("+1 415 555 0134", "GB", "+14155550134", "4155550134"),  # international wins
        ("(415) 555-0134", None, "+14155550134", "4155550134"),  # US when not given
    ],
)
def test_phone_is_read_in_the_requests_region(raw, region, e164, national):
    doc = make(identities={"phone": raw}, **({"phone_region": region} if region else {}))
    req = accepted(doc)
    assert req.identities.phone == e164
    assert national in req.identities.phone_variants


def test_a_national_number_of_another_country_needs_its_region():
    assert rejected(make(identities={"phone": "020 7946 0958"})).reason == Reason.malformed_phone


@pytest.mark.parametrize("region", ["ZZ", "UK", "USA", "1", "", " ", "U\u0405"])
def test_phone_region_must_be_a_known_iso_code(region):
    result = rejected(make(phone_region=region))
    assert (result.reason, result.field) == (Reason.malformed_phone, "phone_region")
    assert "ISO 3166-1 alpha-2" in result.message


def test_phone_region_of_a_wrong_json_type():
    result = rejected(make(phone_region=44))
    assert (result.reason, result.field) == (Reason.wrong_type, "phone_region")


# --------------------------------------------------------------------------------------------
# Every reason code


def _verification(**changes) -> dict:
    return {**DELETE["verification"], **changes}


CASES: list[tuple[Reason, object, str | None]] = [
    (Reason.too_large, json.dumps(make(notes="n" * 70_000)).encode(), None),
    (Reason.encoding, b"\xef\xbb\xbf" + json.dumps(DELETE).encode(), None),
    (Reason.encoding, json.dumps(DELETE).encode().replace(b"acme", b"\xff\xfe", 1), None),
    (Reason.invalid_json, b'{"request_id": "a",', None),
    (Reason.invalid_json, b"", None),
    (
        Reason.invalid_json,
        json.dumps(DELETE).replace('"client_id": 1', '"client_id": NaN').encode(),
        None,
    ),
    (Reason.invalid_json, b'{"request_id": "a", "request_id": "b"}', None),
    (Reason.invalid_json, b"[" * 100 + b"]" * 100, None),
    (Reason.not_an_object, [DELETE], None),
    (Reason.unknown_field, make(priority="high"), "priority"),
    (Reason.unknown_field, make(identities={"ssn": "078-05-1120"}), "identities.ssn"),
    (Reason.missing_field, make(request_id=...), "request_id"),
    (Reason.missing_field, make(received_at=...), "received_at"),
    (Reason.wrong_type, make(identities="jane@example.com"), "identities"),
    (Reason.wrong_type, make(client_id=[1]), "client_id"),
    (Reason.wrong_type, make(client_id=True), "client_id"),
    (Reason.wrong_type, make(received_at=1740852000), "received_at"),
    (Reason.bad_text, make(notes="bell\u0007"), "notes"),
    (
        Reason.bad_text,
        make(verification=_verification(verified_by="x" * 129)),
        "verification.verified_by",
    ),
    (Reason.bad_request_id, make(request_id="../../etc/passwd"), "request_id"),
    (Reason.bad_request_id, make(request_id="a..b"), "request_id"),
    (Reason.bad_request_id, make(request_id="req-1\n"), "request_id"),
    (Reason.unknown_client, make(client_id=99), "client_id"),
    (Reason.inactive_client, make(client_id=3), "client_id"),
    (Reason.unknown_type, make(type="erasure"), "type"),
    (Reason.unknown_jurisdiction, make(jurisdiction="pipeda"), "jurisdiction"),
    (Reason.bad_date, make(received_at="2025-03-01T10:00:00"), "received_at"),
    (Reason.bad_date, make(received_at="2025-02-29T10:00:00Z"), "received_at"),
    (Reason.bad_date, make(forwarded_at="2025-02-01T00:00:00Z"), "forwarded_at"),
    (
        Reason.bad_date,
        make(verification=_verification(verified_at="2026-01-01T00:00:00Z")),
        "verification.verified_at",
    ),
    (Reason.received_in_future, make(received_at="2025-03-10T12:06:00Z"), "received_at"),
    (Reason.received_too_old, make(received_at="1999-06-01T00:00:00Z"), "received_at"),
    (Reason.not_verified, make(verification=...), "verification"),
    (Reason.not_verified, make(verification={"method": "email_link"}), "verification.verified_at"),
    (
        Reason.verified_before_received,
        make(verification=_verification(verified_at="2025-02-27T00:00:00Z")),
        "verification.verified_at",
    ),
    (
        Reason.minor_without_guardian_verification,
        make(subject={"is_minor": True, "under_13": True}),
        "guardian_verification",
    ),
    (Reason.no_identity, make(identities={}), "identities"),
    (Reason.no_identity, make(identities=...), "identities"),
    (Reason.malformed_email, make(identities={"email": "jane@@example.com"}), "identities.email"),
    (
        Reason.malformed_email,
        make(identities={"email": "j\u0430ne@example.com"}),
        "identities.email",
    ),
    (
        Reason.malformed_email,
        make(identities={"email": "jane\u200b@example.com"}),
        "identities.email",
    ),
    (
        Reason.malformed_email,
        make(identities={"email": "jane\ufeff@example.com"}),
        "identities.email",
    ),
    (
        Reason.malformed_email,
        make(identities={"email": "jane\u2060@example.com"}),
        "identities.email",
    ),
    (
        Reason.malformed_email,
        make(identities={"email": "jane\u200d@example.com"}),
        "identities.email",
    ),
    (Reason.malformed_phone, make(identities={"phone": "555-01"}), "identities.phone"),
    (
        Reason.malformed_phone,
        make(identities={"phone": "'; DROP TABLE x;-- 4155550134"}),
        "identities.phone",
    ),
    (
        Reason.malformed_contact_id,
        make(identities={"contact_id": "1 OR 1=1"}),
        "identities.contact_id",
    ),
    (Reason.bad_look_back, make(look_back="default"), "look_back"),
    (Reason.bad_look_back, make(type="access", look_back="all"), "look_back"),
    (
        Reason.bad_look_back,
        make(type="access", jurisdiction="gdpr", look_back="since_2022"),
        "look_back",
    ),
    (  # R5 (issue 15): "specific_pieces" or "categories", nothing else
        Reason.bad_verification_level,
        make(type="access", verification={**DELETE["verification"], "level": "some"}),
        "verification.level",
    ),
    (  # G3: portability is the GDPR's right; the CCPA's access bundle is already portable
        Reason.portability_needs_gdpr,
        make(type="portability"),
        "type",
    ),
    (  # G3: https only (tests/unit/test_portability.py has the other refusals)
        Reason.bad_transfer_to,
        make(type="portability", jurisdiction="gdpr", transfer_to="ftp://x.example/in"),
        "transfer_to",
    ),
]


@pytest.mark.parametrize(("reason", "doc", "field"), CASES, ids=lambda v: getattr(v, "value", None))
def test_reason(reason, doc, field):
    result = rejected(doc)
    assert result.reason is reason, result
    assert result.field == field
    assert result.message and result.source == "inbox/1/req.json"


def test_reason_client_mismatch():
    result = rejected(DELETE, source_client=2)
    assert result.reason is Reason.client_mismatch and result.field == "client_id"


def test_reason_duplicate():
    first, second = (accepted(DELETE), accepted(make(request_id="acme-2025-0002")))
    out = find_duplicates([first, second], set(), KEY)
    assert out[0] is first
    assert isinstance(out[1], Rejected) and out[1].reason is Reason.duplicate


def test_every_reason_code_is_tested():
    tested = {reason for reason, _, _ in CASES} | {Reason.client_mismatch, Reason.duplicate}
    assert tested == set(Reason)


def test_messages_cite_a_rule():
    for _, doc, _ in CASES:
        message = rejected(doc).message
        assert any(
            f"({rule}" in message or f", {rule})" in message or f"; {rule})" in message
            for rule in ("R1", "R5", "R6", "R9", "R22", "R24", "G1", "G2", "G3", "R3")
        ), message


def test_rejected_carries_safe_request_and_client_ids():
    result = rejected(make(client_id=99))
    assert (result.request_id, result.client_id) == ("acme-2025-0001", "99")
    result = rejected(make(request_id="../x", client_id=[1]))
    assert (result.request_id, result.client_id) == (None, None)
    assert result.as_dict()["reason"] == "bad_request_id"


def test_unknown_field_hints_opendsr_name():
    doc = make(request_id=...)
    doc["subject_request_id"] = "x"
    assert "did you mean request_id" in rejected(doc).message


# --------------------------------------------------------------------------------------------
# NDJSON


def test_ndjson_mixed_good_and_bad_lines():
    lines = [
        json.dumps(make(request_id="r1")),
        "{oops",
        "",
        json.dumps(make(request_id="r3", client_id=99)),
        "   ",
        json.dumps(make(request_id="r5", identities={"email": "Second@Example.com"})) + "\r",
        "[1, 2]",
        json.dumps(make(request_id="r7", type="access")),
    ]
    results = parse_documents(
        "\n".join(lines).encode() + b"\n", "batch.ndjson", now=NOW, clients=CLIENTS
    )
    summary = [(r.line, type(r).__name__, getattr(r, "reason", None)) for r in results]
    assert summary == [
        (1, "Accepted", None),
        (2, "Rejected", Reason.invalid_json),
        (4, "Rejected", Reason.unknown_client),
        (6, "Accepted", None),
        (7, "Rejected", Reason.not_an_object),
        (8, "Accepted", None),
    ]
    assert [r.request_id for r in results if isinstance(r, Accepted)] == ["r1", "r5", "r7"]
    assert results[3].identities.email == "second@example.com"
    assert all(r.source == "batch.ndjson" for r in results)


def test_ndjson_bad_encoding_on_one_line_only():
    raw = (
        json.dumps(make(request_id="r1")).encode()
        + b"\n\xff\xfe{}\n"
        + json.dumps(make(request_id="r3")).encode()
    )
    results = parse_documents(raw, "b", now=NOW, clients=CLIENTS)
    assert [getattr(r, "reason", "ok") for r in results] == ["ok", Reason.encoding, "ok"]


def test_pretty_printed_single_document():
    req = accepted(json.dumps(DELETE, indent=2).encode())
    assert req.line is None


def test_max_bytes_applies_per_line():
    small = json.dumps(make(request_id="r1")).encode()
    big = json.dumps(make(request_id="r2", notes="n" * 1500)).encode()
    results = parse_documents(small + b"\n" + big, "b", now=NOW, clients=CLIENTS, max_bytes=1024)
    assert isinstance(results[0], Accepted)
    assert results[1].reason is Reason.too_large and results[1].line == 2


# --------------------------------------------------------------------------------------------
# No identity value leaves through a rejection


IDENTITY_VALUES = [
    "jane.doe@example.com",
    "j\u0430ne.doe@example.com",
    "jane\u200b.doe@example.com",
    "not-an-email",
    "Jane Doe <jane.doe@example.com>",
    "(415) 555-0134",
    "4155550134",
    "555-01",
    "CRM 000042",
    "078-05-1120",
]


def test_no_identity_value_in_any_rejection():
    docs = []
    for value in IDENTITY_VALUES:
        for kind in ("email", "phone", "contact_id", "ssn"):
            docs.append(make(identities={kind: value}))
            docs.append(make(identities={kind: value}, client_id=99))
            docs.append(make(identities={kind: value}, verification=...))
            docs.append(make(identities={kind: value}, type="access", look_back="forever"))
        docs.append(make(identities={"email": value}, **{value: 1}))  # as an unknown key
        docs.append(make(identities=value))
    raw = "\n".join(json.dumps(d) for d in docs).encode()
    results = parse_documents(raw, "leak.ndjson", now=NOW, clients=CLIENTS)
    results = find_duplicates(results, set(), KEY)
    rejections = [r for r in results if isinstance(r, Rejected)]
    assert len(rejections) > len(docs) / 2
    for r in rejections:
        text = repr(r) + json.dumps(r.as_dict()) + str(r)
        for value in IDENTITY_VALUES:
            assert value not in text, r
            assert value.lower() not in text.lower(), r
        assert "4155550134" not in text and "+14155550134" not in text


# --------------------------------------------------------------------------------------------
# Deadlines (R1-R4, G1)


@pytest.mark.parametrize(
    ("received", "ack", "response", "extended"),
    [
        (date(2025, 3, 1), date(2025, 3, 11), date(2025, 4, 14), date(2025, 5, 29)),
        (date(2024, 12, 25), date(2025, 1, 4), date(2025, 2, 7), date(2025, 3, 24)),
        (date(2024, 2, 29), date(2024, 3, 10), date(2024, 4, 13), date(2024, 5, 28)),
    ],
)
def test_ccpa_deadlines(received, ack, response, extended):
    due = deadlines(received, "ccpa")
    assert (due.received_on, due.ack_due, due.response_due, due.extended_due) == (
        received,
        ack,
        response,
        extended,
    )
    # R3: receipt is day 1 of 45; R4: at most 90 days in all; R2: 10 calendar days
    assert (due.response_due - received).days + 1 == 45
    assert (due.extended_due - received).days + 1 == 90
    assert (due.ack_due - received).days == 10


@pytest.mark.parametrize(
    ("received", "response", "extended"),
    [
        (date(2025, 1, 15), date(2025, 2, 15), date(2025, 4, 15)),
        (date(2025, 1, 31), date(2025, 2, 28), date(2025, 4, 30)),
        (date(2024, 1, 31), date(2024, 2, 29), date(2024, 4, 30)),  # leap year
        (date(2024, 1, 30), date(2024, 2, 29), date(2024, 4, 30)),
        (date(2025, 3, 31), date(2025, 4, 30), date(2025, 6, 30)),
        (date(2025, 12, 31), date(2026, 1, 31), date(2026, 3, 31)),  # year boundary
        (date(2025, 11, 30), date(2025, 12, 30), date(2026, 2, 28)),
        (date(2023, 11, 30), date(2023, 12, 30), date(2024, 2, 29)),
        (date(2025, 2, 28), date(2025, 3, 28), date(2025, 5, 28)),
    ],
)
def test_gdpr_deadlines(received, response, extended):
    due = deadlines(received, Jurisdiction.gdpr)
    assert due.response_due == response  # G1
    assert due.extended_due == extended  # G1: + two further months
    assert due.ack_due == received + timedelta(days=10)


def test_deadlines_default_to_ccpa():
    assert deadlines(date(2025, 3, 1)) == deadlines(date(2025, 3, 1), "ccpa")


def test_received_day_uses_the_earlier_of_local_and_utc_day():
    pacific = timezone(timedelta(hours=-8))
    sydney = timezone(timedelta(hours=10))
    # 20:00 in California is already the next day in UTC: the local (earlier) day counts
    assert received_day(datetime(2025, 3, 1, 20, 0, tzinfo=pacific)) == date(2025, 3, 1)
    # 08:00 in Sydney is still the previous day in UTC: the UTC (earlier) day counts
    assert received_day(datetime(2025, 3, 2, 8, 0, tzinfo=sydney)) == date(2025, 3, 1)
    assert received_day(date(2025, 3, 1)) == date(2025, 3, 1)
    with pytest.raises(ValueError):
        received_day(datetime(2025, 3, 1, 20, 0))


def test_accepted_deadlines_use_the_reported_offset():
    doc = make(received_at="2025-03-01T20:00:00-08:00", forwarded_at=...)
    doc["verification"]["verified_at"] = "2025-03-01T21:00:00-08:00"
    req = accepted(doc)
    assert req.received_at.date() == date(2025, 3, 2)  # UTC
    assert req.due.received_on == date(2025, 3, 1)  # the business's day, earlier
    assert req.due.response_due == date(2025, 4, 14)


@pytest.mark.parametrize(
    ("day", "months", "expected"),
    [
        (date(2025, 1, 31), 1, date(2025, 2, 28)),
        (date(2024, 2, 29), -12, date(2023, 2, 28)),
        (date(2024, 2, 29), 12, date(2025, 2, 28)),
        (date(2025, 1, 15), -1, date(2024, 12, 15)),
        (date(2025, 5, 31), 13, date(2026, 6, 30)),
    ],
)
def test_add_months(day, months, expected):
    assert add_months(day, months) == expected


def test_collected_since():
    assert collected_since(date(2024, 2, 29), "default") == datetime(2023, 2, 28, tzinfo=UTC)
    assert collected_since(date(2025, 3, 1), "since_2022") == datetime(2022, 1, 1, tzinfo=UTC)
    assert collected_since(date(2025, 3, 1), "all", "gdpr") is None


# --------------------------------------------------------------------------------------------
# Duplicates (R7, R20)


def test_dedupe_key_is_keyed_and_never_the_value():
    req = accepted(DELETE)
    keys = dedupe_key(req, KEY)
    assert len(keys) == 3  # request_id + email + phone
    assert all(len(k) == 64 and int(k, 16) >= 0 for k in keys)
    assert not any("jane" in k for k in keys)
    assert dedupe_key(req, b"another-key").isdisjoint(keys)
    access = accepted(make(type="access"))
    # same identities, other type: only the request_id key is shared
    assert len(dedupe_key(access, KEY) & keys) == 1


def test_find_duplicates_same_request_id_in_batch():
    a = accepted(DELETE)
    b = accepted(make(identities={"email": "someone.else@example.com"}))  # same request_id
    out = find_duplicates([a, b], set(), KEY)
    assert out[0] is a
    assert out[1].reason is Reason.duplicate and out[1].field == "request_id"
    assert out[1].request_id == "acme-2025-0001" and out[1].client_id == "1"


def test_find_duplicates_same_identities_after_normalisation():
    a = accepted(DELETE)
    b = accepted(
        make(request_id="r2", identities={"email": "JANE.DOE@example.com", "phone": "415-555-0134"})
    )
    out = find_duplicates([a, b], set(), KEY)
    assert out[1].reason is Reason.duplicate and out[1].field == "identities"


def test_find_duplicates_keeps_a_request_with_a_new_identity():
    a = accepted(make(identities={"email": "jane.doe@example.com"}))
    b = accepted(
        make(request_id="r2", identities={"email": "jane.doe@example.com", "phone": "4155550134"})
    )
    c = accepted(make(request_id="r3", identities={"phone": "+1 415 555 0134"}))
    out = find_duplicates([a, b, c], set(), KEY)
    assert [type(r).__name__ for r in out] == ["Accepted", "Accepted", "Rejected"]


def test_find_duplicates_against_existing_keys():
    """Issue 15 (R16, R20, R7): identities deduplicate only against a request still open; once
    it is finished only its request id still counts (`inbox.examine` passes those keys), so the
    same consumer's new deletion, after data was collected again, is a new request."""
    old = accepted(make(request_id="old-1"))
    replay = accepted(make(request_id="old-1", identities={"contact_id": "C-1"}))
    same_person = accepted(make(request_id="new-2"))
    other_client = accepted(make(request_id="new-3", client_id=2))
    other_type = accepted(make(request_id="new-4", type="access"))
    batch = [replay, same_person, other_client, other_type]

    still_open = dedupe_key(old, KEY)
    out = find_duplicates(batch, still_open, KEY)
    assert [getattr(r, "reason", "ok") for r in out] == [
        Reason.duplicate,
        Reason.duplicate,
        "ok",
        "ok",
    ]
    assert "already open" in out[1].message
    assert still_open == dedupe_key(old, KEY)  # not mutated

    finished = {request_key(old, KEY)}  # completed: its identities no longer count
    assert finished == dedupe_key(old, KEY) - intake_identity_keys(old, KEY)
    out = find_duplicates(batch, finished, KEY)
    assert [getattr(r, "reason", "ok") for r in out] == [Reason.duplicate, "ok", "ok", "ok"]


def test_rejected_documents_say_what_they_are_for_the_request_log():
    """R22/R23 (issue 15): a refusal carries the type, receipt time and jurisdiction the document
    gives, each read on its own; what it does not give readably is None (logged `unknown`), never
    a guess from the source name or the clock; an absent jurisdiction is the format's CCPA."""
    unverified = make(type="access", jurisdiction="gdpr", look_back="all")
    del unverified["verification"]
    got = validate_request(unverified, "inbox/1/delete-me.json", now=NOW, clients=CLIENTS)
    assert got.reason is Reason.not_verified
    assert (got.type, got.jurisdiction) == ("access", "gdpr")
    assert got.received_at == datetime(2025, 3, 1, 18, 0, tzinfo=UTC)  # the document's, in UTC

    bad = make(type="erasure", jurisdiction="CCPA", received_at="yesterday")
    got = validate_request(bad, "inbox/1/access.json", now=NOW, clients=CLIENTS)
    assert got.reason is Reason.unknown_type
    assert (got.type, got.jurisdiction, got.received_at) == (None, None, None)

    future = make(received_at="2031-01-01T00:00:00Z", notes=7)
    future.pop("jurisdiction", None)
    got = validate_request(future, "inbox/1/x.json", now=NOW, clients=CLIENTS)
    assert got.reason is Reason.received_in_future
    assert (got.type, got.jurisdiction, got.received_at) == ("delete", "ccpa", None)

    (garbage,) = parse_documents(b"{not json", "inbox/1/g.json", now=NOW, clients=CLIENTS)
    assert (garbage.type, garbage.jurisdiction, garbage.received_at) == (None, None, None)


def test_find_duplicates_passes_rejections_through_in_order():
    raw = b"\n".join(
        json.dumps(d).encode() for d in (DELETE, make(client_id=99), make(request_id="r3"), DELETE)
    )
    out = find_duplicates(parse_documents(raw, "b", now=NOW, clients=CLIENTS), set(), KEY)
    assert [(r.line, getattr(r, "reason", "ok")) for r in out] == [
        (1, "ok"),
        (2, Reason.unknown_client),
        (3, Reason.duplicate),  # same identities as line 1
        (4, Reason.duplicate),  # same request_id as line 1
    ]


def test_examples_in_docs_are_accepted():
    """Every JSON example in docs/requests.md parses as stated there."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "requests.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 4
    results = [accepted(block.encode()) for block in blocks]
    delete, child_access, gdpr, portability = results
    assert portability.type is RequestType.portability and portability.transfer_to  # G3
    assert delete.identities.email == "jane.doe@example.com"
    assert (delete.due.ack_due, delete.due.response_due, delete.due.extended_due) == (
        date(2025, 3, 11),
        date(2025, 4, 14),
        date(2025, 5, 29),
    )
    assert child_access.under_13 and child_access.look_back is LookBack.since_2022
    assert gdpr.client_id == "2" and gdpr.due.response_due == date(2025, 2, 28)


# --------------------------------------------------------------------------------------------
# R5: verified for categories only (issue 15)


def _verified_for(level, **changes) -> dict:
    doc = make(**changes)
    if level is not ...:
        doc["verification"]["level"] = level
    return doc


def test_access_verified_for_categories_only_is_accepted_as_such():
    """R5 second half: an access request the business could verify only for categories is no
    longer refused whole; it is accepted and answered with categories (Reg 7024(a)-(b))."""
    req = accepted(_verified_for("categories", type="access"))
    assert req.verification.level == "categories" and req.verification.categories_only
    full = accepted(_verified_for(..., type="access"))  # documents without the field: as before
    assert full.verification.level == "specific_pieces" and not full.verification.categories_only
    assert accepted(_verified_for("specific_pieces")).verification.level == "specific_pieces"


def test_deletion_or_gdpr_verified_for_categories_only_is_refused():
    """A deletion is never acted on with a categories-only verification (R5, Reg 7022(a)); the
    GDPR has no categories-only answer. Both stay refused as `not_verified` (a denial)."""
    for doc in (
        _verified_for("categories"),
        _verified_for(
            "categories",
            type="access",
            jurisdiction="gdpr",
            look_back="all",
        ),
    ):
        res = rejected(doc)
        assert (res.reason, res.field) == (Reason.not_verified, "verification.level")
        assert "R5" in res.message


@pytest.mark.parametrize("level", ["category", "CATEGORIES", "", "full"])
def test_unknown_verification_level_is_an_invalid_submission(level):
    res = rejected(_verified_for(level, type="access"))
    assert (res.reason, res.field) == (Reason.bad_verification_level, "verification.level")
    assert "R5" in res.message
    assert rejected(_verified_for(2, type="access")).reason is Reason.wrong_type


def test_a_guardian_verification_has_no_level():
    doc = make(subject={"is_minor": True, "under_13": True})
    doc["guardian_verification"] = {**DELETE["verification"], "level": "categories"}
    res = rejected(doc)
    assert (res.reason, res.field) == (Reason.unknown_field, "guardian_verification.level")
