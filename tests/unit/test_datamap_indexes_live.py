"""`datamap indexes` against a live PostgreSQL: an INVALID index (what a failed
`CREATE INDEX CONCURRENTLY` leaves) counts as missing and `--apply` rebuilds it, and the
identity lookup `resolve` issues (R16 deletion, R8 access) is served by the indexes the command
created, not by a sequential scan (issue 19, deliverable 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from compliance.__main__ import main
from compliance.core.datamap import indexes
from compliance.core.datamap.model import IdentityType
from compliance.core.datamap.validate import load_datamap
from compliance.core.sqlmap import MappedSql
from compliance.core.stores.sql import apply_indexes, engine_from_url, invalid_indexes, live_indexes
from compliance.requests.resolve import normalise_for_column
from tests.conftest import fresh_pg_database

REPO = Path(__file__).resolve().parents[2]
DEMO_MAP = REPO / "config" / "datamap.yaml"


def _demo_pg(url: str) -> sa.Engine:
    from compliance_dev.world import schema

    engine = engine_from_url(url)
    schema.metadata.create_all(engine)
    with engine.begin() as conn:  # 20 clients x 1000 contacts, then planner statistics
        conn.exec_driver_sql(
            "INSERT INTO clients (client_id, name, industry, state, active, created_at)"
            " SELECT g, 'c' || g, 'retail', 'CA', true, now() FROM generate_series(1, 20) g"
        )
        conn.exec_driver_sql(
            "INSERT INTO contacts (contact_id, client_id, email, phone, is_child, created_at,"
            " updated_at) SELECT g, 1 + mod(g, 20), 'u' || g || '@x.example', '+1555' || g, false,"
            " now(), now() FROM generate_series(1, 20000) g"
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")
    return engine


def test_an_invalid_index_is_missing_and_apply_rebuilds_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    dm = load_datamap(DEMO_MAP)
    (system,) = dm.systems
    specs = indexes.needed(dm).for_system(system)
    spec = next(s for s in specs if s.table == "email_events" and "occurred_at" in s.columns)
    with fresh_pg_database() as url:
        engine = _demo_pg(url)
        try:
            assert spec in apply_indexes(engine, specs)
            assert apply_indexes(engine, specs) == []  # all valid: nothing to do
            with engine.begin() as conn:  # superuser postgres on the test database
                conn.execute(
                    sa.text(
                        "UPDATE pg_index SET indisvalid = false"
                        " WHERE indexrelid = CAST(:n AS regclass)"
                    ),
                    {"n": spec.name},
                )
            assert invalid_indexes(engine, {spec.table}) == {(spec.table, spec.name)}
            assert list(spec.columns) not in live_indexes(engine, {spec.table})[spec.table]
            args = ["datamap", "indexes", "--datamap", str(DEMO_MAP), "--db", url]
            assert main(args) == 0
            out = capsys.readouterr().out
            assert f"missing       {spec.table}(" in out and spec.name in out
            assert "1 missing" in out
            assert main([*args, "--apply"]) == 0
            assert "created 1 index(es)" in capsys.readouterr().out
            assert invalid_indexes(engine, {spec.table}) == set()  # dropped and rebuilt
            assert list(spec.columns) in live_indexes(engine, {spec.table})[spec.table]
            names = {ix["name"] for ix in sa.inspect(engine).get_indexes(spec.table)}
            assert spec.name in names
        finally:
            engine.dispose()


def _lookup_plan(engine: sa.Engine, kind: IdentityType, column: str) -> str:
    """EXPLAIN of the statement `requests.resolve` builds for (tenant, identity) pairs."""
    dm = load_datamap(DEMO_MAP)
    (system,) = dm.systems
    owned = MappedSql(engine, dm.systems[system]).owned("contacts")
    value = normalise_for_column(kind, owned.table.c[column])
    stmt = (
        sa.select(owned.tenant, value, owned.consumer_key)
        .select_from(owned.from_clause)
        .where(  # as resolve spells it: per tenant, OR-ed
            sa.or_(
                sa.and_(owned.tenant == 1, value.in_(["a@x.example"])),
                sa.and_(owned.tenant == 2, value.in_(["b@y.example"])),
            )
        )
    )
    sql = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        return "\n".join(r[0] for r in conn.execute(sa.text("EXPLAIN " + sql)))


def test_lookup_by_tenant_and_phone_uses_an_index_on_both_columns() -> None:
    """The tenant is compared in the column's own type (BIGINT, no CAST): the CRM's own
    (client_id, phone) index, which the command counts as serving, serves both columns."""
    with fresh_pg_database() as url:
        engine = _demo_pg(url)
        try:
            apply_indexes(engine, indexes.needed(load_datamap(DEMO_MAP)).for_system("crm"))
            plan = _lookup_plan(engine, IdentityType.phone, "phone")
            assert "Seq Scan" not in plan
            assert "CAST" not in plan.upper() and "::character varying" not in plan
            cond = [ln for ln in plan.splitlines() if "Index Cond" in ln]
            assert cond and all("client_id" in ln and "phone" in ln for ln in cond), plan
        finally:
            engine.dispose()


def test_lookup_by_tenant_and_email_uses_the_email_in_the_index() -> None:
    """resolve compares lower(email): the command derives (client_id, lower(email)), reads it
    back as existing, and the planner probes it with both the tenant and the lower-cased
    address (the CRM's own plain (client_id, email) index would serve only the tenant)."""
    with fresh_pg_database() as url:
        engine = _demo_pg(url)
        try:
            specs = indexes.needed(load_datamap(DEMO_MAP)).for_system("crm")
            spec = next(s for s in specs if s.name == "cj_contacts_client_id_lower_email")
            assert spec.columns == ("client_id", "lower(email)")
            assert spec in apply_indexes(engine, specs)
            assert ["client_id", "lower(email)"] in live_indexes(engine, {"contacts"})["contacts"]
            assert apply_indexes(engine, specs) == []  # the expression index is read back
            plan = _lookup_plan(engine, IdentityType.email, "email")
            assert "Seq Scan" not in plan
            assert "cj_contacts_client_id_lower_email" in plan, plan
            cond = [ln for ln in plan.splitlines() if "Index Cond" in ln]
            assert cond and all("lower" in ln and "client_id" in ln for ln in cond), plan
            assert "Filter" not in plan, plan  # nothing of the pair is left to a row filter
        finally:
            engine.dispose()


def _demo_sqlite(path: Path) -> sa.Engine:
    """The demo CRM on SQLite, 20 clients x 1000 contacts, the command's indexes, statistics."""
    from compliance_dev.world import schema

    engine = engine_from_url(f"sqlite:///{path}")
    schema.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 20)"
            " INSERT INTO clients (client_id, name, industry, state, active, created_at)"
            " SELECT n, 'c' || n, 'retail', 'CA', 1, CURRENT_TIMESTAMP FROM g"
        )
        conn.exec_driver_sql(
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 20000)"
            " INSERT INTO contacts (contact_id, client_id, email, phone, is_child, created_at,"
            " updated_at) SELECT n, 1 + n % 20, 'u' || n || '@x.example', '+1555' || n, 0,"
            " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP FROM g"
        )
    apply_indexes(engine, indexes.needed(load_datamap(DEMO_MAP)).for_system("crm"))
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    return engine


