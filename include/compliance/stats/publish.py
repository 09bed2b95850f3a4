"""The three steps the DAG runs, each taking plain arguments and returning small JSON.

1. `publish_event_statistics`: the period's figures and weekly series (SQL, weekly rollups),
   suppressed, written as CSVs and charts.
2. `publish_ccpa_metrics`: R23 metrics and the operations view from the request log.
3. `publish_report`: the HTML report from what steps 1 and 2 wrote, a manifest, the summary.

Everything lands under `<output_prefix><period label>/` in the workspace bucket, encrypted
(`compliance.core.outputs`). Steps return S3 keys and counts only, never rows.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import Engine

from compliance.core.datamap.model import DataMap
from compliance.core.outputs import put_bytes, put_json, put_summary
from compliance.core.sqlmap import key_order
from compliance.stats import aggregate, charts, figures, metrics, rollup
from compliance.stats.config import StatsConfig, check_against_datamap, tenant_registry
from compliance.stats.period import Period, week_start, weeks_between
from compliance.stats.report import Section, render_report, table_section
from compliance.stats.tables import build_tables

DAG_ID = "statistics_reports"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def series_weeks(period: Period, count: int) -> list[date]:
    """The series: every ISO week overlapping the period, and at least `count` weeks up to it."""
    last = week_start(period.end)
    first = min(week_start(period.start), last - timedelta(days=7 * (count - 1)))
    return weeks_between(first, period.end)


def csv_bytes(df: pd.DataFrame) -> bytes:
    """CSV, with text that a spreadsheet would run as a formula defused by a leading quote."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(
                lambda v: "'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) else v
            )
    return out.to_csv(index=False, lineterminator="\n").encode()


def _put_csv(s3: Any, bucket: str, key: str, df: pd.DataFrame) -> str:
    put_bytes(s3, bucket, key, csv_bytes(df), "text/csv; charset=utf-8")
    return key


def _put_png(s3: Any, bucket: str, key: str, png: bytes) -> str:
    put_bytes(s3, bucket, key, png, "image/png")
    return key


def prefix_of(cfg: StatsConfig, period: Period) -> str:
    return f"{cfg.output_prefix}{period.label}/"


def publish_event_statistics(
    events: Engine,
    state: Engine,
    s3: Any,
    bucket: str,
    dm: DataMap,
    cfg: StatsConfig,
    period: Period,
    today: date,
    refresh: bool = False,
) -> dict[str, Any]:
    """Figures of the period and its weekly series, suppressed, as CSVs and charts in S3.

    The source is checked against the data map first: a table the map does not describe is
    never read. Returns keys and counts for XCom; the rows stay in the bucket.
    """
    check_against_datamap(cfg, dm)
    src, k = cfg.source, cfg.suppression.k
    industries = aggregate.tenant_industries(events, tenant_registry(cfg, dm))
    rollup.ensure_table(state)
    weeks = series_weeks(period, cfg.reports.series_weeks)
    fig = figures.period_figures(events, state, src, period, today, weeks, refresh)
    tables = build_tables(fig, fig.weekly_reach, weeks, period, industries, src.dimensions, k)

    prefix = prefix_of(cfg, period)
    csv = {
        name: _put_csv(s3, bucket, f"{prefix}{name}.csv", df)
        for name, df in tables.frames().items()
    }
    pngs = {
        "industry_rates": charts.industry_rates(tables.by_industry, k),
        "weekly_series": charts.weekly_series(tables.weekly, k),
        "industry_weekly": charts.industry_weekly(tables.weekly_industry, k),
        "device_mix": charts.device_mix(tables.by_device, src.dimensions, k),
        "top_campaigns": charts.top_campaigns(tables.by_campaign, cfg.reports.top_campaigns, k),
    }
    chart_keys = {
        name: _put_png(s3, bucket, f"{prefix}charts/{name}.png", png) for name, png in pngs.items()
    }
    total = tables.by_industry.iloc[0]
    return {
        "prefix": prefix,
        "csv": csv,
        "charts": chart_keys,
        "k": k,
        "events": int(fig.reach[["sent", "opens", "clicks"]].to_numpy().sum()),
        "published_total": str(total["suppressed"]) != "yes",
        "suppression": tables.suppression(),
        "rollups": fig.run.to_dict(),
        "campaign_uniques": "exact" if fig.parts == 1 else "exact_unless_flagged",
        "series_weeks": len(weeks),
    }


