"""Key and tenant types (issue 14): a CRM unlike the demo's, on SQLite and PostgreSQL.

Its tenants are text ("acme-east", "01", "1" and a Unicode one), its consumer keys are UUIDs,
one child table has a composite primary key, and its hold registry keys clients by VARCHAR.
Tenant ids and consumer keys travel as text and are compared in each column's own type
(`sqlmap.typed_value`), never by casting the column: "01" never matches "1" (nor the integer
tenant 1), and on PostgreSQL no statement casts a key column, so the tenant index serves (R6).
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from compliance.core.datamap.model import IdentityType, SqlSystem
from compliance.core.sqlmap import KeyTypeError, key_order, key_text, typed_value, typed_values
from compliance.core.stores.sql import engine_from_url
from compliance.deletion.erase_sql import HASH_PREFIX, execute_erasure, plan_erasure, residue
from compliance.requests import holds, inbox, intake
from compliance.requests.resolve import Subject, resolve
from compliance.retention.execute import _spans

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
T0 = datetime(2025, 1, 15, 9, 0)
HASH_KEY = b"key-types-test"
TENANTS = ("acme-east", "01", "1", "société-東京")
UUID_TYPE = sa.Uuid().with_variant(sa.String(36), "sqlite")  # SQLite CRMs keep UUIDs as text

md = sa.MetaData()
tenants_t = sa.Table(
    "tenants",
    md,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("active", sa.Boolean, nullable=False),
)
people_t = sa.Table(
    "people",
    md,
    sa.Column("person_id", UUID_TYPE, primary_key=True),
    sa.Column("tenant_id", sa.String(64), sa.ForeignKey("tenants.tenant_id"), nullable=False),
    sa.Column("email", sa.String(200)),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Index("ix_people_tenant", "tenant_id"),
)
notes_t = sa.Table(
    "notes",
    md,
    sa.Column("note_id", sa.Integer, primary_key=True),
    sa.Column("person_id", UUID_TYPE, sa.ForeignKey("people.person_id"), nullable=False),
    sa.Column("body", sa.Text),
    sa.Column("created_at", sa.DateTime, nullable=False),
)
memberships_t = sa.Table(  # a link table keyed by two columns
    "memberships",
    md,
    sa.Column("person_id", UUID_TYPE, sa.ForeignKey("people.person_id"), primary_key=True),
    sa.Column("group_code", sa.String(16), primary_key=True),
    sa.Column("role", sa.String(32)),
)
prefs_t = sa.Table(  # composite key, masked (kept rows, hashed values); no foreign key
    "prefs",
    md,
    sa.Column("person_id", UUID_TYPE, primary_key=True),
    sa.Column("pref_key", sa.String(32), primary_key=True),
    sa.Column("pref_value", sa.String(200)),
)
holds_t = sa.Table(
    "legal_holds",
    md,
    sa.Column("hold_id", sa.Integer, primary_key=True),
    sa.Column("client_ref", sa.String(64), nullable=False),  # VARCHAR client column
    sa.Column("contact_ref", UUID_TYPE),
    sa.Column("scope", sa.String(64), nullable=False),
    sa.Column("reason", sa.String(200)),
    sa.Column("exception_code", sa.String(32), nullable=False),
    sa.Column("expires_at", sa.DateTime),
)
# An integer-tenant registry and consumer table beside it: "01" must never be tenant 1 there.
itenants_t = sa.Table(
    "itenants",
    md,
    sa.Column("client_id", sa.Integer, primary_key=True),
    sa.Column("active", sa.Boolean, nullable=False),
)
ipeople_t = sa.Table(
    "ipeople",
    md,
    sa.Column("contact_id", sa.Integer, primary_key=True),
    sa.Column("client_id", sa.Integer, nullable=False),
    sa.Column("email", sa.String(200)),
    sa.Column("member_no", sa.BigInteger),  # an identity stored as a number
    sa.Column("created_at", sa.DateTime, nullable=False),
)

IDENT = {"categories": ["identifiers"], "identity": "email"}
SYSTEM = SqlSystem.model_validate(
    {
        "kind": "sql",
        "connection": "crm",
        "consumer_table": "people",
        "tenants": {"table": "tenants", "key": "tenant_id", "active_column": "active"},
        "holds": {"table": "legal_holds", "client_column": "client_ref",
                  "consumer_column": "contact_ref"},
        "tables": {
            "people": {"primary_key": "person_id", "tenant_column": "tenant_id",
                       "time_column": "created_at", "columns": {"email": IDENT}},
            "notes": {"primary_key": "note_id", "time_column": "created_at",
                      "relation": {"column": "person_id", "references": "people.person_id"},
                      "columns": {"body": {"categories": ["customer_records"]}}},
            "memberships": {"primary_key": ["person_id", "group_code"],
                            "relation": {"column": "person_id",
                                         "references": "people.person_id"},
                            "columns": {"role": {"categories": ["professional"]}}},
            "prefs": {"primary_key": ["person_id", "pref_key"], "erase": "mask",
                      "relation": {"column": "person_id", "references": "people.person_id"},
                      "columns": {"pref_value": {"categories": ["inferences"],
                                                 "erase": "hash"}}},
        },
    }
)  # fmt: skip
INT_SYSTEM = SqlSystem.model_validate(
    {
        "kind": "sql",
        "connection": "crm",
        "consumer_table": "ipeople",
        "tenants": {"table": "itenants", "key": "client_id", "active_column": "active"},
        "tables": {
            "ipeople": {"primary_key": "contact_id", "tenant_column": "client_id",
                        "time_column": "created_at", "columns": {
                            "email": IDENT,
                            "member_no": {"categories": ["identifiers"],
                                          "identity": "contact_id"}}},
        },
    }
)  # fmt: skip


def pid(tenant: str, n: int) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant}/{n}")


def uid(value: uuid.UUID, url: str) -> object:
    return str(value) if url.startswith("sqlite") else value


@pytest.fixture
def crm(db_url):
    engine = engine_from_url(db_url)
    md.create_all(engine)
    with engine.begin() as c:
        c.execute(tenants_t.insert(), [{"tenant_id": t, "active": t != "1"} for t in TENANTS])
        people, notes, members, prefs = [], [], [], []
        for t in TENANTS:
            for n in (1, 2):
                # the same e-mail in every tenant: twins that must never be crossed
                email = "twin@example.com" if n == 1 else f"other-{n}@example.com"
                p = uid(pid(t, n), db_url)
                people.append({"person_id": p, "tenant_id": t, "email": email, "created_at": T0})
                notes += [
                    {"note_id": len(notes) + k + 1, "person_id": p, "body": f"note {k}",
                     "created_at": T0}
                    for k in range(2)
                ]  # fmt: skip
                members += [{"person_id": p, "group_code": g, "role": "m"} for g in ("a", "b")]
                prefs += [{"person_id": p, "pref_key": k, "pref_value": "v-" + k}
                          for k in ("lang", "tz")]  # fmt: skip
        c.execute(people_t.insert(), people)
        c.execute(notes_t.insert(), notes)
        c.execute(memberships_t.insert(), members)
        c.execute(prefs_t.insert(), prefs)
        c.execute(
            holds_t.insert(),
            [
                {"hold_id": 1, "client_ref": "01", "contact_ref": uid(pid("01", 2), db_url),
                 "scope": "all", "reason": "litigation", "exception_code": "legal_claims"},
                {"hold_id": 2, "client_ref": "société-東京", "contact_ref": None, "scope": "notes",
                 "reason": "audit", "exception_code": "legal_obligation"},
            ],
        )  # fmt: skip
        c.execute(itenants_t.insert(), [{"client_id": 1, "active": True}])
        c.execute(
            ipeople_t.insert(),
            [
                {
                    "contact_id": 7,
                    "client_id": 1,
                    "email": "twin@example.com",
                    "member_no": 123,
                    "created_at": T0,
                },
                {
                    "contact_id": 8,
                    "client_id": 1,
                    "email": "b@example.com",
                    "member_no": 1234,
                    "created_at": T0,
                },
            ],
        )
    yield engine
    engine.dispose()


def snapshot(engine) -> dict[str, set[tuple]]:
    with engine.connect() as c:
        return {
            t.name: {tuple(key_text(v) for v in row) for row in c.execute(sa.select(t))}
            for t in md.sorted_tables
        }


def subject(ref: str, tenant: object, email: str = "twin@example.com") -> Subject:
    return Subject(ref, tenant, ((IdentityType.email, email),))


# -- typed values --------------------------------------------------------------------------------


def test_typed_value_spells_keys_in_the_columns_type():
    col_int, col_text = ipeople_t.c.client_id, people_t.c.tenant_id
    assert typed_value(col_int, "1") == 1 and typed_value(col_int, 1) == 1
    for bad in ("01", "+1", "1.0", " 1", "acme-east"):
        with pytest.raises(KeyTypeError, match="client_id"):
            typed_value(col_int, bad)
    assert typed_value(col_text, "01") == "01"
    assert typed_values(col_int, ["1", "01", "acme"]) == [1]
    u = pid("01", 1)
    assert typed_value(sa.Column("k", sa.Uuid()), str(u).upper()) == u
    assert key_text(u) == str(u) and key_text(7) == "7"
    assert sorted(["10", "acme", "2", "01"], key=key_order) == ["2", "10", "01", "acme"]


# -- resolve -------------------------------------------------------------------------------------


def test_resolve_finds_only_the_requests_own_tenant(crm):
    subjects = [subject(t, t) for t in TENANTS] + [subject("zero-one-one", "001")]
    found = resolve(crm, SYSTEM, subjects)
    for t in TENANTS:  # "01" and "1" hold a twin each: each request finds its own only
        assert found[t].consumer_ids == {str(pid(t, 1))}, t
        assert found[t].client_id == t
    assert found["zero-one-one"].consumer_ids == set()
    # the expansion adds our record id, as text, never another tenant's
    assert found["01"].identities[IdentityType.record_id] == {str(pid("01", 1))}


def test_resolve_against_an_integer_tenant_column(crm):
    found = resolve(
        crm, INT_SYSTEM, [subject("a", "1"), subject("b", 1), subject("c", "01"), subject("d", "x")]
    )
    assert found["a"].consumer_ids == found["b"].consumer_ids == {"7"}
    assert found["c"].consumer_ids == set() and found["d"].consumer_ids == set()


def test_resolve_through_an_integer_identity_column(crm):
    """An identity stored as a number is found in the column's type (its index serves) and
    read back as a number: "123", "0123" and "+123" are member 123; "12", "1234 " (a
    different member) and text are not, and no request reaches the other tenant's rows."""

    def member(ref: str, value: str, tenant: object = 1) -> Subject:
        return Subject(ref, tenant, ((IdentityType.contact_id, value),))

    asks = {"plain": "123", "zeros": "0123", "sign": "+123", "short": "12", "text": "abc"}
    found = resolve(crm, INT_SYSTEM, [member(r, v) for r, v in asks.items()] + [
        member("other", "1234 "), member("tenant-2", "123", tenant=2),
        member("huge", "9" * 5000),
    ])  # fmt: skip
    assert {r: found[r].consumer_ids for r in found} == {
        "plain": {"7"}, "zeros": {"7"}, "sign": {"7"}, "short": set(), "text": set(),
        "other": {"8"}, "tenant-2": set(), "huge": set(),
    }  # fmt: skip
    assert found["plain"].identities[IdentityType.contact_id] == {"123"}


