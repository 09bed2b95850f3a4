"""Tables without a time column (issue 14, deliverable 5), on SQLite and PostgreSQL.

A small CRM of its own: people (the consumer table) -> orders -> order_lines -> line_notes, and
tags on people. Only people and orders have a time column in the "dated" map; in the "undated"
map nothing has one. Checked here:

- access (R9): a child without a time column takes its parent's time for the look-back, at any
  depth; a table with no time anywhere on its chain is always in scope; the report says which,
  per table (data.json and index.html);
- a time column that is not a DATE/TIMESTAMP never reaches a comparison with a datetime: the
  gather stops with an error naming the column, on both backends;
- retention (R27): a rule on an undated child expires the rows whose parent's time is past the
  period; a table with no time anywhere cannot be expired by age: the policy check says
  `undated`, the coverage gate says why its columns are uncovered;
- `check_against_schema` with live types: an INTEGER time column, a text tenant column against
  an integer registry key, an integer e-mail column and a relation type mismatch, all at once.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from compliance.__main__ import main
from compliance.access import gather, render, report
from compliance.access.batch import AccessBatch, targets_key
from compliance.access.disclosure import Retention
from compliance.core.context import Workspace
from compliance.core.datamap.graph import time_path
from compliance.core.datamap.model import DataMap
from compliance.core.datamap.validate import (
    TimeColumnTypeError,
    check_against_schema,
    check_text,
    live_schema,
)
from compliance.core.outputs import put_json
from compliance.core.stores.s3 import ensure_bucket
from compliance.core.stores.sql import engine_from_url
from compliance.retention import Sweep, coverage, execute_step
from compliance.retention import check_text as policy_check
from compliance.retention.policy import Policy

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
AS_OF = NOW.date()
BUCKET = "cj-time-column-test"


def ago(**kw: float) -> datetime:
    return (NOW - timedelta(**kw)).replace(tzinfo=None)  # the CRM stores naive UTC


def schema(metadata: sa.MetaData, *, bad: bool = False) -> None:
    """The CRM's tables. `bad`: the type mistakes a new user makes (see the last tests)."""
    sa.Table("clients", metadata, sa.Column("client_id", sa.Integer, primary_key=True))
    sa.Table(
        "people",
        metadata,
        sa.Column("person_id", sa.Integer, primary_key=True),
        sa.Column("client_id", sa.String(40) if bad else sa.Integer, nullable=False),
        sa.Column("email", sa.Integer if bad else sa.String(200)),
        sa.Column("created_at", sa.Integer if bad else sa.DateTime),
        sa.Column("legacy_ts", sa.Integer),  # seconds since 1970: not a time column
    )
    sa.Table(
        "orders",
        metadata,
        sa.Column("order_id", sa.Integer, primary_key=True),
        sa.Column("person_id", sa.String(20) if bad else sa.Integer, nullable=False),
        sa.Column("ordered_at", sa.DateTime),
        sa.Column("total", sa.Integer),
    )
    sa.Table(
        "order_lines",
        metadata,
        sa.Column("line_id", sa.Integer, primary_key=True),
        sa.Column("order_id", sa.Integer, sa.ForeignKey("orders.order_id"), nullable=False),
        sa.Column("item", sa.String(100)),
    )
    sa.Table(
        "line_notes",
        metadata,
        sa.Column("note_id", sa.Integer, primary_key=True),
        sa.Column("line_id", sa.Integer, sa.ForeignKey("order_lines.line_id"), nullable=False),
        sa.Column("body", sa.String(200)),
    )
    sa.Table(
        "tags",
        metadata,
        sa.Column("tag_id", sa.Integer, primary_key=True),
        sa.Column("person_id", sa.Integer, nullable=False),
        sa.Column("label", sa.String(50)),
    )


