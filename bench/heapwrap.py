"""Run ``vmguard`` (its CLI, same arguments) with a heap profile written every
``HEAPWRAP_EVERY`` seconds into ``HEAPWRAP_DIR`` — for ``bench/estate.py``'s
``ESTATE_OPERATOR_WRAPPER`` (docs/scale.md). Not part of the test run.

Each dump ``heap-<seconds>.txt`` holds the process's RSS, the number of asyncio tasks, the
20 most numerous object types (``gc.get_objects()``) and, with ``HEAPWRAP_FRAMES`` > 0
(tracemalloc's traceback depth; slows the operator down several times), the top
allocations by traceback and by file, with tracemalloc's peak so far. A thread writes
the dumps: the event loop is not held up by more than the GIL.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import gc
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _malloc() -> str:
    """glibc's view: bytes in arenas (sbrk'd and per-thread), in use, free inside them,
    and mmapped blocks — free-but-held arena memory is fragmentation."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        m = libc.mallinfo2()
    except (OSError, AttributeError):
        return "malloc: mallinfo2 not available"
    mib = 1 << 20
    return (
        f"malloc: arenas={m.arena // mib} MiB in-use={m.uordblks // mib} MiB "
        f"free-in-arenas={m.fordblks // mib} MiB mmapped={m.hblkhd // mib} MiB"
    )


def _smaps() -> str:
    """RSS by kind of mapping: the brk heap (glibc's main arena), anonymous mappings of
    up to 1 MiB (pymalloc's arenas, small mmaps), larger anonymous ones (other threads'
    glibc arenas, big blocks), and files (code, libraries)."""
    rss = collections.Counter[str]()
    kind, size = "", 0
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            size = hi - lo
            path = head[5] if len(head) > 5 else ""
            if path == "[heap]":
                kind = "heap"
            elif path.startswith("/"):
                kind = "files"
            elif path:
                kind = "other"
            else:
                kind = "anon<=1MiB" if size <= (1 << 20) + 4096 else "anon>1MiB"
        elif head[0] == "Rss:":
            rss[kind] += int(head[1])
    return "rss by mapping: " + " ".join(f"{k}={v >> 10} MiB" for k, v in sorted(rss.items()))


def _pymalloc() -> str:
    """pymalloc's arenas (``sys._debugmallocstats``, which writes to fd 2: redirected
    for the call, so a log line written meanwhile lands in the dump, not the log)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as tmp:
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read()
    keep = ("# arenas allocated current", "# bytes in allocated blocks", "# bytes in available")
    picked = [
        ln.split("=")[-1].strip().replace(",", "")
        for ln in text.splitlines()
        if ln.startswith(keep)
    ]
    names = ("arenas", "in-blocks", "free-in-blocks")
    mib = [int(v) if i == 0 else int(v) >> 20 for i, v in enumerate(picked[:3])]
    return "pymalloc: " + " ".join(f"{n}={v}" for n, v in zip(names, mib, strict=False))


def _kopf_memories(objs: list[object]) -> str:
    """kopf's per-object memories: how many, and the bodies they keep for daemons."""
    n, bodies, sampled, size = 0, 0, 0, 0
    for o in objs:
        if type(o).__name__ == "ResourceMemory":
            n += 1
            live = getattr(getattr(o, "daemons_memory", None), "live_fresh_body", None)
            if live is not None:
                bodies += 1
                if sampled < 50:
                    sampled += 1
                    size += deep_size(getattr(live, "_src", {}))
    avg = size // max(sampled, 1)
    return f"kopf: ResourceMemory={n} live bodies={bodies} (≈ {avg} bytes each, deep)"


def deep_size(obj: object, seen: set[int] | None = None) -> int:
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, list | tuple | set | frozenset):
        size += sum(deep_size(v, seen) for v in obj)
    return size


SAMPLES: collections.Counter[str] = collections.Counter()
"""Stacks of the main thread seen by :func:`_sample` (``HEAPWRAP_SAMPLE`` Hz), innermost
last, as ``file:line function`` joined by `` < ``; reset at each dump."""