# -- holds ---------------------------------------------------------------------------------------


def test_holds_with_a_varchar_client_column(crm):
    everything = holds.active_holds(crm, SYSTEM, NOW)
    assert [(h.client_id, h.consumer_id, h.scope) for h in everything] == [
        ("01", str(pid("01", 2)), "all"),
        ("société-東京", None, "notes"),
    ]
    only = holds.active_holds(crm, SYSTEM, NOW, ["1", "01"])  # "1" has none; "01" is not "1"
    assert [h.client_id for h in only] == ["01"]
    assert holds.active_holds(crm, SYSTEM, NOW, ["1"]) == []
    assert holds.holding(only, "01", [str(pid("01", 2))]) == only
    assert holds.holding(only, "1", [str(pid("01", 2))]) == []
    assert holds.holding(only, "01", [str(pid("01", 1))]) == []


# -- erasure -------------------------------------------------------------------------------------


def test_erasure_removes_exactly_the_targets_rows(crm):
    target = {str(pid("01", 1))}
    assert resolve(crm, SYSTEM, [subject("r", "01")])["r"].consumer_ids == target
    before = snapshot(crm)
    plans = {p.table: p.per_consumer for p in plan_erasure(crm, SYSTEM, target)}
    assert plans == {
        "memberships": {str(pid("01", 1)): 2},
        "notes": {str(pid("01", 1)): 2},
        "people": {str(pid("01", 1)): 1},
        "prefs": {str(pid("01", 1)): 2},
    }
    done = execute_erasure(crm, SYSTEM, target, HASH_KEY)
    assert done == {"memberships": 2, "notes": 2, "people": 1, "prefs": 2}
    after = snapshot(crm)
    t = str(pid("01", 1))
    for name in ("people", "notes", "memberships"):  # deleted: exactly the target's rows
        gone = before[name] - after[name]
        assert gone and all(t in row for row in gone), name
        assert after[name] == {row for row in before[name] if t not in row}, name
    masked = before["prefs"] - after["prefs"]
    assert {row[:2] for row in masked} == {(t, "lang"), (t, "tz")}
    kept = after["prefs"] - before["prefs"]
    assert {row[:2] for row in kept} == {(t, "lang"), (t, "tz")}
    assert all(row[2].startswith(HASH_PREFIX) for row in kept)
    for name in ("tenants", "legal_holds", "itenants", "ipeople"):
        assert after[name] == before[name]
    assert residue(crm, SYSTEM, target) == {}
    assert execute_erasure(crm, SYSTEM, target, HASH_KEY) == {}  # a rerun changes nothing
    assert snapshot(crm) == after


