"""The restore engine: one disk of an archive into a block sink.

Chunks are fetched, decrypted, decompressed and hashed by worker threads
(:meth:`Repository.read_chunk` verifies each against its id), which also find their zero
runs, and written in disk order by the calling thread, so the sink sees sequential
writes and needs no locking. That thread is the narrowest point of a restore (profiled
in docs/benchmarks.md), so it only submits writes: chunks and views of their data
pieces go to the sink uncopied.
Invariants:

- Only verified bytes are ever written. A chunk that is missing or fails its check
  stops the restore with :class:`RestoreFailed`, naming the chunk and its offset; no
  byte of it and nothing after it is written. The target is then incomplete, and the
  error says so: it never silently holds wrong data.
- Holes stay holes: hole entries are not written, and neither are runs of zeroes
  inside a chunk (at :data:`SPARSE_BLOCK` granularity), so a thin target stays thin.
  When the target may hold old data (``zero_holes``), both are zeroed with the sink's
  ``zero``, which punches holes where the target can.
- ``only`` restricts the restore to the chunks that intersect the given extents (an
  in-place restore of what changed since the backup); nothing else is touched.
- Memory is bounded by the pipeline depth: at most ``depth`` chunks are in flight.
- A chunk used at many offsets (a repeated block) is fetched once per run of equal
  neighbours, not once per offset.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeAlias

from vmguard.engine.pipeline import Progress, bounded_map, default_workers
from vmguard.engine.plan import chunks_touching
from vmguard.errors import ChunkCorruptError, ChunkMissingError, PermanentError
from vmguard.store import HOLE, ArchiveManifest, FixedIndex, Repository
from vmguard.transport.extents import BlockSink, Extent

SPARSE_BLOCK = 64 * 1024
"""Runs of zeroes inside a chunk are skipped (or zeroed) at this granularity."""


class RestoreFailed(PermanentError):
    """A chunk could not be read or failed verification; the target is incomplete."""

    def __init__(self, message: str, *, chunk_id: str, offset: int) -> None:
        super().__init__(message)
        self.chunk_id = chunk_id
        self.offset = offset


@dataclass(frozen=True)
class RestoreStats:
    length: int
    bytes_written: int
    """Bytes of data written (zero runs skipped or zeroed are not counted)."""
    chunks_read: int
    """Chunks fetched from the repository (once per run of equal neighbours)."""
    holes: int
    """Hole entries restored (zeroed when ``zero_holes``, else left alone)."""
    chunks_written: int = 0
    """Data entries restored, one per chunk of the disk."""
    chunks_zeroed: int = 0
    """Hole entries zeroed in the target (``zero_holes`` only)."""


def _runs(index: FixedIndex, selected: list[int] | None) -> Iterator[tuple[bytes, int, int]]:
    """(chunk id, first chunk number, count) of runs of equal neighbouring entries.

    With ``selected`` (sorted chunk numbers), only those entries, and a run never spans
    a number that is not selected.
    """
    numbers = range(len(index)) if selected is None else selected
    first, previous, current = 0, -1, None
    for number in numbers:
        chunk_id = index[number]
        if chunk_id != current or number != previous + 1:
            if current is not None:
                yield current, first, previous + 1 - first
            first, current = number, chunk_id
        previous = number
    if current is not None:
        yield current, first, previous + 1 - first


Pieces: TypeAlias = list[tuple[int, int, bool]]


_EMPTY = bytes(SPARSE_BLOCK)


def _data_runs(data: bytes) -> Pieces:
    """(start, end, is data) pieces of ``data`` at :data:`SPARSE_BLOCK` granularity."""
    pieces: Pieces = []
    for pos in range(0, len(data), SPARSE_BLOCK):
        end = min(pos + SPARSE_BLOCK, len(data))
        # startswith compares in place with memcmp, stopping at the first non-zero byte; a
        # slice would copy the block first (the whole chunk, under the GIL), and a
        # memoryview compares item by item (30x slower).
        empty = _EMPTY if end - pos == SPARSE_BLOCK else _EMPTY[: end - pos]
        is_data = not data.startswith(empty, pos)
        if pieces and pieces[-1][2] == is_data:
            pieces[-1] = (pieces[-1][0], end, is_data)
        else:
            pieces.append((pos, end, is_data))
    return pieces


def restore_disk(
    repo: Repository,
    manifest: ArchiveManifest,
    disk_key: str,
    sink: BlockSink,
    *,
    zero_holes: bool = False,
    only: list[Extent] | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
    depth: int | None = None,
) -> RestoreStats:
    """Write disk ``disk_key`` of ``manifest`` into ``sink``; see the module docstring."""
    index = repo.load_index(manifest, disk_key)
    if sink.size < index.length:
        raise PermanentError(
            f"the target holds {sink.size} bytes, disk {disk_key!r} of archive"
            f" {manifest.archive_id} needs {index.length}"
        )
    workers = workers or default_workers()
    depth = depth or workers + 2
    selected = None if only is None else chunks_touching(only, index.chunk_size, index.length)
    goal = index.length
    if selected is not None:
        goal = sum(index.extent(number)[1] for number in selected)

    def fetch(run: tuple[bytes, int, int]) -> tuple[bytes, int, int, bytes | None, Pieces]:
        chunk_id, first, count = run
        if chunk_id == HOLE:
            return chunk_id, first, count, None, []
        try:
            data = repo.read_chunk(chunk_id)
            # The zero-run scan is a pass over the whole chunk: here on the workers,
            # not on the thread that writes for all of them.
            return chunk_id, first, count, data, _data_runs(data)
        except (ChunkCorruptError, ChunkMissingError) as exc:
            offset = first * index.chunk_size
            raise RestoreFailed(
                f"restore of disk {disk_key!r} of archive {manifest.archive_id} stopped at"
                f" offset {offset}: {exc}; nothing from this offset on was written, the"
                " target is incomplete",
                chunk_id=chunk_id.hex(),
                offset=offset,
            ) from exc

    written = chunks = entries = holes = done = 0
    results = bounded_map(
        fetch,
        _runs(index, selected),
        workers=workers,
        depth=depth,
        ordered=True,
        name="restore",
    )
    with contextlib.closing(results):
        for chunk_id, first, count, data, pieces in results:
            offset, _ = index.extent(first)
            end = min((first + count) * index.chunk_size, index.length)
            if data is None:
                holes += count
                if zero_holes:
                    sink.zero(offset, end - offset)
            else:
                chunks += 1
                entries += count
                for number in range(first, first + count):
                    at, length = index.extent(number)
                    if len(data) != length:
                        raise RestoreFailed(
                            f"chunk {chunk_id.hex()} holds {len(data)} bytes where the index"
                            f" of archive {manifest.archive_id} needs {length}",
                            chunk_id=chunk_id.hex(),
                            offset=at,
                        )
                    written += _write_sparse(sink, at, data, pieces, zero_holes)
            done += end - offset
            if progress is not None:
                progress(done, goal)
    sink.flush()
    return RestoreStats(
        index.length,
        written,
        chunks,
        holes,
        chunks_written=entries,
        chunks_zeroed=holes if zero_holes else 0,
    )


def _write_sparse(
    sink: BlockSink,
    at: int,
    data: bytes,
    pieces: Pieces,
    zero_holes: bool,
) -> int:
    """Write the data pieces of one chunk at ``at``; zero the others only if asked.

    Pieces are views of ``data``, never copies: the sink may send them as they are.
    """
    if len(pieces) == 1 and pieces[0][2]:
        sink.write(at, data)  # the common case: no zero run
        return len(data)
    view = memoryview(data)
    written = 0
    for start, end, is_data in pieces:
        if is_data:
            sink.write(at + start, view[start:end])
            written += end - start
        elif zero_holes:
            sink.zero(at + start, end - start)
    return written
