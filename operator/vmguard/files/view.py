"""A random-access, read-only view of one archived disk, fetched chunk by chunk on demand.

:class:`DiskView` is a seekable binary file over a disk's fixed index (format §5): a
read fetches only the chunks its range touches, through the repository, which checks
every chunk against its id. Filesystem readers (dissect), the NBD export of
``vmguard mount`` and file restores all read through it; nothing ever stages a copy of
the disk. Invariants:

- Bytes returned are the archived disk's bytes or an exception: holes read as zeros
  without touching the repository; a corrupt or missing chunk raises
  :class:`~vmguard.errors.DiskReadError`, naming the archive, the disk, the chunk id and
  the disk offset, and is remembered as bad so it is not fetched again.
- Memory is bounded: decoded chunks live in an LRU of at most ``cache_bytes`` (at least
  two chunks, so a read spanning a chunk boundary never evicts its own first half).
- A chunk is fetched at most once while it is cached or in flight, however many threads
  ask for it (the NBD server reads in parallel).
- Read-ahead only follows evidence: either a *plan* (the exact ranges a file occupies,
  given by :meth:`plan`, fetched a window ahead of the reader) or, without a plan,
  sequential reads crossing into the next chunk (window doubling up to
  ``readahead_chunks``). A random read resets the window, so lookups in filesystem
  metadata cost only the chunks they touch.
- :attr:`stats` counts what the view asked the repository for (chunks and plaintext
  bytes); bytes on the wire are counted by :class:`~vmguard.store.backend.CountingBackend`.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from vmguard.errors import ChunkCorruptError, ChunkMissingError, DiskReadError
from vmguard.store import HOLE, ArchiveManifest, DiskRecord, FixedIndex, Repository

DEFAULT_CACHE_BYTES = 256 << 20
DEFAULT_READAHEAD_CHUNKS = 4
DEFAULT_WORKERS = 4


@dataclass
class ViewStats:
    chunks_fetched: int = 0
    bytes_fetched: int = 0
    """Plaintext bytes of the chunks fetched (what the chunk size makes a read cost)."""
    cache_hits: int = 0
    hole_reads: int = 0


class DiskView(io.RawIOBase):
    """One disk of one archive as a read-only seekable file. Thread-safe for :meth:`pread`."""

    def __init__(
        self,
        repo: Repository,
        manifest: ArchiveManifest,
        disk: DiskRecord | str,
        *,
        index: FixedIndex | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        readahead_chunks: int = DEFAULT_READAHEAD_CHUNKS,
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        super().__init__()
        self.repo = repo
        self.manifest = manifest
        self.disk = manifest.disk(disk) if isinstance(disk, str) else disk
        self.index = index if index is not None else repo.load_index(manifest, self.disk)
        self.chunk_size = self.index.chunk_size
        self.size = self.index.length
        self.stats = ViewStats()
        self._capacity = max(2, cache_bytes // self.chunk_size)
        self._readahead_max = max(0, readahead_chunks)
        self._workers = max(1, workers)
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._inflight: dict[int, Future[bytes]] = {}
        self._bad: dict[int, DiskReadError] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pos = 0
        # sequential-read detection (for the unplanned read-ahead)
        self._last_end = -1
        self._window = 0
        self._plan: list[int] = []
        self._plan_pos: dict[int, int] = {}

    @property
    def archive_id(self) -> str:
        return self.manifest.archive_id

    def __repr__(self) -> str:
        return f"<DiskView {self.archive_id} disk {self.disk.key!r} ({self.size} bytes)>"

    # -- io.RawIOBase --------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"bad whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.pread(self._pos, len(buffer))
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self.size - self._pos)
        data = self.pread(self._pos, size)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        with self._lock:
            self._cache.clear()
        super().close()

    # -- positional reads ------------------------------------------------------------------

    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (fewer at the end of the disk)."""
        if offset < 0 or length < 0:
            raise ValueError(f"bad read: offset={offset} length={length}")
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        first, last = offset // self.chunk_size, (end - 1) // self.chunk_size
        self._before_read(offset, first, last)
        parts = []
        for number in range(first, last + 1):
            start = number * self.chunk_size
            data = self._chunk(number)
            lo = max(offset, start) - start
            hi = min(end, start + self.chunk_size) - start
            parts.append(data[lo:hi] if (lo, hi) != (0, len(data)) else data)
        self._last_end = end
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # -- read-ahead ------------------------------------------------------------------------

    @contextmanager
    def plan(self, extents: Iterable[tuple[int, int]]) -> Iterator[None]:
        """Read ahead exactly these (offset, length) ranges, in order, while in the block.

        The caller is about to read a file whose data lies in ``extents``: the view keeps
        the next ``readahead`` chunks of them in flight and does no other read-ahead, so
        reading one file costs the chunks it occupies and nothing after its end.
        """
        numbers: list[int] = []
        for offset, length in extents:
            if length <= 0:
                continue
            lo = max(0, offset) // self.chunk_size
            hi = (min(self.size, offset + length) - 1) // self.chunk_size
            for n in range(lo, hi + 1):
                if (not numbers or numbers[-1] != n) and self.index[n] != HOLE:
                    numbers.append(n)
        saved = (self._plan, self._plan_pos)
        self._plan = numbers
        self._plan_pos = {n: i for i, n in enumerate(numbers)}
        try:
            if numbers:
                self._prefetch(numbers[: self._ahead()])
            yield
        finally:
            self._plan, self._plan_pos = saved

    def _ahead(self) -> int:
        # Never plan more than half the cache ahead, or prefetches evict each other.
        return max(1, min(max(self._readahead_max, 1), self._capacity // 2))

    def _before_read(self, offset: int, first: int, last: int) -> None:
        if self._plan:
            at = self._plan_pos.get(last)
            if at is not None:
                self._prefetch(self._plan[at + 1 : at + 1 + self._ahead()])
            return
        if self._readahead_max == 0:
            return
        if offset != self._last_end:
            self._window = 0
            return
        if first == (self._last_end - 1) // self.chunk_size and self._window:
            return  # still inside the chunk the window was opened from
        self._window = min(self._readahead_max, max(1, self._window * 2), self._capacity // 2)
        self._prefetch(range(last + 1, min(len(self.index), last + 1 + self._window)))

    def _prefetch(self, numbers: Iterable[int]) -> None:
        for number in numbers:
            if self.index[number] == HOLE:
                continue
            with self._lock:
                if number in self._cache or number in self._inflight or number in self._bad:
                    continue
                future: Future[bytes] = Future()
                self._inflight[number] = future
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="view-fetch")
            self._pool.submit(self._fetch_into, number, future)

    # -- the cache ---------------------------------------------------------------------------

    def _chunk(self, number: int) -> bytes:
        chunk_id = self.index[number]
        if chunk_id == HOLE:
            self.stats.hole_reads += 1
            return bytes(self.index.extent(number)[1])
        with self._lock:
            bad = self._bad.get(number)
            if bad is not None:
                raise bad
            data = self._cache.get(number)
            if data is not None:
                self._cache.move_to_end(number)
                self.stats.cache_hits += 1
                return data
            future = self._inflight.get(number)
            owner = future is None
            if future is None:
                future = Future()
                self._inflight[number] = future
        if owner:
            self._fetch_into(number, future)
        return future.result()

    def _fetch_into(self, number: int, future: Future[bytes]) -> None:
        try:
            data = self._fetch(number)
        except DiskReadError as exc:
            with self._lock:
                self._bad[number] = exc
                self._inflight.pop(number, None)
            future.set_exception(exc)
            return
        except BaseException as exc:  # a transient backend failure: do not remember it
            with self._lock:
                self._inflight.pop(number, None)
            future.set_exception(exc)
            return
        with self._lock:
            self._cache[number] = data
            self._cache.move_to_end(number)
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
            self._inflight.pop(number, None)
            self.stats.chunks_fetched += 1
            self.stats.bytes_fetched += len(data)
        future.set_result(data)

    def _fetch(self, number: int) -> bytes:
        chunk_id = self.index[number]
        offset, length = self.index.extent(number)
        try:
            data = self.repo.read_chunk(chunk_id)
        except (ChunkCorruptError, ChunkMissingError) as exc:
            raise DiskReadError(
                self.archive_id, self.disk.key, number, chunk_id.hex(), offset, str(exc)
            ) from None
        if len(data) != length:
            raise DiskReadError(
                self.archive_id,
                self.disk.key,
                number,
                chunk_id.hex(),
                offset,
                f"chunk holds {len(data)} bytes, the index expects {length}",
            )
        return data

    def allocation(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        """(start, length, is_data) runs covering ``[offset, offset + length)``: holes
        of the index are not data. Answers from the index alone; fetches nothing."""
        end = min(self.size, offset + length)
        runs: list[tuple[int, int, bool]] = []
        pos = offset
        while pos < end:
            number = pos // self.chunk_size
            stop = min(end, (number + 1) * self.chunk_size)
            data = self.index[number] != HOLE
            if runs and runs[-1][2] == data:
                start, _, _ = runs[-1]
                runs[-1] = (start, stop - start, data)
            else:
                runs.append((pos, stop - pos, data))
            pos = stop
        return runs

    def chunk_at(self, offset: int) -> tuple[int, str]:
        """(chunk number, chunk id in hex) of the chunk holding disk byte ``offset``."""
        number = offset // self.chunk_size
        return number, self.index[number].hex()