def test_erasure_of_keys_the_column_cannot_hold_touches_nothing(crm):
    before = snapshot(crm)
    assert execute_erasure(crm, SYSTEM, ["not-a-uuid", "7"], HASH_KEY) == {}
    assert execute_erasure(crm, INT_SYSTEM, ["07", "x"], HASH_KEY) == {}
    assert snapshot(crm) == before
    assert execute_erasure(crm, INT_SYSTEM, ["7"], HASH_KEY) == {"ipeople": 1}


# -- composite key ranges (retention walks tables by key range) ---------------------------------


def test_composite_key_ranges_cover_every_row_once(crm):
    cols = [memberships_t.c.person_id, memberships_t.c.group_code]
    with crm.connect() as c:
        keys = [tuple(r) for r in c.execute(sa.select(*cols).order_by(*cols))]
        highs = keys[2::3] + ([keys[-1]] if len(keys) % 3 else [])
        from compliance.retention.execute import Progress

        seen: list[tuple] = []
        for span in _spans(cols, highs, 3, None, Progress("r", None)):
            seen += [tuple(r) for r in c.execute(sa.select(*cols).where(span).order_by(*cols))]
    assert seen == keys  # in key order, each row in exactly one range


# -- intake against the registry ----------------------------------------------------------------


def _doc(client_id: object) -> bytes:
    return json.dumps(
        {
            "request_id": "kt-1",
            "client_id": client_id,
            "type": "delete",
            "identities": {"email": "twin@example.com"},
            "received_at": "2025-03-01T10:00:00Z",
            "verification": {
                "method": "email_link",
                "verified_at": "2025-03-01T11:00:00Z",
                "verified_by": "portal",
            },
        }
    ).encode()


