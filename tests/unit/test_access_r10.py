"""R10 from every source, R14 and G2 (issue 16): the pattern scanner's true positives, its checksum
negatives, no false positive on the demo world's ordinary values, the per-jurisdiction policy,
and bundles whose every member is scanned.
"""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from datetime import UTC, date, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from compliance.access import bundle, disclosure, partial, r10, report
from compliance.core.datamap.model import LogStore, Withhold
from compliance.core.datamap.validate import load_datamap
from compliance.core.settings import REPO_ROOT, Settings
from compliance.core.stores.s3 import list_keys
from compliance.core.stores.sql import engine_from_url
from compliance_dev.world import r10_values
from compliance_dev.world.generate import seed_world

DM = load_datamap(REPO_ROOT / "config" / "datamap.yaml")
WHEN = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)

# -- the patterns ----------------------------------------------------------------------------------

TRUE_POSITIVES = [
    ("ssn", "SSN on file: 219-09-9999."),
    ("ssn", "her social security number is 078 05 1120"),
    ("ssn", "ssn=078051120"),
    ("itin", "ITIN 912-70-1234"),
    ("card", "card 4539 1488 0343 6467 exp 04/29"),
    ("card", "pan:4539148803436467"),
    ("card", "Amex 3782-822463-10005 on file"),
    ("card", "mc 5425-2334-3010-9903"),
    ("routing", "routing number: 021000021"),
    ("routing", "ABA 011000015"),
    ("account", "bank account 000123456789 closed"),
    ("account", "acct #98765432"),
    ("iban", "IBAN DE89 3704 0044 0532 0130 00"),
    ("iban", "pay to GB82WEST12345698765432"),
    ("mbi", "Medicare card 1EG4-TE5-MK73"),
    ("mbi", "mbi 1EG4TE5MK73"),
    ("drivers_licence", "driver's license D7302915"),
    ("drivers_licence", "DL# A1234567"),
    ("passport", "passport no. X20847163"),
    ("medical", "MRN: 00482913"),
    ("medical", "health plan member 4412-88-910"),
]


@pytest.mark.parametrize(("kind", "text"), TRUE_POSITIVES)
def test_true_positives_are_replaced_by_their_type(kind: str, text: str):
    scanner = r10.Scanner()
    out = scanner.redact_text(text)
    statement = r10.statement(r10.KIND_BY_NAME[kind])
    assert statement in out, out
    assert scanner.found[kind] == 1
    # the value is gone: no run of 4+ of its digits is left
    digits = "".join(c for c in text if c.isdigit())
    assert digits[-4:] not in out.replace(" ", "").replace("-", "")


NEGATIVES = [
    "card 4539 1488 0343 6468",  # Luhn fails
    "4539148803436468",  # Luhn fails, bare
    "1733450000000 ms since epoch",  # 13 digits, no issuer starts with 1
    "4539 1488 0343 6467 9",  # odd grouping (4-4-4-4-1 is not a card grouping after 16)
    "routing 021000022",  # ABA checksum fails
    "routing 991000021",  # no Federal Reserve prefix 99
    "021000021",  # a valid ABA number without a keyword: too many ids look like that
    "SSN 000-12-3456",  # area 000
    "SSN 666-12-3456",  # area 666
    "ssn 123-00-4567",  # group 00
    "123456789",  # bare 9 digits
    "IBAN DE89 3704 0044 0532 0130 01",  # mod-97 fails
    "call +14155550123 or (415) 555-0123 or 415-555-0123",
    "at 2026-11-20T09:30:00Z, 2026-11-20 09:30:00.123456+00:00",
    "from 10.0.12.255 and 2001:db8::1",
    "uuid 12345678-1234-1234-1234-123456789012",
    "sha256 4111111111111111aa9f0e6b0c8c1d2e3f4a5b6c7d8e9f00112233445566778",
    "zip 94107-1234, order A1234567, ticket 98765, amount 12999",
    "card ending 6467, brand visa, token tok_4539148803436467ab",
    "medicare plan chosen",
    "1eg4-te5-mk73",  # an MBI is upper case
]