def publish_ccpa_metrics(
    state: Engine,
    s3: Any,
    bucket: str,
    cfg: StatsConfig,
    period: Period,
    as_of: datetime,
    year: int | None = None,
) -> dict[str, Any]:
    """R23 metrics for the calendar year of the period's end (or `year`), plus operations."""
    year = year or period.end.year
    prefix = prefix_of(cfg, period)
    requests = metrics.load_requests(state)
    note = ""
    if requests is None:
        note = "the state database has no request log (cj_requests) yet: no request recorded"
        requests = pd.DataFrame(columns=metrics.REQUEST_COLUMNS)
        for col in ("received_at", "completed_at"):
            requests[col] = pd.to_datetime(requests[col], utc=True)
    per_client, denials = metrics.ccpa_metrics(requests, year, as_of, cfg.ccpa)
    open_requests, operations = metrics.operations_view(requests, as_of.date())
    keys = {
        "ccpa_metrics": _put_csv(s3, bucket, f"{prefix}ccpa_metrics.csv", per_client),
        "ccpa_denials": _put_csv(s3, bucket, f"{prefix}ccpa_denials.csv", denials),
        "ccpa_open_requests": _put_csv(
            s3, bucket, f"{prefix}ccpa_open_requests.csv", open_requests
        ),
        "ccpa_operations": _put_csv(s3, bucket, f"{prefix}ccpa_operations.csv", operations),
    }
    # Each client receives its own figures only (R23 is the client's publication).
    clients = sorted((c for c in per_client["client_id"].unique() if c != "all"), key=key_order)
    for client in clients:
        mine = per_client[per_client["client_id"] == client]
        _put_csv(s3, bucket, f"{prefix}clients/{client}/ccpa_metrics.csv", mine)
        _put_csv(
            s3,
            bucket,
            f"{prefix}clients/{client}/ccpa_denials.csv",
            denials[denials["client_id"] == client],
        )
    chart = _put_png(
        s3, bucket, f"{prefix}charts/ccpa_requests.png", charts.ccpa_requests(per_client, year)
    )
    all_rows = per_client[per_client["client_id"] == "all"]
    return {
        "prefix": prefix,
        "csv": keys,
        "charts": {"ccpa_requests": chart},
        "year": year,
        "received": int(all_rows["received"].sum()),
        "open_requests": len(open_requests),
        "overdue": int(open_requests["overdue"].sum()) if len(open_requests) else 0,
        "clients": len(clients),
        "note": note,
    }


def _records(s3: Any, bucket: str, key: str) -> list[dict[str, str]]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    if not body.strip():
        return []
    df = pd.read_csv(io.BytesIO(body), dtype=str, keep_default_na=False)
    return df.to_dict("records")


