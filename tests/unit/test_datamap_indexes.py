"""`python -m compliance datamap indexes`: the identity, relation and retention indexes the jobs
need (R16 deletion, R8/R10 access, R27 retention), derived from the user's own map (issue 19).

Run on the demo map and on the second world's (text tenants, UUID keys, a composite key, nested
JSON identities), and against real SQLite and PostgreSQL databases.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from compliance.__main__ import main
from compliance.core.datamap import indexes
from compliance.core.datamap.validate import load_datamap
from compliance.core.stores.sql import engine_from_url, live_indexes
from tests.conftest import fresh_pg_database

REPO = Path(__file__).resolve().parents[2]
DEMO_MAP = REPO / "config" / "datamap.yaml"
SECOND_MAP = REPO / "tests" / "second_world" / "datamap.yaml"


def _cols(plan: indexes.IndexPlan) -> set[tuple[str, tuple[str, ...]]]:
    return {(i.table, i.columns) for i in plan.indexes}


def test_demo_map_needs_identity_relation_and_retention_indexes() -> None:
    plan = indexes.needed(load_datamap(DEMO_MAP))
    cols = _cols(plan)
    # identity within a tenant; e-mails as resolve compares them, lower-cased (R16, R8)
    assert ("contacts", ("client_id", "lower(email)")) in cols
    assert ("contact_aliases", ("client_id", "lower(email)")) in cols
    # nothing compares the raw e-mail column: no plain index a lookup would not use
    assert not any(c[-1] == "email" for t, c in cols)
    assert ("contacts", ("client_id", "external_id")) in cols
    assert ("contact_aliases", ("client_id", "phone")) in cols
    assert ("email_events", ("contact_id",)) in cols  # relation toward the consumer
    assert ("ticket_comments", ("ticket_id",)) in cols  # relation at depth 2
    assert ("email_events", ("client_id", "occurred_at")) in cols  # retention (R27)
    # no tenant column: no retention index on it, but its relation is indexed
    assert ("message_attachments", ("message_id",)) in cols
    assert not any(t == "message_attachments" and len(c) == 2 for t, c in cols)
    # a primary key is never indexed again (relations point at the parents' primary keys)
    assert ("contacts", ("contact_id",)) not in cols
    assert len(cols) == len(plan.indexes)  # no duplicates
    assert len({i.name for i in plan.indexes}) == len(plan.indexes)
    assert all(i.why and "\n" not in i.why for i in plan.indexes)
    assert {(s.store, s.path) for s in plan.scanned} == {
        ("app_logs", "email"),
        ("app_logs", "phone"),
        ("app_logs", "contact_id"),
        ("mail_logs", "rcpt"),
    }


def test_second_world_map_follows_its_own_keys() -> None:
    plan = indexes.needed(load_datamap(SECOND_MAP))
    cols = _cols(plan)
    assert ("people", ("org_code", "lower(primary_email)")) in cols
    assert ("people", ("org_code", "primary_email")) not in cols
    assert ("people", ("org_code", "ref_code")) in cols
    assert ("people", ("org_code", "signed_up_at")) in cols
    # person_channels has no tenant column: its identities are indexed alone
    assert ("person_channels", ("lower(email)",)) in cols
    assert ("person_channels", ("phone",)) in cols
    assert ("person_channels", ("person_uuid",)) in cols
    # person_tags' composite primary key (person_uuid, tag) already serves its relation
    assert not any(t == "person_tags" for t, _ in cols)
    assert ("note_attachments", ("note_id",)) in cols  # depth 3
    assert not any(t in {"orgs", "contacts", "email_events"} for t, _ in cols)
    scanned = {s.path: s for s in plan.scanned}
    assert set(scanned) == {"actor.email", "actor.uuid", "recipients[].email", "sms.to", "to[]"}
    assert "nested JSON path" in scanned["recipients[].email"].reason
    assert "inside arrays" in scanned["to[]"].reason


def test_adding_an_identity_column_adds_its_index(tmp_path: Path) -> None:
    raw = yaml.safe_load(DEMO_MAP.read_text())
    before = _cols(indexes.needed(load_datamap(DEMO_MAP)))
    assert ("messages", ("client_id", "to_address")) not in before
    assert not any(t == "messages" and "to_address" in str(c) for t, c in before)
    column = raw["systems"]["crm"]["tables"]["messages"]["columns"]["to_address"]
    path = tmp_path / "datamap.yaml"
    # a phone is compared as stored: a plain index; an e-mail lower-cased: the expression
    for kind, key in [("phone", "to_address"), ("email", "lower(to_address)")]:
        column["identity"] = kind
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        after = indexes.needed(load_datamap(path))
        assert _cols(after) - before == {("messages", ("client_id", key))}
        assert before <= _cols(after)  # nothing else changes
        (spec,) = [
            i for i in after.indexes if (i.table, i.columns) == ("messages", ("client_id", key))
        ]
        assert spec.name == f"cj_messages_client_id_{key.replace('(', '_').rstrip(')')}"
        assert kind in spec.why


def test_names_are_deterministic_and_fit_postgres() -> None:
    short = indexes.index_name("contacts", ["client_id", "email"])
    assert short == "cj_contacts_client_id_email"
    lowered = indexes.index_name("contacts", ["client_id", indexes.lowered("email")])
    assert lowered == "cj_contacts_client_id_lower_email"
    a = indexes.index_name("t" * 60, ["a_long_column_name", "x"])
    b = indexes.index_name("t" * 60, ["a_long_column_name", "y"])
    assert len(a) <= 63 and len(b) <= 63 and a != b
    assert a == indexes.index_name("t" * 60, ["a_long_column_name", "x"])


def test_printed_sql_per_dialect(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datamap", "indexes", "--datamap", str(SECOND_MAP)]) == 0
    out = capsys.readouterr().out
    creates = [line for line in out.splitlines() if line.startswith("CREATE")]
    assert creates and all("CREATE INDEX CONCURRENTLY IF NOT EXISTS" in c for c in creates)
    people = (
        '"cj_people_org_code_lower_primary_email" ON "people" ("org_code", lower("primary_email"))'
    )
    assert people in out
    assert '("lower(' not in out  # the expression is SQL, never a quoted column name
    assert "not indexable, scanned: activity_logs.recipients[].email" in out
    dialect = ["--dialect", "sqlite"]
    assert main(["datamap", "indexes", "--datamap", str(SECOND_MAP), *dialect]) == 0
    out = capsys.readouterr().out
    assert "CONCURRENTLY" not in out and "CREATE INDEX IF NOT EXISTS" in out


def test_bad_input_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["datamap", "indexes", "--datamap", str(DEMO_MAP)]
    assert main([*base, "--system", "nope"]) == 2
    assert "--system" in capsys.readouterr().err
    assert main([*base, "--db", "not a url"]) == 2
    assert "--db" in capsys.readouterr().err
    assert main([*base, "--db", "nosuchdialect://x/y"]) == 2
    assert "--db" in capsys.readouterr().err
    assert main([*base, "--apply"]) == 2
    assert "--db" in capsys.readouterr().err


def _world(name: str) -> tuple[Path, sa.MetaData]:
    if name == "demo":
        from compliance_dev.world import schema

        return DEMO_MAP, schema.metadata
    from tests.second_world import schema as second

    return SECOND_MAP, second.metadata


def _index_names(url: str) -> dict[str, set[str]]:
    """Every index by table, read from the catalog: SQLAlchemy's SQLite reflection skips
    expression indexes, the very ones (tenant, lower(email)) this command creates."""
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":
        stmt = "SELECT tbl_name, name FROM sqlite_master WHERE type = 'index'"
    else:
        stmt = "SELECT tablename, indexname FROM pg_indexes WHERE schemaname = current_schema()"
    out: dict[str, set[str]] = {}
    try:
        with engine.connect() as conn:
            for table, name in conn.exec_driver_sql(stmt):
                out.setdefault(table, set()).add(name)
        return out
    finally:
        engine.dispose()


def _apply_twice(url: str, world: str, capsys: pytest.CaptureFixture[str]) -> None:
    mapfile, metadata = _world(world)
    engine = sa.create_engine(url)
    metadata.create_all(engine)
    engine.dispose()
    plan = indexes.needed(load_datamap(mapfile))
    before = _index_names(url)
    args = ["datamap", "indexes", "--datamap", str(mapfile), "--db", url]
    assert main(args) == 0  # inspect only: nothing is created
    report = capsys.readouterr().out
    assert _index_names(url) == before
    states = dict(
        (m.group(2), m.group(1)) for m in re.finditer(r"^(\w+)\s+\w+\(.*?\) (\w+):", report, re.M)
    )
    assert set(states) == {i.name for i in plan.indexes}  # every needed index is reported
    missing = {name for name, state in states.items() if state == "missing"}
    assert missing
    # the dev schemas already index some relations and identities: those count as existing
    assert any(ln.startswith("exists ") for ln in report.splitlines())

    assert main([*args, "--apply"]) == 0
    assert f"created {len(missing)} index(es)" in capsys.readouterr().out
    after = _index_names(url)
    created = {n for t in after for n in after[t] - before.get(t, set())}
    assert created == {i.name for i in plan.indexes if i.name in missing}
    for spec in plan.indexes:  # every index the map needs is now served
        assert spec.name in after[spec.table] or spec.name not in missing
    emails = [i for i in plan.indexes if i.columns[-1].startswith("lower(")]
    assert emails and all(i.name in missing for i in emails)  # no CRM index serves lower()
    engine = engine_from_url(url)
    try:  # and each is read back as (tenant, lower(col)), on both dialects
        live = live_indexes(engine, {i.table for i in emails})
        assert all(list(i.columns) in live[i.table] for i in emails)
    finally:
        engine.dispose()

    assert main([*args, "--apply"]) == 0  # idempotent
    out = capsys.readouterr().out
    assert "created 0 index(es)" in out and "missing " not in out
    assert _index_names(url) == after


@pytest.mark.parametrize("world", ["demo", "second"])
def test_apply_on_sqlite(world: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _apply_twice(f"sqlite:///{tmp_path / 'crm.db'}", world, capsys)


@pytest.mark.parametrize("world", ["demo", "second"])
def test_apply_on_postgres(world: str, capsys: pytest.CaptureFixture[str]) -> None:
    with fresh_pg_database() as url:
        _apply_twice(url, world, capsys)


@pytest.mark.parametrize("world", ["demo", "second"])
def test_the_inventory_reports_missing_indexes_until_they_are_created(
    world: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 19: `data_inventory` lists each index the jobs need and the system lacks (advice,
    not a problem: the jobs still answer, only slower), and none once the command created them."""
    from compliance.inventory.sql import inspect_sql_system

    mapfile, metadata = _world(world)
    dm = load_datamap(mapfile)
    (system,) = dm.systems
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    engine = sa.create_engine(url)
    metadata.create_all(engine)
    found = inspect_sql_system(engine, dm, system)
    names = {f.kind for f in found.missing_indexes}
    assert names and names <= {i.name for i in indexes.needed(dm).indexes}
    assert not found.problems  # a missing index never fails the inventory
    args = ["datamap", "indexes", "--datamap", str(mapfile), "--db", url, "--apply"]
    assert main(args) == 0
    capsys.readouterr()
    assert inspect_sql_system(engine, dm, system).missing_indexes == []
    engine.dispose()
