"""CCPA metrics (R23) and the operations view against a hand-built request history.

Every expected figure below is worked out by hand from the rows inserted, on SQLite and
PostgreSQL, through the state database's own table (`compliance.requests.state.cj_requests`).
"""

from __future__ import annotations

import io
from datetime import UTC, date, datetime

import pandas as pd
import pytest

from compliance.core.outputs import ensure_workspace
from compliance.core.stores.sql import engine_from_url
from compliance.requests import state
from compliance.stats import config, metrics, publish
from compliance.stats.period import parse_period

AS_OF = datetime(2026, 1, 10, 12, tzinfo=UTC)
BUCKET = "cj-stats-metrics"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def req(client, rid, rtype, status, received, completed=None, *, jur="ccpa", reason=None,
        due=None, ext=None):  # fmt: skip
    return (client, rid, rtype, jur, status, reason, received, completed, due, ext)


HISTORY = [
    # client 1, deletions of 2025: three answered (10, 30 and 2 days), two denied
    req(1, "d1", "delete", "completed", "2025-01-10T10:00", "2025-01-20T10:00"),
    req(1, "d2", "delete", "completed", "2025-03-01T00:00", "2025-03-31T00:00"),
    req(1, "d8", "delete", "completed", "2025-08-01T06:00", "2025-08-03T06:00"),
    req(1, "d3", "delete", "rejected", "2025-06-01T09:00", reason="not_verified"),
    req(1, "d4", "delete", "rejected", "2025-07-01T09:00", reason="duplicate"),
    # client 1, access (R23 "know"): 3 and 5 days (the second answered in 2026), one overdue
    req(1, "a1", "access", "completed", "2025-02-01T08:00", "2025-02-04T08:00"),
    req(1, "a2", "access", "completed", "2025-12-31T23:00", "2026-01-05T23:00"),
    req(1, "a3", "access", "open", "2025-11-01T10:00", due="2025-12-15"),
    # not in the 2025 CCPA metrics: GDPR, the year before, the year after
    req(1, "g1", "access", "completed", "2025-05-01T10:00", "2025-05-02T10:00", jur="gdpr"),
    req(1, "x1", "delete", "completed", "2024-12-31T23:59", "2025-01-02T00:00"),
    req(1, "x2", "delete", "completed", "2026-01-01T10:00", "2026-01-20T10:00"),
    # client 2: 1.5 days, an exempt denial, a deferral past its extended deadline, a partial
    # erasure under a scoped hold (complied with in part, R23) after 4 days
    req(2, "d5", "delete", "completed", "2025-04-01T00:00", "2025-04-02T12:00"),
    req(
        2, "d9", "delete", "partial", "2025-05-01T00:00", "2025-05-05T00:00", reason="legal_claims"
    ),
    req(2, "d6", "delete", "rejected", "2025-04-03T00:00", reason="legal_hold"),
    req(
        2,
        "d7",
        "delete",
        "deferred",
        "2025-09-01T00:00",
        reason="legal_hold",
        due="2025-10-15",
        ext="2025-11-29",
    ),
    # open, not late yet
    req(2, "o1", "access", "open", "2026-01-02T00:00", due="2026-02-15"),
    req(2, "o2", "access", "open", "2025-12-12T00:00", jur="gdpr", due="2026-01-12"),
]


@pytest.fixture
def state_engine(db_url):
    engine = engine_from_url(db_url)
    state.create_state_schema(engine)
    rows = []
    for client, rid, rtype, jur, status, reason, received, completed, due, ext in HISTORY:
        rows.append(
            {
                "client_id": client,
                "request_id": rid,
                "type": rtype,
                "jurisdiction": jur,
                "status": status,
                "reason_code": reason,
                "received_at": at(received),
                "completed_at": at(completed) if completed else None,
                "response_due": date.fromisoformat(due) if due else None,
                "extended_due": date.fromisoformat(ext) if ext else None,
                "extension_notice_at": at("2025-10-01T00:00") if ext else None,
                "extension_reason": "volume" if ext else None,
                "source": "test",
            }
        )
    with engine.begin() as conn:
        conn.execute(state.cj_requests.insert(), rows)
    yield engine
    engine.dispose()


def _row(df: pd.DataFrame, client, rtype: str) -> dict:
    match = df[(df["client_id"] == client) & (df["request_type"] == rtype)]
    assert len(match) == 1, (client, rtype)
    return match.iloc[0].to_dict()


