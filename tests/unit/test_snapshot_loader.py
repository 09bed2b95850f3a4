"""The backup snapshot loader's fast insert path (issue 19) stores exactly what a Core insert
stores: the R13 gather compares times and keys in the scratch SQLite file, so a DateTime
spelt differently (no microseconds, a "T") would move a row across a request's window edge.
"""

from __future__ import annotations

import csv
import gzip
import io
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa

from compliance.access import snapshots
from compliance.core.stores.sql import scratch_engine

BUCKET = "cj-snapshot-loader"
HEADER = ["id", "tenant", "at", "day", "flag", "note"]
ROWS = [
    ["1", "7", "2026-03-04 05:06:07", "2026-03-04", "t", "plain"],
    ["2", "7", "2026-03-04T05:06:07.250000+02:00", "2026-03-05", "f", ""],
    ["3", "8", "2026-03-04 05:06:07", "2026-03-04", "t", "other tenant"],
    ["4", "7", "", "", "", "nulls"],
]


def _table(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "t",
        md,
        sa.Column("id", sa.Integer()),
        sa.Column("tenant", sa.Text()),
        sa.Column("at", sa.DateTime()),
        sa.Column("day", sa.Date()),
        sa.Column("flag", sa.Boolean()),
        sa.Column("note", sa.Text()),
    )


def _plan(table: sa.Table) -> list[tuple[str, Any]]:
    return [(c.name, snapshots._converter(c.type, None)) for c in table.columns]


def _raw(engine: sa.Engine) -> list[tuple[Any, ...]]:
    """What is stored, as SQLite holds it (no result processing)."""
    with engine.connect() as conn:
        return list(conn.exec_driver_sql("SELECT * FROM t ORDER BY id").all())


def test_the_fast_path_stores_what_a_core_insert_stores(s3: Any, tmp_path: Any) -> None:
    s3.create_bucket(Bucket=BUCKET)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(HEADER)
    writer.writerows(ROWS)
    s3.put_object(Bucket=BUCKET, Key="t.csv.gz", Body=gzip.compress(buf.getvalue().encode()))

    fast = sa.create_engine(f"sqlite:///{tmp_path}/fast.db")
    md = sa.MetaData()
    table = _table(md)
    md.create_all(fast)
    loaded = snapshots._load(s3, BUCKET, "t.csv.gz", fast, table, _plan(table), ("tenant", {"7"}))
    assert loaded == 3  # tenant 8 skipped while streaming

    core = sa.create_engine(f"sqlite:///{tmp_path}/core.db")
    md.create_all(core)
    plan = _plan(table)
    wanted = [
        {name: conv(value) for (name, conv), value in zip(plan, row, strict=True)}
        for row in ROWS
        if row[1] == "7"
    ]
    with core.begin() as conn:
        conn.execute(sa.insert(table), wanted)

    assert _raw(fast) == _raw(core)
    stored = {r[0]: r for r in _raw(fast)}
    assert stored[1][2] == "2026-03-04 05:06:07.000000"  # SQLAlchemy's SQLite DateTime text
    assert stored[2][2] == "2026-03-04 03:06:07.250000"  # naive UTC, as the CRM keeps it
    assert stored[4][2:5] == (None, None, None)
    with fast.connect() as conn:
        row = conn.execute(sa.select(table).where(table.c.id == 2)).one()
    assert row.at == datetime(2026, 3, 4, 3, 6, 7, 250000)
    assert row.day == date(2026, 3, 5) and row.flag is False


def test_scratch_files_skip_the_journal(tmp_path: Any) -> None:
    engine = scratch_engine(tmp_path / "scratch.db")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "off"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 0