def _parse(raw: bytes, clients, source_client=None):
    (result,) = intake.parse_documents(
        raw, "inbox/x.json", now=NOW, clients=clients, source_client=source_client
    )
    return result


def test_intake_with_a_text_tenant_registry(crm):
    clients = inbox.load_clients(crm, SYSTEM)
    assert clients == {"acme-east": True, "01": True, "1": False, "société-東京": True}
    assert _parse(_doc("01"), clients).client_id == "01"
    assert _parse(_doc("société-東京"), clients).client_id == "société-東京"
    assert _parse(_doc("1"), clients).reason is intake.Reason.inactive_client
    assert _parse(_doc(1), clients).reason is intake.Reason.inactive_client  # 1 is "1"
    assert _parse(_doc("001"), clients).reason is intake.Reason.unknown_client
    assert _parse(_doc("01"), clients, "1").reason is intake.Reason.client_mismatch
    refused = _parse(_doc("01\u200b"), clients)  # a zero-width space after a known id
    assert refused.reason is intake.Reason.bad_text and refused.field == "client_id"
    assert "zero-width" in refused.message and "R6" in refused.message
    assert _parse(_doc("\u202eacme-east"), clients).reason is intake.Reason.bad_text


def test_intake_with_an_integer_tenant_registry(crm):
    clients = inbox.load_clients(crm, INT_SYSTEM)
    assert clients == {"1": True}
    assert _parse(_doc(1), clients).client_id == "1"
    assert _parse(_doc("1"), clients).client_id == "1"
    for spelling in ("01", "1.0", "+1", "0x1"):  # not canonical: not tenant 1
        assert _parse(_doc(spelling), clients).reason is intake.Reason.unknown_client, spelling
    assert _parse(_doc(-1), clients).reason is intake.Reason.wrong_type
    assert _parse(_doc(1.0), clients).reason is intake.Reason.wrong_type


