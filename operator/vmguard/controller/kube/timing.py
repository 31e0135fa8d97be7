"""The controller's time: one injected clock, and the pace of its schedules and intervals.

Every handler and loop of the controller reads the time and waits through the
:class:`Timing` in kopf's memo (``memo.timing``), handed down explicitly from
:func:`vmguard.cli.main` (``OperatorOptions.timing``). Production runs with
:data:`REAL_TIME`; the lab's entry module (``python -m vmguard_lab.run --speedup N``,
docs/lab.md) builds a faster one, unit tests one over a
:class:`~vmguard.store.clock.ManualClock`. Nothing here reads the environment and nothing
is global: a Timing other than :data:`REAL_TIME` exists only because the caller of
``main`` made it.

The clock is the store's protocol (:class:`~vmguard.store.clock.WaitingClock`: ``now()``
aware UTC, ``monotonic()``, ``async sleep(s)``), so a repository opened by the
controller and the controller itself can share one.

**Speed-up** (``speedup`` > 1, the lab only) makes schedules and intervals run
``speedup`` times faster while ``now()`` stays the clock's. Two rules keep the time lines
apart, so that no age is ever computed across them:

- **Intervals** the controller waits of its own accord (a vCenter's ``sweepInterval``
  and the retry after a failed sweep, the status refresh of a policy, a repository's
  look interval, the catalog interval) are divided by it: :meth:`Timing.interval`.
  The sweep writes the interval it really waits (``nextSweepTime``), and the fail-safe's
  back-off is counted in it.
- **Cron schedules** (policies, GC, verify) are evaluated on a *schedule line*,
  ``line(t) = LINE_EPOCH + (t - LINE_EPOCH) * speedup``: a cron minute lasts
  ``60 / speedup`` real seconds and every schedule rule keeps its proportions (the
  catch-up half-gap, the jitter cap, the default RPO of twice the longest gap).
  Scheduled instants, the run labels and backup names made from them, and a policy's
  ``lastScheduleTime``/``nextScheduleTime`` are on that line (in the lab they read as
  dates years ahead). Every other timestamp (creation, start, completion, transition,
  sweep times; every age in the metrics) is the clock's. A real timestamp that meets a
  schedule (a policy's creation for the catch-up rule, the end of the last GC) is
  moved onto the line with :meth:`Timing.on_line`; an instant on the line is waited
  for after :meth:`Timing.off_line`; a duration judged against the schedule and then
  against real completions (the RPO) is divided with :meth:`Timing.interval`.

With ``speedup == 1`` all three are the identity: production has one time line.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

from vmguard.store.clock import SystemClock, WaitingClock

LINE_EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
"""Where the schedule line meets the clock (any fixed instant would do)."""


class Waitable(Protocol):
    """What a wait can be cut short by: an :class:`asyncio.Event`, kopf's ``stopped``."""

    def wait(self) -> Awaitable[object]: ...


@dataclass(frozen=True)
class Timing:
    """The clock the controller reads and waits on, and how fast its schedules run."""

    clock: WaitingClock = field(default_factory=SystemClock)
    speedup: float = 1.0

    def __post_init__(self) -> None:
        if not self.speedup >= 1.0:
            raise ValueError(f"speedup must be at least 1, not {self.speedup}")

    def now(self) -> dt.datetime:
        return self.clock.now()

    def monotonic(self) -> float:
        return self.clock.monotonic()

    def interval(self, seconds: float) -> float:
        """An interval the controller waits of its own accord, at this pace."""
        return seconds / self.speedup

    def on_line(self, at: dt.datetime) -> dt.datetime:
        """The clock's instant ``at`` on the schedule line."""
        if self.speedup == 1.0:
            return at
        return LINE_EPOCH + (at - LINE_EPOCH) * self.speedup

    def off_line(self, at: dt.datetime) -> dt.datetime:
        """The clock's instant of the schedule line's instant ``at``."""
        if self.speedup == 1.0:
            return at
        return LINE_EPOCH + (at - LINE_EPOCH) / self.speedup

    def line_now(self) -> dt.datetime:
        return self.on_line(self.now())

    async def wait(self, seconds: float, *until: Waitable) -> None:
        """Sleep ``seconds`` on the clock, or less when any of ``until`` fires first."""
        sleeper = asyncio.ensure_future(self.clock.sleep(max(0.0, seconds)))
        waiters = {sleeper, *(asyncio.ensure_future(u.wait()) for u in until)}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waiters:
                task.cancel()


REAL_TIME = Timing()
"""What production runs with: the system clock at its own pace."""
