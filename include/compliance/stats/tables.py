"""Shaping: from grouped results to the published, suppressed report tables.

pandas works here on grouped rows (never events). Each table is built as a tree of cells, each
with a provable lower bound (`lb`) of its distinct consumers, suppressed by
`compliance.stats.suppress`, and only then turned into figures: a suppressed cell is published
as blanks, and rates exist only for published cells.

Bounds: a tenant's period reach is exact (so are industries and the total, adding tenants, since
a consumer belongs to one tenant); a campaign or device cell takes the largest count of any
single part of the period (`compliance.stats.figures`); a week takes its exact weekly reach.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pandas as pd

from compliance.core.sqlmap import by_key_order
from compliance.stats.aggregate import EVENTS, UNIQUES, UNKNOWN
from compliance.stats.figures import PeriodFigures
from compliance.stats.period import Period, week_label
from compliance.stats.suppress import Tree, suppress

ALL = "all"
COUNTS = [*EVENTS, *UNIQUES]
RATES = ["open_rate", "click_rate", "click_to_open"]


@dataclass
class TreeView:
    """A suppressed tree, kept for audits and tests: keys, parents and each cell's status."""

    keys: list[tuple]
    parent: list[int]
    status: list[str]  # "", "primary" or "complementary"
    lb: list[int]

    def summary(self) -> dict[str, int]:
        return {
            "cells": len(self.keys),
            "primary": sum(s == "primary" for s in self.status),
            "complementary": sum(s == "complementary" for s in self.status),
        }


@dataclass
class Tables:
    by_industry: pd.DataFrame
    by_client: pd.DataFrame
    by_campaign: pd.DataFrame
    by_device: pd.DataFrame
    weekly: pd.DataFrame
    weekly_industry: pd.DataFrame
    trees: dict[str, TreeView] = field(default_factory=dict)

    def frames(self) -> dict[str, pd.DataFrame]:
        return {
            "by_industry": self.by_industry,
            "by_client": self.by_client,
            "by_campaign": self.by_campaign,
            "by_device": self.by_device,
            "weekly": self.weekly,
            "weekly_industry_rates": self.weekly_industry,
        }

    def suppression(self) -> dict[str, dict[str, int]]:
        return {name: view.summary() for name, view in self.trees.items()}


# --------------------------------------------------------------------------- helpers


