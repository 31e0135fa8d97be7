"""Time as the repository engine sees it: wall-clock UTC and a monotonic clock.

Everything in ``vmguard.store`` that reads the time takes a :class:`Clock`, so tests
can move time forward (GC compares object ages against hours of grace) without
sleeping, and the backend's timestamps and the writer's lease deadlines stay on the
same time line. Invariant: ``now()`` is timezone-aware UTC; ``monotonic()`` never goes
back.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real clocks."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to; shared by a MemoryBackend and a Repository."""

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
