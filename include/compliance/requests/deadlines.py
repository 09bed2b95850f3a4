"""The deadline rules (R1-R4, G1), in one place for intake, the state database and the watchdog.

Intake stamps each request with its due dates (`due_dates`), the state database checks an
extension against its window (`extension_window`, `local_notice`), and the watchdog compares the
days left with its thresholds (`level`, `reached`). They used to be written three times
(intake's `add_months` and 44/89 days, state's `_add_months` and `extension_window`, and the
watchdog), and the copies could drift apart; a rule changes here or nowhere.

Days are calendar days, due dates are the last permitted day (0 days left = due today), and no
roll-forward over weekends or holidays is applied (conservative).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone

from compliance.requests.state_rows import ExtensionRefused

JURISDICTIONS = ("ccpa", "gdpr")
ACK_DAYS = timedelta(days=10)  # R2 (and the same SLA under the GDPR)
# R3/R4 arithmetic (CCPA). R3 counts the day of receipt as day 1, so the 45th day is
# received_on + 44d; the extension runs to day 90, i.e. received_on + 89d.
CCPA_FIRST_PERIOD_LAST_DAY = timedelta(days=44)
CCPA_EXTENDED_LAST_DAY = timedelta(days=89)

DEFAULT_THRESHOLDS: tuple[int, ...] = (7, 2)
THRESHOLDS_ENV = "COMPLIANCE_DEADLINE_THRESHOLDS"  # read by `Settings.deadline_thresholds`
OVERDUE = "overdue"
MAX_THRESHOLD = 89  # the longest clock (R4's day 90); a larger threshold is a typo


@dataclass(frozen=True)
class Deadlines:
    """Due dates of one request, all computed from the business's receipt (R1).

    `received_on` is day 1. `ack_due` (R2), `response_due` (R3 / G1) and `extended_due`, the
    latest date allowed with the single extension (R4 / G1), are inclusive last days.
    """

    received_on: date
    ack_due: date
    response_due: date
    extended_due: date


def add_months(day: date, months: int) -> date:
    """Same day `months` later, clamped to the month's last day (31 Jan + 1 -> 28/29 Feb)."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def received_day(received_at: datetime | date) -> date:
    """The calendar day of receipt: the earlier of the day in the offset the business reported
    and the UTC day, so a deadline can only come early, never late (R1, R3)."""
    if isinstance(received_at, datetime):
        if received_at.tzinfo is None or received_at.utcoffset() is None:
            raise ValueError("received_at must be timezone-aware")
        return min(received_at.date(), received_at.astimezone(UTC).date())
    return received_at


def due_dates(received_at: datetime | date, jurisdiction: str = "ccpa") -> Deadlines:
    """Due dates from the business's receipt (R1); neither forwarding nor verification stops it.

    CCPA: acknowledge within 10 calendar days (R2's safe SLA, never later than 10 business
    days); respond by received_on + 44 days, counting receipt as day 1 (R3, the conservative
    reading of "45 days"); one extension to at most 90 days, i.e. received_on + 89 (R4).
    GDPR: respond within one calendar month, the same day next month clamped to the month's end
    (15 Jan -> 15 Feb; 31 Jan -> 28/29 Feb), extendable by two further months (G1). The GDPR sets
    no acknowledgement deadline; the same 10-day SLA is used. No roll-forward over weekends or
    holidays in either case (conservative).
    """
    if jurisdiction not in JURISDICTIONS:
        raise ValueError(f"jurisdiction must be one of {', '.join(JURISDICTIONS)}")
    received_on = received_day(received_at)
    ack_due = received_on + ACK_DAYS
    if jurisdiction == "gdpr":
        return Deadlines(
            received_on, ack_due, add_months(received_on, 1), add_months(received_on, 3)
        )
    return Deadlines(
        received_on,
        ack_due,
        received_on + CCPA_FIRST_PERIOD_LAST_DAY,
        received_on + CCPA_EXTENDED_LAST_DAY,
    )


def extension_window(jurisdiction: str, received_on: date) -> tuple[date, date]:
    """(last day a notice may be sent, extended due date) for a request received that day.

    CCPA (R3, R4), conservative day-1 counting: the receipt day is day 1, so the first period
    ends on received_on + 44d and the extension on day 90 = received_on + 89d.
    GDPR (G1): notice within the first month; the due date moves to three months from receipt.
    """
    if jurisdiction == "gdpr":
        return add_months(received_on, 1), add_months(received_on, 3)
    return received_on + CCPA_FIRST_PERIOD_LAST_DAY, received_on + CCPA_EXTENDED_LAST_DAY


# --------------------------------------------------------------------------- thresholds


class ThresholdsInvalid(ValueError):
    """The configured thresholds are not a set of whole days between 0 and 89."""

    reason = "thresholds_invalid"


