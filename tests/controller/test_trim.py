"""The heap's trim after work (controller/kube/trim.py): glibc gives freed memory back,
and the operator asks for it only after it did work (docs/scale.md: a start's
transient of ≈ 150 MB stayed in glibc's arenas in 3 of 5 starts)."""

from __future__ import annotations

import asyncio
import datetime as dt
import platform
import subprocess
import sys

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


_MAPPED_BLOCKS = """
import ctypes, sys
from vmguard.controller.kube import trim

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "tuned":
    assert trim.tune() is True
page = bytearray(8 << 20)  # a LIST's response page, read and freed
del page
before = libc.mallinfo2().hblks
blocks = [bytearray(300 << 10) for _ in range(20)]
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.unit
@pytest.mark.parametrize(("how", "mapped"), [("untuned", 0), ("tuned", 20)])
def test_large_blocks_keep_mappings_of_their_own_after_a_large_one_was_freed(
    how: str, mapped: int
) -> None:
    """glibc raises its mmap threshold to each mapped block freed: after one 8 MiB page,
    20 blocks of 300 KiB come from the heap (0 mappings), where they stay as free space
    once freed. Tuned, the threshold stays at 128 KiB: 20 mappings, each returned to the
    system when freed. A fresh interpreter each: the threshold is process-wide."""
    assert platform.libc_ver()[0] == "glibc"
    got = subprocess.run(
        [sys.executable, "-c", _MAPPED_BLOCKS, how], capture_output=True, text=True, check=True
    )
    assert int(got.stdout) == mapped


_ARENAS = """
import ctypes, os, sys, tempfile, threading
from vmguard.controller.kube import trim

libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "tuned":
    assert trim.tune() is True
held, ready = [], threading.Barrier(6)

def work():
    ready.wait()  # all six alive at once: none can inherit another's arena
    held.append([bytearray(4096) for _ in range(100)])

threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
fd, path = tempfile.mkstemp()
os.close(fd)
fp = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, fp)
libc.fclose(fp)
print(open(path).read().count("<heap nr="))
os.unlink(path)
"""


@pytest.mark.unit
@pytest.mark.parametrize(("how", "arenas"), [("untuned", 7), ("tuned", trim.ARENA_MAX)])
def test_threads_share_the_capped_arenas(how: str, arenas: int) -> None:
    """Six threads that allocate at once: glibc gives each an arena of its own (seven
    with the main thread's), each keeping its own free memory; tuned, they share
    :data:`trim.ARENA_MAX`. A fresh interpreter each: the cap is process-wide."""
    assert platform.libc_ver()[0] == "glibc"
    got = subprocess.run(
        [sys.executable, "-c", _ARENAS, how], capture_output=True, text=True, check=True
    )
    assert int(got.stdout) == arenas