def _rates(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    sent = df["sent"].astype("float64").replace(0, np.nan)
    opens = df["opens"].astype("float64").replace(0, np.nan)
    df["open_rate"] = (df["opens"] / sent).round(4)
    df["click_rate"] = (df["clicks"] / sent).round(4)
    df["click_to_open"] = (df["clicks"] / opens).round(4)
    return df


def _blank(df: pd.DataFrame, status: list[str], columns: list[str]) -> pd.DataFrame:
    """Suppressed cells lose every figure; the flag says so (never why)."""
    df = df.copy().reset_index(drop=True)
    hidden = np.array([s != "" for s in status], dtype=bool)
    for col in columns:
        if col not in df:
            continue
        if col in RATES or col.startswith("share"):
            df[col] = df[col].astype("float64").where(~hidden)
        else:
            df[col] = df[col].astype("Int64").where(~hidden)
    df["suppressed"] = np.where(hidden, "yes", "")
    return df


def _view(keys: list[tuple], tree: Tree, k: int) -> TreeView:
    result = suppress(tree, k)
    status = [result.status(i) for i in range(len(keys))]
    return TreeView(keys, list(tree.parent), status, result.lb)


def _events_of(df: pd.DataFrame) -> list[float]:
    return (df["sent"] + df["opens"] + df["clicks"]).astype(float).tolist()


# --------------------------------------------------------------------------- tables


def audience_tables(
    fig: PeriodFigures, industries: dict[str, str], k: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, TreeView]:
    """Industry, client and campaign tables: one tree, total -> industry -> client -> campaign."""
    clients = fig.reach[["client_id", *COUNTS, "lb"]].copy()
    # A campaign's tenant always has reach in the same period, unless events arrived between
    # two statements: such a tenant gets a row of zeros (and so is suppressed), not a crash.
    missing = sorted(set(fig.campaigns["client_id"]) - set(clients["client_id"]))
    if missing:
        filler = pd.DataFrame({"client_id": missing, **{c: 0 for c in [*COUNTS, "lb"]}})
        clients = pd.concat([clients, filler], ignore_index=True)
    clients["industry"] = clients["client_id"].map(industries).fillna(UNKNOWN)
    clients = clients.sort_values(["industry", "client_id"], key=by_key_order, kind="stable")
    clients = clients.reset_index(drop=True)
    camps = fig.campaigns.merge(clients[["client_id", "industry"]], on="client_id", how="left")
    camps["industry"] = camps["industry"].fillna(UNKNOWN)
    camps["_num"] = pd.to_numeric(camps["campaign"], errors="coerce")
    camps = camps.sort_values(["client_id", "_num", "campaign"], key=by_key_order, kind="stable")
    camps = camps.drop(columns="_num").reset_index(drop=True)
    inds = clients.groupby("industry", sort=True)[[*COUNTS, "lb"]].sum().reset_index()
    total = inds[[*COUNTS, "lb"]].sum()

    n_ind, n_cli = len(inds), len(clients)
    ind_node = {name: 1 + i for i, name in enumerate(inds["industry"])}
    client_node = {str(c): 1 + n_ind + i for i, c in enumerate(clients["client_id"])}
    campaign_keys = zip(camps["client_id"], camps["campaign"], strict=True)
    keys: list[tuple] = [
        ("total",),
        *(("industry", name) for name in inds["industry"]),
        *(("client", str(c)) for c in clients["client_id"]),
        *(("campaign", str(c), camp) for c, camp in campaign_keys),
    ]
    parent = [
        -1,
        *[0] * n_ind,
        *clients["industry"].map(ind_node).tolist(),
        *camps["client_id"].map(client_node).tolist(),
    ]
    lb = [int(total["lb"]), *inds["lb"].tolist(), *clients["lb"].tolist(), *camps["lb"].tolist()]
    size = [float(sum(_events_of(inds))), *_events_of(inds), *_events_of(clients)]
    size += _events_of(camps)
    # Tenants partition consumers (total, industry); a client's campaigns overlap.
    disjoint = [True] * (1 + n_ind) + [False] * (n_cli + len(camps))
    view = _view(keys, Tree(parent, [int(x) for x in lb], size, disjoint), k)

    total_row = pd.DataFrame([{"industry": ALL, **{c: int(total[c]) for c in COUNTS}}])
    by_industry = pd.concat([total_row, inds.drop(columns="lb")], ignore_index=True)
    by_industry = _blank(_rates(by_industry), view.status[: 1 + n_ind], [*COUNTS, *RATES])
    by_client = clients[["client_id", "industry", *COUNTS]]
    by_client = _blank(
        _rates(by_client), view.status[1 + n_ind : 1 + n_ind + n_cli], [*COUNTS, *RATES]
    )
    by_campaign = camps[["campaign", "client_id", "industry", *COUNTS, "uniques"]]
    by_campaign = _blank(_rates(by_campaign), view.status[1 + n_ind + n_cli :], [*COUNTS, *RATES])
    by_campaign.loc[by_campaign["suppressed"] == "yes", "uniques"] = ""
    return by_industry, by_client, by_campaign, view


def device_table(
    fig: PeriodFigures, dims: list[str], k: int
) -> tuple[pd.DataFrame, TreeView | None]:
    """Opens and clicks by the dimensions, as a hierarchy (device type, then OS within it)."""
    columns = ["level", *dims, "opens", "clicks", "share_of_opens", "click_to_open", "suppressed"]
    parts = fig.device_parts
    if not dims or parts.empty or dims[0] not in parts:
        return pd.DataFrame(columns=columns), None
    opens_total, clicks_total = int(parts["opens"].sum()), int(parts["clicks"].sum())
    reach = fig.reach
    root_lb = int(reach[["consumers_opened", "consumers_clicked"]].max(axis=1).sum())

    keys: list[tuple] = [()]
    parent, lb, size = [-1], [root_lb], [float(opens_total + clicks_total)]
    rows = [{"level": ALL, **dict.fromkeys(dims, ALL), "opens": opens_total}]
    rows[0]["clicks"] = clicks_total
    index: dict[tuple, int] = {(): 0}
    for depth in range(1, len(dims) + 1):
        level = dims[:depth]
        cells = parts.groupby(level, sort=True).agg(
            opens=("opens", "sum"), clicks=("clicks", "sum"), lb=("consumers", "max")
        )
        for key, cell in cells.iterrows():  # one per device cell, a handful
            key = key if isinstance(key, tuple) else (key,)
            index[key] = len(keys)
            keys.append(key)
            parent.append(index[key[:-1]])
            lb.append(int(cell["lb"]))
            size.append(float(cell["opens"] + cell["clicks"]))
            values = dict(zip(dims, [*key, *[ALL] * (len(dims) - depth)], strict=True))
            rows.append(
                {
                    "level": dims[depth - 1],
                    **values,
                    "opens": int(cell["opens"]),
                    "clicks": int(cell["clicks"]),
                }
            )
    view = _view(keys, Tree(parent, lb, size, [False] * len(keys)), k)
    df = pd.DataFrame(rows)
    df["share_of_opens"] = (df["opens"] / opens_total).round(4) if opens_total else np.nan
    opens = df["opens"].astype("float64").replace(0, np.nan)
    df["click_to_open"] = (df["clicks"] / opens).round(4)
    df = _blank(df, view.status, ["opens", "clicks", "share_of_opens", "click_to_open"])
    return df[columns], view


def weekly_tables(
    reach: pd.DataFrame,
    weeks: list[date],
    period: Period,
    industries: dict[int, str],
    k: int,
) -> tuple[pd.DataFrame, pd.DataFrame, TreeView]:
    """The series (window -> week tree) and per-industry weekly rates (rates only)."""
    per_client = reach.copy()
    per_client["industry"] = per_client["client_id"].map(industries).fillna(UNKNOWN)
    series = per_client.groupby("week")[[*COUNTS, "consumers"]].sum()
    series = series.reindex(weeks, fill_value=0).reset_index(names="week_start")

    keys: list[tuple] = [("window",), *(("week", w.isoformat()) for w in series["week_start"])]
    sizes = _events_of(series)
    lbs = series["consumers"].astype(int).tolist()
    tree = Tree(
        [-1, *[0] * len(series)],
        [max(lbs, default=0), *lbs],
        [float(sum(sizes)), *sizes],
        [False] * len(keys),
    )
    view = _view(keys, tree, k)
    series.insert(0, "week", series["week_start"].map(week_label))
    series["in_period"] = series["week_start"].map(
        lambda w: w <= period.end and w + timedelta(days=6) >= period.start
    )
    series = _blank(_rates(series.drop(columns="consumers")), view.status[1:], [*COUNTS, *RATES])
    series["week_start"] = series["week_start"].map(lambda d: d.isoformat())
    series = series[["week", "week_start", "in_period", *COUNTS, *RATES, "suppressed"]]

    inds = per_client.groupby(["week", "industry"])[[*COUNTS, "consumers"]].sum().reset_index()
    inds = _rates(inds)
    hidden = (inds["consumers"] < k) | (inds["sent"] == 0)  # rates only: primary suppression
    out = pd.DataFrame(
        {
            "week": inds["week"].map(week_label),
            "week_start": inds["week"].map(lambda d: d.isoformat()),
            "industry": inds["industry"],
            "open_rate": inds["open_rate"].where(~hidden),
            "click_rate": inds["click_rate"].where(~hidden),
            "suppressed": np.where(hidden, "yes", ""),
        },
        columns=["week", "week_start", "industry", "open_rate", "click_rate", "suppressed"],
    ).sort_values(["week_start", "industry"], kind="stable")
    return series, out.reset_index(drop=True), view


def build_tables(
    fig: PeriodFigures,
    weekly_reach: pd.DataFrame,
    weeks: list[date],
    period: Period,
    industries: dict[int, str],
    dims: list[str],
    k: int,
) -> Tables:
    by_industry, by_client, by_campaign, audience = audience_tables(fig, industries, k)
    by_device, devices = device_table(fig, dims, k)
    series, industry_weekly, window = weekly_tables(weekly_reach, weeks, period, industries, k)
    trees = {"audience": audience, "weekly": window}
    if devices is not None:
        trees["devices"] = devices
    return Tables(by_industry, by_client, by_campaign, by_device, series, industry_weekly, trees)
