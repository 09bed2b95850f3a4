"""Report periods: what a run is about, and why a period is refused.

Accepted: `week:2026-W47` (ISO week, Monday to Sunday), `month:2026-10`, `year:2026`, the
relative `last-week` / `last-month` / `last-year` (against the run's day), or an explicit
`from`/`to` pair of dates (both inclusive). All days are UTC.

A period must be over before it is reported on: a partial week would be published (and its
rollup frozen) with the week's late opens and clicks still missing. So a period ending today or
later is refused, as are inverted, malformed, ancient and over-long ones. Every refusal is a
`PeriodError` naming the field (`period`, `from` or `to`) in words a compliance officer can act
on.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import asdict, dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

# The DAG's two schedules (UTC). The weekly run reports the ISO week that ended the day before,
# the monthly run the previous month; `scheduled_spec` tells them apart by the firing time.
WEEKLY_CRON = "0 5 * * 1"
MONTHLY_CRON = "0 6 1 * *"
EARLIEST = date(2000, 1, 1)

_WEEK = re.compile(r"^week:(\d{4})-W(\d{2})$")
_MONTH = re.compile(r"^month:(\d{4})-(\d{2})$")
_YEAR = re.compile(r"^year:(\d{4})$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
RELATIVE = ("last-week", "last-month", "last-year")
EXAMPLES = "week:2026-W47, month:2026-10, year:2025, last-week, last-month or last-year"


class PeriodError(ValueError):
    """A refused period: `field` is the form field, `reason_code` a stable machine code."""

    def __init__(self, field: str, reason_code: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason_code = reason_code
        self.message = message


@dataclass(frozen=True)
class Period:
    kind: str  # week | month | year | range
    start: date  # first day, inclusive
    end: date  # last day, inclusive
    label: str  # 2026-W47, 2026-10, 2026, 2026-10-01_2026-10-15 (also the S3 folder)

    @property
    def lo(self) -> datetime:
        """Inclusive lower bound of the time column (naive UTC, as the CRM stores it)."""
        return datetime.combine(self.start, time())

    @property
    def hi(self) -> datetime:
        """Exclusive upper bound: midnight after the last day."""
        return datetime.combine(self.end + timedelta(days=1), time())

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def single_week(self) -> date | None:
        """The Monday of the period if it is exactly one ISO week, else None."""
        if self.days == 7 and self.start.weekday() == 0:
            return self.start
        return None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["start"], d["end"] = self.start.isoformat(), self.end.isoformat()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Period:
        return cls(
            d["kind"], date.fromisoformat(d["start"]), date.fromisoformat(d["end"]), d["label"]
        )


def week_start(day: date) -> date:
    return day - timedelta(days=day.weekday())


def week_label(monday: date) -> str:
    year, week, _ = monday.isocalendar()
    return f"{year}-W{week:02d}"


def weeks_between(first: date, last: date) -> list[date]:
    """Mondays of every ISO week overlapping [first, last]."""
    out, monday = [], week_start(first)
    while monday <= last:
        out.append(monday)
        monday += timedelta(days=7)
    return out


def scheduled_spec(when: datetime) -> str:
    """The period a scheduled run reports: the monthly slot -> last month, else last week."""
    monthly = when.day == 1 and (when.hour, when.minute) == (6, 0)
    return "last-month" if monthly else "last-week"


def parse_period(
    spec: str | None,
    date_from: str | None,
    date_to: str | None,
    today: date,
    max_days: int = 1100,
) -> Period:
    """Turn the form's values into a Period, or raise PeriodError naming the bad field."""
    spec = (spec or "").strip() or None
    date_from = (date_from or "").strip() or None
    date_to = (date_to or "").strip() or None
    if spec and (date_from or date_to):
        raise PeriodError("period", "ambiguous", "give either a period or from/to dates, not both")
    if spec:
        period = _named(spec, today)
    elif date_from or date_to:
        period = _range(date_from, date_to)
    else:
        raise PeriodError("period", "missing", f"no period given: use {EXAMPLES}, or from/to")
    _check(period, today, max_days, "period" if spec else "to")
    return period


