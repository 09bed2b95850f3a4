"""Report periods: accepted forms, and refusals that name the field and the reason."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from compliance.stats.period import (
    Period,
    PeriodError,
    parse_period,
    resolve,
    scheduled_spec,
    week_label,
)

TODAY = date(2026, 11, 26)  # a Thursday, in ISO week 2026-W48


@pytest.mark.parametrize(
    ("spec", "start", "end", "label"),
    [
        ("week:2026-W47", date(2026, 11, 16), date(2026, 11, 22), "2026-W47"),
        ("week:2020-W53", date(2020, 12, 28), date(2021, 1, 3), "2020-W53"),
        ("month:2026-10", date(2026, 10, 1), date(2026, 10, 31), "2026-10"),
        ("month:2024-02", date(2024, 2, 1), date(2024, 2, 29), "2024-02"),
        ("year:2025", date(2025, 1, 1), date(2025, 12, 31), "2025"),
        ("last-week", date(2026, 11, 16), date(2026, 11, 22), "2026-W47"),
        ("last-month", date(2026, 10, 1), date(2026, 10, 31), "2026-10"),
        ("last-year", date(2025, 1, 1), date(2025, 12, 31), "2025"),
        ("  month:2026-10 ", date(2026, 10, 1), date(2026, 10, 31), "2026-10"),
    ],
)
def test_named_periods(spec, start, end, label):
    p = parse_period(spec, None, None, TODAY)
    assert (p.start, p.end, p.label) == (start, end, label)
    assert p.lo == datetime(start.year, start.month, start.day)
    assert (p.hi - p.lo).days == p.days


def test_explicit_range_and_round_trip():
    p = parse_period(None, "2026-10-05", "2026-10-18", TODAY)
    assert (p.kind, p.label, p.days) == ("range", "2026-10-05_2026-10-18", 14)
    assert Period.from_dict(p.to_dict()) == p
    assert parse_period(None, "2026-10-05", "2026-10-11", TODAY).single_week == date(2026, 10, 5)
    assert parse_period("month:2026-10", None, None, TODAY).single_week is None


@pytest.mark.parametrize(
    ("spec", "date_from", "date_to", "field", "code", "words"),
    [
        ("week:2026-W48", None, None, "period", "not_over", "not over yet"),
        ("week:2026-W49", None, None, "period", "future", "not in the past"),
        ("month:2026-11", None, None, "period", "not_over", "2026-11-30"),
        ("year:2026", None, None, "period", "not_over", "not over yet"),
        ("year:2031", None, None, "period", "future", "2031-01-01"),
        ("week:2025-W53", None, None, "period", "malformed", "W01 to W52"),
        ("week:2026-W53", None, None, "period", "future", "2026-12-28"),
        ("week:2025-W00", None, None, "period", "malformed", "W01 to W52"),
        ("month:2026-13", None, None, "period", "malformed", "01 to 12"),
        ("month:2026-1", None, None, "period", "malformed", "is not a period"),
        ("quarter:2026-Q1", None, None, "period", "malformed", "is not a period"),
        ("2026-10", None, None, "period", "malformed", "week:2026-W47"),
        ("year:1999", None, None, "period", "too_old", "2000-01-01"),
        ("month:2026-10", "2026-10-01", None, "period", "ambiguous", "not both"),
        (None, None, None, "period", "missing", "no period"),
        (None, "2026-10-31", "2026-10-01", "to", "inverted", "before from"),
        (None, "2026-10-01", None, "to", "missing", "to is missing"),
        (None, None, "2026-10-01", "from", "missing", "from is missing"),
        (None, "2026-02-30", "2026-03-01", "from", "malformed", "not a real date"),
        (None, "01/10/2026", "2026-10-31", "from", "malformed", "YYYY-MM-DD"),
        (None, "2026-10-01", "2026-11-26", "to", "not_over", "not over yet"),
        (None, "2026-12-01", "2026-12-31", "from", "future", "not in the past"),
        (None, "2020-01-01", "2026-10-31", "to", "too_long", "the limit is 1100"),
    ],
)
def test_bad_periods_are_refused_with_the_field(spec, date_from, date_to, field, code, words):
    with pytest.raises(PeriodError) as err:
        parse_period(spec, date_from, date_to, TODAY)
    assert err.value.field == field
    assert err.value.reason_code == code
    assert words in str(err.value)
    assert str(err.value).startswith(f"{field}: ")


def test_hostile_text_is_cut_in_the_message():
    with pytest.raises(PeriodError) as err:
        parse_period("x" * 500, None, None, TODAY)
    assert len(str(err.value)) < 200


def test_schedule_decides_when_the_form_is_empty():
    monday = datetime(2026, 11, 23, 5, 0, tzinfo=UTC)
    first = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
    assert scheduled_spec(monday) == "last-week"
    assert scheduled_spec(first) == "last-month"
    assert resolve({"period": None, "from": None, "to": None}, monday).label == "2026-W47"
    assert resolve({}, first).label == "2026-11"
    assert resolve({"period": "year:2025"}, monday).label == "2025"
    assert resolve({"from": "2026-11-02", "to": "2026-11-08"}, monday).label == (
        "2026-11-02_2026-11-08"
    )


def test_week_labels_follow_iso_years():
    assert week_label(date(2024, 12, 30)) == "2025-W01"
    assert week_label(date(2026, 11, 16)) == "2026-W47"