def map_data(*, dated: bool = True, people_time: str = "created_at") -> dict[str, Any]:
    """The data map as a new user writes it; `dated=False`: no table has a time column."""

    def col(category: str, identity: str | None = None) -> dict[str, Any]:
        return {"categories": [category], **({"identity": identity} if identity else {})}

    people: dict[str, Any] = {
        "primary_key": "person_id",
        "tenant_column": "client_id",
        "columns": {"email": col("identifiers", "email")},
    }
    orders: dict[str, Any] = {
        "primary_key": "order_id",
        "relation": {"column": "person_id", "references": "people.person_id"},
        "columns": {"total": col("commercial")},
    }
    if dated:
        people["time_column"] = people_time
        orders["time_column"] = "ordered_at"
    info = {"description": "d", "sources": ["the client"], "purposes": ["service"]}
    return {
        "version": 1,
        "systems": {
            "crm": {
                "kind": "sql",
                "connection": "crm_db",
                "consumer_table": "people",
                "tenants": {"table": "clients", "key": "client_id"},
                "tables": {
                    "people": people,
                    "orders": orders,
                    "order_lines": {
                        "primary_key": "line_id",
                        "relation": {"column": "order_id", "references": "orders.order_id"},
                        "columns": {"item": col("commercial")},
                    },
                    "line_notes": {
                        "primary_key": "note_id",
                        "relation": {"column": "line_id", "references": "order_lines.line_id"},
                        "columns": {"body": col("commercial")},
                    },
                    "tags": {
                        "primary_key": "tag_id",
                        "relation": {"column": "person_id", "references": "people.person_id"},
                        "columns": {"label": col("inferences")},
                    },
                },
            }
        },
        "categories": {c: info for c in ("identifiers", "commercial", "inferences")},
    }


def load_map(data: dict[str, Any]) -> DataMap:
    dm, issues = check_text(yaml.safe_dump(data, sort_keys=False))
    assert issues == [] and dm is not None, issues
    return dm


DATED = load_map(map_data())
UNDATED = load_map(map_data(dated=False))

# rows: (table, key) -> when the row's *own* or parent's time puts it (old = outside 12 months)
OLD_ORDER, NEW_ORDER = ago(days=3 * 365), ago(days=10)
PERSON_CREATED = ago(days=30)


@pytest.fixture
def crm(db_url: str):
    engine = engine_from_url(db_url)
    metadata = sa.MetaData()
    schema(metadata)
    metadata.create_all(engine)
    t = metadata.tables
    with engine.begin() as c:
        c.execute(sa.insert(t["clients"]), [{"client_id": 1}, {"client_id": 2}])
        c.execute(
            sa.insert(t["people"]),
            [
                dict(person_id=1, client_id=1, email="p1@x.test", created_at=PERSON_CREATED),
                dict(person_id=2, client_id=1, email="p2@x.test", created_at=PERSON_CREATED),
            ],
        )
        c.execute(
            sa.insert(t["orders"]),
            [
                dict(order_id=10, person_id=1, ordered_at=OLD_ORDER, total=5),
                dict(order_id=11, person_id=1, ordered_at=NEW_ORDER, total=7),
                dict(order_id=20, person_id=2, ordered_at=OLD_ORDER, total=9),
            ],
        )
        c.execute(
            sa.insert(t["order_lines"]),
            [
                dict(line_id=100, order_id=10, item="old line"),
                dict(line_id=101, order_id=11, item="new line"),
                dict(line_id=200, order_id=20, item="someone else's old line"),
            ],
        )
        c.execute(
            sa.insert(t["line_notes"]),
            [
                dict(note_id=1000, line_id=100, body="old note"),
                dict(note_id=1001, line_id=101, body="new note"),
                dict(note_id=2000, line_id=200, body="someone else's note"),
            ],
        )
        c.execute(
            sa.insert(t["tags"]),
            [dict(tag_id=1, person_id=1, label="vip"), dict(tag_id=2, person_id=2, label="x")],
        )
    yield engine
    engine.dispose()


# -- the graph -----------------------------------------------------------------------------------


def test_time_path_finds_the_nearest_dated_table_or_none():
    system = DATED.systems["crm"]
    assert time_path(system, "orders") == ([], "ordered_at")
    hops, column = time_path(system, "line_notes") or ([], "")
    assert [h.target_table for h in hops] == ["order_lines", "orders"]
    assert column == "ordered_at"
    hops, column = time_path(system, "tags") or ([], "")
    assert ([h.target_table for h in hops], column) == (["people"], "created_at")
    assert all(time_path(UNDATED.systems["crm"], t) is None for t in UNDATED.systems["crm"].tables)


