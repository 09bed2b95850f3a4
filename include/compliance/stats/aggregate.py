"""The SQL side: every count is computed in the database, in range scans of the time column.

Each statement reads `WHERE time >= :lo AND time < :hi` (the time column's index) and is a
two-level GROUP BY that SQLite and PostgreSQL run the same way:

    inner: one row per (tenant, keys..., consumer): that consumer's sends, opens and clicks
    outer: per (tenant?, keys...): the events (sums) and the distinct consumers who were sent,
           opened, clicked or did any of these (counts of inner rows with a non-zero sum)

Distinct consumers are exact at the level grouped, and no `COUNT(DISTINCT)` is needed, so the
database can hash-aggregate in parallel instead of sorting every event (on 20M events a
DISTINCT sort spilled to disk and took several times a plain GROUP BY). A consumer is counted
as a (tenant, consumer) pair: it belongs to one tenant, so counts add up exactly over tenants.

Three groupings, because distinct counts do not add across cells (a consumer opens two
campaigns, or one campaign on two devices):
- `campaigns`: per (tenant, campaign);
- `devices`: per dimensions (device type, OS), over opens and clicks only (sends carry no
  device), tenants added up;
- `reach`: per tenant: exact reach for every client, and for industries and the total by
  adding tenants.

No statement returns a row per event, and no Python loop runs per event.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

import pandas as pd
import sqlalchemy as sa
from sqlalchemy import Engine

from compliance.core.datamap.model import TenantRegistry
from compliance.core.sqlmap import key_text
from compliance.stats.config import EventSource

UNKNOWN = "unknown"  # the label of a NULL dimension or campaign
CANONICAL = ("sent", "open", "click")
EVENTS = ["sent", "opens", "clicks"]
UNIQUES = ["consumers_exposed", "consumers_opened", "consumers_clicked"]
MEASURES = [*EVENTS, *UNIQUES, "consumers"]  # consumers: did any of the three

# PostgreSQL: favour the parallel hash plan for these large aggregations (its default costs
# pick a serial plan below a few million groups). SET LOCAL ends with the transaction.
_PG_HINTS = ("SET LOCAL parallel_setup_cost = 0", "SET LOCAL parallel_tuple_cost = 0")


@dataclass(frozen=True)
class Aggregates:
    """One range of events, aggregated; every frame carries the MEASURES columns."""

    campaigns: pd.DataFrame  # client_id, campaign, *MEASURES
    devices: pd.DataFrame  # *dims, *MEASURES (opens and clicks only)
    reach: pd.DataFrame  # client_id, *MEASURES


def _events(src: EventSource) -> sa.TableClause:
    return sa.table(
        src.table,
        sa.column(src.time_column, sa.DateTime),
        sa.column(src.tenant_column),
        sa.column(src.consumer_column),
        sa.column(src.campaign_column),
        sa.column(src.event_type.column),
        *(sa.column(d) for d in src.dimensions),
    )


def _two_level(
    src: EventSource,
    lo: datetime,
    hi: datetime,
    by: list[tuple[str, str]],
    types: tuple[str, ...],
    keep_tenant: bool,
    weekly: bool = False,
) -> sa.Select:
    """The two-level GROUP BY; `weekly` adds the ISO week (PostgreSQL `date_trunc('week')`,
    the Monday) to both levels' keys, so one statement aggregates many weeks at once, each
    week's groups and distinct consumers exactly what a statement over that week alone gives."""
    t = _events(src)
    c = t.c
    stored = {
        "sent": src.event_type.sent,
        "open": src.event_type.open,
        "click": src.event_type.click,
    }
    kind = c[src.event_type.column]

    def count_of(name: str) -> sa.ColumnElement:
        return sa.func.sum(sa.case((kind == stored[name], 1), else_=0))

    week = [sa.func.date_trunc("week", c[src.time_column]).label("week")] if weekly else []
    inner_keys = [
        *week,
        c[src.tenant_column].label("client_id"),
        *(c[col].label(name) for name, col in by),
        c[src.consumer_column].label("consumer"),
    ]
    inner = (
        sa.select(
            *inner_keys,
            count_of("sent").label("s"),
            count_of("open").label("o"),
            count_of("click").label("c"),
        )
        .where(
            c[src.time_column] >= lo,
            c[src.time_column] < hi,
            kind.in_([stored[n] for n in types]),
        )
        .group_by(*inner_keys)
        .subquery("per_consumer")
    )
    i = inner.c
    keys = [i.week] if weekly else []
    keys += [i.client_id] if keep_tenant else []
    keys += [i[name] for name, _ in by]

    def reached(col: sa.ColumnElement) -> sa.ColumnElement:
        return sa.func.sum(sa.case((col > 0, 1), else_=0))

    return sa.select(
        *keys,
        sa.func.sum(i.s).label("sent"),
        sa.func.sum(i.o).label("opens"),
        sa.func.sum(i.c).label("clicks"),
        reached(i.s).label("consumers_exposed"),
        reached(i.o).label("consumers_opened"),
        reached(i.c).label("consumers_clicked"),
        sa.func.count().label("consumers"),
    ).group_by(*keys)


def campaigns_query(
    src: EventSource, lo: datetime, hi: datetime, weekly: bool = False
) -> sa.Select:
    by = [("campaign", src.campaign_column)]
    return _two_level(src, lo, hi, by, CANONICAL, True, weekly)


