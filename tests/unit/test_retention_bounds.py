"""The retention purge's key ranges on PostgreSQL (`execute._pg_bounds`, issue 19).

The ranges come from one pass (the count and GRID fixed quantiles); only past GRID * size
matches does a second pass ask for every size-th row. Either way the ranges must cover every
matching row exactly once, in key order, hold at most `size` matching rows each (a transaction
stays short), and end at the last match (never an open range over the live rest of the table).
Judged by counting in Python over the rows as inserted, not by the module's SQL.
"""

from __future__ import annotations

import bisect
import random
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from compliance.core.stores.sql import engine_from_url
from compliance.retention import execute as ex
from tests.conftest import fresh_pg_database

MD = sa.MetaData()
EVENTS = sa.Table(
    "events",
    MD,
    sa.Column("event_id", sa.BigInteger, primary_key=True),
    sa.Column("expired", sa.Boolean, nullable=False),
)


@pytest.fixture(scope="module")
def world():
    rng = random.Random(19)
    keys = sorted(rng.sample(range(1, 400_000), 30_000))  # gaps, not 1..n
    expired = {k for k in keys if rng.random() < 0.7}
    with fresh_pg_database() as url:
        engine = engine_from_url(url)
        MD.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                sa.insert(EVENTS), [{"event_id": k, "expired": k in expired} for k in keys]
            )
        yield engine, sorted(expired)
        engine.dispose()


def _check(highs: list[int], matches: list[int], size: int) -> None:
    assert highs == sorted(set(highs)) and highs[-1] == matches[-1]
    covered, lo = 0, None
    for hi in highs:
        n = bisect.bisect_right(matches, hi) - (
            0 if lo is None else bisect.bisect_right(matches, lo)
        )
        assert 1 <= n <= size, (lo, hi, n)
        covered += n
        lo = hi
    assert covered == len(matches)


@pytest.mark.parametrize("size", [1, 3, 500, 5_000, 100_000])
def test_ranges_cover_every_match_once_and_hold_at_most_size(world, size):
    engine, matches = world
    rows = SimpleNamespace(engine=engine)
    highs = ex._pg_bounds(rows, EVENTS, EVENTS.c.event_id, EVENTS.c.expired, size)
    _check(highs, matches, size)
    if size * ex.GRID >= len(matches):
        assert len(highs) >= len(matches) // size  # no range is needlessly small


@pytest.mark.parametrize("grid", [1, 4, 64])
def test_past_the_grid_the_exact_pass_takes_over(world, monkeypatch, grid):
    engine, matches = world
    monkeypatch.setattr(ex, "GRID", grid)
    highs = ex._pg_bounds(SimpleNamespace(engine=engine), EVENTS, EVENTS.c.event_id,
                          EVENTS.c.expired, 100)  # fmt: skip
    _check(highs, matches, 100)
    assert len(highs) == -(-len(matches) // 100)  # exactly every 100th row, and the last


def test_no_match_gives_no_range(world):
    engine, _ = world
    pred = sa.and_(EVENTS.c.expired, EVENTS.c.event_id < 0)
    assert ex._pg_bounds(SimpleNamespace(engine=engine), EVENTS, EVENTS.c.event_id, pred, 10) == []