def _png(s3: Any, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def publish_report(
    s3: Any,
    bucket: str,
    cfg: StatsConfig,
    period: Period,
    events_result: dict[str, Any],
    ccpa_result: dict[str, Any],
    generated_at: datetime | None = None,
) -> dict[str, Any]:
    generated_at = generated_at or datetime.now(UTC)
    k = events_result["k"]
    ev, cc = events_result["csv"], ccpa_result["csv"]
    ech, cch = events_result["charts"], ccpa_result["charts"]

    def rec(key: str) -> list[dict[str, str]]:
        return _records(s3, bucket, key)

    rate_cols = ["sent", "opens", "clicks", "open_rate", "click_rate", "click_to_open"]
    reach_cols = ["consumers_exposed", "consumers_opened", "consumers_clicked"]
    dims = cfg.source.dimensions
    top = cfg.reports.top_campaigns
    campaigns = rec(ev["by_campaign"])
    campaigns.sort(key=lambda r: -float(r["consumers_exposed"] or -1))
    sections: list[Section] = [
        table_section(
            "By industry",
            rec(ev["by_industry"]),
            ["industry", *rate_cols, *reach_cols],
            chart=_png(s3, bucket, ech["industry_rates"]),
            note="Rates are events over e-mails sent in the period; consumers are distinct.",
        ),
        table_section(
            "Weekly series",
            rec(ev["weekly"]),
            ["week", "in_period", *rate_cols[:5], "consumers_exposed", "consumers_clicked"],
            chart=_png(s3, bucket, ech["weekly_series"]),
            note="Each week's consumers are distinct within that week.",
        ),
        Section("Open rate by industry, weekly", chart=_png(s3, bucket, ech["industry_weekly"])),
        table_section(
            "Device mix",
            rec(ev["by_device"]),
            ["level", *dims, "opens", "clicks", "share_of_opens", "click_to_open"],
            chart=_png(s3, bucket, ech["device_mix"]),
            note="Sends carry no device: the mix is of opens and clicks.",
        ),
        table_section(
            "By client",
            rec(ev["by_client"]),
            ["client_id", "industry", *rate_cols, *reach_cols],
            csv_name="by_client.csv",
        ),
        table_section(
            f"Campaigns (top {top} by consumers exposed)",
            campaigns,
            [
                "campaign",
                "client_id",
                "industry",
                *rate_cols,
                "consumers_exposed",
                "consumers_clicked",
                "uniques",
            ],
            chart=_png(s3, bucket, ech["top_campaigns"]),
            limit=top,
            csv_name="by_campaign.csv",
            note="Consumers are distinct per campaign (uniques: exact) unless its events span "
            "several weeks of a longer period (sum_of_weeks: weekly counts added, so someone "
            "active in two of those weeks counts twice). Suppressed campaigns are listed last.",
        ),
        table_section(
            f"CCPA request metrics, {ccpa_result['year']} (R23)",
            rec(cc["ccpa_metrics"]),
            [
                "client_id",
                "request_type",
                "received",
                "complied_whole_or_part",
                "denied",
                "invalid",
                "pending",
                "median_days_to_respond",
                "mean_days_to_respond",
            ],
            chart=_png(s3, bucket, cch["ccpa_requests"]),
            note=ccpa_result.get("note")
            or "Requests received in the year; days to respond = completed_at - received_at "
            "(complied or denied). Invalid: documents refused as malformed, not denials and not "
            "in received.",
        ),
        table_section(
            "Denials by reason",
            rec(cc["ccpa_denials"]),
            ["client_id", "request_type", "r23_category", "reason_code", "denied"],
        ),
        table_section(
            "Operations: open requests per client",
            rec(cc["ccpa_operations"]),
            ["client_id", "open", "deferred", "overdue", "due_within_7_days", "next_due"],
        ),
        table_section(
            "Operations: open and deferred requests, soonest deadline first",
            rec(cc["ccpa_open_requests"]),
            [
                "client_id",
                "request_id",
                "type",
                "jurisdiction",
                "status",
                "received_on",
                "due",
                "days_left",
                "overdue",
            ],
            csv_name="ccpa_open_requests.csv",
            flag="overdue",
        ),
    ]
    supp = events_result["suppression"]
    hidden = sum(v["primary"] + v["complementary"] for v in supp.values())
    cells = sum(v["cells"] for v in supp.values())
    facts = [
        ("Period", f"{period.label} ({period.start.isoformat()} to {period.end.isoformat()}, UTC)"),
        ("Source", f"{cfg.source.system}.{cfg.source.table}"),
        ("Smallest published group", f"k = {k} distinct consumers"),
        ("Suppressed cells", f"{hidden} of {cells}"),
        ("CCPA metrics year", str(ccpa_result["year"])),
        ("Generated", generated_at.strftime("%Y-%m-%d %H:%M UTC")),
    ]
    method = (
        f"No figure here describes fewer than {k} people: a cell whose distinct consumers may "
        "be fewer is suppressed (blank, grey), and further cells are suppressed so that no "
        "suppressed figure, nor a sum describing fewer than k people, can be worked out from "
        "the totals. Rates are shown only for published cells."
    )
    html = render_report(f"Statistics report {period.label}", facts, method, sections)
    prefix = events_result["prefix"]
    report_key = f"{prefix}report.html"
    put_bytes(s3, bucket, report_key, html.encode(), "text/html; charset=utf-8")
    manifest = {
        "period": period.to_dict(),
        "generated_at": generated_at.isoformat(),
        "k": k,
        "source": cfg.source.model_dump(),
        "events": events_result["events"],
        "suppression": supp,
        "rollups": events_result["rollups"],
        "campaign_uniques": events_result["campaign_uniques"],
        "ccpa": {key: ccpa_result[key] for key in ("year", "received", "open_requests", "overdue")},
        "files": sorted([*ev.values(), *ech.values(), *cc.values(), *cch.values(), report_key]),
    }
    put_json(s3, bucket, f"{prefix}manifest.json", manifest)
    summary = {
        "period": period.label,
        "report": f"s3://{bucket}/{report_key}",
        "k": k,
        "events": events_result["events"],
        "suppressed_cells": hidden,
        "ccpa_year": ccpa_result["year"],
        "ccpa_received": ccpa_result["received"],
        "open_requests": ccpa_result["open_requests"],
        "overdue": ccpa_result["overdue"],
    }
    put_summary(s3, bucket, DAG_ID, summary)
    return json.loads(json.dumps(summary))
