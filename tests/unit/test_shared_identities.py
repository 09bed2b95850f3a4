"""Found identities other consumers hold too (issue 19's over-scrub twin), both backends.

`resolve` adds the identities on a resolved consumer's rows, one step. A value someone outside
the request holds as well (the shop's own number a lead typed as their phone, a household
phone) is not this person's to look up or erase by: it goes to `Resolution.shared`, never into
an access bundle's search, and a deletion erases by it only when every holder is erased in the
same batch (`Resolution.admit`, `plan.assemble`). Before this change the shop's number went into
the erased consumer's identities and the log scrub removed every other consumer's line holding
it: the byte-for-byte test below fails there.

The world: tenant 1's shop number SHOP is the phone of 10 (the target), of 11 and, in an alias
row, of 12; HOME is 10's alias phone and 14's phone (a household); 10's work e-mail is also a
consumer's of tenant 2 (another tenant's holder shares nothing).
"""

from __future__ import annotations

import gzip
from datetime import timedelta
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from compliance.core.datamap.model import IdentityType
from compliance.core.stores.sql import engine_from_url
from compliance.deletion import log_scrub, plan
from compliance.deletion.targets import Targets
from compliance.requests import holds
from compliance.requests.resolve import Resolution, Subject, resolve
from compliance_dev.world import schema as w
from tests.unit.test_logs import APP, BUCKET, jl
from tests.unit.test_scoped_holds import DM, NOW, T0, _hold

E, P = IdentityType.email, IdentityType.phone
SYSTEM = DM.systems["crm"]
SHOP, HOME, OWN = "+14155550123", "+14155550140", "+14155550177"


def _contact(cid: int, client: int, email: str, phone: str | None) -> dict:
    return {
        "contact_id": cid,
        "client_id": client,
        "email": email,
        "phone": phone,
        "external_id": f"C-{cid}",
        "first_name": "F",
        "last_name": "L",
        "is_child": False,
        "created_at": T0,
        "updated_at": T0,
    }


@pytest.fixture
def crm(db_url):
    engine = engine_from_url(db_url)
    w.metadata.create_all(engine)
    with engine.begin() as c:
        c.execute(
            sa.insert(w.clients),
            [
                {
                    "client_id": n,
                    "name": f"C{n}",
                    "industry": "auto_dealer",
                    "state": "CA",
                    "active": True,
                    "created_at": T0,
                }
                for n in (1, 2)
            ],
        )
        c.execute(
            sa.insert(w.contacts),
            [
                _contact(10, 1, "a@x.io", SHOP),
                _contact(11, 1, "b@x.io", SHOP),
                _contact(12, 1, "c@x.io", OWN),
                _contact(14, 1, "e@x.io", HOME),
                _contact(20, 2, "a.work@x.io", SHOP),
            ],
        )
        c.execute(
            sa.insert(w.contact_aliases),
            [
                {"alias_id": 1, "contact_id": 10, "client_id": 1, "email": "A.Work@x.io",
                 "phone": HOME, "created_at": T0},
                {"alias_id": 2, "contact_id": 12, "client_id": 1, "email": None,
                 "phone": SHOP, "created_at": T0},
            ],
        )  # fmt: skip
    yield engine
    w.metadata.drop_all(engine)
    engine.dispose()


def _resolve(crm, *requests: tuple[str, list[tuple[IdentityType, str]]]):
    return resolve(crm, SYSTEM, [Subject(ref, "1", tuple(ids)) for ref, ids in requests])


def test_found_values_others_hold_are_shared_not_identities(crm):
    res = _resolve(crm, ("1", [(E, "a@x.io")]))["1"]
    assert res.consumer_ids == {"10"}
    assert res.identities[E] == {"a@x.io", "a.work@x.io"}  # tenant 2's holder shares nothing
    assert res.identities[P] == set()
    assert res.identities[IdentityType.record_id] == {"10"}
    assert res.shared == {(P, SHOP): {"10", "11", "12"}, (P, HOME): {"10", "14"}}


