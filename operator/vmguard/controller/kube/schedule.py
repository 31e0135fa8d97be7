"""When a policy runs: cron lines in a time zone, jitter, and the catch-up rule. Pure.

The dialect is exactly what the CRD admits (``vmguard.crds.fields.CRON``, checked again
here so a line that slipped past admission is refused the same way): five fields, names,
``?`` in the day fields, steps, lists, ranges, day of week 0-7, the ``@hourly`` …
``@annually`` macros, any case. Evaluation is delegated to cronsim, which follows Debian
cron; what CEL cannot see is checked here and raised as :class:`ScheduleError` with a
reason: a range that runs downwards (``30-10``), a date that never occurs
(``0 0 31 2 *``), a time zone the zone database does not know.

Time is always an aware UTC ``datetime`` in and out; the zone only decides which
instants a cron line names. Daylight saving time (docs/resource-model.md, "Schedules"):

- **Skipped times** (spring forward): a run whose wall-clock time does not exist
  happens once, at the first instant after the gap (``30 2 * * *`` in Europe/Berlin on
  the last Sunday of March runs at 03:00 CEST). Several skipped times collapse into
  that one run.
- **Repeated times** (fall back): a line with a fixed minute and hour runs once, at the
  first occurrence (``30 2 * * *`` runs at 02:30 CEST, not again at 02:30 CET). A line
  whose minute or hour field starts with ``*`` (``*/15 * * * *``, ``0 * * * *``) follows
  elapsed time and runs in both passes: it promises a cadence, and skipping an hour
  would push its VMs past a default RPO of twice the interval.
- Both are Debian cron's rules. So is one more: when neither day field starts with
  ``*`` (``?`` counts as ``*``) a day matching either one runs; otherwise both must
  match.

**Jitter** spreads a run's VMs: each VM starts at ``scheduled + offset``, the offset a
hash of the policy's UID and the VM's instance UUID scaled into ``[0, jitter)``, so it
is the same after every restart and different from VM to VM.

**Catch-up** (a run missed while the operator was down, or woken late): the most recent
scheduled time ``T`` before now is run once, now, if the operator is still in the first
half of the gap between ``T`` and the next scheduled time, and the policy already
existed at ``T``. Older missed times are never run: one run, never one per missed slot.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from vmguard.crds.fields import CRON
from vmguard.errors import ScheduleError

UTC = dt.UTC

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_NAMES = {3: {m: i + 1 for i, m in enumerate(_MONTHS)}, 4: {d: i for i, d in enumerate(_WEEKDAYS)}}
_CRON = re.compile(CRON)

# Interval statistics walk the naive schedule from a fixed Monday, so they are the same
# on every machine and every day; up to this many runs or this many years.
_STATS_FROM = dt.datetime(2001, 1, 1)
_STATS_RUNS = 2000
_STATS_YEARS = 30
# How far back previous() looks before it gives up (cronsim gives up after 50 years).
_LOOKBACK_LIMIT = dt.timedelta(days=366 * 50)


@dataclass(frozen=True)
class Schedule:
    """A validated cron line in a zone; build it with :func:`parse`."""

    cron: str
    zone: ZoneInfo
    expr: str
    """The line as cronsim reads it: macros expanded, ``?`` as ``*``, upper case."""

    def _forward(self, after: dt.datetime) -> Iterator[dt.datetime]:
        """Scheduled instants strictly after ``after``, strictly increasing, in UTC."""
        it = CronSim(self.expr, after.astimezone(self.zone))
        last = after
        while True:
            try:
                local = next(it)
            except StopIteration:
                return
            at = local.astimezone(UTC)
            # A fixed-time line walks wall-clock time: started inside the second pass
            # of a repeated hour, its first answers lie before ``after``; and gap times
            # collapse onto one instant. Either way: not a new run.
            if at > last:
                last = at
                yield at

    def next_after(self, t: dt.datetime) -> dt.datetime | None:
        """The first scheduled instant after ``t`` (None: none in the next 50 years)."""
        return next(self._forward(t), None)

    def previous(self, t: dt.datetime) -> dt.datetime | None:
        """The last scheduled instant at or before ``t``."""
        window = dt.timedelta(hours=1)
        while window <= _LOOKBACK_LIMIT * 4:
            last = None
            for at in self._forward(t - window):
                if at > t:
                    break
                last = at
            if last is not None:
                return last
            window *= 4
        return None

    def gaps(self) -> tuple[dt.timedelta, dt.timedelta]:
        """(shortest, longest) time between consecutive runs, on the wall clock."""
        return _gaps(self.expr)

    def default_rpo(self) -> dt.timedelta:
        """Twice the longest gap: one run may be missed before a VM is outside its RPO."""
        return 2 * self.gaps()[1]

    def jitter_problem(self, jitter: float) -> str | None:
        """Why ``jitter`` seconds do not fit between two runs, or None when they do."""
        shortest = self.gaps()[0]
        if jitter > shortest.total_seconds():
            return (
                f"jitter {_human(dt.timedelta(seconds=jitter))} is longer than the "
                f"{_human(shortest)} between two runs of {self.cron!r}: a VM's backup "
                f"would start after the next run; jitter is capped at {_human(shortest)}"
            )
        return None

    def catch_up(self, now: dt.datetime, existed_since: dt.datetime) -> dt.datetime | None:
        """The missed scheduled time to run now, or None (see the module docstring)."""
        last = self.previous(now)
        if last is None or last < existed_since:
            return None
        following = self.next_after(now)
        if following is None:
            return None
        return last if now - last < (following - last) / 2 else None


def parse(cron: str, time_zone: str | None = "UTC") -> Schedule:
    """A :class:`Schedule`, or :class:`ScheduleError` saying what is wrong."""
    text = cron.strip()
    if not _CRON.match(text):
        raise ScheduleError(
            "InvalidCron",
            f"{cron!r} is not a valid cron schedule: expected minute hour day-of-month "
            "month day-of-week, or one of @hourly, @daily, @weekly, @monthly, @yearly",
        )
    fields = (MACROS.get(text.lower()) or text).lower().split()
    fields = [f.replace("?", "*") for f in fields]
    for index, field in enumerate(fields):
        _check_ranges(index, field)
    expr = " ".join(fields).upper()
    try:
        CronSim(expr, _STATS_FROM)
        next(CronSim(expr, _STATS_FROM))
    except (CronSimError, StopIteration):
        raise ScheduleError(
            "NeverOccurs",
            f"{cron!r} names a date that never occurs (no selected month has that day)",
        ) from None
    return Schedule(cron=cron, zone=zone(time_zone or "UTC"), expr=expr)


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            "UnknownTimeZone",
            f"time zone {name!r} is not in the time zone database: use an IANA name "
            "such as UTC or Europe/Berlin",
        ) from None


def _check_ranges(index: int, field: str) -> None:
    for item in field.split(","):
        span = item.split("/", 1)[0]
        if "-" not in span:
            continue
        low, high = (_value(index, v) for v in span.split("-", 1))
        if low > high:
            raise ScheduleError(
                "UpwardRange",
                f"range {span!r} in the {FIELDS[index]} field runs downwards: write it "
                "upwards, or as a list that wraps around (e.g. 22-23,0-2 or sat,sun)",
            )


def _value(index: int, text: str) -> int:
    # Day-of-week 7 is Sunday, but a range ending in 7 (fri-7) still runs upwards.
    return int(text) if text.isdigit() else _NAMES[index][text]


@lru_cache(maxsize=256)
def _gaps(expr: str) -> tuple[dt.timedelta, dt.timedelta]:
    it = CronSim(expr, _STATS_FROM - dt.timedelta(seconds=1))
    end = _STATS_FROM.replace(year=_STATS_FROM.year + _STATS_YEARS)
    previous = next(it)
    shortest = longest = None
    for _ in range(_STATS_RUNS):
        try:
            at = next(it)
        except StopIteration:
            break
        gap = at - previous
        shortest = gap if shortest is None else min(shortest, gap)
        longest = gap if longest is None else max(longest, gap)
        previous = at
        if at > end:
            break
    if shortest is None or longest is None:  # one run in 30 years: treat as yearly
        return dt.timedelta(days=365), dt.timedelta(days=365 * _STATS_YEARS)
    return shortest, longest


def jitter_offset(jitter: float, policy_uid: str, vm_uuid: str) -> float:
    """Seconds in ``[0, jitter)``: stable per (policy UID, VM), spread across VMs."""
    if jitter <= 0:
        return 0.0
    digest = hashlib.sha256(f"{policy_uid}/{vm_uuid}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return int(fraction * jitter * 1000) / 1000


def _human(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 86400 == 0 and seconds:
        return f"{seconds // 86400}d"
    if seconds % 3600 == 0 and seconds:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0 and seconds:
        return f"{seconds // 60}m"
    return f"{seconds}s"