# -- access --------------------------------------------------------------------------------------


def gathered(s3: Any, engine: sa.Engine, dm: DataMap) -> list[dict[str, Any]]:
    """Person 1's records from a real `gather_system` pass, 12-month window (R9)."""
    ensure_bucket(s3, BUCKET)
    batch = AccessBatch(
        "acc-test",
        NOW.isoformat(),
        requests={
            "1": {
                "client_id": 1,
                "since": (NOW - timedelta(days=365)).isoformat(),
                "until": NOW.isoformat(),
                "jurisdiction": "ccpa",
            }
        },
        consumers={"crm": {"1": [1]}},
    )
    put_json(s3, BUCKET, targets_key(batch.batch_id), batch.__dict__)
    gather.gather_system(Workspace(s3, BUCKET), dm, engine, batch.batch_id, "crm")
    return gather.read_parts(s3, BUCKET, batch.batch_id).get("1", [])


def by_source(records: list[dict[str, Any]]) -> dict[str, set[Any]]:
    out: dict[str, set[Any]] = {}
    for rec in records:
        out.setdefault(rec["source"], set()).add(rec["record"])
    return out


def test_access_child_without_time_takes_its_parents_time(crm, s3):
    records = gathered(s3, crm, DATED)
    assert by_source(records) == {
        "crm.people": {1},
        "crm.orders": {11},  # order 10 is three years old
        "crm.order_lines": {101},  # line 100 belongs to the old order: outside R9's 12 months
        "crm.line_notes": {1001},  # depth 3: dated by orders through order_lines
        "crm.tags": {1},  # dated by the person's own row (30 days old)
    }
    line = next(r for r in records if r["source"] == "crm.order_lines")
    assert line["collected_at"].startswith(NEW_ORDER.date().isoformat())  # the parent's time


def test_access_table_with_no_time_anywhere_is_always_in_scope(crm, s3):
    records = gathered(s3, crm, UNDATED)
    assert by_source(records) == {
        "crm.people": {1},
        "crm.orders": {10, 11},  # three years old, yet undated: in scope (err to disclose, R9)
        "crm.order_lines": {100, 101},
        "crm.line_notes": {1000, 1001},
        "crm.tags": {1},
    }
    assert {r["collected_at"] for r in records} == {None}


def report_of(dm: DataMap, records: list[dict[str, Any]]) -> dict[str, Any]:
    request = {
        "request_id": "r-1",
        "client_id": 1,
        "jurisdiction": "ccpa",
        "look_back": "default",
        "received_at": NOW.isoformat(),
        "since": (NOW - timedelta(days=365)).isoformat(),
        "until": NOW.isoformat(),
    }
    return report.assemble(
        dm,
        request,
        {"email": ["p1@x.test"]},
        records,
        retention=Retention({}, available=False),
        generated_at=NOW,
    )


def test_report_says_per_table_how_rows_were_dated(crm, s3):
    rep = report_of(DATED, gathered(s3, crm, DATED))
    basis = {s["source"]: s["collection_time"] for s in rep["sources"]}
    assert {k: (v["basis"], v["parent"]) for k, v in basis.items()} == {
        "crm.people": ("own", None),
        "crm.orders": ("own", None),
        "crm.order_lines": ("parent", "crm.orders"),
        "crm.line_notes": ("parent", "crm.orders"),
        "crm.tags": ("parent", "crm.people"),
    }
    html = render.render_html(json.loads(json.dumps(rep)), [])
    assert html.count("dated by its related record in Orders (crm)") == 2
    assert "the related record (crm.people)" in html


def test_report_says_which_tables_are_always_in_scope(crm, s3):
    rep = report_of(UNDATED, gathered(s3, crm, UNDATED))
    assert {s["collection_time"]["basis"] for s in rep["sources"]} == {"none"}
    html = render.render_html(rep, [])
    assert html.count("carry no collection date, so all of them are included") == 5
    assert html.count("no date: always included") == 5


