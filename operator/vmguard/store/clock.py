"""Time as vmguard sees it: wall-clock UTC, a monotonic clock, and waiting.

Everything in ``vmguard.store`` that reads the time takes a :class:`Clock`, so tests
can move time forward (GC compares object ages against hours of grace) without
sleeping, and the backend's timestamps and the writer's lease deadlines stay on the
same time line. The controller, which also waits, takes a :class:`WaitingClock` (the
same protocol plus ``async sleep``; ``vmguard.controller.kube.timing``). The store defines it
because the store is the lowest layer both use. Invariant: ``now()`` is timezone-aware
UTC; ``monotonic()`` never goes back; ``sleep(s)`` returns once ``s`` seconds have passed
on this clock.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...


class WaitingClock(Clock, Protocol):
    """A :class:`Clock` a control loop can also wait on."""

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clocks."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        import asyncio  # only control loops wait: the data path's CLI start skips ~50 ms

        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when told to; shared by a MemoryBackend and a Repository.

    ``sleep(s)`` is such a telling: it moves the clock ``s`` seconds on and returns at
    once (after yielding to the event loop), so a control loop driven by it runs
    through hours of schedule in milliseconds, each step exactly where it asked to wake.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2025, 1, 1, tzinfo=UTC)
        self._monotonic = 1000.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._monotonic

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time only moves forward")
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._monotonic += seconds

    async def sleep(self, seconds: float) -> None:
        import asyncio

        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)
