"""Many weeks in one pass (issue 19) give exactly what one pass per week gives (PostgreSQL).

`aggregate.aggregate_weeks` adds the ISO week to the three groupings' keys, so a backfill reads
the events once instead of three times per week. On the figures test's hand-built world, every
week's campaign, device and reach frames must equal `aggregate.aggregate` over that week alone
(groups, exact distinct consumers, columns, types), empty weeks included; and a backfill through
`rollup.weekly` must store the same rollup rows either way.
"""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest
import sqlalchemy as sa

from compliance.core.stores.sql import engine_from_url
from compliance.stats import aggregate, config, rollup
from compliance.stats.period import week_start
from tests.conftest import fresh_pg_database
from tests.unit.test_stats_figures import TODAY, build_world

SRC = config.load_config().source


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in df.columns if c not in aggregate.MEASURES]
    return df.sort_values(keys).reset_index(drop=True) if len(df) else df.reset_index(drop=True)


@pytest.fixture
def pg_world():
    with fresh_pg_database() as url:
        engine = engine_from_url(url)
        events = build_world(engine)
        yield engine, events
        engine.dispose()


def test_one_pass_over_many_weeks_equals_one_pass_per_week(pg_world):
    engine, events = pg_world
    first = week_start(min(e.at for e in events).date()) - timedelta(days=7)  # an empty week
    last = week_start(max(e.at for e in events).date())
    mondays = [first + timedelta(days=7 * i) for i in range((last - first).days // 7 + 1)]
    assert len(mondays) >= 4
    weekly = aggregate.aggregate_weeks(engine, SRC, mondays)
    assert sorted(weekly) == mondays
    nonempty = 0
    for monday in mondays:
        alone = aggregate.aggregate(engine, SRC, *rollup.week_range(monday))
        got = weekly[monday]
        for name in ("campaigns", "devices", "reach"):
            a, b = _sorted(getattr(got, name)), _sorted(getattr(alone, name))
            pd.testing.assert_frame_equal(a, b, check_dtype=True)
        nonempty += len(alone.reach) > 0
    assert weekly[first].reach.empty and nonempty >= 3


def test_a_backfill_stores_the_same_rollups_either_way(pg_world, monkeypatch):
    engine, events = pg_world
    rollup.ensure_table(engine)
    last = week_start(TODAY) - timedelta(days=7)  # complete weeks only: all of them stored
    n = rollup.BACKFILL_WEEKS + 2
    mondays = [last - timedelta(days=7 * i) for i in reversed(range(n))]
    assert min(mondays) <= week_start(min(e.at for e in events).date())
    calls = []
    real = aggregate.aggregate_weeks
    monkeypatch.setattr(aggregate, "aggregate_weeks", lambda *a: calls.append(1) or real(*a))

    def stored() -> list[tuple]:
        t = rollup.cj_stats_weekly
        cols = [c for c in t.columns if c.name != "computed_at"]
        with engine.connect() as c:
            return [tuple(r) for r in c.execute(sa.select(*cols).order_by(*cols))]

    _, run = rollup.weekly(engine, engine, SRC, mondays, TODAY)
    assert calls and len(run.stored) == len(mondays)
    one_pass = stored()
    monkeypatch.setattr(rollup, "BACKFILL_WEEKS", 10_000)  # one pass per week
    calls.clear()
    rollup.weekly(engine, engine, SRC, mondays, TODAY, refresh=True)
    assert not calls
    assert stored() == one_pass
    assert len({r[1] for r in one_pass}) == len(mondays)  # a marker row per week at least
