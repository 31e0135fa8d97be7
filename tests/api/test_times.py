"""API times and spec durations: one formatter and one parser of each (vmguard.api.times)."""

from __future__ import annotations

import datetime as dt

import pytest

from vmguard.api import format_time, parse_duration, parse_time
from vmguard.errors import ConfigError

pytestmark = pytest.mark.unit

UTC = dt.UTC


def test_format_time_is_rfc3339_utc_seconds() -> None:
    berlin = dt.timezone(dt.timedelta(hours=1))
    at = dt.datetime(2025, 1, 7, 3, 0, 5, 999_999, tzinfo=berlin)
    assert format_time(at) == "2025-01-07T02:00:05Z"


def test_format_time_refuses_a_naive_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_time(dt.datetime(2025, 1, 7, 2, 0))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-01-07T02:00:05Z", dt.datetime(2025, 1, 7, 2, 0, 5, tzinfo=UTC)),
        # vSphere's createTime, isoformat()-ed: an offset and microseconds.
        ("2025-01-07T03:00:05.250000+01:00", dt.datetime(2025, 1, 7, 2, 0, 5, 250000, tzinfo=UTC)),
        # No offset: the API never writes one without, so it is UTC.
        ("2025-01-07T02:00:05", dt.datetime(2025, 1, 7, 2, 0, 5, tzinfo=UTC)),
    ],
)
def test_parse_time_reads_every_shape_as_aware_utc(text: str, expected: dt.datetime) -> None:
    got = parse_time(text)
    assert got == expected
    assert got is not None and got.utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize("text", [None, "", "yesterday", "2025-13-01T00:00:00Z"])
def test_parse_time_gives_none_for_absent_or_unreadable(text: str | None) -> None:
    assert parse_time(text) is None


def test_format_and_parse_round_trip() -> None:
    at = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_time(format_time(at)) == at


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90.0), ("5m", 300.0), ("1h30m", 5400.0), ("2h", 7200.0), ("1d", 86400.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text, 0.0) == seconds


def test_parse_duration_default_when_absent() -> None:
    assert parse_duration(None, 42.0) == 42.0
    assert parse_duration("", 7.0) == 7.0


@pytest.mark.parametrize("text", ["5", "m5", "5x", "1.2.3s", "-5m"])
def test_parse_duration_rejects_bad_input_with_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid duration"):
        parse_duration(text, 0.0)
