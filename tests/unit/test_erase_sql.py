"""Resolution and CRM erasure on a hand-built world, both backends: exactly the target, nothing else."""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from compliance.core.datamap.model import IdentityType
from compliance.core.datamap.validate import load_datamap
from compliance.core.stores.sql import engine_from_url
from compliance.deletion.erase_sql import execute_erasure, plan_erasure, residue
from compliance.requests.resolve import Subject, resolve
from compliance_dev.world import schema as w

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 1, 5, 9, 30)
KEY = b"test-key"


@pytest.fixture
def crm(db_url):
    engine = engine_from_url(db_url)
    w.metadata.create_all(engine)
    with engine.begin() as c:
        c.execute(
            sa.insert(w.clients),
            [
                {
                    "client_id": 1,
                    "name": "Dealer",
                    "industry": "auto_dealer",
                    "state": "CA",
                    "active": True,
                    "created_at": T0,
                },
                {
                    "client_id": 2,
                    "name": "Realtor",
                    "industry": "real_estate",
                    "state": "CA",
                    "active": True,
                    "created_at": T0,
                },
            ],
        )
        contact = dict(first_name="A", last_name="B", is_child=False, created_at=T0, updated_at=T0)
        c.execute(
            sa.insert(w.contacts),
            [
                # the target: two rows in tenant 1 (duplicate lead), same e-mail in another case
                {
                    "contact_id": 10,
                    "client_id": 1,
                    "email": "jo@example.com",
                    "phone": "+14155550100",
                    "external_id": "C-1",
                    **contact,
                },
                {
                    "contact_id": 11,
                    "client_id": 1,
                    "email": "JO@example.com",
                    "phone": "+14155550101",
                    "external_id": "C-2",
                    **contact,
                },
                # same e-mail, other tenant: must survive
                {
                    "contact_id": 20,
                    "client_id": 2,
                    "email": "jo@example.com",
                    "phone": "+14155550100",
                    "external_id": "C-1",
                    **contact,
                },
                # bystander in tenant 1
                {
                    "contact_id": 12,
                    "client_id": 1,
                    "email": "other@example.com",
                    "phone": "+14155550199",
                    "external_id": "C-3",
                    **contact,
                },
            ],
        )
        c.execute(
            sa.insert(w.contact_aliases),
            [
                {
                    "alias_id": 1,
                    "contact_id": 10,
                    "client_id": 1,
                    "email": "jo.work@example.com",
                    "phone": None,
                    "created_at": T0,
                },
            ],
        )
        c.execute(
            sa.insert(w.messages),
            [
                {
                    "message_id": m,
                    "contact_id": cid,
                    "client_id": cl,
                    "channel": "sms",
                    "direction": "inbound",
                    "body": f"hi {m}",
                    "created_at": T0,
                }
                for m, cid, cl in [(100, 10, 1), (101, 11, 1), (102, 20, 2), (103, 12, 1)]
            ],
        )
        c.execute(
            sa.insert(w.message_attachments),
            [
                {
                    "attachment_id": a,
                    "message_id": m,
                    "filename": f"f{a}.pdf",
                    "size_bytes": 10,
                    "created_at": T0,
                }
                for a, m in [(1000, 100), (1001, 102), (1002, 103)]
            ],
        )
        c.execute(
            sa.insert(w.payments),
            [
                {
                    "payment_id": p,
                    "contact_id": cid,
                    "client_id": cl,
                    "card_token": f"tok{p}",
                    "card_last4": "4242",
                    "card_brand": "visa",
                    "amount_cents": 500,
                    "paid_at": T0,
                }
                for p, cid, cl in [(1, 10, 1), (2, 20, 2)]
            ],
        )
    yield engine
    engine.dispose()


def snapshot(engine) -> dict[str, dict]:
    """Digest of every row of every table, keyed by table and primary key."""
    out = {}
    with engine.connect() as c:
        for table in w.metadata.sorted_tables:
            pk = next(iter(table.primary_key.columns))
            for row in c.execute(sa.select(table).order_by(pk)):
                out[(table.name, row._mapping[pk.name])] = hashlib.sha256(
                    repr(tuple(row)).encode()
                ).hexdigest()
    return out


def test_resolve_within_tenant_and_expand(crm):
    system = load_datamap(REPO / "config/datamap.yaml").systems["crm"]
    res = resolve(crm, system, [Subject("r1", 1, ((IdentityType.email, "jo@example.com"),))])["r1"]
    assert {int(x) for x in res.consumer_ids} == {10, 11}  # both rows of the person, tenant 1 only
    assert "jo.work@example.com" in res.identities[IdentityType.email]  # alias found
    assert "+14155550101" in res.identities[IdentityType.phone]
    assert {"10", "11"} <= res.identities[IdentityType.record_id]