def test_a_given_value_is_never_shared(crm):
    res = _resolve(crm, ("1", [(P, SHOP)]))["1"]
    assert res.consumer_ids == {"10", "11", "12"}  # every holder of a given value is in scope
    assert SHOP in res.identities[P] and (P, SHOP) not in res.shared
    assert OWN in res.identities[P]  # 12's own phone, held by nobody outside the request
    assert res.shared == {(P, HOME): {"10", "14"}}


def test_two_requests_of_one_batch_share_with_each_other_until_admitted(crm):
    out = _resolve(crm, ("1", [(E, "a@x.io")]), ("2", [(E, "e@x.io")]))
    assert out["1"].shared[(P, HOME)] == {"10", "14"}  # access: never the other request's
    assert out["2"].shared == {(P, HOME): {"10", "14"}}
    assert out["1"].admit({"10"}) == 2  # 14 is not erased: HOME stays out
    assert HOME not in out["1"].identities[P]
    assert out["1"].admit({"10", "14"}) == 1  # the whole household is erased: HOME goes too
    assert out["1"].identities[P] == {HOME} and set(out["1"].shared) == {(P, SHOP)}


def test_a_holder_of_the_same_number_in_another_spelling_shares_it(crm):
    """The CRM may store one number as typed: 15 holds HOME as "(415) 555-0140", 16 as
    "415.555.0140". Compared as stored, neither was a holder, and erasing 10 took their lines."""
    with crm.begin() as c:
        c.execute(
            sa.insert(w.contacts),
            [
                _contact(15, 1, "f@x.io", "(415) 555-0140"),
                _contact(16, 1, "g@x.io", "415.555.0140"),
            ],
        )
    res = _resolve(crm, ("1", [(E, "a@x.io")]))["1"]
    assert res.shared[(P, HOME)] == {"10", "14", "15", "16"}
    assert HOME not in res.identities[P]
    alone = _resolve(crm, ("1", [(E, "f@x.io")]))["1"]  # 15's own spelling meets HOME's holders
    assert alone.shared == {(P, "(415) 555-0140"): {"10", "14", "15", "16"}}


def _pending(ref: str, email: str) -> plan.Pending:
    return plan.Pending(ref, "1", f"R-{ref}", T0.isoformat(), {"email": [email]})


def test_the_plan_erases_by_a_household_value_only_with_every_holder(crm):
    targets, _ = plan.assemble(
        DM, {"crm": crm}, "b1", [_pending("1", "a@x.io"), _pending("2", "e@x.io")], NOW
    )
    assert targets.identities["1"]["phone"] == [HOME]
    assert targets.requests["1"]["shared_identities"] == 1  # SHOP: a count, never the value
    assert "shared_identities" not in targets.requests["2"]  # 14's HOME is given by nobody,
    assert targets.identities["2"]["phone"] == [HOME]  # but only the batch holds it


def test_a_deferred_holder_keeps_the_household_value_out(crm):
    _hold(crm, 1, 1, 14, holds.ALL, "legal_claims", expires=NOW + timedelta(days=30))
    targets, _ = plan.assemble(
        DM, {"crm": crm}, "b1", [_pending("1", "a@x.io"), _pending("2", "e@x.io")], NOW
    )
    assert targets.deferred == {"2": "legal_claims"}
    assert "phone" not in targets.identities["1"]
    assert targets.requests["1"]["shared_identities"] == 2


def test_a_holder_whose_log_lines_a_hold_keeps_keeps_the_household_value_out(crm):
    """14's request is erased but for the application logs a hold keeps (partial, R19): its
    lines there must not go through the other request's HOME either."""
    _hold(crm, 1, 1, 14, "app_logs", "legal_claims", expires=NOW + timedelta(days=30))
    targets, _ = plan.assemble(
        DM, {"crm": crm}, "b1", [_pending("1", "a@x.io"), _pending("2", "e@x.io")], NOW
    )
    assert targets.partial == {"2": "legal_claims"} and targets.held_stores == {"2": ["app_logs"]}
    assert "phone" not in targets.identities["1"]
    assert targets.requests["1"]["shared_identities"] == 2


