"""The deadline watchdog (compliance.requests.deadlines): thresholds, levels, the daily check, extensions.

A seeded request set whose clocks sit at every distance from -5 to 15 days is checked as a
daily run would check it: alerts must come exactly at the thresholds (R2, R3) and overdue, and
extensions must follow R4.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from compliance.core import ledger
from compliance.core.hashing import keyed_hash
from compliance.core.settings import Settings
from compliance.core.stores.sql import engine_from_url
from compliance.requests import deadline_watch, deadlines, state
from compliance.requests.deadline_watch import ACK, RESPOND
from compliance.requests.deadlines import OVERDUE
from compliance.requests.state import ExtensionRefused, NewRequest

KEY = b"unit-test-key"
TODAY = date(2026, 11, 20)
LAST_CHECK = datetime(2026, 11, 19, 6, 0, tzinfo=UTC)  # yesterday's run
EMAIL = "watched.person@example.com"


@pytest.fixture
def engine(sqlite_url):
    eng = engine_from_url(sqlite_url)
    state.create_state_schema(eng)
    yield eng
    eng.dispose()


def _row(pk: int, *, respond_in: int | None, ack_in: int | None = None, **kw) -> state.RequestRow:
    """A request whose response is due `respond_in` days after TODAY (ack `ack_in`)."""
    received = TODAY - timedelta(days=10)
    base = {
        "id": pk,
        "client_id": 7,
        "request_id": f"REQ-{pk}",
        "type": "delete",
        "jurisdiction": "ccpa",
        "status": "open",
        "reason_code": None,
        "received_at": datetime.combine(received, datetime.min.time(), UTC),
        "received_on": received,
        "accepted_at": LAST_CHECK - timedelta(days=5),  # known to the last check
        "ack_due": TODAY + timedelta(days=ack_in) if ack_in is not None else None,
        "response_due": TODAY + timedelta(days=respond_in) if respond_in is not None else None,
        "extension_notice_at": None,
        "extension_reason": None,
        "extended_due": None,
        "completed_at": None,
        "batch_id": None,
        "source": "inbox/7/x.json",
        "subject_hash": None,
        "look_back": None,
    }
    base.update(kw)
    return state.RequestRow(**base)


# --------------------------------------------------------------------------- thresholds


def test_thresholds_default_and_parse():
    assert deadlines.parse_thresholds(None) == (7, 2)
    assert deadlines.parse_thresholds("") == (7, 2)
    assert deadlines.parse_thresholds("2, 7,14") == (14, 7, 2)
    assert deadlines.parse_thresholds([2, 7, 7, 0]) == (7, 2, 0)


@pytest.mark.parametrize("bad", ["7,x", [-1], [90], [True], "1.5", 3])
def test_bad_thresholds_are_refused(bad):
    with pytest.raises(deadlines.ThresholdsInvalid):
        deadlines.parse_thresholds(bad)


def test_thresholds_from_form_then_settings():
    setting = Settings.from_env({deadlines.THRESHOLDS_ENV: "10,3"}).deadline_thresholds
    assert deadlines.configured_thresholds(None, setting) == (10, 3)
    assert deadlines.configured_thresholds([5], setting) == (5,)
    unset = Settings.from_env({}).deadline_thresholds
    assert deadlines.configured_thresholds(None, unset) == (7, 2)


@pytest.mark.parametrize(
    ("days_left", "expected"),
    [(15, None), (8, None), (7, "7"), (3, "7"), (2, "2"), (0, "2"), (-1, OVERDUE)],
)
def test_level(days_left, expected):
    assert deadlines.level(days_left, (7, 2)) == expected


# --------------------------------------------------------------------------- the daily check


def test_daily_run_alerts_exactly_at_the_thresholds():
    """Responses due in -5..15 days: alerts at 7 and 2 days left, and every overdue day."""
    rows = [_row(100 + d, respond_in=d) for d in range(-5, 16)]
    found = deadline_watch.check(rows, TODAY, LAST_CHECK, (7, 2))
    got = {(a.days_left, a.level) for a in found}
    assert got == {
        (7, "7"),
        (2, "2"),
        (-1, OVERDUE),
        (-2, OVERDUE),
        (-3, OVERDUE),
        (-4, OVERDUE),
        (-5, OVERDUE),
    }
    assert all(a.clock == RESPOND for a in found)


def test_acknowledgement_alerts_once_per_level_including_overdue():
    """R2: the ack clock alerts at 7, 2 and on the day it runs out, not on every later day."""
    rows = [_row(200 + d, respond_in=None, ack_in=d) for d in range(-5, 11)]
    found = deadline_watch.check(rows, TODAY, LAST_CHECK, (7, 2))
    assert {(a.days_left, a.level) for a in found} == {(7, "7"), (2, "2"), (-1, OVERDUE)}
    assert all(a.clock == ACK for a in found)


def test_every_day_of_a_request_life_alerts_once_per_threshold():
    """Walk one request from receipt to day 50, one run a day: each level is reported once
    (overdue response: every day from day 46)."""
    received = date(2026, 1, 1)
    row = _row(
        1,
        respond_in=None,
        received_on=received,
        ack_due=received + timedelta(days=10),
        response_due=received + timedelta(days=44),
        accepted_at=datetime(2026, 1, 1, 12, tzinfo=UTC),
    )
    seen = []
    for n in range(1, 50):
        today = received + timedelta(days=n)
        last = datetime.combine(today - timedelta(days=1), datetime.min.time(), UTC) + timedelta(
            hours=18
        )
        for a in deadline_watch.check([row], today, last, (7, 2)):
            seen.append((n, a.clock, a.level))
    assert seen == [
        (3, ACK, "7"),
        (8, ACK, "2"),
        (11, ACK, OVERDUE),
        (37, RESPOND, "7"),
        (42, RESPOND, "2"),
        (45, RESPOND, OVERDUE),
        (46, RESPOND, OVERDUE),
        (47, RESPOND, OVERDUE),
        (48, RESPOND, OVERDUE),
        (49, RESPOND, OVERDUE),
    ]


def test_missed_runs_report_the_most_urgent_threshold_crossed():
    """Last check 4 days ago: 8 -> 4 days left crossed 7; 5 -> 1 crossed 7 and 2 (report 2);
    12 -> 8 crossed nothing; 3 -> -1 crossed into overdue."""
    last = LAST_CHECK - timedelta(days=3)
    rows = [
        _row(1, respond_in=4),
        _row(2, respond_in=1),
        _row(3, respond_in=8),
        _row(4, respond_in=-1, ack_in=-1),
        _row(5, respond_in=5),  # was at 9: crossed 7
        _row(6, respond_in=3),  # was at 7: already reported then
    ]
    found = {(a.request_pk, a.clock): a.level for a in deadline_watch.check(rows, TODAY, last)}
    assert found == {
        (1, RESPOND): "7",
        (2, RESPOND): "2",
        (4, RESPOND): OVERDUE,
        (4, ACK): OVERDUE,
        (5, RESPOND): "7",
    }


def test_new_requests_are_reported_at_the_level_they_are_at():
    """Accepted after the last check (e.g. forwarded late): nothing was ever said about it."""
    late = LAST_CHECK + timedelta(hours=3)
    rows = [
        _row(1, respond_in=5, ack_in=-2, accepted_at=late),
        _row(2, respond_in=30, ack_in=4, accepted_at=late),
        _row(3, respond_in=5, ack_in=-2),  # known before: nothing crossed today
    ]
    found = {
        (a.request_pk, a.clock, a.level) for a in deadline_watch.check(rows, TODAY, LAST_CHECK)
    }
    assert found == {(1, RESPOND, "7"), (1, ACK, OVERDUE), (2, ACK, "7")}


def test_first_run_reports_everything_at_a_level():
    rows = [_row(1, respond_in=5), _row(2, respond_in=20), _row(3, respond_in=-3, ack_in=-30)]
    found = {(a.request_pk, a.clock, a.level) for a in deadline_watch.check(rows, TODAY, None)}
    assert found == {(1, RESPOND, "7"), (3, RESPOND, OVERDUE), (3, ACK, OVERDUE)}


def test_closed_requests_are_ignored_and_deferred_ones_are_not():
    rows = [
        _row(1, respond_in=2, status="completed"),
        _row(2, respond_in=2, status="rejected", reason_code="unverified"),
        _row(3, respond_in=2, status="deferred", reason_code="legal_hold"),
    ]
    assert [a.request_pk for a in deadline_watch.check(rows, TODAY, LAST_CHECK)] == [3]


def test_the_extended_due_date_is_the_one_watched():
    row = _row(
        1,
        respond_in=-10,  # the first period ended 10 days ago...
        extended_due=TODAY + timedelta(days=7),  # ...but R4 moved it
        extension_notice_at=datetime(2026, 10, 1, tzinfo=UTC),
        extension_reason="volume",
    )
    (alert,) = deadline_watch.check([row], TODAY, LAST_CHECK)
    assert (alert.due, alert.level, alert.extended) == (TODAY + timedelta(days=7), "7", True)
    assert "extended (R4)" in alert.line()


def test_custom_thresholds_including_due_today():
    rows = [_row(10 + d, respond_in=d) for d in range(0, 12)]
    found = deadline_watch.check(rows, TODAY, LAST_CHECK, (10, 3, 0))
    assert sorted(a.days_left for a in found) == [0, 3, 10]


def test_digest_names_requests_not_people():
    rows = [_row(1, respond_in=2), _row(2, respond_in=-1, jurisdiction="gdpr")]
    found = deadline_watch.check(rows, TODAY, LAST_CHECK)
    msg = deadline_watch.digest(found, TODAY, (7, 2))
    assert msg is not None and msg.kind == "deadline"
    assert "1 overdue, 1 near" in msg.subject
    assert "client 7 request REQ-2 (delete, gdpr, open): respond by 2026-11-19" in msg.body
    assert "overdue by 1 day(s)" in msg.body and "2 day(s) left" in msg.body
    assert "docs/operations.md" in msg.body
    assert deadline_watch.digest([], TODAY, (7, 2)) is None
    assert deadline_watch.counts(found) == {"respond:2": 1, "respond:overdue": 1}


def test_report_round_trip():
    found = deadline_watch.check([_row(1, respond_in=2)], TODAY, LAST_CHECK)
    report = deadline_watch.Report(TODAY, LAST_CHECK, (7, 2), tuple(found))
    assert deadline_watch.Report.from_dict(report.to_dict()) == report


def test_watch_reads_the_state_database(engine):
    """End to end over the state DB: seeded requests, one per distance, as intake stores them."""
    rows = []
    for d in range(-3, 10):
        received = TODAY + timedelta(days=d) - timedelta(days=44)
        rows.append(
            NewRequest(
                client_id=3,
                request_id=f"D{d + 10}",
                type="access" if d % 2 else "delete",
                jurisdiction="ccpa",
                received_at=datetime.combine(received, datetime.min.time(), UTC),
                received_on=received,
                accepted_at=datetime(2026, 1, 1, tzinfo=UTC),
                ack_due=received + timedelta(days=10),
                response_due=received + timedelta(days=44),
                source="ui",
            )
        )
    state.insert_requests(engine, rows)
    found = deadline_watch.watch(engine, TODAY, LAST_CHECK, (7, 2))
    assert sorted((a.days_left, a.type) for a in found) == [
        (-3, "access"),
        (-2, "delete"),
        (-1, "access"),
        (2, "delete"),
        (7, "access"),
    ]


# --------------------------------------------------------------------------- extensions (R4)

RECEIVED = datetime(2026, 9, 1, 15, 0, tzinfo=UTC)


def _open_request(engine, request_id="EXT-1", jurisdiction="ccpa") -> int:
    received_on = RECEIVED.date()
    (pk,) = state.insert_requests(
        engine,
        [
            NewRequest(
                client_id=4,
                request_id=request_id,
                type="delete",
                jurisdiction=jurisdiction,
                received_at=RECEIVED,
                received_on=received_on,
                accepted_at=RECEIVED,
                ack_due=received_on + timedelta(days=10),
                response_due=received_on + timedelta(days=44),
                source="ui",
            )
        ],
    ).values()
    return pk


def test_extension_moves_the_deadline_to_day_90_and_is_ledgered(engine):
    pk = _open_request(engine)
    notice = RECEIVED + timedelta(days=30)
    done = deadline_watch.extend(engine, KEY, 4, "EXT-1", "delete", notice, "Volume of requests")
    assert done.extended_due == RECEIVED.date() + timedelta(days=89)
    assert state.get_requests(engine, [pk])[pk].due == done.extended_due
    (entry,) = ledger.entries(engine, kind="request_extended")
    assert entry.ref == keyed_hash(KEY, "request", "4\x1fEXT-1\x1fdelete")
    assert entry.payload["rules"] == ["R4"]
    assert entry.payload["extended_due"] == done.extended_due.isoformat()
    # The same form submitted again is a no-op: same date, one ledger entry.
    again = deadline_watch.extend(engine, KEY, 4, "EXT-1", "delete", notice, "Volume of requests")
    assert again.extended_due == done.extended_due
    assert len(ledger.entries(engine, kind="request_extended")) == 1
    assert ledger.verify(engine, KEY).ok


def test_second_extension_is_refused_with_the_reason(engine):
    _open_request(engine)
    deadline_watch.extend(engine, KEY, 4, "EXT-1", "delete", RECEIVED + timedelta(days=3), "Volume")
    with pytest.raises(ExtensionRefused) as err:
        deadline_watch.extend(
            engine, KEY, 4, "EXT-1", "delete", RECEIVED + timedelta(days=9), "More"
        )
    assert err.value.reason_code == "already_extended"
    assert "only once" in err.value.message


@pytest.mark.parametrize(
    ("notice", "reason", "code"),
    [
        (None, "Volume of requests", "notice_missing"),
        (RECEIVED + timedelta(days=45), "Volume of requests", "notice_too_late"),
        (RECEIVED - timedelta(days=2), "Volume of requests", "notice_before_receipt"),
        (RECEIVED + timedelta(days=5), "   ", "reason_missing"),
        (RECEIVED + timedelta(days=5), f"asked by {EMAIL}", "reason_has_personal_data"),
        (RECEIVED + timedelta(days=5), "call +1 415 555 0100 back", "reason_has_personal_data"),
    ],
)
def test_invalid_extensions_are_refused(engine, notice, reason, code):
    pk = _open_request(engine)
    with pytest.raises(ExtensionRefused) as err:
        deadline_watch.extend(engine, KEY, 4, "EXT-1", "delete", notice, reason)
    assert err.value.reason_code == code
    assert EMAIL not in str(err.value)
    assert state.get_requests(engine, [pk])[pk].extended_due is None
    assert ledger.entries(engine, kind="request_extended") == []


def test_last_day_of_the_first_period_is_still_in_time(engine):
    _open_request(engine)
    day_45 = RECEIVED + timedelta(days=44)
    done = deadline_watch.extend(engine, KEY, 4, "EXT-1", "delete", day_45, "Complex search")
    assert done.extended_due == RECEIVED.date() + timedelta(days=89)


def test_unknown_request_is_refused(engine):
    _open_request(engine)
    with pytest.raises(ExtensionRefused) as err:
        deadline_watch.extend(engine, KEY, 4, "NOPE", "delete", RECEIVED, "Volume of requests")
    assert err.value.reason_code == "unknown_request"
    with pytest.raises(ExtensionRefused):
        deadline_watch.extend(engine, KEY, 4, "EXT-1", "access", RECEIVED, "Volume of requests")


def test_gdpr_extension_runs_to_three_months(engine):
    _open_request(engine, "G-1", "gdpr")
    done = deadline_watch.extend(
        engine, KEY, 4, "G-1", "delete", RECEIVED + timedelta(days=20), "Volume"
    )
    assert done.extended_due == date(2026, 12, 1)


# R4 (issue 15): the notice is dated by the business's local day, as receipt is (intake reads
# the day of receipt in the offset the business reported), and a notice in the future is refused.
# RECEIVED is 2026-09-01 08:00 in California (-07:00, PDT): day 45 is 2026-10-15.
LATE_EVENING_DAY_45 = datetime(2026, 10, 15, 23, 30, tzinfo=timezone(timedelta(hours=-7)))


def test_notice_at_2330_local_on_day_45_is_in_time_although_day_46_in_utc(engine):
    _open_request(engine)
    assert LATE_EVENING_DAY_45.astimezone(UTC).date() == date(2026, 10, 16)  # day 46 in UTC
    done = deadline_watch.extend(
        engine, KEY, 4, "EXT-1", "delete", LATE_EVENING_DAY_45, "Complex search", now=NOW_R4
    )
    assert done.extended_due == RECEIVED.date() + timedelta(days=89)
    assert done.notice_day == date(2026, 10, 15)
    assert done.notice_at == LATE_EVENING_DAY_45.astimezone(UTC)  # stored as the UTC instant
    (entry,) = ledger.entries(engine, kind="request_extended")
    assert entry.payload["notice_day"] == "2026-10-15"


def test_the_form_s_utc_notice_is_dated_with_the_business_s_offset(engine):
    """The form may send the notice in UTC; the offset field puts it on the business's clock."""
    _open_request(engine)
    utc = LATE_EVENING_DAY_45.astimezone(UTC)
    with pytest.raises(ExtensionRefused) as err:  # read in UTC it is day 46: too late
        deadline_watch.extend(engine, KEY, 4, "EXT-1", "delete", utc, "Complex search", now=NOW_R4)
    assert err.value.reason_code == "notice_too_late"
    done = deadline_watch.extend(
        engine, KEY, 4, "EXT-1", "delete", utc, "Complex search", utc_offset="-07:00", now=NOW_R4
    )
    assert done.notice_day == date(2026, 10, 15)
    # a wall time without an offset is read on the business's clock given beside it
    assert deadlines.local_notice(utc.replace(tzinfo=None), "-07:00").utcoffset() == timedelta(
        hours=-7
    )


