"""Giving freed heap memory back to the system after the operator's bulk work.

glibc keeps what a process freed inside its arenas for the next allocations; after the
operator's start (kopf's first LIST of every kind, the fold of finished runs, the
first passes over 150,000 points) it kept ≈ 150 MB it never used again in 3 of 5
starts (docs/scale.md). ``malloc_trim(0)`` returns the free pages of every arena.

Invariants:

- glibc only, looked up once through ctypes; anywhere else (musl, macOS) :func:`trim`
  does nothing and says so (False). It never raises.
- :func:`trim_after_work` trims only after the process has done work since its last
  look (at least ``after_cpu`` seconds of CPU): a quiet operator is left alone, and a
  trim (a walk over the arenas' free lists) is never paid for nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
import resource
from collections.abc import Callable
from typing import Any

from vmguard.controller.kube.timing import Timing

EVERY = 30.0
"""Seconds between looks (an interval on the controller's clock)."""
AFTER_CPU = 1.0
"""CPU seconds of work since the last look that make the next look trim."""

log = logging.getLogger(__name__)
_UNSET: Any = object()
_malloc_trim: Any = _UNSET


def _function() -> Any:
    global _malloc_trim
    if _malloc_trim is _UNSET:
        _malloc_trim = None
        if platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _malloc_trim = libc.malloc_trim
                _malloc_trim.argtypes = [ctypes.c_size_t]
                _malloc_trim.restype = ctypes.c_int
            except (OSError, AttributeError) as exc:
                log.debug("malloc_trim not available: %s", exc)
                _malloc_trim = None
    return _malloc_trim


def trim() -> bool:
    """``malloc_trim(0)``: True when glibc gave memory back, False when it had none to
    give or this is not glibc."""
    fn = _function()
    return bool(fn(0)) if fn is not None else False


def process_cpu() -> float:
    """CPU seconds this process has used (user and system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def trim_after_work(
    timing: Timing,
    stopped: Any,
    *,
    every: float = EVERY,
    after_cpu: float = AFTER_CPU,
    cpu: Callable[[], float] = process_cpu,
    release: Callable[[], bool] = trim,
    looks: int | None = None,
) -> int:
    """Every ``every`` seconds, trim if the process used ``after_cpu`` seconds of CPU
    since the last look; ``looks`` ends it after that many (tests). Returns the trims."""
    trims, seen, n = 0, cpu(), 0
    while not stopped and (looks is None or n < looks):
        await timing.wait(timing.interval(every), stopped)
        n += 1
        now = cpu()
        if now - seen >= after_cpu:
            release()
            trims += 1
            # The trim's own CPU is not work to trim after.
            now = cpu()
        seen = now
    return trims
