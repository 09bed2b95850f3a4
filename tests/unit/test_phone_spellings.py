"""Phones a CRM stores as typed still match (issue 14, deliverable 4; R5).

The resolver compares a phone column as stored, so the CRM's own index serves; the request
therefore carries every common written form of its number (`identities._written_forms`). Here the
CRM keeps '415-555-0134', '(415) 555-0177' and '+14155550199' side by side and requests give
the numbers in other forms.
"""

from __future__ import annotations

from datetime import datetime

import pytest
import sqlalchemy as sa

from compliance.core.datamap.model import IdentityType, SqlSystem
from compliance.requests import identities
from compliance.requests.resolve import Subject, resolve

md = sa.MetaData()
people = sa.Table(
    "people",
    md,
    sa.Column("pid", sa.Integer, primary_key=True),
    sa.Column("org", sa.String(16), nullable=False),
    sa.Column("phone", sa.String(32)),
    sa.Column("created_at", sa.DateTime, nullable=False),
)
SYSTEM = SqlSystem.model_validate(
    {
        "kind": "sql",
        "connection": "crm",
        "consumer_table": "people",
        "tables": {
            "people": {
                "primary_key": "pid",
                "tenant_column": "org",
                "time_column": "created_at",
                "columns": {"phone": {"categories": ["identifiers"], "identity": "phone"}},
            }
        },
    }
)
ROWS = [
    (1, "acme", "415-555-0134"),
    (2, "acme", "(415) 555-0177"),
    (3, "acme", "+14155550199"),
    (4, "beta", "415-555-0134"),  # the same number in another tenant: never matched
    (5, "acme", "415-555-0135"),  # a neighbour: never matched
]


@pytest.fixture
def engine(tmp_path):
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    md.create_all(eng)
    with eng.begin() as conn:
        conn.execute(
            people.insert(),
            [
                {"pid": p, "org": o, "phone": ph, "created_at": datetime(2026, 1, 1)}
                for p, o, ph in ROWS
            ],
        )
    yield eng
    eng.dispose()


def _subject(ref: str, sent: str, region: str | None = None) -> Subject:
    e164, variants = identities._phone(sent, region)
    values = (e164, *variants)
    return Subject(ref, "acme", tuple((IdentityType.phone, v) for v in values))


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ("+14155550134", {1}),
        ("(415) 555-0134", {1}),
        ("4155550177", {2}),
        ("415.555.0199", {3}),
        ("+1 415 555 0135", {5}),
    ],
)
def test_each_stored_form_is_found_from_any_sent_form(engine, sent, expected):
    found = resolve(engine, SYSTEM, [_subject("r", sent)])["r"]
    assert {int(c) for c in found.consumer_ids} == expected


def test_written_forms_are_one_number_only():
    e164, variants = identities._phone("+14155550134")
    digits = {"".join(ch for ch in v if ch.isdigit()).removeprefix("1") for v in variants}
    assert e164 == "+14155550134"
    assert digits == {"4155550134"}  # every spelling is the same number, none a neighbour
