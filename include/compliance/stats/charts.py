"""PNG charts of the published tables (matplotlib, Agg backend: no display, safe in workers).

Charts read only the *published* tables, so a suppressed cell cannot leak through a bar or a
line: it is a gap. Every function returns PNG bytes; with nothing publishable the chart says so
in words instead of drawing empty axes.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

BLUE, ORANGE, GREEN, GREY = "#1f77b4", "#ff7f0e", "#2ca02c", "#7f7f7f"
DPI = 100


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _figure(width: float = 8.0, height: float = 4.0) -> tuple[Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=(width, height))
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def empty_chart(title: str, why: str) -> bytes:
    fig, ax = _figure(8, 2.5)
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, why, ha="center", va="center", fontsize=11, color=GREY, wrap=True)
    return _png(fig)


def _published(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    if df.empty:
        return df
    keep = df["suppressed"].astype(str) != "yes"
    return df[keep].dropna(subset=columns)


def industry_rates(by_industry: pd.DataFrame, k: int) -> bytes:
    title = "Open and click rates by industry"
    df = _published(by_industry, ["open_rate", "click_rate"])
    df = df[df["industry"] != "all"]
    if df.empty:
        return empty_chart(title, f"No industry reaches k = {k} consumers in this period.")
    fig, ax = _figure()
    x = range(len(df))
    ax.bar([i - 0.2 for i in x], df["open_rate"] * 100, width=0.4, color=BLUE, label="open rate")
    ax.bar(
        [i + 0.2 for i in x], df["click_rate"] * 100, width=0.4, color=ORANGE, label="click rate"
    )
    ax.set_xticks(list(x), [str(v) for v in df["industry"]], rotation=20, ha="right")
    ax.set_ylabel("% of e-mails sent")
    ax.set_title(title)
    ax.legend(frameon=False)
    return _png(fig)


def weekly_series(weekly: pd.DataFrame, k: int) -> bytes:
    title = "Weekly e-mail activity"
    df = weekly.copy()
    if df.empty or (df["suppressed"] == "yes").all():
        return empty_chart(title, f"No week reaches k = {k} consumers.")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for ax in (top, bottom):
        ax.spines[["top", "right"]].set_visible(False)
    x = list(range(len(df)))
    for col, color in (("sent", BLUE), ("opens", ORANGE), ("clicks", GREEN)):
        top.plot(x, df[col].astype("float64"), marker="o", color=color, label=col)
    top.set_ylabel("events")
    top.legend(frameon=False, ncol=3)
    top.set_title(title + " (gaps: suppressed weeks)")
    bottom.plot(x, df["open_rate"] * 100, marker="o", color=ORANGE, label="open rate")
    bottom.plot(x, df["click_rate"] * 100, marker="o", color=GREEN, label="click rate")
    bottom.set_ylabel("% of sent")
    bottom.legend(frameon=False, ncol=2)
    step = max(1, len(x) // 13)
    bottom.set_xticks(x[::step], [str(w) for w in df["week"]][::step], rotation=45, ha="right")
    return _png(fig)


def industry_weekly(rates: pd.DataFrame, k: int) -> bytes:
    title = "Weekly open rate by industry"
    df = _published(rates, ["open_rate"])
    if df.empty:
        return empty_chart(title, f"No industry-week reaches k = {k} consumers.")
    weeks = sorted(rates["week_start"].unique())
    pos = {w: i for i, w in enumerate(weeks)}
    fig, ax = _figure(9, 4.5)
    for industry, part in df.groupby("industry", sort=True):
        # every week on the axis, NaN where suppressed: the line breaks instead of bridging
        line = part.set_index("week_start")["open_rate"].reindex(weeks) * 100
        ax.plot([pos[w] for w in weeks], line.to_numpy(), marker="o", label=str(industry))
    labels = rates.drop_duplicates("week_start").set_index("week_start")["week"]
    step = max(1, len(weeks) // 13)
    ax.set_xticks(
        list(range(len(weeks)))[::step],
        [str(labels[w]) for w in weeks][::step],
        rotation=45,
        ha="right",
    )
    ax.set_ylabel("open rate, % of sent")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8, ncol=2)
    return _png(fig)


def device_mix(by_device: pd.DataFrame, dims: list[str], k: int) -> bytes:
    title = "Device mix (share of opens)"
    if not dims or by_device.empty:
        return empty_chart(title, "No device dimension is configured.")
    df = _published(by_device, ["share_of_opens"])
    df = df[df["level"] != "all"]
    if df.empty:
        return empty_chart(title, f"No device cell reaches k = {k} consumers.")
    labels = [" / ".join(str(row[d]) for d in dims if row[d] != "all") for _, row in df.iterrows()]
    colors = [BLUE if lvl == dims[0] else ORANGE for lvl in df["level"]]
    fig, ax = _figure(8, max(2.5, 0.35 * len(df) + 1))
    ax.barh(range(len(df)), df["share_of_opens"] * 100, color=colors)
    ax.set_yticks(range(len(df)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("% of opens (blue: " + dims[0] + "; orange: within it)")
    ax.set_title(title)
    return _png(fig)


def top_campaigns(by_campaign: pd.DataFrame, n: int, k: int) -> bytes:
    title = f"Campaigns: consumers exposed and clicked (top {n})"
    df = _published(by_campaign, ["consumers_exposed"])
    if df.empty:
        return empty_chart(title, f"No campaign reaches k = {k} consumers.")
    df = df.sort_values("consumers_exposed", ascending=False).head(n)
    labels = [
        f"campaign {c} (client {cl})" for c, cl in zip(df["campaign"], df["client_id"], strict=True)
    ]
    fig, ax = _figure(8, max(2.5, 0.35 * len(df) + 1))
    y = list(range(len(df)))
    ax.barh(
        [i - 0.2 for i in y],
        df["consumers_exposed"].astype(float),
        height=0.4,
        color=BLUE,
        label="exposed",
    )
    ax.barh(
        [i + 0.2 for i in y],
        df["consumers_clicked"].astype(float),
        height=0.4,
        color=GREEN,
        label="clicked",
    )
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel("distinct consumers")
    ax.set_title(title)
    ax.legend(frameon=False)
    return _png(fig)


def ccpa_requests(metrics: pd.DataFrame, year: int) -> bytes:
    title = f"CCPA requests received in {year} (all clients)"
    df = metrics[metrics["client_id"].astype(str) == "all"] if not metrics.empty else metrics
    if df.empty or int(df["received"].sum()) == 0:
        return empty_chart(title, f"No CCPA request was received in {year}.")
    fig, ax = _figure(7, 3.5)
    x = list(range(len(df)))
    for offset, col, color in (
        (-0.27, "received", BLUE),
        (0.0, "complied_whole_or_part", GREEN),
        (0.27, "denied", ORANGE),
    ):
        ax.bar(
            [i + offset for i in x], df[col], width=0.27, color=color, label=col.replace("_", " ")
        )
    ax.set_xticks(x, [str(t) for t in df["request_type"]])
    ax.set_ylabel("requests")
    ax.set_title(title)
    ax.legend(frameon=False)
    return _png(fig)
