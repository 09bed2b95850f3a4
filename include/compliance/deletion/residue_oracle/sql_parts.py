"""A large PostgreSQL table searched in block ranges, side by side (issue 19).

Why: the oracle's search of a table reads the batch's terms from a temporary table, and
PostgreSQL never gives a statement that reads a temporary table a parallel plan (parallel
workers cannot see another session's temporary tables). At 1M contacts `finalize` spent most of
its time in one serial statement over 22M e-mail events on a machine with a second core idle.
So a table of at least MIN_BLOCKS pages is cut into PARTS ranges of its heap pages (`ctid`,
a TID Range Scan since PostgreSQL 14), each searched on a connection of its own, with its own
temporary terms table: the database's cores work side by side, as a parallel plan would.

Every row is in exactly one range, and every range sees the table as it was at one moment:
the parts import one exported snapshot (`pg_export_snapshot`, REPEATABLE READ), so a row updated
meanwhile, whose new version lands in another range, is not missed by both; the last range is
open-ended. Other databases (SQLite), PostgreSQL before 14 (no TID Range Scan: every part would
read the whole heap) and smaller tables: one statement, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import Any, TypeVar

import sqlalchemy as sa

PARTS = 2  # ranges searched side by side (the CI and benchmark machine has two cores)
MIN_BLOCKS = 4096  # 32 MB of heap: below, a second connection costs more than it saves

T = TypeVar("T")


def block_ranges(conn: sa.Connection, table: sa.Table) -> list[sa.ColumnElement | None]:
    """The predicates of the ranges `table` is searched in: [None] (the whole table, one
    statement) off PostgreSQL or below MIN_BLOCKS pages."""
    if conn.dialect.name != "postgresql" or PARTS < 2:
        return [None]
    if (conn.dialect.server_version_info or (0,)) < (14,):
        return [None]
    name = conn.dialect.identifier_preparer.format_table(table)
    size = sa.text(
        "SELECT pg_relation_size(CAST(:t AS regclass)) / current_setting('block_size')::bigint"
    )
    blocks = int(conn.execute(size, {"t": name}).scalar() or 0)
    if blocks < max(MIN_BLOCKS, PARTS):
        return [None]
    cuts = [blocks * i // PARTS for i in range(1, PARTS)]
    ctid = sa.literal_column(f"{name}.ctid")

    def tid(block: int) -> sa.ColumnElement:
        return sa.literal_column(f"'({block},0)'::tid")

    bounds = [None, *cuts, None]
    return [
        sa.and_(
            *([ctid >= tid(lo)] if lo is not None else []),
            *([ctid < tid(hi)] if hi is not None else []),
        )
        for lo, hi in pairwise(bounds)
    ]


def side_by_side(
    conn: sa.Connection,
    parts: list[sa.ColumnElement | None],
    search: Callable[[sa.Connection, sa.ColumnElement | None], list[T]],
) -> list[T]:
    """`search(connection, part)` of every part, concatenated in part order: on `conn` for a
    single part, else each on a connection of its own, at once (the driver releases the GIL
    while the database works), all on one snapshot. `conn`'s own transaction is ended first, so
    it does not sit idle in a transaction (holding its locks) while the parts run."""
    if len(parts) == 1:
        return search(conn, parts[0])
    conn.rollback()  # read only so far
    repeatable = {"isolation_level": "REPEATABLE READ"}
    with conn.engine.connect().execution_options(**repeatable) as exporter:
        snapshot = exporter.execute(sa.text("SELECT pg_export_snapshot()")).scalar()

        def run(part: Any) -> list[T]:
            with conn.engine.connect().execution_options(**repeatable) as own:
                own.execute(sa.text("SET TRANSACTION SNAPSHOT :s"), {"s": snapshot})
                return search(own, part)

        with ThreadPoolExecutor(len(parts)) as pool:
            return [row for rows in pool.map(run, parts) for row in rows]