def test_an_integer_time_column_is_never_compared_with_a_datetime(crm, s3):
    """An INTEGER `time_column`: no silent drop on SQLite, no crash in SQL on PostgreSQL, but a
    clear error naming the column, before any row is read."""
    dm = load_map(map_data(people_time="legacy_ts"))
    with pytest.raises(TimeColumnTypeError, match=r"people\.legacy_ts .*DATE or TIMESTAMP"):
        gathered(s3, crm, dm)
    # the same column dates the children: they are refused too, not compared
    assert check_against_schema(dm, "crm", live_schema(crm))[0].rule == "live-column-type"


# -- retention -----------------------------------------------------------------------------------


def policy(rules: list[dict[str, Any]]) -> Policy:
    return Policy.model_validate(
        {"version": 1, "minors": {"flag": "crm.people.is_minor"}, "rules": rules}
    )


def test_retention_expires_child_rows_by_their_parents_time(crm):
    rule = {
        "id": "old-lines",
        "purpose": "p",
        "table": "crm.order_lines",
        "action": "delete",
        "period": "1 year",
    }
    sweep = Sweep(
        datamap=DATED,
        policy=policy([rule]),
        as_of=AS_OF,
        now=NOW,
        engine=lambda _c: crm,
        s3=lambda _c: None,
        hash_key=b"k",
    )
    result = execute_step(sweep, "old-lines")
    assert result["counts"]["order_lines"]["delete"] == 2  # lines 100 and 200: old orders
    with crm.connect() as c:
        lines = set(c.execute(sa.text("SELECT line_id FROM order_lines")).scalars())
        notes = set(c.execute(sa.text("SELECT note_id FROM line_notes")).scalars())
        orders = set(c.execute(sa.text("SELECT order_id FROM orders")).scalars())
    assert lines == {101}
    assert notes == {1001}  # children go with their row
    assert orders == {10, 11, 20}  # the parents themselves are another rule's business
    assert execute_step(sweep, "old-lines")["counts"]["order_lines"]["delete"] == 0  # rerun


def test_retention_refuses_a_rule_on_a_table_with_no_time_anywhere():
    text = yaml.safe_dump(
        {
            "version": 1,
            "minors": {"flag": "crm.people.email"},
            "rules": [
                {
                    "id": "lines",
                    "purpose": "p",
                    "table": "crm.order_lines",
                    "action": "delete",
                    "period": "1 year",
                },
                {
                    "id": "people",
                    "purpose": "p",
                    "table": "crm.people",
                    "action": "expire_consumers",
                    "period": "3 years",
                },
            ],
        }
    )
    _, issues = policy_check(text, UNDATED)
    undated = {(i.location, i.rule) for i in issues if i.rule == "undated"}
    assert undated == {("rules.0.table", "undated"), ("rules.1.table", "undated")}
    assert "no time_column and no table up its relation chain" in str(issues[0]) or any(
        "no time_column" in str(i) for i in issues if i.rule == "undated"
    )
    _, dated_issues = policy_check(text, DATED)
    assert not [i for i in dated_issues if i.rule == "undated"]


def test_coverage_gate_says_why_an_undated_table_is_uncovered():
    cat_rule = {
        "id": "deid",
        "purpose": "p",
        "category": "commercial",
        "action": "deidentify",
        "period": "1 year",
    }
    cov = coverage(policy([cat_rule]), UNDATED)
    assert "crm.order_lines.item" in cov.uncovered  # the category rule passes over it
    messages = {i.location: i.message for i in cov.issues()}
    assert "no rule can expire it by age" in messages["crm.order_lines.item"]
    assert "crm.order_lines has no time_column" in messages["crm.order_lines.item"]
    dated = coverage(policy([cat_rule]), DATED)
    assert dated.covered["crm.order_lines.item"] == "deid"  # dated by its order: covered


# -- datamap check --db ---------------------------------------------------------------------------


@pytest.fixture
def bad_crm(db_url: str):
    engine = engine_from_url(db_url)
    metadata = sa.MetaData()
    schema(metadata, bad=True)
    metadata.create_all(engine)
    yield engine
    engine.dispose()