def _named(spec: str, today: date) -> Period:
    if spec in RELATIVE:
        if spec == "last-week":
            return _week(week_start(today) - timedelta(days=7))
        if spec == "last-month":
            first = today.replace(day=1) - timedelta(days=1)
            return _month(first.year, first.month)
        return _year(today.year - 1)
    if m := _WEEK.match(spec):
        year, week = int(m[1]), int(m[2])
        try:
            monday = date.fromisocalendar(year, week, 1)
        except ValueError:
            weeks = date(year, 12, 28).isocalendar()[1] if year >= 1 else 52
            raise PeriodError(
                "period",
                "malformed",
                f"{spec!r}: {year} has ISO weeks W01 to W{weeks:02d}",
            ) from None
        return _week(monday)
    if m := _MONTH.match(spec):
        year, month = int(m[1]), int(m[2])
        if not 1 <= month <= 12:
            raise PeriodError("period", "malformed", f"{spec!r}: the month must be 01 to 12")
        return _month(year, month)
    if m := _YEAR.match(spec):
        return _year(int(m[1]))
    raise PeriodError("period", "malformed", f"{spec[:40]!r} is not a period: use {EXAMPLES}")


def _week(monday: date) -> Period:
    return Period("week", monday, monday + timedelta(days=6), week_label(monday))


def _month(year: int, month: int) -> Period:
    if year < 1:
        raise PeriodError("period", "malformed", f"year {year} is not valid")
    last = calendar.monthrange(year, month)[1]
    return Period("month", date(year, month, 1), date(year, month, last), f"{year:04d}-{month:02d}")


def _year(year: int) -> Period:
    if year < 1:
        raise PeriodError("period", "malformed", f"year {year} is not valid")
    return Period("year", date(year, 1, 1), date(year, 12, 31), f"{year:04d}")


def _day(field: str, value: str | None) -> date:
    if value is None:
        raise PeriodError(field, "missing", f"{field} is missing: a range needs both from and to")
    if not _DAY.match(value):
        raise PeriodError(field, "malformed", f"{value[:40]!r} is not a date (YYYY-MM-DD)")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise PeriodError(field, "malformed", f"{value!r} is not a real date") from None


def _range(date_from: str | None, date_to: str | None) -> Period:
    start, end = _day("from", date_from), _day("to", date_to)
    if start > end:
        raise PeriodError(
            "to", "inverted", f"{end.isoformat()} is before from ({start.isoformat()})"
        )
    return Period("range", start, end, f"{start.isoformat()}_{end.isoformat()}")


def _check(period: Period, today: date, max_days: int, field: str) -> None:
    start_field = "period" if field == "period" else "from"
    if period.start < EARLIEST:
        raise PeriodError(
            start_field, "too_old", f"{period.label} starts before {EARLIEST.isoformat()}"
        )
    if period.start >= today:
        raise PeriodError(
            start_field,
            "future",
            f"{period.label} starts on {period.start.isoformat()}, "
            f"which is not in the past (today is {today.isoformat()}, UTC)",
        )
    if period.end >= today:
        raise PeriodError(
            field,
            "not_over",
            f"{period.label} ends on {period.end.isoformat()}, which is not over yet "
            f"(today is {today.isoformat()}, UTC); report on complete periods only",
        )
    if period.days > max_days:
        raise PeriodError(
            field,
            "too_long",
            f"{period.label} spans {period.days} days; the limit is {max_days} "
            "(reports.max_period_days)",
        )


def resolve(params: dict[str, Any], when: datetime, max_days: int = 1100) -> Period:
    """The period of a run: the form's (or conf's) values, else the schedule's default.

    `when` is the run's logical date (scheduled runs) or trigger time (manual ones), in UTC.
    """
    spec, date_from, date_to = (params.get(name) for name in ("period", "from", "to"))
    if not any(str(v or "").strip() for v in (spec, date_from, date_to)):
        spec = scheduled_spec(when)
    return parse_period(spec, date_from, date_to, when.date(), max_days)
