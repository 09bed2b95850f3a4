"""`core.bulk_insert.insert_rows` stores exactly what an INSERT stores (COPY on PostgreSQL).

The rollup backfill writes its rows through it (issue 19). COPY's text format has its own
escapes, so the awkward values are the point: tabs, newlines, carriage returns, backslashes, the
literal text `\\N` (NULL's spelling), empty strings, non-ASCII, NULLs, numpy integers.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import pytest
import sqlalchemy as sa

from compliance.core.bulk_insert import insert_rows
from compliance.core.stores.sql import engine_from_url

AWKWARD = ["plain", "", "tab\there", "line\nbreak", "cr\r\nlf", "back\\slash", "\\N", "é ☃ \x1f"]


def _tables() -> tuple[sa.MetaData, sa.Table, sa.Table]:
    md = sa.MetaData()

    def table(name: str) -> sa.Table:
        return sa.Table(
            name,
            md,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("text", sa.String(64)),
            sa.Column("n", sa.BigInteger),
            sa.Column("x", sa.Float),
            sa.Column("flag", sa.Boolean),
            sa.Column("day", sa.Date),
            sa.Column("at", sa.DateTime),
        )

    return md, table("by_copy"), table("by_insert")


def _rows() -> list[dict]:
    rows = []
    for i, text in enumerate([*AWKWARD, None]):
        rows.append(
            {
                "id": i,
                "text": text,
                "n": np.int64(2**40 + i) if i % 2 else -i,
                "x": None if i == 3 else i / 7,
                "flag": None if i == 5 else bool(i % 2),
                "day": date(2026, 1, 1 + i),
                "at": None if i == 4 else datetime(2026, 2, 3, 4, 5, 6, 789 * i),
            }
        )
    return rows


def test_the_same_rows_as_an_insert(db_url: str) -> None:
    engine = engine_from_url(db_url)
    md, by_copy, by_insert = _tables()
    md.create_all(engine)
    rows = _rows()
    with engine.begin() as conn:
        assert insert_rows(conn, by_copy, rows) == len(rows)
        conn.execute(sa.insert(by_insert), [{**r, "n": int(r["n"])} for r in rows])
    with engine.connect() as conn:
        got = conn.execute(sa.select(by_copy).order_by(by_copy.c.id)).all()
        want = conn.execute(sa.select(by_insert).order_by(by_insert.c.id)).all()
    assert got == want
    assert [r.text for r in got] == [*AWKWARD, None]
    engine.dispose()


def test_rows_roll_back_with_the_transaction(db_url: str) -> None:
    engine = engine_from_url(db_url)
    md, by_copy, _ = _tables()
    md.create_all(engine)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        insert_rows(conn, by_copy, _rows())
        raise RuntimeError("crash after the rows")
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(by_copy)).scalar() == 0
    engine.dispose()


def test_refuses_what_it_cannot_write_faithfully(pg_url: str) -> None:
    engine = engine_from_url(pg_url)
    md, by_copy, _ = _tables()
    md.create_all(engine)
    aware = {**_rows()[0], "at": datetime(2026, 1, 1, tzinfo=UTC)}
    with pytest.raises(TypeError, match="naive UTC"), engine.begin() as conn:
        insert_rows(conn, by_copy, [aware])
    with pytest.raises(TypeError, match="list"), engine.begin() as conn:
        insert_rows(conn, by_copy, [{**_rows()[0], "text": ["a"]}])
    with pytest.raises(ValueError, match="no column"), engine.begin() as conn:
        insert_rows(conn, by_copy, [{**_rows()[0], "nope": 1}])
    nat = type("NaT", (datetime,), {"__ne__": lambda self, other: True})(2026, 1, 1)
    with pytest.raises(TypeError, match="not NaT"), engine.begin() as conn:
        insert_rows(conn, by_copy, [{**_rows()[0], "at": nat}])
    engine.dispose()


def test_a_failed_copy_does_not_quote_the_value(pg_url: str) -> None:
    """PostgreSQL's COPY error context quotes the offending field; the error raised does not."""
    engine = engine_from_url(pg_url)
    md, by_copy, _ = _tables()
    md.create_all(engine)
    with pytest.raises(RuntimeError) as caught, engine.begin() as conn:
        insert_rows(conn, by_copy, [{**_rows()[0], "text": "jo@example.com" * 10}])  # > 64
    assert "22001" in str(caught.value) and "jo@example.com" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    engine.dispose()


def test_another_postgresql_driver_gets_the_insert(pg_url: str) -> None:
    """COPY goes through psycopg2's `copy_expert`; psycopg 3 (a map's own URL may name it)
    gets the plain INSERT, and the same rows."""
    pytest.importorskip("psycopg")
    engine = sa.create_engine(pg_url.replace("postgresql+psycopg2://", "postgresql+psycopg://"))
    assert engine.dialect.driver == "psycopg"
    md, by_copy, _ = _tables()
    md.create_all(engine)
    rows = _rows()
    with engine.begin() as conn:
        assert insert_rows(conn, by_copy, rows) == len(rows)
    with engine.connect() as conn:
        texts = conn.execute(sa.select(by_copy.c.text).order_by(by_copy.c.id)).scalars().all()
    assert texts == [*AWKWARD, None]
    engine.dispose()