@pytest.mark.parametrize("text", NEGATIVES)
def test_checksum_and_format_negatives_are_left_alone(text: str):
    scanner = r10.Scanner()
    assert scanner.redact_text(text) == text
    assert not scanner.found


def test_a_field_name_is_the_keyword_for_a_bare_value():
    scanner = r10.Scanner()
    out = scanner.redact_value(
        {
            "customer": {"ssn": "078051120", "passport": "X20847163"},
            "routing_number": 21000021,  # an int: leading zero lost, checksum still valid? no
            "bank": {"account_number": "000123456789"},
            "drivers_license": "D7302915",
            "acct_id": 123456,  # our own key, not an account number
            "contact_id": 123456789,
        }
    )
    assert out["customer"] == {
        "ssn": "[withheld: social security number held]",
        "passport": "[withheld: passport number held]",
    }
    assert out["bank"]["account_number"] == "[withheld: bank account number held]"
    assert out["drivers_license"] == "[withheld: drivers licence number held]"
    assert out["acct_id"] == 123456 and out["contact_id"] == 123456789
    assert out["routing_number"] == 21000021  # 8 digits: not a routing number


def test_the_checksums():
    assert r10.luhn("4539148803436467") and not r10.luhn("4539148803436468")
    assert r10.aba("021000021") and not r10.aba("021000022") and not r10.aba("02100002")
    assert r10.iban("GB82WEST12345698765432") and not r10.iban("GB82WEST12345698765433")
    assert r10.card("4539-1488-0343-6467") and not r10.card("4539-14880343-6467")


# -- G2: the policy per jurisdiction ---------------------------------------------------------------


def test_policy_table_per_jurisdiction():
    expected = {
        "ccpa": frozenset(Withhold),
        "gdpr": frozenset({Withhold.password, Withhold.security_answer, Withhold.biometric}),
    }
    assert expected == r10.WITHHELD_BY_JURISDICTION
    assert r10.withheld_kinds("unknown") == frozenset(Withhold)  # the strictest by default
    assert r10.basis("gdpr")["basis"].startswith("GDPR Art. 15(4)")
    assert r10.basis("ccpa")["basis"] == "Cal. Code Regs. tit. 11, 7024(d)"
    gdpr = r10.Scanner.for_jurisdiction("gdpr")
    assert gdpr.redact_text("SSN 219-09-9999") == "SSN 219-09-9999"  # Art. 15(3): own data
    assert "219-09-9999" not in r10.Scanner.for_jurisdiction("ccpa").redact_text("219-09-9999")


# -- reports and bundles ---------------------------------------------------------------------------


def _request(**over: Any) -> dict:
    req = {
        "request_id": "ACC-1",
        "client_id": 3,
        "jurisdiction": "ccpa",
        "look_back": "default",
        "received_at": "2026-11-18T10:00:00+00:00",
        "since": "2025-11-18T00:00:00+00:00",
        "until": "2026-11-18T10:00:00+00:00",
    }
    return req | over


def _records() -> list[dict]:
    v = r10_values.VALUES
    return [
        {
            "source": "crm.support_tickets",
            "record": 11,
            "collected_at": "2026-11-01T00:00:00Z",
            "values": {"subject": r10_values.SUBJECT, "body": r10_values.TICKET_BODY},
            "withheld": [],
        },
        {
            "source": "crm.contacts",
            "record": 7,
            "collected_at": "2026-01-02T03:04:05Z",
            "values": {"email": "jo@example.com", "phone": "+14155550100"},
            "withheld": ["drivers_license"],
        },
        {
            "source": "crm.portal_accounts",
            "record": 2,
            "collected_at": "2026-01-02T03:04:05Z",
            "values": {"username": "jo"},
            "withheld": ["password_hash", "security_answer"],
        },
        {
            "source": "app_logs",
            "record": None,
            "collected_at": "2026-05-01T00:00:00Z",
            "values": {
                "email": "jo@example.com",
                "msg": r10_values.LOG_MSG,
                "customer": {"ssn": v["ssn_bare"], "passport": v["passport"]},
                "routing_number": v["routing"],
                "bank": {"account_number": v["account"]},
                "medicare_id": v["mbi"],
                "drivers_license": v["drivers_licence"],
            },
            "withheld": [],
        },
        {
            "source": "crm.call_recordings",
            "record": 9,
            "collected_at": "2026-04-01T00:00:00Z",
            "values": {"caller_phone": "+14155550100", "duration_s": 61},
            "withheld": ["voiceprint"],
            "object": "recordings/3/9.wav",
        },
    ]


