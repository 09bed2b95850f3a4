"""Weekly rollups: what one ISO week's events add up to, kept so no run reads a week twice.

`cj_stats_weekly` (compliance state database) holds, per source and week, the week's three
groupings from `compliance.stats.aggregate` (reach per tenant, campaigns, devices), each with
its events and its distinct consumers *within that week*. A weekly run computes its week
(three statements on that week's events, through the time index), stores it, and reads the
other weeks of its series from here: its cost follows the new week's events, not the length of
the history.

Distinct consumers do not add across weeks and this table does not pretend they do: it keeps
weekly uniques, used for weekly figures and, across weeks, only as lower bounds (a period holds
at least the consumers of its busiest week) and in sums that are labelled as such.

Only complete weeks are stored (a week still running would be frozen without its late opens);
a partial week is computed live each time. Every stored week has a marker row, so an empty week
is not recomputed either. Rows are aggregate counts with no identifiers; they are not
re-derived after an erasure (aggregates may be kept, R16.1), but `refresh` recomputes the
weeks a run reads, e.g. after a bulk correction. Storing a week replaces it in one transaction,
so reruns converge.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import pandas as pd
import sqlalchemy as sa
from sqlalchemy import BigInteger, Column, Date, DateTime, Engine, MetaData, String, Table

from compliance.core.bulk_insert import insert_rows
from compliance.core.sqlmap import key_text
from compliance.stats import aggregate
from compliance.stats.aggregate import MEASURES, Aggregates
from compliance.stats.config import EventSource

metadata = MetaData()

cj_stats_weekly = Table(
    "cj_stats_weekly",
    metadata,
    Column("source_key", String(16), primary_key=True),
    Column("week", Date, primary_key=True),  # the Monday
    Column("grain", String(8), primary_key=True),  # week (marker) | reach | campaign | device
    # The tenant id as text (any-CRM); "" where the grain has no tenant.
    Column("client_id", String(255), primary_key=True),
    Column("key", String(255), primary_key=True),  # campaign, or dimension values joined
    *(Column(m, BigInteger, nullable=False) for m in MEASURES),
    Column("computed_at", DateTime, nullable=False),
)

GRAINS = ("reach", "campaign", "device")
WEEK_WORKERS = 2  # weeks aggregated side by side in a backfill (PostgreSQL)
_SEP = "\x1f"  # joins dimension values into one key


@dataclass
class RollupRun:
    """What one call did: weeks read from the table, computed and stored, computed live."""

    reused: list[str] = field(default_factory=list)
    stored: list[str] = field(default_factory=list)
    live: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, int]:
        return {"reused": len(self.reused), "stored": len(self.stored), "live": len(self.live)}


def ensure_table(state: Engine) -> None:
    metadata.create_all(state, checkfirst=True)
    if state.dialect.name == "postgresql":  # a table from when tenant ids were integers
        kinds = {c["name"]: c["type"] for c in sa.inspect(state).get_columns(cj_stats_weekly.name)}
        if isinstance(kinds.get("client_id"), sa.Integer):
            with state.begin() as conn:
                conn.execute(
                    sa.text(
                        "ALTER TABLE cj_stats_weekly ALTER COLUMN client_id TYPE VARCHAR(255) "
                        "USING (CASE WHEN client_id = 0 THEN '' ELSE client_id::text END)"
                    )
                )


def is_complete(monday: date, today: date) -> bool:
    """The week ended before today (UTC), so no event of it is still to come."""
    return monday + timedelta(days=7) <= today


def week_range(monday: date) -> tuple[datetime, datetime]:
    lo = datetime.combine(monday, time())
    return lo, lo + timedelta(days=7)


def _rows(source_key: str, monday: date, agg: Aggregates, dims: list[str]) -> list[dict]:
    now = datetime.now(UTC).replace(tzinfo=None)
    base = {"source_key": source_key, "week": monday, "computed_at": now}
    zero = dict.fromkeys(MEASURES, 0)
    rows = [{**base, "grain": "week", "client_id": "", "key": "", **zero}]

    def add(grain: str, df: pd.DataFrame, client: pd.Series | None, key: pd.Series) -> None:
        measures = df[MEASURES].astype("int64").to_dict("records")
        clients = [""] * len(df) if client is None else [key_text(c) for c in client.tolist()]
        for c, k, m in zip(clients, key.tolist(), measures, strict=True):  # groups, not events
            rows.append({**base, "grain": grain, "client_id": c, "key": k, **m})

    add("reach", agg.reach, agg.reach["client_id"], pd.Series([""] * len(agg.reach)))
    add("campaign", agg.campaigns, agg.campaigns["client_id"], agg.campaigns["campaign"])
    if dims and len(agg.devices):
        key = agg.devices[dims].astype(str).agg(_SEP.join, axis=1)
        add("device", agg.devices, None, key)
    return rows


def _rows_many(source_key: str, weeks: dict[date, Aggregates], dims: list[str]) -> list[dict]:
    """`_rows` of many weeks at once: each grouping's weeks concatenated and converted in one
    go (per week, the small-frame pandas work cost more than the SQL: issue 19). The same
    rows as `_rows` week by week (`tests/unit/test_stats_weeks.py`)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    zero = dict.fromkeys(MEASURES, 0)
    rows = [
        {"source_key": source_key, "week": m, "computed_at": now, "grain": "week"}
        | {"client_id": "", "key": "", **zero}
        for m in weeks
    ]
    grains = [("reach", "reach"), ("campaign", "campaigns")] + (
        [("device", "devices")] * bool(dims)
    )
    for grain, attr in grains:
        parts = [getattr(a, attr).assign(week=m) for m, a in weeks.items() if len(getattr(a, attr))]
        if not parts:
            continue
        df = pd.concat(parts, ignore_index=True)
        n = len(df)
        if grain == "device":
            clients, keys = [""] * n, df[dims].astype(str).agg(_SEP.join, axis=1).tolist()
        else:
            clients = [key_text(c) for c in df["client_id"].tolist()]
            keys = df["campaign"].tolist() if grain == "campaign" else [""] * n
        measures = df[MEASURES].to_numpy(dtype="int64").tolist()
        base = {"source_key": source_key, "computed_at": now, "grain": grain}
        for week, c, k, m in zip(df["week"].tolist(), clients, keys, measures, strict=True):
            counts = dict(zip(MEASURES, m, strict=True))
            rows.append(base | {"week": week, "client_id": c, "key": k} | counts)
    return rows