def devices_query(src: EventSource, lo: datetime, hi: datetime, weekly: bool = False) -> sa.Select:
    dims = [(d, d) for d in src.dimensions]
    return _two_level(src, lo, hi, dims, ("open", "click"), False, weekly)


def reach_query(src: EventSource, lo: datetime, hi: datetime, weekly: bool = False) -> sa.Select:
    return _two_level(src, lo, hi, [], CANONICAL, True, weekly)


def _frame(engine: Engine, query: sa.Select) -> pd.DataFrame:
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            for hint in _PG_HINTS:
                conn.exec_driver_sql(hint)
        result = conn.execute(query)
        # object dtype keeps ids as ints next to NULLs (pandas would make them floats)
        return pd.DataFrame(result.fetchall(), columns=list(result.keys()), dtype=object)


def _tidy(df: pd.DataFrame, labels: list[str], tenant: bool) -> pd.DataFrame:
    """NULL labels as "unknown", integer counts, fixed columns even when empty."""
    columns = [*(["client_id"] if tenant else []), *labels, *MEASURES]
    if df.empty:
        df = pd.DataFrame(columns=columns)
    df = df[columns].copy()
    for col in labels:
        df[col] = df[col].where(df[col].notna(), UNKNOWN).astype(str)
    if tenant:  # tenant ids are text (integer, text or UUID in the CRM: any-CRM)
        df["client_id"] = df["client_id"].map(key_text).astype(object)
    for col in MEASURES:
        df[col] = df[col].astype("int64")
    return df.reset_index(drop=True)


def empty_reach() -> pd.DataFrame:
    return _tidy(pd.DataFrame(), [], True)


def campaigns(engine: Engine, src: EventSource, lo: datetime, hi: datetime) -> pd.DataFrame:
    return _tidy(_frame(engine, campaigns_query(src, lo, hi)), ["campaign"], True)


def devices(engine: Engine, src: EventSource, lo: datetime, hi: datetime) -> pd.DataFrame:
    dims = list(src.dimensions)
    if not dims:
        return _tidy(pd.DataFrame(), [], False)
    return _tidy(_frame(engine, devices_query(src, lo, hi)), dims, False)


def reach(engine: Engine, src: EventSource, lo: datetime, hi: datetime) -> pd.DataFrame:
    return _tidy(_frame(engine, reach_query(src, lo, hi)), [], True)


def aggregate(engine: Engine, src: EventSource, lo: datetime, hi: datetime) -> Aggregates:
    """All three groupings over [lo, hi)."""
    return Aggregates(
        campaigns=campaigns(engine, src, lo, hi),
        devices=devices(engine, src, lo, hi),
        reach=reach(engine, src, lo, hi),
    )


def aggregate_weeks(
    engine: Engine, src: EventSource, mondays: list[date]
) -> dict[date, Aggregates]:
    """Every week of a run of consecutive Mondays, from three statements in all (PostgreSQL).

    The same three groupings as `aggregate`, with the week as one more key: one range scan of
    the events instead of three per week (a backfill of 156 weeks was 468 statements). Each
    week's frames are exactly what `aggregate(week_range(monday))` returns: the same groups,
    the same exact distinct consumers (a consumer is counted within the week), the same
    columns and types; a week without events gets empty frames. The statements run side by
    side on two connections.
    """
    lo = datetime.combine(mondays[0], time())
    hi = datetime.combine(mondays[-1] + timedelta(days=7), time())
    queries = {
        "campaigns": campaigns_query(src, lo, hi, weekly=True),
        "reach": reach_query(src, lo, hi, weekly=True),
    }
    if src.dimensions:
        queries["devices"] = devices_query(src, lo, hi, weekly=True)
    with ThreadPoolExecutor(max_workers=2) as pool:
        frames = dict(
            zip(queries, pool.map(lambda q: _frame(engine, q), queries.values()), strict=True)
        )
    dims = list(src.dimensions)
    labels = {"campaigns": (["campaign"], True), "devices": (dims, False), "reach": ([], True)}
    split = {name: _by_week(df, *labels[name]) for name, df in frames.items()}
    out = {}
    for monday in mondays:
        parts = {
            name: split.get(name, {}).get(monday)
            if monday in split.get(name, {})
            else _tidy(pd.DataFrame(), *labels[name])  # a week (or grouping) without rows
            for name in labels
        }
        out[monday] = Aggregates(**parts)
    return out


def _by_week(df: pd.DataFrame, labels: list[str], tenant: bool) -> dict[date, pd.DataFrame]:
    """One `_tidy` over every week's rows, then a frame per week (the same columns and types
    as `_tidy` of that week alone: tidying per week cost more than the SQL, issue 19)."""
    if df.empty:
        return {}
    weeks = df["week"].map(lambda v: v.date() if isinstance(v, datetime) else v).to_numpy()
    tidy = _tidy(df, labels, tenant)
    positions = pd.Series(range(len(tidy))).groupby(weeks, sort=False).indices
    return {w: tidy.iloc[idx].reset_index(drop=True) for w, idx in positions.items()}


def tenant_industries(engine: Engine, registry: TenantRegistry) -> dict[str, str]:
    """client id -> industry label, from the data map's tenant registry."""
    assert registry.industry_column is not None
    t = sa.table(registry.table, sa.column(registry.key), sa.column(registry.industry_column))
    query = sa.select(t.c[registry.key], t.c[registry.industry_column])
    with engine.connect() as conn:
        return {
            key_text(key): (str(ind) if ind not in (None, "") else UNKNOWN)
            for key, ind in conn.execute(query)
        }