def _assemble(**req: Any) -> dict:
    return report.assemble(
        DM,
        _request(**req),
        {"email": ["jo@example.com"]},
        _records(),
        retention=disclosure.Retention({}, available=False),
        generated_at=WHEN,
        recordings={("crm.call_recordings", "9"): {"file": None, "status": "not_requested"}},
    )


def _members(body: dict) -> dict[str, str]:
    out = io.BytesIO()
    bundle.write_bundle(out, body)
    with zipfile.ZipFile(out) as zf:
        return {n: zf.read(n).decode("utf-8") for n in zf.namelist()}


def test_ccpa_bundle_holds_no_r10_value_in_any_member():
    body = _assemble()
    members = _members(body)
    assert set(members) >= {"index.html", "data.json", "manifest.json"}
    assert any(n.startswith("csv/") for n in members)
    for name, text in members.items():
        for value in r10_values.VALUES.values():
            assert value not in text, (name, value)
            assert value.replace(" ", "").replace("-", "") not in text, (name, value)
    for statement in r10_values.STATEMENTS.values():
        assert statement in members["data.json"], statement
        assert statement in members["index.html"], statement
    assert {f["type"] for f in body["withheld_in_text"]} >= set(r10_values.STATEMENTS)


def test_partial_denial_says_what_and_on_which_basis():
    body = _assemble()
    parts = {d["part"]: d for d in body["partial_denial"]}
    assert parts["withheld_fields"]["basis"] == "Cal. Code Regs. tit. 11, 7024(d)"
    assert "financial account" not in parts["withheld_fields"]["what"]  # none withheld here
    assert "government identification" in parts["withheld_fields"]["what"]
    assert parts["withheld_in_text"]["rule"] == "R10"
    assert parts["recordings_left_out"]["basis"] == partial.R14_BASIS
    html = _members(body)["index.html"]
    assert 'id="partial-denial"' in html and "7024(e)" in html and "7024(d)" in html
    # the rest is given: the ticket and log line are there, with their ordinary text
    tickets = next(s for s in body["sources"] if s["source"] == "crm.support_tickets")
    assert "update billing" in tickets["records"][0]["values"]["body"]


def test_categories_only_report_states_the_denied_specific_pieces():
    body = report.assemble_categories(
        DM, _request(), retention=disclosure.Retention({}, available=False), generated_at=WHEN
    )
    [item] = body["partial_denial"]
    assert item["part"] == "specific_pieces" and item["rule"] == "R5"
    assert "7024(a)-(b)" in item["basis"]


def test_gdpr_bundle_discloses_own_numbers_and_withholds_credentials():
    body = _assemble(jurisdiction="gdpr", since=None)
    members = _members(body)
    log = next(s for s in body["sources"] if s["source"] == "app_logs")["records"][0]["values"]
    assert log["customer"]["ssn"] == r10_values.VALUES["ssn_bare"]  # Art. 15(3)
    assert r10_values.VALUES["card"] in members["data.json"]
    assert body["withheld_in_text"] == []
    withheld = {w["field"]: w for w in body["withheld"]}
    assert set(withheld) >= {"crm.portal_accounts.password_hash", "crm.call_recordings.voiceprint"}
    assert withheld["crm.portal_accounts.password_hash"]["basis"] == r10.basis("gdpr")["basis"]
    # declared but never read from the store: said honestly, not dressed up as Art. 15(4)
    assert withheld["crm.contacts.drivers_license"]["text"] == r10.NOT_READ["text"]
    assert "Art. 15(4)" in members["index.html"]