def _sample(hz: float, main_id: int) -> None:
    """A poor man's sampling profiler of the event loop's thread (py-spy cannot read this
    interpreter's symbols): where the CPU goes, and so who allocates at a peak."""
    while True:
        time.sleep(1 / hz)
        frame = sys._current_frames().get(main_id)
        stack = []
        while frame is not None and len(stack) < 12:
            code = frame.f_code
            stack.append(f"{Path(code.co_filename).name}:{frame.f_lineno} {code.co_name}")
            frame = frame.f_back
        SAMPLES[" < ".join(stack)] += 1


def dump(out: Path, t0: float, frames: int) -> None:
    at = round(time.monotonic() - t0)
    objs = gc.get_objects()
    tasks = sum(1 for o in objs if isinstance(o, asyncio.Task) and not o.done())
    lines = [f"t={at}s rss={_rss_kib() // 1024} MiB tasks={tasks} gc-objects={len(objs)}"]
    lines.append(_malloc())
    lines.append(_smaps())
    lines.append(_pymalloc())
    lines.append(_kopf_memories(objs))
    counts: collections.Counter[str] = collections.Counter()
    sizes: collections.Counter[str] = collections.Counter()
    for o in objs:
        name = type(o).__qualname__
        counts[name] += 1
        sizes[name] += sys.getsizeof(o)
    lines.append("-- tracked objects by type: count, shallow KiB")
    lines += [f"  {n:>9} {sizes[name] >> 10:>8} KiB {name}" for name, n in counts.most_common(25)]
    del objs
    if frames:
        current, peak = tracemalloc.get_traced_memory()
        lines.append(f"traced current={current >> 20} MiB peak={peak >> 20} MiB")
    if frames and os.environ.get("HEAPWRAP_SNAPSHOT"):
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        lines.append("-- by file")
        for stat in snap.statistics("filename")[:25]:
            lines.append(f"  {stat.size >> 10:>8} KiB {stat.count:>8} {stat.traceback}")
        lines.append("-- by traceback")
        for stat in snap.statistics("traceback")[:25]:
            lines.append(f"  {stat.size >> 10:>8} KiB {stat.count:>8}")
            lines += [f"      {f.filename}:{f.lineno}" for f in stat.traceback[-frames:]]
    if SAMPLES:
        taken = SAMPLES.copy()
        SAMPLES.clear()
        lines.append(f"-- main thread's stacks since the last dump ({sum(taken.values())} samples)")
        by_frame: collections.Counter[str] = collections.Counter()
        for stack, n in taken.items():
            for f in set(stack.split(" < ")):
                by_frame[f] += n
        lines += [f"  {n:>6} {f}" for f, n in by_frame.most_common(40)]
        lines.append("-- whole stacks")
        lines += [f"  {n:>6} {st}" for st, n in taken.most_common(15)]
    (out / f"heap-{at:04d}.txt").write_text("\n".join(lines) + "\n")


def main() -> int:
    out = Path(os.environ.get("HEAPWRAP_DIR", "/tmp/heapwrap"))
    out.mkdir(parents=True, exist_ok=True)
    every = float(os.environ.get("HEAPWRAP_EVERY", "20"))
    frames = int(os.environ.get("HEAPWRAP_FRAMES", "0"))
    import vmguard.controller.main  # noqa: F401  (imports before tracing: they are slow under it)

    if frames:
        tracemalloc.start(frames)
    t0 = time.monotonic()

    def loop() -> None:
        while True:
            time.sleep(every)
            try:
                dump(out, t0, frames)
            except Exception as exc:  # a profile that fails must not stop the operator
                print(f"heapwrap: {exc!r}", file=sys.stderr)

    threading.Thread(target=loop, daemon=True).start()
    hz = float(os.environ.get("HEAPWRAP_SAMPLE", "0"))
    if hz:
        main_id = threading.get_ident()
        threading.Thread(target=_sample, args=(hz, main_id), daemon=True).start()
    from vmguard.cli.main import main as cli_main

    sys.argv[0] = "vmguard"
    return int(cli_main() or 0)


if __name__ == "__main__":
    sys.exit(main())