def test_check_against_schema_reports_every_type_error_at_once(bad_crm):
    issues = check_against_schema(DATED, "crm", live_schema(bad_crm))
    people = "systems.crm.tables.people"
    assert {(i.rule, i.location) for i in issues} == {
        ("live-column-type", f"{people}.time_column"),  # INTEGER created_at
        ("live-column-type", f"{people}.columns.email"),  # an integer e-mail column
        ("live-type-mismatch", f"{people}.tenant_column"),  # VARCHAR vs the INTEGER registry key
        ("live-type-mismatch", "systems.crm.tables.orders.relation.column"),  # VARCHAR -> INTEGER
    }
    text = {i.location: i.message for i in issues}
    assert "is INTEGER; a time_column must be a DATE or TIMESTAMP" in text[f"{people}.time_column"]
    assert "clients.client_id" in text[f"{people}.tenant_column"]
    # names only: check_against_schema without types keeps its old meaning
    names = {t: list(cols) for t, cols in live_schema(bad_crm).items()}
    assert check_against_schema(DATED, "crm", names) == []


def test_check_against_schema_accepts_the_good_schema(crm):
    assert check_against_schema(DATED, "crm", live_schema(crm)) == []
    assert check_against_schema(UNDATED, "crm", live_schema(crm)) == []


def test_sqlite_declared_integer_time_column_is_flagged(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'raw.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.execute(sa.text("CREATE TABLE clients (client_id INTEGER PRIMARY KEY)"))
        c.execute(
            sa.text(
                "CREATE TABLE people (person_id INTEGER PRIMARY KEY, client_id TEXT, "
                "email TEXT, created_at INTEGER)"
            )
        )
        for name, ddl in [
            ("orders", "order_id INTEGER PRIMARY KEY, person_id INTEGER, ordered_at TIMESTAMP, "),
            ("order_lines", "line_id INTEGER PRIMARY KEY, order_id INTEGER, item TEXT, "),
            ("line_notes", "note_id INTEGER PRIMARY KEY, line_id INTEGER, body TEXT, "),
            ("tags", "tag_id INTEGER PRIMARY KEY, person_id INTEGER, label TEXT, "),
        ]:
            c.execute(sa.text(f"CREATE TABLE {name} ({ddl}total INTEGER)"))
    engine.dispose()
    path = tmp_path / "map.yaml"
    path.write_text(yaml.safe_dump(map_data(), sort_keys=False))
    assert main(["datamap", "check", str(path), "--db", url]) == 1
    err = capsys.readouterr().err
    assert "(2 issue(s))" in err
    assert "people.time_column: [live-column-type]" in err
    assert "people.tenant_column: [live-type-mismatch]" in err


def test_stats_source_on_a_table_without_time_column_is_a_config_error():
    """stats/config.py compares time columns: a source table without one is a clear error."""
    from pathlib import Path

    from compliance.core.datamap.validate import load_datamap
    from compliance.stats.config import StatsConfigError, check_against_datamap, load_config

    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(repo / "config" / "statistics.yaml")
    raw = yaml.safe_load((repo / "config" / "datamap.yaml").read_text())
    del raw["systems"][cfg.source.system]["tables"][cfg.source.table]["time_column"]
    dm, issues = check_text(yaml.safe_dump(raw, sort_keys=False))
    assert dm is not None and issues == []
    with pytest.raises(StatsConfigError) as exc:
        check_against_datamap(cfg, dm)
    assert (
        "source.table",
        f"{cfg.source.table} has no time_column in the data map: statistics "
        "count events per period and need the table's own time column",
    ) in exc.value.problems
    check_against_datamap(cfg, load_datamap(repo / "config" / "datamap.yaml"))  # as shipped


def test_date_columns_compare_by_day():
    """A DATE time column: a row of the window's first day is inside (SQLite keeps dates as
    text, where '2024-01-01' < '2024-01-01 00:00:00')."""
    since = datetime(2024, 1, 1, 15, 0, tzinfo=UTC)
    until = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
    assert gather._inside(date(2024, 1, 1), since, until)
    assert gather._inside(date(2024, 3, 1), since, until)
    assert not gather._inside(date(2023, 12, 31), since, until)