def store_week(state: Engine, src: EventSource, monday: date, agg: Aggregates) -> None:
    """Replace one week's rollup (all groupings and the marker) in one transaction."""
    key = src.key()
    rows = _rows(key, monday, agg, list(src.dimensions))
    t = cj_stats_weekly
    with state.begin() as conn:
        conn.execute(sa.delete(t).where(t.c.source_key == key, t.c.week == monday))
        insert_rows(conn, t, rows)


def store_weeks(state: Engine, src: EventSource, weeks: dict[date, Aggregates]) -> None:
    """`store_week` for many weeks in one transaction (a backfill pass): each week replaced
    whole, as one week's store does, so reruns converge the same way."""
    key = src.key()
    rows = _rows_many(key, weeks, list(src.dimensions))
    t = cj_stats_weekly
    with state.begin() as conn:
        conn.execute(sa.delete(t).where(t.c.source_key == key, t.c.week.in_(sorted(weeks))))
        insert_rows(conn, t, rows)  # COPY on PostgreSQL: the INSERTs cost more than the SQL


def stored_weeks(state: Engine, source_key: str, mondays: Iterable[date]) -> set[date]:
    t = cj_stats_weekly
    wanted = sorted(set(mondays))
    if not wanted:
        return set()
    q = sa.select(t.c.week).where(
        t.c.source_key == source_key, t.c.grain == "week", t.c.week.in_(wanted)
    )
    with state.connect() as conn:
        return {_as_date(w) for w in conn.execute(q).scalars()}


def load_weeks(
    state: Engine, src: EventSource, mondays: Iterable[date], grains: Iterable[str] = GRAINS
) -> dict[str, pd.DataFrame]:
    """Stored rows of those weeks, per grain, shaped like `Aggregates` plus a `week` column."""
    wanted = sorted(set(mondays))
    return _load(state, src, {grain: wanted for grain in grains})


def _load(
    state: Engine, src: EventSource, by_grain: dict[str, list[date]]
) -> dict[str, pd.DataFrame]:
    t = cj_stats_weekly
    rows: list[tuple] = []
    clauses = [
        sa.and_(t.c.grain == grain, t.c.week.in_(weeks))
        for grain, weeks in by_grain.items()
        if weeks
    ]
    if clauses:
        q = sa.select(t.c.week, t.c.grain, t.c.client_id, t.c.key, *(t.c[m] for m in MEASURES))
        q = q.where(t.c.source_key == src.key(), sa.or_(*clauses))
        with state.connect() as conn:
            rows = [tuple(r) for r in conn.execute(q)]  # plain tuples: pandas builds them fast
    df = pd.DataFrame(rows, columns=["week", "grain", "client_id", "key", *MEASURES])
    df["week"] = df["week"].map(_as_date)
    out: dict[str, pd.DataFrame] = {}
    dims = list(src.dimensions)
    for grain in by_grain:
        part = df[df["grain"] == grain]
        if grain == "reach":
            frame = part[["week", "client_id", *MEASURES]]
        elif grain == "campaign":
            frame = part[["week", "client_id", "key", *MEASURES]].rename(
                columns={"key": "campaign"}
            )
        else:
            split = part["key"].str.split(_SEP, expand=True) if len(part) else None
            frame = part[["week", *MEASURES]].copy()
            for i, d in enumerate(dims):
                frame.insert(1 + i, d, split[i] if split is not None else pd.Series(dtype=str))
        out[grain] = _typed(frame)
    return out


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy().reset_index(drop=True)
    if "client_id" in df:  # text; an old SQLite table may hand back integers
        df["client_id"] = df["client_id"].map(key_text).astype(object)
    for col in MEASURES:
        if col in df:
            df[col] = df[col].astype("int64")
    return df


