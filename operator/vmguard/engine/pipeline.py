"""A bounded pipeline stage: apply a function to a stream on worker threads.

Backup and restore both read a stream (chunks from a disk, chunk ids from an index)
and do work per item that is mostly outside the GIL: BLAKE3, zstd and AES-GCM release
it on large buffers, and S3 requests wait on sockets. Threads therefore use every
core. Invariants:

- At most ``depth`` items are in flight (submitted and not yet yielded), so memory is
  bounded by ``depth`` times the item size, never by the length of the stream; the input
  iterator is advanced only when there is room.
- The first failure is raised to the consumer as soon as it is seen; the items not yet
  started are cancelled, and the stage waits for the running ones before returning,
  so no worker outlives the call.
- ``ordered=True`` yields results in input order (restores write sequentially);
  otherwise in completion order (a slow upload does not hold back the others).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes in total) as work completes."""


def default_workers() -> int:
    """Threads per stage: network waits overlap with CPU work, so more than the cores."""
    return max(4, 2 * (os.cpu_count() or 2))


def bounded_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int,
    depth: int,
    ordered: bool,
    name: str = "vmguard-worker",
) -> Generator[R, None, None]:
    """``fn`` over ``items`` on ``workers`` threads with at most ``depth`` in flight."""
    if workers < 1 or depth < 1:
        raise ValueError("workers and depth must be at least 1")
    pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
    queue: deque[Future[R]] = deque()
    running: set[Future[R]] = set()
    source = iter(items)
    exhausted = False
    try:
        while True:
            while not exhausted and len(queue if ordered else running) < depth:
                item = next(source, _END)
                if item is _END:
                    exhausted = True
                    break
                future = pool.submit(fn, item)  # type: ignore[arg-type]
                (queue.append if ordered else running.add)(future)
            if ordered:
                if not queue:
                    return
                yield queue.popleft().result()
            else:
                if not running:
                    return
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    running.discard(future)
                    yield future.result()
    finally:
        for future in (*queue, *running):
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


_END = object()
