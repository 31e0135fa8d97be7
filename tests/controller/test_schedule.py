"""Schedules: the cron dialect the CRD admits, time zones and DST, jitter, catch-up."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from vmguard.controller.kube.schedule import jitter_offset, parse
from vmguard.crds.fields import CRON
from vmguard.errors import ScheduleError

pytestmark = pytest.mark.unit

UTC = dt.UTC


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def runs(cron: str, start: dt.datetime, count: int, tz: str = "UTC") -> list[dt.datetime]:
    schedule = parse(cron, tz)
    out, at = [], start
    for _ in range(count):
        nxt = schedule.next_after(at)
        assert nxt is not None
        out.append(nxt)
        at = nxt
    return out


def local(times: list[dt.datetime], tz: str) -> list[str]:
    from zoneinfo import ZoneInfo

    return [t.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M %Z") for t in times]


# --- the dialect --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("* * * * *", [utc(2025, 1, 6, 10, 1), utc(2025, 1, 6, 10, 2), utc(2025, 1, 6, 10, 3)]),
        ("*/20 * * * *", [utc(2025, 1, 6, 10, 20), utc(2025, 1, 6, 10, 40), utc(2025, 1, 6, 11)]),
        (
            "5/20 * * * *",
            [utc(2025, 1, 6, 10, 5), utc(2025, 1, 6, 10, 25), utc(2025, 1, 6, 10, 45)],
        ),
        ("0 8-18/4 * * *", [utc(2025, 1, 6, 12), utc(2025, 1, 6, 16), utc(2025, 1, 7, 8)]),
        ("15,45 2 * * *", [utc(2025, 1, 7, 2, 15), utc(2025, 1, 7, 2, 45), utc(2025, 1, 8, 2, 15)]),
        ("0 2 * * mon-fri", [utc(2025, 1, 7, 2), utc(2025, 1, 8, 2), utc(2025, 1, 9, 2)]),
        ("0 2 * * SAT,sun", [utc(2025, 1, 11, 2), utc(2025, 1, 12, 2), utc(2025, 1, 18, 2)]),
        ("0 0 * * 7", [utc(2025, 1, 12), utc(2025, 1, 19), utc(2025, 1, 26)]),
        ("0 0 * * 0", [utc(2025, 1, 12), utc(2025, 1, 19), utc(2025, 1, 26)]),
        ("0 0 1 JAN,jul ?", [utc(2025, 7, 1), utc(2026, 1, 1), utc(2026, 7, 1)]),
        ("0 3 ? * 1", [utc(2025, 1, 13, 3), utc(2025, 1, 20, 3), utc(2025, 1, 27, 3)]),
        ("0 0 29 2 *", [utc(2028, 2, 29), utc(2032, 2, 29), utc(2036, 2, 29)]),
        # Neither day field starts with '*': either one matching is enough (Debian cron).
        ("0 0 13 * fri", [utc(2025, 1, 10), utc(2025, 1, 13), utc(2025, 1, 17)]),
    ],
)
def test_fields_names_steps_lists_ranges(cron: str, expected: list[dt.datetime]) -> None:
    assert runs(cron, utc(2025, 1, 6, 10, 0, 30), 3) == expected


def test_a_day_field_starting_with_a_star_makes_both_required() -> None:
    # Days 1, 11, 21, 31 that are also Mondays (Debian cron; */10 counts as '*').
    got = runs("0 0 */10 * mon", utc(2025, 1, 6), 4)
    assert all(t.weekday() == 0 and t.day in (1, 11, 21, 31) for t in got)
    assert got[0] == utc(2025, 3, 31)


@pytest.mark.parametrize(
    ("macro", "line"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@DAILY", "0 0 * * *"),
    ],
)
def test_macros(macro: str, line: str) -> None:
    start = utc(2025, 5, 17, 13, 7)
    assert runs(macro, start, 4) == runs(line, start, 4)


def test_case_does_not_matter() -> None:
    start = utc(2025, 5, 17, 13, 7)
    assert runs("0 4 * JAN-mar MON-Fri", start, 5) == runs("0 4 * jan-MAR mon-fri", start, 5)


@pytest.mark.parametrize(
    ("cron", "reason", "words"),
    [
        ("30-10 * * * *", "UpwardRange", "'30-10' in the minute field"),
        ("0 23-1 * * *", "UpwardRange", "hour field"),
        ("0 0 * dec-jan *", "UpwardRange", "month field"),
        ("0 0 * * sat-sun", "UpwardRange", "day-of-week field"),
        ("0 0 31 2 *", "NeverOccurs", "never occurs"),
        ("0 0 30 2 *", "NeverOccurs", "never occurs"),
        ("0 0 31 4,6,9,11 *", "NeverOccurs", "never occurs"),
        ("61 * * * *", "InvalidCron", "not a valid cron"),
        ("* * * *", "InvalidCron", "not a valid cron"),
        ("0 * * * * *", "InvalidCron", "not a valid cron"),
        ("@every 5m", "InvalidCron", "not a valid cron"),
        ("0 0 L * *", "InvalidCron", "not a valid cron"),
        ("0 0 * * 1#2", "InvalidCron", "not a valid cron"),
        ("TZ=UTC 0 0 * * *", "InvalidCron", "not a valid cron"),
        ("? * * * *", "InvalidCron", "not a valid cron"),
    ],
)
def test_refused_with_a_reason(cron: str, reason: str, words: str) -> None:
    with pytest.raises(ScheduleError) as err:
        parse(cron)
    assert err.value.reason == reason
    assert words in str(err.value)


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        # An upward range runs through both ends, then waits for the next hour.
        ("10-30 * * * *", [utc(2025, 1, 6, 10, 10), utc(2025, 1, 6, 10, 11)]),
        # A date that occurs only in leap years is a real date.
        ("0 0 29 2 *", [utc(2028, 2, 29), utc(2032, 2, 29)]),
        # Day 31 of February never occurs, but either day field is enough: every Monday.
        ("0 0 31 2 mon", [utc(2025, 2, 3), utc(2025, 2, 10)]),
        # fri-7 is Friday to Sunday (7 is Sunday, counted upwards).
        ("0 0 * * fri-7", [utc(2025, 1, 10), utc(2025, 1, 11), utc(2025, 1, 12)]),
        # Day 31 skips the months without one.
        ("0 0 31 * *", [utc(2025, 1, 31), utc(2025, 3, 31), utc(2025, 5, 31)]),
    ],
)
def test_upward_ranges_and_real_dates_are_fine(cron: str, expected: list[dt.datetime]) -> None:
    assert runs(cron, utc(2025, 1, 6, 10, 0, 30), len(expected)) == expected


def test_an_upward_range_ends_at_its_upper_bound() -> None:
    got = runs("10-30 * * * *", utc(2025, 1, 6, 10, 29), 2)
    assert got == [utc(2025, 1, 6, 10, 30), utc(2025, 1, 6, 11, 10)]


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("* * * * *", [utc(2025, 1, 6, 10, 1), utc(2025, 1, 6, 10, 2)]),
        ("0 2 * * MON-FRI", [utc(2025, 1, 7, 2), utc(2025, 1, 8, 2)]),
        ("@weekly", [utc(2025, 1, 12), utc(2025, 1, 19)]),
        ("5/10 1 ? * *", [utc(2025, 1, 7, 1, 5), utc(2025, 1, 7, 1, 15)]),
    ],
)
def test_dialect_matches_the_crd(cron: str, expected: list[dt.datetime]) -> None:
    # What admission lets through, the controller evaluates (to the runs the line means).
    assert re.match(CRON, cron)
    assert runs(cron, utc(2025, 1, 6, 10, 0, 30), len(expected)) == expected


def test_unknown_time_zone() -> None:
    with pytest.raises(ScheduleError) as err:
        parse("0 0 * * *", "Europe/Atlantis")
    assert err.value.reason == "UnknownTimeZone"
    assert "Europe/Atlantis" in str(err.value)


# --- time zones and DST ---------------------------------------------------------------------


def test_time_zone_moves_the_instant() -> None:
    assert runs("0 2 * * *", utc(2025, 1, 6), 1, "Europe/Berlin") == [utc(2025, 1, 6, 1)]
    assert runs("0 2 * * *", utc(2025, 7, 6), 1, "Europe/Berlin") == [utc(2025, 7, 7, 0)]
    assert runs("0 2 * * *", utc(2025, 1, 6), 1, "America/New_York") == [utc(2025, 1, 6, 7)]


def test_berlin_spring_forward_skipped_time_runs_once_after_the_gap() -> None:
    # 2025-03-30: 02:00 CET becomes 03:00 CEST; 02:30 does not exist.
    got = runs("30 2 * * *", utc(2025, 3, 29, 12), 3, "Europe/Berlin")
    assert local(got, "Europe/Berlin") == [
        "2025-03-30 03:00 CEST",
        "2025-03-31 02:30 CEST",
        "2025-04-01 02:30 CEST",
    ]


def test_berlin_spring_forward_several_skipped_times_collapse() -> None:
    got = runs("0,20,40 2 * * *", utc(2025, 3, 29, 12), 2, "Europe/Berlin")
    assert local(got, "Europe/Berlin") == ["2025-03-30 03:00 CEST", "2025-03-31 02:00 CEST"]


def test_berlin_fall_back_fixed_time_runs_once() -> None:
    # 2025-10-26: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
    got = runs("30 2 * * *", utc(2025, 10, 25, 12), 2, "Europe/Berlin")
    assert local(got, "Europe/Berlin") == ["2025-10-26 02:30 CEST", "2025-10-27 02:30 CET"]


def test_berlin_fall_back_started_in_the_second_pass_does_not_repeat() -> None:
    schedule = parse("30 2 * * *", "Europe/Berlin")
    second_pass = utc(2025, 10, 26, 1, 10)  # 02:10 CET, after 02:30 CEST ran
    assert local([schedule.next_after(second_pass)], "Europe/Berlin") == [  # type: ignore[list-item]
        "2025-10-27 02:30 CET"
    ]
    assert schedule.previous(second_pass) == utc(2025, 10, 26, 0, 30)


def test_berlin_fall_back_cadence_keeps_running_in_both_passes() -> None:
    got = runs("*/30 * * * *", utc(2025, 10, 25, 23, 50), 6, "Europe/Berlin")
    assert [t - got[0] for t in got] == [dt.timedelta(minutes=30 * i) for i in range(6)]
    assert local(got, "Europe/Berlin")[:4] == [
        "2025-10-26 02:00 CEST",
        "2025-10-26 02:30 CEST",
        "2025-10-26 02:00 CET",
        "2025-10-26 02:30 CET",
    ]


def test_new_york_spring_forward() -> None:
    # 2025-03-09: 02:00 EST becomes 03:00 EDT.
    got = runs("0 2 * * *", utc(2025, 3, 8, 12), 2, "America/New_York")
    assert local(got, "America/New_York") == ["2025-03-09 03:00 EDT", "2025-03-10 02:00 EDT"]
    hourly = runs("0 * * * *", utc(2025, 3, 9, 5, 30), 3, "America/New_York")
    assert local(hourly, "America/New_York") == [
        "2025-03-09 01:00 EST",
        "2025-03-09 03:00 EDT",
        "2025-03-09 04:00 EDT",
    ]


def test_new_york_fall_back() -> None:
    # 2025-11-02: 02:00 EDT becomes 01:00 EST; 01:30 happens twice.
    got = runs("30 1 * * *", utc(2025, 11, 1, 12), 2, "America/New_York")
    assert local(got, "America/New_York") == ["2025-11-02 01:30 EDT", "2025-11-03 01:30 EST"]
    hourly = runs("30 * * * *", utc(2025, 11, 2, 4), 3, "America/New_York")
    assert local(hourly, "America/New_York") == [
        "2025-11-02 00:30 EDT",
        "2025-11-02 01:30 EDT",
        "2025-11-02 01:30 EST",
    ]


# --- previous, gaps, RPO, jitter ------------------------------------------------------------


def test_previous_is_at_or_before() -> None:
    schedule = parse("0 2 * * *")
    assert schedule.previous(utc(2025, 1, 7, 2)) == utc(2025, 1, 7, 2)
    assert schedule.previous(utc(2025, 1, 7, 1, 59)) == utc(2025, 1, 6, 2)
    assert parse("0 0 29 2 *").previous(utc(2025, 1, 1)) == utc(2024, 2, 29)
    assert parse("* * 1 * *").previous(utc(2025, 1, 15)) == utc(2025, 1, 1, 23, 59)


def test_gaps_and_default_rpo() -> None:
    assert parse("*/15 * * * *").gaps() == (dt.timedelta(minutes=15), dt.timedelta(minutes=15))
    weekdays = parse("0 2 * * mon-fri")
    assert weekdays.gaps() == (dt.timedelta(days=1), dt.timedelta(days=3))
    assert weekdays.default_rpo() == dt.timedelta(days=6)
    assert parse("0 1,13 * * *").gaps() == (dt.timedelta(hours=12), dt.timedelta(hours=12))
    assert parse("@monthly").gaps() == (dt.timedelta(days=28), dt.timedelta(days=31))
    # The time zone does not change the cadence a user wrote.
    assert parse("0 2 * * *", "Europe/Berlin").gaps() == (dt.timedelta(days=1),) * 2


def test_jitter_problem() -> None:
    assert parse("0 2 * * *").jitter_problem(3600) is None
    assert parse("0 2 * * *").jitter_problem(86400) is None
    message = parse("0,5 2 * * *").jitter_problem(600)
    assert message is not None and "longer than the 5m between two runs" in message


def test_jitter_offset_is_stable_bounded_and_spread() -> None:
    uuids = [f"50{i:06d}-0000-4000-8000-000000000000" for i in range(400)]
    offsets = [jitter_offset(600, "policy-uid-1", u) for u in uuids]
    assert offsets == [jitter_offset(600, "policy-uid-1", u) for u in uuids]
    assert all(0 <= o < 600 for o in offsets)
    assert len(set(offsets)) > 390
    # Spread: every tenth of the window is used.
    assert {int(o // 60) for o in offsets} == set(range(10))
    # Another policy puts the same VM elsewhere.
    assert offsets != [jitter_offset(600, "policy-uid-2", u) for u in uuids]
    assert jitter_offset(0, "policy-uid-1", uuids[0]) == 0


# --- catch-up -------------------------------------------------------------------------------


def test_catch_up_runs_the_latest_missed_time_in_the_first_half_of_the_gap() -> None:
    daily = parse("0 2 * * *")
    created = utc(2025, 1, 1)
    # Down from 01:00 to 05:00: the 02:00 run is made up at once.
    assert daily.catch_up(utc(2025, 1, 7, 5), created) == utc(2025, 1, 7, 2)
    # Back at 13:59: still under half a day late.
    assert daily.catch_up(utc(2025, 1, 7, 13, 59), created) == utc(2025, 1, 7, 2)
    # Back at 14:00 or later: the next run is nearer; nothing now.
    assert daily.catch_up(utc(2025, 1, 7, 14), created) is None
    # Down for three days: one run (the latest), not three.
    assert daily.catch_up(utc(2025, 1, 10, 3), created) == utc(2025, 1, 10, 2)


def test_catch_up_never_runs_a_time_before_the_policy_existed() -> None:
    daily = parse("0 2 * * *")
    assert daily.catch_up(utc(2025, 1, 7, 5), utc(2025, 1, 7, 3)) is None
    assert daily.catch_up(utc(2025, 1, 7, 5), utc(2025, 1, 7, 2)) == utc(2025, 1, 7, 2)


def test_catch_up_at_the_scheduled_instant() -> None:
    minutely = parse("* * * * *")
    assert minutely.catch_up(utc(2025, 1, 7, 5, 3), utc(2025, 1, 1)) == utc(2025, 1, 7, 5, 3)
    assert minutely.catch_up(utc(2025, 1, 7, 5, 3, 29), utc(2025, 1, 1)) == utc(2025, 1, 7, 5, 3)
    assert minutely.catch_up(utc(2025, 1, 7, 5, 3, 31), utc(2025, 1, 1)) is None