def parse_thresholds(value: object) -> tuple[int, ...]:
    """Thresholds from a form (list of ints) or the environment ("7,2"); most distant first."""
    if value is None or value == "" or value == []:
        return DEFAULT_THRESHOLDS
    items: list[object]
    if isinstance(value, str):
        items = [v.strip() for v in value.replace(";", ",").split(",") if v.strip()]
    elif isinstance(value, Sequence):
        items = list(value)
    else:
        raise ThresholdsInvalid(f"thresholds must be a list of days, got {type(value).__name__}")
    days: set[int] = set()
    for item in items:
        if isinstance(item, bool):
            raise ThresholdsInvalid("thresholds must be whole days")
        try:
            day = int(str(item))
        except ValueError:
            raise ThresholdsInvalid(f"threshold {item!r} is not a whole number of days") from None
        if not 0 <= day <= MAX_THRESHOLD:
            raise ThresholdsInvalid(f"threshold {day} is outside 0..{MAX_THRESHOLD} days")
        days.add(day)
    if not days:
        return DEFAULT_THRESHOLDS
    return tuple(sorted(days, reverse=True))


def configured_thresholds(override: object, setting: str | None) -> tuple[int, ...]:
    """The form's thresholds if given, else the deployment's (`Settings.deadline_thresholds`,
    from COMPLIANCE_DEADLINE_THRESHOLDS), else 7 and 2."""
    if override not in (None, "", []):
        return parse_thresholds(override)
    return parse_thresholds(setting)


def level(days_left: int, thresholds: Sequence[int]) -> str | None:
    """The most urgent level a clock is at: OVERDUE, the smallest threshold >= days left."""
    if days_left < 0:
        return OVERDUE
    reached = [t for t in thresholds if days_left <= t]
    return str(min(reached)) if reached else None


def reached(
    days_left: int, thresholds: Sequence[int], gap_days: int | None, repeat_overdue: bool
) -> str | None:
    """The level to alert on today, or None.

    `gap_days` is how many days ago the last check looked at this clock (None: it never did).
    A level is alerted when the clock was at a less urgent level at the last check; OVERDUE is
    alerted again on every check when `repeat_overdue`.
    """
    now = level(days_left, thresholds)
    if now is None:
        return None
    if gap_days is None:
        return now
    if now == OVERDUE and repeat_overdue:
        return now
    before = level(days_left + max(gap_days, 0), thresholds)
    return now if before != now else None


# --------------------------------------------------------------------------- extension notices


# How far in the future a notice may be stamped (clocks differ), as intake allows for receipt.
NOTICE_SKEW = timedelta(minutes=5)
OFFSET_RE = re.compile(r"([+-])([01][0-9]):([0-5][0-9])")
# Real-world UTC offsets run from -12:00 to +14:00; anything else is a typo.
MIN_OFFSET, MAX_OFFSET = timedelta(hours=-12), timedelta(hours=14)


def parse_offset(value: str | None) -> timezone | None:
    """`"-08:00"` -> a fixed offset (None when blank); refused outside -12:00..+14:00 (R4)."""
    text = (value or "").strip()
    if not text:
        return None
    if text.upper() in {"Z", "UTC"}:
        return UTC
    m = OFFSET_RE.fullmatch(text)
    if m is None:
        raise ExtensionRefused(
            "bad_offset",
            "R4: the business's UTC offset must read like -08:00 or +01:00",
        )
    sign = -1 if m.group(1) == "-" else 1
    delta = sign * timedelta(hours=int(m.group(2)), minutes=int(m.group(3)))
    if not MIN_OFFSET <= delta <= MAX_OFFSET:
        raise ExtensionRefused(
            "bad_offset", "R4: the business's UTC offset must be between -12:00 and +14:00"
        )
    return timezone(delta)


def local_notice(notice_at: datetime, utc_offset: str | None = None) -> datetime:
    """The notice's moment on the business's clock, the clock its day is counted on (R4).

    Receipt is dated by the business's local day (intake reads the offset the business reported
    with `received_at`, R1), so the notice that must be sent "within the first 45 days" is dated
    on the same clock: 23:30 in California on day 45 is in time, although it is already day 46
    in UTC. The offset is the one staff give (`utc_offset`, the form's field), else the one the
    notice time carries. A notice time without any offset is refused rather than guessed.
    """
    tz = parse_offset(utc_offset)
    if notice_at.tzinfo is None or notice_at.utcoffset() is None:
        if tz is None:
            raise ExtensionRefused(
                "notice_without_offset",
                "R4: give the notice time with the business's UTC offset (e.g. "
                "2026-03-15T23:30:00-08:00, or the offset field): its day is the business's "
                "local day",
            )
        return notice_at.replace(tzinfo=tz)  # wall time on the business's clock
    return notice_at.astimezone(tz) if tz is not None else notice_at