def test_inbox_prefix_names_a_text_client():
    assert inbox._source_client("inbox/acme-east/a.json") == "acme-east"
    assert inbox._source_client("inbox/01/a.json") == "01"
    assert inbox._source_client("inbox/ui/a.json") is None
    assert inbox._source_client("inbox/a.json") is None


# -- PostgreSQL: no cast on a key column, the tenant index serves ------------------------------


def test_postgres_compares_keys_without_casting_the_column(pg_url):
    engine = engine_from_url(pg_url)
    md.create_all(engine)
    statements: list[tuple[str, object]] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def capture(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    with engine.begin() as c:
        c.execute(tenants_t.insert(), [{"tenant_id": t, "active": True} for t in TENANTS])
        c.execute(
            people_t.insert(),
            [
                {"person_id": pid(t, n), "tenant_id": t, "email": f"p{n}@example.com",
                 "created_at": T0}
                for t in TENANTS
                for n in range(400)
            ],
        )  # fmt: skip
    statements.clear()
    found = resolve(engine, SYSTEM, [subject("r", "01", "p3@example.com")])
    assert found["r"].consumer_ids == {str(pid("01", 3))}
    holds.active_holds(engine, SYSTEM, NOW, ["01"])
    execute_erasure(engine, SYSTEM, found["r"].consumer_ids, HASH_KEY)
    sql = [
        s
        for s, _ in statements
        if s.lstrip().upper().startswith(("SELECT", "DELETE")) and "pg_catalog" not in s
    ]
    # parameters may be typed (`%(p)s::UUID`); a column never is
    cast_column = re.compile(r"CAST\(|\b(?:people|legal_holds|notes|memberships|prefs)\.\w+::")
    assert len(sql) > 3 and not [s for s in sql if cast_column.search(s)], sql
    # The resolve statement itself, explained with sequential scans off: the tenant index
    # can only be used when the tenant column is compared in its own type.
    stmt, params = next((s, p) for s, p in statements if "lower(people.email)" in s)
    with engine.connect() as c:
        c.exec_driver_sql("ANALYZE people")
        c.exec_driver_sql("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in c.exec_driver_sql("EXPLAIN " + stmt, params))
    assert "ix_people_tenant" in plan and "Seq Scan on people" not in plan, plan
    engine.dispose()