@pytest.mark.parametrize("jurisdiction", ["ccpa", "gdpr"])
def test_a_declared_value_the_store_gave_follows_the_policy(jurisdiction: str):
    """G2 in the report: a government id the part carries is shown to a GDPR consumer only."""
    records = [
        {
            "source": "crm.contacts",
            "record": 7,
            "collected_at": "2026-01-02T03:04:05Z",
            "values": {"email": "jo@example.com", "drivers_license": "D7302915"},
            "withheld": [],
        }
    ]
    body = report.assemble(
        DM,
        _request(jurisdiction=jurisdiction),
        {},
        records,
        retention=disclosure.Retention({}, available=False),
        generated_at=WHEN,
    )
    data = _members(body)["data.json"]
    assert ("D7302915" in data) is (jurisdiction == "gdpr")


def test_the_last_pass_catches_a_value_outside_the_records():
    """A value that reaches a member by another path (here the request id) is still replaced."""
    body = _assemble(request_id="ACC 219-09-9999")
    for name, text in _members(body).items():
        assert "219-09-9999" not in text, name


# -- the demo world: no false positive on its ordinary values --------------------------------------


def _scan_all(scanner: r10.Scanner, rows: Any) -> None:
    for row in rows:
        for key, value in row.items():
            if isinstance(value, str | int) and not isinstance(value, bool):
                scanner.redact_value(value, key)


def test_demo_world_values_raise_no_false_positive(tmp_path, s3):
    engine = engine_from_url(f"sqlite:///{tmp_path / 'crm.db'}")
    seed_world(engine, s3, DM, 60, 3, date(2026, 6, 1))
    withheld = {
        (t, c)
        for t, spec in DM.systems["crm"].tables.items()
        for c, col in spec.columns.items()
        if col.withhold is not None
    }
    scanner = r10.Scanner()
    with engine.connect() as conn:
        for table in sa.inspect(engine).get_table_names():
            rows = conn.execute(sa.text(f"select * from {table}")).mappings()
            rows = [
                {k: v for k, v in r.items() if (table, k) not in withheld}
                for r in rows
                if not (table == "support_tickets" and r["subject"] == r10_values.SUBJECT)
            ]
            _scan_all(scanner, rows)
    assert not scanner.found, dict(scanner.found)
    lines = 0
    for store in DM.stores.values():
        if not isinstance(store, LogStore):
            continue
        for obj in list_keys(s3, store.bucket, store.prefix):
            if "r10-fixture" in obj["Key"]:
                continue
            body = gzip.decompress(
                s3.get_object(Bucket=store.bucket, Key=obj["Key"])["Body"].read()
            )
            for raw in body.splitlines():
                scanner.redact_value(json.loads(raw))
                lines += 1
    assert lines > 100
    assert not scanner.found, dict(scanner.found)
    with engine.connect() as conn:  # and the planted consumer is there to be found
        contact, client, email = r10_values.find(conn)
    assert contact > 0 and client > 0 and "@" in email


def test_recordings_are_in_bundles_by_default():
    assert Settings.from_env({}).access_include_audio is True
    assert Settings.from_env({"COMPLIANCE_ACCESS_INCLUDE_AUDIO": "0"}).access_include_audio is False
    assert Settings.from_env({}).access_audio_link_bytes == 25 << 20
    assert (
        Settings.from_env({"COMPLIANCE_ACCESS_AUDIO_LINK_BYTES": "10"}).access_audio_link_bytes
        == 10
    )


def test_disclosed_row_gives_each_request_only_what_its_jurisdiction_shows():
    row = {
        "record": 7,
        "values": {"email": "jo@example.com"},
        "withheld": ["drivers_license", "password_hash"],
        "disclosable": {"drivers_license": (Withhold.government_id, "D7302915")},
    }
    gdpr = r10.disclosed_row(row, r10.shown_kinds("gdpr"))
    assert gdpr["values"]["drivers_license"] == "D7302915"
    assert gdpr["withheld"] == ["password_hash"] and "disclosable" not in gdpr
    ccpa = r10.disclosed_row(row, r10.shown_kinds("ccpa"))
    assert ccpa == {k: v for k, v in row.items() if k != "disclosable"}
    assert r10.shown_kinds("ccpa") == frozenset()
