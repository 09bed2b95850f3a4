"""Charts are real PNGs with data in them; the HTML report is self-contained and escaped."""

from __future__ import annotations

import io
import re
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import sqlalchemy as sa
from matplotlib import image as mpimg

from compliance.core.datamap.validate import load_datamap
from compliance.core.outputs import ensure_workspace
from compliance.core.stores.sql import engine_from_url
from compliance.stats import charts, config, publish
from compliance.stats.period import parse_period
from compliance.stats.report import render_report, table_section
from tests.unit.test_stats_figures import REPO, build_world

HOSTILE = "<script>alert('x')</script>&co"


def pixels(png: bytes) -> np.ndarray:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    img = mpimg.imread(io.BytesIO(png), format="png")
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 200
    return (img[..., :3] * 255).round().astype(int)


def share_of(png: bytes, hex_color: str) -> float:
    """The share of pixels painted in one chart colour (bars, lines)."""
    rgb = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])
    img = pixels(png)
    return float((np.abs(img - rgb).sum(axis=-1) < 30).mean())


def industries(suppress_retail: bool = False) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "industry": ["all", "auto_dealer", "real_estate", "retail"],
            "open_rate": [0.2, 0.21, 0.27, 0.9],
            "click_rate": [0.02, 0.03, 0.04, 0.5],
            "suppressed": ["", "", "", "yes" if suppress_retail else ""],
        }
    )
    if suppress_retail:
        df.loc[3, ["open_rate", "click_rate"]] = np.nan
    return df


def test_charts_are_non_blank_images_with_their_data():
    png = charts.industry_rates(industries(), 10)
    img = pixels(png)
    assert img.std() > 10  # not a blank canvas
    assert share_of(png, charts.BLUE) > 0.01 and share_of(png, charts.ORANGE) > 0.005
    empty = charts.industry_rates(industries().iloc[:1], 10)
    assert share_of(empty, charts.BLUE) == 0.0  # the placeholder draws no bars
    assert empty != png


def test_a_suppressed_cell_leaves_no_trace_in_a_chart():
    with_hidden = charts.industry_rates(industries(suppress_retail=True), 10)
    without = charts.industry_rates(industries().iloc[:3], 10)
    assert with_hidden == without


def test_weekly_device_campaign_and_ccpa_charts_draw_data():
    weekly = pd.DataFrame(
        {
            "week": [f"2026-W{w}" for w in range(40, 46)],
            "sent": pd.array([100, 120, None, 90, 80, 0], dtype="Int64"),
            "opens": pd.array([20, 30, None, 25, 18, 0], dtype="Int64"),
            "clicks": pd.array([3, 5, None, 4, 2, 0], dtype="Int64"),
            "open_rate": [0.2, 0.25, np.nan, 0.28, 0.22, np.nan],
            "click_rate": [0.03, 0.04, np.nan, 0.04, 0.025, np.nan],
            "suppressed": ["", "", "yes", "", "", ""],
        }
    )
    assert share_of(charts.weekly_series(weekly, 10), charts.BLUE) > 0.002
    device = pd.DataFrame(
        {
            "level": ["all", "device_type", "device_type", "os"],
            "device_type": ["all", "mobile", "desktop", "mobile"],
            "os": ["all", "all", "all", "iOS"],
            "share_of_opens": [1.0, 0.6, 0.4, 0.35],
            "suppressed": ["", "", "", ""],
        }
    )
    png = charts.device_mix(device, ["device_type", "os"], 10)
    assert share_of(png, charts.BLUE) > 0.01 and share_of(png, charts.ORANGE) > 0.002
    campaigns = pd.DataFrame(
        {
            "campaign": ["7", "9"],
            "client_id": ["1", "2"],
            "consumers_exposed": [40, 25],
            "consumers_clicked": [6, 3],
            "suppressed": ["", ""],
        }
    )
    assert share_of(charts.top_campaigns(campaigns, 15, 10), charts.BLUE) > 0.01
    metrics = pd.DataFrame(
        {
            "client_id": ["all", "all"],
            "request_type": ["delete", "know"],
            "received": [8, 3],
            "complied_whole_or_part": [4, 2],
            "denied": [3, 0],
        }
    )
    assert share_of(charts.ccpa_requests(metrics, 2025), charts.GREEN) > 0.01


def test_html_escapes_everything_and_embeds_charts():
    png = charts.industry_rates(industries(), 10)
    section = table_section(
        HOSTILE,
        [{"industry": HOSTILE, "open_rate": "0.25", "suppressed": ""}],
        ["industry", "open_rate"],
        chart=png,
    )
    html = render_report(f"Report {HOSTILE}", [("Source", HOSTILE)], HOSTILE, [section])
    assert "<script>" not in html
    assert "&lt;script&gt;" in html and "&amp;co" in html
    assert "25.0%" in html  # rates are shown as percentages
    assert "data:image/png;base64," in html
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html)
    assert "default-src 'none'" in html


def test_csv_defuses_spreadsheet_formulas():
    body = publish.csv_bytes(pd.DataFrame({"industry": ["=HYPERLINK(1)", "+1", "retail"]}))
    assert body.decode().splitlines() == ["industry", "'=HYPERLINK(1)", "'+1", "retail"]


def test_full_report_from_a_small_world(sqlite_url, s3):
    engine = engine_from_url(sqlite_url)
    build_world(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text("update clients set industry = :v where client_id = 3"), {"v": HOSTILE}
        )
    ensure_workspace(s3, "cj-stats-report")
    cfg = config.load_config(REPO / "config" / "statistics.yaml")
    dm = load_datamap(REPO / "config" / "datamap.yaml")
    today = date(2026, 11, 26)
    period = parse_period("month:2026-10", None, None, today)
    events = publish.publish_event_statistics(
        engine, engine, s3, "cj-stats-report", dm, cfg, period, today
    )
    as_of = datetime(2026, 11, 26, tzinfo=UTC)
    ccpa = publish.publish_ccpa_metrics(engine, s3, "cj-stats-report", cfg, period, as_of)
    summary = publish.publish_report(s3, "cj-stats-report", cfg, period, events, ccpa, as_of)
    engine.dispose()
    assert summary["report"] == "s3://cj-stats-report/stats/2026-10/report.html"
    obj = s3.get_object(Bucket="cj-stats-report", Key="stats/2026-10/report.html")
    assert obj["ServerSideEncryption"] == "AES256"
    html = obj["Body"].read().decode()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert html.count("data:image/png;base64,") == 6
    assert "no request log" in html
    manifest = s3.get_object(Bucket="cj-stats-report", Key="stats/2026-10/manifest.json")
    assert b'"k": 10' in manifest["Body"].read()
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="cj-stats-report")["Contents"]}
    assert "summaries/statistics_reports.json" in keys
    assert {"stats/2026-10/by_industry.csv", "stats/2026-10/charts/weekly_series.png"} <= keys