def _with_week(agg: Aggregates, monday: date) -> dict[str, pd.DataFrame]:
    return {
        "reach": agg.reach.assign(week=monday),
        "campaign": agg.campaigns.assign(week=monday),
        "device": agg.devices.assign(week=monday),
    }


def weekly(
    events: Engine,
    state: Engine,
    src: EventSource,
    mondays: list[date],
    today: date,
    refresh: bool = False,
    wanted: dict[str, Iterable[date]] | None = None,
) -> tuple[dict[str, pd.DataFrame], RollupRun]:
    """The weeks' groupings: stored rollups where present, the events otherwise.

    Missing complete weeks are computed (one week at a time, through the time index) and
    stored; with `refresh` every complete week asked for is recomputed and stored again.
    `wanted` names, per grain, the weeks whose rows the caller needs (default: all of them),
    so a run reads back only what it uses.
    """
    wanted_sets = {g: set(w) for g, w in (wanted or dict.fromkeys(GRAINS, mondays)).items()}
    run = RollupRun()
    have = set() if refresh else stored_weeks(state, src.key(), mondays)
    run.reused = [m.isoformat() for m in mondays if m in have]
    missing = [m for m in mondays if m not in have]
    fresh: list[dict[str, pd.DataFrame]] = []
    for monday, agg, stored in _compute_weeks(events, state, src, missing, today):
        (run.stored if stored else run.live).append(monday.isoformat())
        fresh.append(_with_week(agg, monday))
    loaded = _load(state, src, {g: sorted(w & have) for g, w in wanted_sets.items()})
    out = {}
    for grain, weeks in wanted_sets.items():
        frames = [loaded[grain], *(f[grain][f[grain]["week"].isin(weeks)] for f in fresh)]
        frames = [f for f in frames if len(f)]
        out[grain] = (
            _typed(pd.concat(frames, ignore_index=True)) if frames else loaded[grain].iloc[:0]
        )
    return out, run


def _compute_weeks(
    events: Engine, state: Engine, src: EventSource, mondays: list[date], today: date
) -> Iterator[tuple[date, Aggregates, bool]]:
    """Each week's groupings, in order, complete weeks stored (True) as they are computed.

    On PostgreSQL a backfill of BACKFILL_WEEKS or more (a first run over a long period, a
    `refresh`) aggregates runs of consecutive weeks in one pass each
    (`aggregate.aggregate_weeks`, the week as a key) and stores a pass's weeks in one
    transaction; fewer weeks are computed WEEK_WORKERS at a time, three statements each, so
    their short statements and round trips overlap. SQLite computes the weeks one after the other.
    """

    def one(monday: date) -> tuple[date, Aggregates, bool]:
        agg = aggregate.aggregate(events, src, *week_range(monday))
        complete = is_complete(monday, today)
        if complete:
            store_week(state, src, monday, agg)
        return monday, agg, complete

    if events.dialect.name != "postgresql" or len(mondays) < 2:
        yield from map(one, mondays)
        return
    if len(mondays) < BACKFILL_WEEKS:
        with ThreadPoolExecutor(max_workers=WEEK_WORKERS) as pool:
            yield from pool.map(one, mondays)
        return
    # PostgreSQL: consecutive weeks in passes of up to WEEKS_PER_PASS, three statements each
    # (`aggregate.aggregate_weeks`), instead of three statements per week (issue 19).
    for run in _passes(mondays):
        aggs = aggregate.aggregate_weeks(events, src, run)
        done = [m for m in run if is_complete(m, today)]
        if done:
            store_weeks(state, src, {m: aggs[m] for m in done})
        for monday in run:
            yield monday, aggs[monday], monday in done


WEEKS_PER_PASS = 26  # weeks one statement aggregates: bounded hash tables at the large scale
# Fewer missing weeks than this (a weekly run, its 13-week series on a first run) keep three
# statements per week: each reads exactly its week's range, and the count is small.
BACKFILL_WEEKS = 14


def _passes(mondays: list[date]) -> Iterator[list[date]]:
    """Runs of consecutive Mondays, each at most WEEKS_PER_PASS long."""
    run: list[date] = []
    for monday in sorted(mondays):
        if run and (monday - run[-1] != timedelta(days=7) or len(run) == WEEKS_PER_PASS):
            yield run
            run = []
        run.append(monday)
    if run:
        yield run


def _as_date(value: object) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])
