"""Giving freed heap memory back to the system after the operator's bulk work.

glibc keeps what a process freed inside its arenas for the next allocations; after the
operator's start (kopf's first LIST of every kind, the fold of finished runs, the
first passes over 150,000 points) it kept ≈ 150 MB it never used again in 3 of 5
starts (docs/scale.md). ``malloc_trim(0)`` returns the free pages of every arena.

:func:`tune`, called once as the operator starts, fixes glibc's mmap threshold at its
initial 128 KiB. glibc raises the threshold to the size of each mmapped block freed
(up to 32 MiB), so after the first response page of a LIST (megabytes of JSON, read and
decoded) was freed, every later page, decoded string and TLS buffer of that size came
from the heap instead, where it stays as free space between live objects. A fixed
threshold keeps every block of 128 KiB or more in its own mapping, returned to the
system when freed (docs/scale.md, "What the start's peak is made of").

It also caps glibc's arenas at :data:`ARENA_MAX`. glibc gives each new thread that
allocates an arena of its own, up to eight per core, and each keeps its own free memory:
the operator's threads (the Kubernetes client's calls through ``asyncio.to_thread``,
the sweep's decoding, kopf's executor) run Python one at a time under the GIL, so the
extra arenas bought no parallelism, only free memory held in each of them.

Invariants:

- glibc only, looked up once through ctypes; anywhere else (musl, macOS) :func:`trim`
  does nothing and says so (False). It never raises.
- :func:`tune` sets only glibc's ``M_MMAP_THRESHOLD`` (setting it also stops glibc's
  dynamic adjustment of the trim threshold) and ``M_ARENA_MAX``; it is called before
  the operator starts any thread (an arena is given to a thread at its first
  allocation); it never raises, and off glibc it does nothing and says so (False).
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
MMAP_THRESHOLD = 128 * 1024
"""Bytes from which a block gets a mapping of its own: glibc's initial threshold, fixed."""
ARENA_MAX = 2
"""glibc arenas at most: the main thread's and one that the other threads share."""
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
"""mallopt's parameter numbers (glibc's malloc.h)."""

log = logging.getLogger(__name__)
_UNSET: Any = object()
_libc: Any = _UNSET


def _glibc() -> Any:
    """glibc through ctypes, or None (not glibc, or not loadable)."""
    global _libc
    if _libc is _UNSET:
        _libc = None
        if platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                libc.malloc_trim.argtypes = [ctypes.c_size_t]
                libc.malloc_trim.restype = ctypes.c_int
                libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                libc.mallopt.restype = ctypes.c_int
                _libc = libc
            except (OSError, AttributeError) as exc:
                log.debug("glibc's malloc functions not available: %s", exc)
    return _libc


def _function() -> Any:
    libc = _glibc()
    return libc.malloc_trim if libc is not None else None


def tune(mmap_threshold: int = MMAP_THRESHOLD, arena_max: int = ARENA_MAX) -> bool:
    """Fix glibc's mmap threshold and cap its arenas (module docstring): True when glibc
    took both, False when it refused either or this is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    threshold = bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
    return bool(libc.mallopt(_M_ARENA_MAX, arena_max)) and threshold


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
