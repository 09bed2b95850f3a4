"""The statistics_reports DAG end to end: real Airflow runs, both SQL backends, moto S3.

The seeded tiny world (as of 2026-11-20) has about 75 consumers with e-mail events in 2025: a
yearly report publishes some cells and suppresses others. Figures are checked against counts
taken straight from the CRM; the request history is planted in the state database.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import sqlalchemy as sa
from matplotlib import image as mpimg

from compliance.requests import state


def _get(stack, key: str) -> bytes:
    return stack.s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read()


def _csv(stack, key: str) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(_get(stack, key)), dtype=str, keep_default_na=False)


def _plant_requests(url: str) -> None:
    engine = sa.create_engine(url)
    state.create_state_schema(engine)
    rows = [
        ("r1", "delete", "completed", None, datetime(2025, 3, 1, tzinfo=UTC), 4),
        ("r2", "delete", "rejected", "not_verified", datetime(2025, 4, 1, tzinfo=UTC), None),
        ("r3", "access", "completed", None, datetime(2025, 5, 1, tzinfo=UTC), 10),
    ]
    with engine.begin() as conn:
        for rid, rtype, status, reason, received, days in rows:
            done = received.replace(day=received.day + days) if days else None
            conn.execute(
                state.cj_requests.insert().values(
                    client_id=2,
                    request_id=rid,
                    type=rtype,
                    jurisdiction="ccpa",
                    status=status,
                    reason_code=reason,
                    received_at=received,
                    completed_at=done,
                    source="test",
                )
            )
    engine.dispose()


def test_yearly_report_matches_the_crm(stack):
    _plant_requests(stack.state_url)
    run = stack.run_dag("statistics_reports", {"period": "year:2025"})
    assert run.state == "success"

    summary = json.loads(_get(stack, "summaries/statistics_reports.json"))
    assert summary["period"] == "2025" and summary["k"] == 10
    assert summary["report"] == f"s3://{stack.bucket}/stats/2025/report.html"

    engine = sa.create_engine(stack.db_url)
    with engine.connect() as conn:
        truth = dict(
            conn.execute(
                sa.text(
                    "select event_type, count(*) from email_events "
                    "where occurred_at >= :lo and occurred_at < :hi group by event_type"
                ),
                {"lo": datetime(2025, 1, 1), "hi": datetime(2026, 1, 1)},
            ).all()
        )
        per_client = dict(
            conn.execute(
                sa.text(
                    "select client_id, count(distinct contact_id) from email_events "
                    "where event_type = 'sent' and occurred_at >= :lo and occurred_at < :hi "
                    "group by client_id"
                ),
                {"lo": datetime(2025, 1, 1), "hi": datetime(2026, 1, 1)},
            ).all()
        )
    engine.dispose()
    ind = _csv(stack, "stats/2025/by_industry.csv")
    total = ind.iloc[0]
    assert total["industry"] == "all" and total["suppressed"] == ""
    assert int(total["sent"]) == truth["sent"]
    assert int(total["opens"]) == truth["open"] and int(total["clicks"]) == truth["click"]
    assert summary["events"] == sum(truth.values())

    clients = _csv(stack, "stats/2025/by_client.csv")
    shown = clients[clients["suppressed"] == ""]
    assert 0 < len(shown) < len(clients)  # the tiny world needs both
    for _, row in shown.iterrows():
        assert int(row["consumers_exposed"]) == per_client[int(row["client_id"])]
        assert int(row["consumers_exposed"]) >= 10
    assert (clients[clients["suppressed"] == "yes"]["sent"] == "").all()

    metrics = _csv(stack, "stats/2025/ccpa_metrics.csv")
    mine = metrics[(metrics["client_id"] == "2") & (metrics["request_type"] == "delete")].iloc[0]
    assert (mine["received"], mine["complied_whole_or_part"], mine["denied"]) == ("2", "1", "1")
    assert float(mine["median_days_to_respond"]) == 4.0

    page = stack.s3.get_object(Bucket=stack.bucket, Key="stats/2025/report.html")
    assert page["ServerSideEncryption"] == "AES256"
    html = page["Body"].read().decode()
    assert "Statistics report 2025" in html and html.count("data:image/png;base64,") == 6
    img = mpimg.imread(io.BytesIO(_get(stack, "stats/2025/charts/industry_rates.png")))
    assert img.shape[0] > 100 and float(np.std(img[..., :3])) > 0.02


def test_a_bad_period_fails_at_once_and_writes_nothing(stack):
    run = stack.run_dag("statistics_reports", {"from": "2026-10-31", "to": "2026-10-01"})
    assert run.state == "failed"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["resolve_period"] == "failed"
    assert states["event_statistics"] == "upstream_failed"
    listed = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="stats/")
    assert listed.get("KeyCount", 0) == 0


def test_an_empty_form_reports_last_week(stack):
    run = stack.run_dag("statistics_reports")
    assert run.state == "success"
    summary = json.loads(_get(stack, "summaries/statistics_reports.json"))
    today = run.run_after.date()
    monday = date.fromordinal(today.toordinal() - today.weekday() - 7)
    year, week, _ = monday.isocalendar()
    assert summary["period"] == f"{year}-W{week:02d}"
