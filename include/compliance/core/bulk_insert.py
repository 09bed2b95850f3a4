"""Many rows into one of our own tables, fast on PostgreSQL (COPY) and plain elsewhere.

Why: an executemany of a few thousand rows became one of the larger costs of a statistics
backfill (issue 19). SQLAlchemy sends them as multi-row INSERTs of 1,000 rows, which
PostgreSQL parses and plans as 13,000-parameter statements: 2.8 s for the 29,500 weekly
rollup rows of 200,000 contacts, where `COPY ... FROM STDIN` takes 0.44 s for the same rows.

Only for the project's own tables and plain values (text, integers, floats, booleans, dates,
naive timestamps, NULL): a value of any other type raises rather than being written in some text
form. COPY is stricter than INSERT in a few ways the callers must know: no assignment casts (a
float into an integer column fails), no Python-side column defaults (give every column), and
only through psycopg2 (another driver gets the plain INSERT). A failed COPY raises without the
server's message, which quotes the offending value. The caller's transaction is used, so the
rows commit or roll back with it.
"""

from __future__ import annotations

import io
import numbers
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa

# COPY's text format: backslash escapes, tab between columns, \N for NULL.
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def insert_rows(conn: sa.Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert `rows` (every row with the same keys) into `table` on `conn`; returns the count."""
    if not rows:
        return 0
    if conn.dialect.name != "postgresql" or conn.dialect.driver != "psycopg2":
        # numpy scalars as Python's (sqlite3 stores them as bytes)
        conn.execute(sa.insert(table), [{k: _plain(v) for k, v in r.items()} for r in rows])
        return len(rows)
    names = list(rows[0])
    unknown = [n for n in names if n not in table.c]
    if unknown:
        raise ValueError(f"insert_rows: {table.name} has no column(s) {unknown}")
    buf = io.StringIO()
    for row in rows:
        buf.write("\t".join(_text(row[n]) for n in names))
        buf.write("\n")
    buf.seek(0)
    columns = ", ".join(conn.dialect.identifier_preparer.quote(n) for n in names)
    target = conn.dialect.identifier_preparer.format_table(table)
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.copy_expert(f"COPY {target} ({columns}) FROM STDIN", buf)
    except Exception as exc:  # the server's message quotes the value: keep it out of logs
        code = getattr(exc, "pgcode", None) or type(exc).__name__
        raise RuntimeError(f"COPY into {table.name} failed ({code})") from None
    finally:
        cursor.close()
    return len(rows)


def _plain(value: Any) -> Any:
    if isinstance(value, bool | int | float) or not isinstance(value, numbers.Real):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _text(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, str):
        return value.translate(_ESCAPES)
    if isinstance(value, numbers.Integral):  # numpy's integers too (pandas hands them out)
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    if isinstance(value, datetime):
        if value != value:  # pandas' NaT is a datetime
            raise TypeError("insert_rows: a missing timestamp is None, not NaT")
        if value.tzinfo is not None:  # COPY would drop or shift the offset by column type
            raise TypeError("insert_rows: give timestamps as naive UTC")
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"insert_rows: a {type(value).__name__} value has no COPY text form here")