def test_resolve_by_alias_and_unknown(crm):
    system = load_datamap(REPO / "config/datamap.yaml").systems["crm"]
    out = resolve(
        crm,
        system,
        [
            Subject("a", 1, ((IdentityType.email, "jo.work@example.com"),)),
            Subject(
                "b", 2, ((IdentityType.phone, "+14155550199"),)
            ),  # tenant 1's phone, asked by 2
        ],
    )
    assert {int(x) for x in out["a"].consumer_ids} == {10}
    assert not out["b"].found


def test_erasure_exact_and_idempotent(crm):
    system = load_datamap(REPO / "config/datamap.yaml").systems["crm"]
    before = snapshot(crm)
    plans = {p.table: p for p in plan_erasure(crm, system, [10, 11])}
    assert plans["messages"].rows == 2 and plans["message_attachments"].rows == 1
    assert plans["payments"].kept_columns == {
        "card_brand": "transaction",
        "amount_cents": "transaction",
    }
    done = execute_erasure(crm, system, [10, 11], KEY)
    assert done["contacts"] == 2 and done["messages"] == 2 and done["payments"] == 1
    assert residue(crm, system, [10, 11]) == {}
    after = snapshot(crm)
    gone = {k for k in before if k not in after}
    changed = {k for k in before if k in after and before[k] != after[k]}
    assert gone == {
        ("contacts", 10),
        ("contacts", 11),
        ("contact_aliases", 1),
        ("messages", 100),
        ("messages", 101),
        ("message_attachments", 1000),
    }
    assert changed == {("payments", 1)}  # masked, kept for the client's books (R19)
    with crm.connect() as c:
        pay = c.execute(sa.select(w.payments).where(w.payments.c.payment_id == 1)).one()._mapping
    assert pay["contact_id"] is None and pay["card_token"] is None and pay["amount_cents"] == 500
    # a second run changes nothing
    assert execute_erasure(crm, system, [10, 11], KEY) == {}
    assert snapshot(crm) == after


def _hashing_map():
    """The demo map with payments' card_token masked by `erase: hash`."""
    import yaml

    from compliance.core.datamap.validate import check_text

    doc = yaml.safe_load((REPO / "config/datamap.yaml").read_text())
    doc["systems"]["crm"]["tables"]["payments"]["columns"]["card_token"]["erase"] = "hash"
    dm, issues = check_text(yaml.safe_dump(doc))
    assert not issues, issues
    return dm.systems["crm"]


def test_hash_masking_is_irreversible_a_random_key_per_run(crm):
    """R17 (issue 15): a hash under a key the company keeps is a pseudonym, since anyone with the
    key recomputes it from the value. Masking for deletion uses a random key per run, never
    stored: equal values inside one run still hash alike (joins line up), the deployment's key
    does not reproduce them, and the next run's key is another."""
    from compliance.core.hashing import keyed_hash
    from compliance.deletion.erase_sql import HASH_PREFIX

    system = _hashing_map()
    with crm.begin() as c:  # a second payment of the same consumer, same card; tenant 2 too
        c.execute(sa.update(w.payments).values(card_token="tok1"))
        c.execute(
            sa.insert(w.payments),
            [
                {
                    "payment_id": 3,
                    "contact_id": 11,
                    "client_id": 1,
                    "card_token": "tok1",
                    "card_last4": "4242",
                    "card_brand": "visa",
                    "amount_cents": 700,
                    "paid_at": T0,
                }
            ],
        )
    assert execute_erasure(crm, system, [10, 11], KEY)["payments"] == 2
    assert execute_erasure(crm, system, [20], KEY)["payments"] == 1  # another run: tenant 2
    with crm.connect() as c:
        token = dict(c.execute(sa.select(w.payments.c.payment_id, w.payments.c.card_token)).all())
    assert all(v.startswith(HASH_PREFIX) for v in token.values())
    assert token[1] == token[3]  # one run, one key: the two payments still join
    assert token[2] != token[1]  # another run drew another key: no link across erasures
    kept_key = HASH_PREFIX + keyed_hash(KEY, "payments.card_token", "tok1")[:24]
    assert kept_key not in token.values()  # COMPLIANCE_HASH_KEY cannot recompute it
    # hashed values are recognised as erased (residue) and left alone by a rerun
    assert residue(crm, system, [10, 11]) == {} and residue(crm, system, [20]) == {}
    assert execute_erasure(crm, system, [10, 11], KEY) == {}
    with crm.connect() as c:
        again = dict(c.execute(sa.select(w.payments.c.payment_id, w.payments.c.card_token)).all())
    assert again == token
