"""The heap's trim after work (controller/kube/trim.py): glibc gives freed memory back,
and the operator asks for it only after it did work (docs/scale.md: a start's
transient of ≈ 150 MB stayed in glibc's arenas in 3 of 5 starts)."""

from __future__ import annotations

import asyncio
import datetime as dt
import platform

import pytest

from vmguard.controller.kube import trim
from vmguard.controller.kube.timing import Timing
from vmguard.store.clock import ManualClock


@pytest.mark.unit
def test_glibc_gives_freed_heap_back() -> None:
    assert platform.libc_ver()[0] == "glibc"  # this project's machines and images
    # Blocks above pymalloc's 512 bytes come from glibc's heap; freed, they stay in it.
    blocks = [bytes(2048) + bytes([i % 256]) for i in range(40_000)]
    del blocks
    assert trim.trim() is True


@pytest.mark.unit
def test_it_trims_only_after_work() -> None:
    """Ten looks: the process worked (≥ 1 s of CPU) before three of them; only those
    trim. A quiet operator is left alone."""
    used = iter([0.0, 0.1, 0.2, 1.5, 1.5, 1.6, 4.0, 4.0, 4.1, 4.2, 6.0, 6.0, 6.0, 6.1, 6.1])
    released: list[dt.datetime] = []
    clock = ManualClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))

    def release() -> bool:
        released.append(clock.now())
        return True

    class Never:
        def __bool__(self) -> bool:
            return False

        async def wait(self) -> None:
            await asyncio.Event().wait()

    trims = asyncio.run(
        trim.trim_after_work(
            Timing(clock=clock), Never(), cpu=lambda: next(used), release=release, looks=10
        )
    )
    assert trims == len(released) == 3
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert released == [t0 + dt.timedelta(seconds=trim.EVERY * n) for n in (3, 5, 8)]
