"""The SQL oracle's one statement per table for a whole batch (issue 19, R16.1), on SQLite and
PostgreSQL: a batch spanning tenants, in CRMs whose tenant column is an INTEGER, text ("01" is
not 1) or a UUID, finds a value only within its own request's tenant.

The same value planted in a row of another tenant of the batch is not residue; in the request's
tenant it is. The database keeps tenants apart itself (each row is matched against its own
tenant's terms only); Python's check of the proposed cells is the second line, so the test also
asserts that no other tenant's row is even proposed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa

from compliance.core.datamap.model import DataMap
from compliance.deletion import residue_oracle as oracle
from compliance.deletion.residue_oracle import sql_search

UUID_TYPE = sa.Uuid().with_variant(sa.String(36), "sqlite")  # SQLite CRMs keep UUIDs as text
U1, U2 = "6f1c2b3a-0d4e-4f5a-8b6c-7d8e9fa0b1c2", "0a9b8c7d-6e5f-4a3b-9c2d-1e0f2a3b4c5d"
GONE = "3c3c3c3c-0000-4000-8000-000000000001"  # an erased consumer: no row is left
A, PA = "ann.one@example.test", "+14155550101"  # tenant 1
B = "bob.two@example.test"  # tenant 2
C = "cat.zero@example.test"  # tenant "01" (text CRMs only: an integer column has no "01")
D, E = "dan.uuid@example.test", "eve.uuid@example.test"  # tenants U1 and U2
F = "fay.upper@example.test"  # tenant U1 spelt in upper case: the same tenant in a UUID column

IDENT = {"categories": ["identifiers"], "identity": "email"}
BODY = {"body": {"categories": ["customer_records"]}}


def _system(people: str, key: str, tenant: str, notes: str, own_tenant: bool) -> dict:
    notes_spec: dict[str, Any] = {
        "primary_key": "note_id",
        "relation": {"column": key, "references": f"{people}.{key}"},
        "columns": BODY,
    }
    if own_tenant:
        notes_spec["tenant_column"] = tenant
    return {
        "kind": "sql",
        "connection": "crm",
        "consumer_table": people,
        "tables": {
            people: {"primary_key": key, "tenant_column": tenant, "columns": {"email": IDENT}},
            notes: notes_spec,
        },
    }


DM = DataMap.model_validate(
    {
        "version": 1,
        "systems": {
            # tenant through the parent (an outer join), and a notes table with its own tenant
            "ints": _system("i_contacts", "contact_id", "client_id", "i_notes", False),
            "texts": _system("t_people", "person_id", "org", "t_notes", False),
            "uuids": _system("u_people", "person_id", "org", "u_notes", True),
        },
        "stores": {},
    }
)

REQUESTS = {"a": "1", "b": "2", "c": "01", "d": U1, "e": U2, "f": U1.upper()}
VALUES = {"a": [A, PA], "b": [B], "c": [C], "d": [D], "e": [E], "f": [F]}


@dataclass
class Batch:
    """The shape of `erasure.Targets` the oracle reads: six requests in six tenants."""

    requests: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {r: {"client_id": t} for r, t in REQUESTS.items()}
    )
    consumers: dict[str, dict[str, list[str]]] = field(
        default_factory=lambda: {
            "ints": {"a": ["5"], "b": ["6"]},
            "texts": {"a": ["p-gone"]},
            "uuids": {"d": [GONE]},
        }
    )
    given: dict[str, dict[str, list[str]]] = field(
        default_factory=lambda: {r: {"email": [v[0]]} for r, v in VALUES.items()}
    )
    identities: dict[str, dict[str, list[str]]] = field(
        default_factory=lambda: {
            r: {"email": [v for v in vs if "@" in v], "phone": [v for v in vs if "@" not in v]}
            for r, vs in VALUES.items()
        }
    )

    def active_refs(self) -> list[str]:
        return list(self.requests)


@pytest.fixture
def crm(db_url):
    """Rows of other consumers only (the erased ones are gone), with the batch's values planted
    in their own tenant's rows and, marked "cross", in another tenant's rows."""
    engine = sa.create_engine(db_url)
    md = sa.MetaData()
    i_contacts = sa.Table(
        "i_contacts",
        md,
        sa.Column("contact_id", sa.Integer, primary_key=True),
        sa.Column("client_id", sa.Integer, nullable=False, index=True),
        sa.Column("email", sa.String(200)),
    )
    i_notes = sa.Table(
        "i_notes",
        md,
        sa.Column("note_id", sa.Integer, primary_key=True),
        sa.Column("contact_id", sa.Integer, nullable=False),
        sa.Column("body", sa.Text),
    )
    t_people = sa.Table(
        "t_people",
        md,
        sa.Column("person_id", sa.String(36), primary_key=True),
        sa.Column("org", sa.String(64), nullable=False, index=True),
        sa.Column("email", sa.String(200)),
    )
    t_notes = sa.Table(
        "t_notes",
        md,
        sa.Column("note_id", sa.Integer, primary_key=True),
        sa.Column("person_id", sa.String(36), nullable=False),
        sa.Column("body", sa.Text),
    )
    u_people = sa.Table(
        "u_people",
        md,
        sa.Column("person_id", UUID_TYPE, primary_key=True),
        sa.Column("org", UUID_TYPE, nullable=False, index=True),
        sa.Column("email", sa.String(200)),
    )
    u_notes = sa.Table(
        "u_notes",
        md,
        sa.Column("note_id", sa.Integer, primary_key=True),
        sa.Column("org", UUID_TYPE, nullable=False, index=True),
        sa.Column("person_id", UUID_TYPE),
        sa.Column("body", sa.Text),
    )
    md.create_all(engine)
    q1, q2 = uuid.UUID(int=1), uuid.UUID(int=2)
    if engine.dialect.name == "sqlite":
        q1, q2, o1, o2 = str(q1), str(q2), U1, U2
    else:
        o1, o2 = uuid.UUID(U1), uuid.UUID(U2)
    with engine.begin() as c:
        c.execute(
            i_contacts.insert(),
            [
                {"contact_id": 10, "client_id": 1, "email": "x@example.test"},
                {"contact_id": 20, "client_id": 2, "email": "y@example.test"},
                {"contact_id": 30, "client_id": 3, "email": A},  # cross: tenant 3, not in batch
            ],
        )
        c.execute(
            i_notes.insert(),
            [
                {"note_id": 1, "contact_id": 20, "body": f"cross {A}"},  # tenant 2
                {"note_id": 2, "contact_id": 10, "body": f"cross {B}"},  # tenant 1
                {"note_id": 3, "contact_id": 10, "body": f"cross {C}"},  # "01" is not tenant 1
                {"note_id": 4, "contact_id": 10, "body": "call (415) 555-0101"},  # residue
                {"note_id": 5, "contact_id": 20, "body": f"to {B}"},  # residue
            ],
        )
        c.execute(
            t_people.insert(),
            [
                {"person_id": "p1", "org": "1", "email": "x@example.test"},
                {"person_id": "p01", "org": "01", "email": "z@example.test"},
                {"person_id": "p2", "org": "2", "email": "y@example.test"},
            ],
        )
        c.execute(
            t_notes.insert(),
            [
                {"note_id": 1, "person_id": "p1", "body": f"cross {C}"},  # "1" is not "01"
                {"note_id": 2, "person_id": "p01", "body": f"cross {A}"},
                {"note_id": 3, "person_id": "p2", "body": f"cross {A}"},
                {"note_id": 4, "person_id": "p01", "body": f"to {C}"},  # residue
                {"note_id": 5, "person_id": "p1", "body": f"to {A.upper()}"},  # residue
            ],
        )
        c.execute(
            u_people.insert(),
            [
                {"person_id": q1, "org": o1, "email": "x@example.test"},
                {"person_id": q2, "org": o2, "email": "y@example.test"},
            ],
        )
        c.execute(
            u_notes.insert(),
            [
                {"note_id": 1, "org": o1, "person_id": q1, "body": f"cross {E}"},
                {"note_id": 2, "org": o2, "person_id": q2, "body": f"cross {D}"},
                {"note_id": 3, "org": o1, "person_id": None, "body": f"to {D}"},  # residue
                {"note_id": 4, "org": o2, "person_id": q2, "body": f"to {E}"},  # residue
                {"note_id": 5, "org": o1, "person_id": q1, "body": f"to {F}"},  # see the test
            ],
        )
    yield engine
    engine.dispose()


def test_a_value_is_residue_only_in_its_own_requests_tenant(crm, monkeypatch):
    proposed: list[str] = []
    cell_text = sql_search._cell_text

    def spy(cell):
        proposed.append(str(cell))
        return cell_text(cell)

    monkeypatch.setattr(sql_search, "_cell_text", spy)
    verdict = oracle.verify(DM, {s: crm for s in DM.systems}, {}, Batch(), [])
    # F's tenant is U1 spelt in upper case: the same tenant where the column holds UUIDs
    # (PostgreSQL), another one where it holds their text (SQLite): compared in its own type.
    f_found = 1 if crm.dialect.name == "postgresql" else 0
    want = {"ints:i_notes.body": 2, "texts:t_notes.body": 2, "uuids:u_notes.body": 2 + f_found}
    assert verdict.residue == want, verdict.describe()
    assert [p for p in proposed if "cross" in p] == []  # not even a candidate of the database
    assert verdict.sql["ints"]["tables"] == verdict.sql["uuids"]["tables"] == 2