@pytest.mark.parametrize(
    ("notice", "offset", "code"),
    [
        (datetime(2026, 10, 1, 12, 0), None, "notice_without_offset"),
        (RECEIVED + timedelta(days=5), "-25:00", "bad_offset"),
        (RECEIVED + timedelta(days=5), "PST", "bad_offset"),
        (RECEIVED + timedelta(days=5), "+14:30", "bad_offset"),
    ],
)
def test_notice_offset_must_be_given_and_real(engine, notice, offset, code):
    pk = _open_request(engine)
    with pytest.raises(ExtensionRefused) as err:
        deadline_watch.extend(
            engine, KEY, 4, "EXT-1", "delete", notice, "Volume", utc_offset=offset, now=NOW_R4
        )
    assert err.value.reason_code == code
    assert "R4" in err.value.message
    assert state.get_requests(engine, [pk])[pk].extended_due is None


def test_a_notice_dated_in_the_future_is_refused(engine):
    pk = _open_request(engine)
    now = RECEIVED + timedelta(days=10)
    future = now + timedelta(hours=2)  # still inside the first 45 days, but not sent yet
    with pytest.raises(ExtensionRefused) as err:
        deadline_watch.extend(engine, KEY, 4, "EXT-1", "delete", future, "Volume", now=now)
    assert err.value.reason_code == "notice_in_future"
    assert "R4" in err.value.message and "future" in err.value.message
    assert state.get_requests(engine, [pk])[pk].extended_due is None
    assert ledger.entries(engine, kind="request_extended") == []
    # within the clock skew (5 minutes) it is the present, not the future
    done = deadline_watch.extend(
        engine, KEY, 4, "EXT-1", "delete", now + timedelta(minutes=4), "Volume", now=now
    )
    assert done.extended_due == RECEIVED.date() + timedelta(days=89)


NOW_R4 = datetime(2026, 10, 20, 12, 0, tzinfo=UTC)