def test_a_partial_requests_remembered_values_meet_todays_holders(crm):
    """A request left partial before this rule remembers the shop's number among what its
    first batch found: checked again now, it stays out; its own e-mail does not."""
    memo = {
        "signature": None,
        "consumers": {"crm": ["10"]},
        "identities": {"phone": [SHOP], "email": ["a@x.io", "a.old@x.io"], "record_id": ["10"]},
    }
    pending = plan.Pending("1", "1", "R-1", T0.isoformat(), {"email": ["a@x.io"]}, memo)
    targets, _ = plan.assemble(DM, {"crm": crm}, "b1", [pending], NOW)
    assert SHOP not in targets.identities["1"].get("phone", [])
    assert "a.old@x.io" in targets.identities["1"]["email"]  # nobody else holds it
    assert targets.requests["1"]["shared_identities"] == 2  # SHOP and HOME


def test_the_scrub_keeps_every_other_consumers_line_byte_for_byte(crm, s3):
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    targets, _ = plan.assemble(DM, {"crm": crm}, "b1", [_pending("1", "a@x.io")], NOW)
    mine = [
        jl(ts="2026-01-05T09:00:00Z", client_id=1, email="a@x.io", phone=SHOP),
        jl(ts="2026-01-05T09:00:01Z", client_id=1, contact_id=10),
        jl(ts="2026-01-05T09:00:02Z", client_id=1, email="A.WORK@x.io"),
    ]
    theirs = [
        jl(ts="2026-01-05T09:00:03Z", client_id=1, phone=SHOP, contact_id=11),
        jl(ts="2026-01-05T09:00:04Z", client_id=1, phone=SHOP),  # an inbound SMS to the shop
        jl(ts="2026-01-05T09:00:05Z", client_id=1, phone=HOME, contact_id=14),
        jl(ts="2026-01-05T09:00:06Z", client_id=2, email="a.work@x.io", contact_id=20),
        jl(ts="2026-01-05T09:00:07Z", client_id=1, email="b@x.io", ip="10.0.0.1"),
    ]
    lines = [mine[0], theirs[0], mine[1], theirs[1], theirs[2], mine[2], theirs[3], theirs[4]]
    key = "app/dt=2026-01-05/part-0.json.gz"
    s3.put_object(Bucket=BUCKET, Key=key, Body=gzip.compress(b"".join(lines)))
    result = log_scrub.rewrite_object(s3, APP, BUCKET, key, targets.log_targets(), batch_id="b1")
    assert result.per_ref == {"1": 3}
    kept = gzip.decompress(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    assert kept == b"".join(theirs)


def test_a_value_another_system_shows_shared_stays_out_in_every_system():
    """Two SQL systems: 10's phone is shared in one and 10's alone in the other. The log scrub
    works per request, not per system, so one system saying "someone else's" keeps it out."""
    targets = Targets("b1")
    targets.requests["1"] = {"client_id": "1", "request_id": "R-1"}
    targets.given["1"] = {"email": ["a@x.io"]}
    targets.consumers = {"a": {"1": ["10"]}, "b": {"1": ["10"]}}
    here = Resolution("1", "1", {"10"})
    here.identities[E] |= {"a@x.io"}
    here.shared[(P, SHOP)] = {"10", "11"}
    there = Resolution("1", "1", {"10"})
    there.identities[E] |= {"a@x.io"}
    there.identities[P] |= {SHOP}
    dm = SimpleNamespace(systems={"a": None, "b": None})
    plan._settle_identities(
        dm, {"a": None, "b": None}, targets, {"a": {"1": here}, "b": {"1": there}}, {}
    )
    assert targets.identities["1"] == {"email": ["a@x.io"]}
    assert targets.requests["1"]["shared_identities"] == 1