def test_r23_metrics_per_client_and_type(state_engine):
    cfg = config.load_config()
    requests = metrics.load_requests(state_engine)
    per, denials = metrics.ccpa_metrics(requests, 2025, AS_OF, cfg.ccpa)

    def check(client, rtype, received, complied, denied, pending, median, mean):
        row = _row(per, client, rtype)
        assert row["received"] == received
        assert row["complied_whole_or_part"] == complied
        assert row["denied"] == denied
        assert row["pending"] == pending
        if median is None:
            assert pd.isna(row["median_days_to_respond"]) and pd.isna(row["mean_days_to_respond"])
        else:
            assert row["median_days_to_respond"] == median
            assert row["mean_days_to_respond"] == mean

    check("1", "delete", 5, 3, 2, 0, 10.0, 14.0)  # client ids are text (issue 14)
    check("1", "know", 3, 2, 0, 1, 4.0, 4.0)
    check("2", "delete", 4, 2, 1, 1, 2.8, 2.8)  # days 1.5 and 4 (the partial erasure), 1 dp
    check("2", "know", 0, 0, 0, 0, None, None)
    check("all", "delete", 9, 5, 3, 1, 4.0, 9.5)  # days 10, 30, 2, 1.5, 4
    check("all", "know", 3, 2, 0, 1, 4.0, 4.0)

    got = {
        (r.client_id, r.request_type, r.r23_category, r.reason_code): r.denied
        for r in denials.itertuples()
    }
    assert got == {
        ("1", "delete", "unverifiable", "not_verified"): 1,
        ("1", "delete", "other", "duplicate"): 1,
        ("2", "delete", "exempt", "legal_hold"): 1,
    }


def test_year_to_date_counts_only_what_happened_by_then(state_engine):
    cfg = config.load_config()
    requests = metrics.load_requests(state_engine)
    per, _ = metrics.ccpa_metrics(requests, 2026, AS_OF, cfg.ccpa)
    # x2 was received on 1 January and answered on the 20th, after the cut-off: still pending
    row = _row(per, "1", "delete")
    assert (row["received"], row["complied_whole_or_part"], row["pending"]) == (1, 0, 1)
    assert _row(per, "2", "know")["received"] == 1  # o1; o2 is GDPR


def test_operations_view_days_left_and_overdue(state_engine):
    requests = metrics.load_requests(state_engine)
    live, summary = metrics.operations_view(requests, AS_OF.date())
    assert live["request_id"].tolist() == ["d7", "a3", "o2", "o1"]  # soonest deadline first
    by_id = live.set_index("request_id")
    assert by_id.loc["d7", "due"] == date(2025, 11, 29)  # the extended deadline is in force
    assert bool(by_id.loc["d7", "extended"])
    assert by_id.loc["d7", "days_left"] == -42
    assert by_id.loc["a3", "days_left"] == -26
    assert by_id.loc["o2", "days_left"] == 2
    assert by_id.loc["o1", "days_left"] == 36
    assert live["overdue"].tolist() == [True, True, False, False]
    s = summary.set_index("client_id")
    assert (s.loc["1", "open"], s.loc["1", "overdue"]) == (1, 1)
    assert (s.loc["2", "open"], s.loc["2", "deferred"], s.loc["2", "overdue"]) == (2, 1, 1)
    assert s.loc["2", "due_within_7_days"] == 1
    assert "subject_hash" not in live.columns


def test_published_csvs_and_each_clients_own_files(state_engine, s3):
    ensure_workspace(s3, BUCKET)
    cfg = config.load_config()
    period = parse_period("year:2025", None, None, AS_OF.date())
    out = publish.publish_ccpa_metrics(state_engine, s3, BUCKET, cfg, period, AS_OF)
    assert (out["year"], out["received"], out["open_requests"], out["overdue"]) == (2025, 12, 4, 2)

    def read(key: str) -> pd.DataFrame:
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        return pd.read_csv(io.BytesIO(body), dtype=str, keep_default_na=False)

    per = read(out["csv"]["ccpa_metrics"])
    assert set(per["client_id"]) == {"1", "2", "all"}
    mine = read("stats/2025/clients/2/ccpa_metrics.csv")
    assert set(mine["client_id"]) == {"2"}  # a client sees only its own figures
    assert read("stats/2025/clients/1/ccpa_denials.csv")["reason_code"].tolist() == [
        "duplicate",
        "not_verified",
    ]


def test_no_request_log_yet_is_said_not_hidden(db_url, s3):
    engine = engine_from_url(db_url)
    ensure_workspace(s3, BUCKET)
    period = parse_period("year:2025", None, None, AS_OF.date())
    out = publish.publish_ccpa_metrics(engine, s3, BUCKET, config.load_config(), period, AS_OF)
    engine.dispose()
    assert out["received"] == 0 and "no request log" in out["note"]
