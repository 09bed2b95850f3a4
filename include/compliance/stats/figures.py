"""A period's figures, assembled from weekly rollups, the period's edge days and one reach pass.

A period is cut along ISO weeks: the whole weeks come from the rollups (computed and stored if
missing), the partial weeks at its edges (a month rarely starts on a Monday) are aggregated
live. Events add up exactly over these parts. Distinct consumers do not, so:

- per tenant (and so per industry and in total): exact, from one `reach` pass over the whole
  period when it has more than one part (the only statement whose cost grows with the period);
  a period of one part takes that part's figures as they are;
- per campaign: exact when the campaign's events fall in one part, which is the usual case (a
  campaign is sent within minutes; its opens follow within days); otherwise the sum of its
  parts' counts, flagged `sum_of_weeks` (someone who opened it in two weeks counts twice);
- suppression never relies on a sum: a cell's lower bound is the largest count of any one part.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

import pandas as pd
from sqlalchemy import Engine

from compliance.core.sqlmap import key_text
from compliance.stats import aggregate, rollup
from compliance.stats.aggregate import EVENTS, UNIQUES
from compliance.stats.config import EventSource
from compliance.stats.period import Period, weeks_between


@dataclass
class PeriodFigures:
    reach: pd.DataFrame  # client_id, *MEASURES (exact for the period), lb
    campaigns: pd.DataFrame  # client_id, campaign, *EVENTS, *UNIQUES, uniques, lb
    device_parts: pd.DataFrame  # part, *dims, *MEASURES (one row per part and cell)
    weekly_reach: pd.DataFrame  # week, client_id, *MEASURES for the series weeks
    parts: int
    run: rollup.RollupRun


def split(period: Period) -> tuple[list[date], list[tuple[datetime, datetime]]]:
    """(Mondays of the whole weeks inside the period, [lo, hi) of its partial weeks)."""
    whole, edges = [], []
    for monday in weeks_between(period.start, period.end):
        first, last = max(monday, period.start), min(monday + timedelta(days=6), period.end)
        if (first, last) == (monday, monday + timedelta(days=6)):
            whole.append(monday)
        else:
            lo = datetime.combine(first, time())
            edges.append((lo, datetime.combine(last + timedelta(days=1), time())))
    return whole, edges


def period_figures(
    events: Engine,
    state: Engine,
    src: EventSource,
    period: Period,
    today: date,
    series: list[date],
    refresh: bool = False,
) -> PeriodFigures:
    """The period's figures and the series weeks' reach, reading each week's events once."""
    whole, edges = split(period)
    single = len(whole) + len(edges) == 1
    wanted = {
        "campaign": whole,
        "device": whole,
        # period-wide reach comes from its own pass unless the period is a single week
        "reach": sorted(set(series) | (set(whole) if single else set())),
    }
    mondays = sorted(set(whole) | set(series))
    weekly, run = rollup.weekly(events, state, src, mondays, today, refresh, wanted)
    inside = set(whole)
    camp_parts = [_part(weekly["campaign"], inside)]
    device_parts = [_part(weekly["device"], inside)]
    reach_parts = [_part(weekly["reach"], inside)]
    for lo, hi in edges:
        agg = aggregate.aggregate(events, src, lo, hi)
        label = lo.date()
        camp_parts.append(agg.campaigns.assign(part=label))
        device_parts.append(agg.devices.assign(part=label))
        reach_parts.append(agg.reach.assign(part=label))
    n_parts = len(whole) + len(edges)
    if single:
        reach = _concat(reach_parts).drop(columns="part")
        if reach.empty:
            reach = aggregate.empty_reach()
    else:
        reach = aggregate.reach(events, src, period.lo, period.hi)
    reach = reach.assign(lb=reach["consumers"])
    series_reach = weekly["reach"][weekly["reach"]["week"].isin(set(series))]
    return PeriodFigures(
        reach,
        _campaigns(_concat(camp_parts)),
        _concat(device_parts),
        series_reach.reset_index(drop=True),
        n_parts,
        run,
    )


def _part(df: pd.DataFrame, weeks: set[date]) -> pd.DataFrame:
    return df[df["week"].isin(weeks)].rename(columns={"week": "part"})


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=["part"])
    return pd.concat(frames, ignore_index=True)


def _campaigns(parts: pd.DataFrame) -> pd.DataFrame:
    columns = ["client_id", "campaign", *EVENTS, *UNIQUES, "uniques", "lb"]
    if parts.empty or "campaign" not in parts:
        return pd.DataFrame(columns=columns)
    keys = ["client_id", "campaign"]
    grouped = parts.groupby(keys, sort=False)
    out = grouped[[*EVENTS, *UNIQUES]].sum()
    out["uniques"] = grouped["part"].nunique().map(lambda n: "exact" if n == 1 else "sum_of_weeks")
    out["lb"] = grouped["consumers"].max()
    out = out.reset_index()
    out["client_id"] = out["client_id"].map(key_text).astype(object)  # tenant ids are text
    for col in (*EVENTS, *UNIQUES, "lb"):
        out[col] = out[col].astype("int64")
    return out[columns]