def _sqlite_plan(engine: sa.Engine, stmt: sa.Executable) -> str:
    with engine.connect() as conn:
        sql = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
        return "\n".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))


def test_sqlite_matches_the_expression_resolve_compares(tmp_path: Path) -> None:
    """SQLite uses an expression index only for the same expression: `create_sql`'s
    `lower("email")` must be what `resolve` compares (`normalise_for_column`, qualified and
    unquoted, default collation). A (tenant, e-mail) probe is served on both parts."""
    engine = _demo_sqlite(tmp_path / "crm.db")
    try:
        assert ["client_id", "lower(email)"] in live_indexes(engine, {"contacts"})["contacts"]
        dm = load_datamap(DEMO_MAP)
        owned = MappedSql(engine, dm.systems["crm"]).owned("contacts")
        value = normalise_for_column(IdentityType.email, owned.table.c["email"])
        stmt = (
            sa.select(owned.consumer_key)
            .select_from(owned.from_clause)
            .where(owned.tenant == 4, value.in_(["u3@x.example", "u23@x.example"]))
        )
        plan = _sqlite_plan(engine, stmt)
        assert "USING INDEX cj_contacts_client_id_lower_email (client_id=? AND <expr>=?)" in plan
    finally:
        engine.dispose()


def test_sqlite_resolve_lookup_uses_the_expression_index(tmp_path: Path) -> None:
    """The statements `resolve` really runs (captured), explained on SQLite."""
    from compliance.requests.resolve import Subject, resolve

    engine = _demo_sqlite(tmp_path / "crm.db")
    seen: list[str] = []
    try:
        dm = load_datamap(DEMO_MAP)
        sa.event.listen(engine, "before_cursor_execute", lambda _c, _u, sql, *_a: seen.append(sql))
        subjects = [
            Subject("a", "4", ((IdentityType.email, "U3@x.example"),)),
            Subject("b", "5", ((IdentityType.email, "u4@x.example"),)),
        ]
        got = resolve(engine, dm.systems["crm"], subjects)
        assert got["a"].consumer_ids == {"3"} and got["b"].consumer_ids == {"4"}
        lookups = [s for s in seen if "lower(contacts.email)" in s and "FROM contacts" in s]
        assert lookups, seen
        with engine.connect() as conn:
            for sql in lookups:
                n = sql.count("?")
                params = tuple(
                    v for s in subjects for v in (int(s.client_id), s.identities[0][1].lower())
                )
                assert n == len(params)
                plan = "\n".join(
                    str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)
                )
                assert "cj_contacts_client_id_lower_email" in plan, plan
    finally:
        engine.dispose()
