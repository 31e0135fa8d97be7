"""The restore engine: one disk of an archive into a block sink.

Chunks are fetched, decrypted, decompressed and hashed by worker threads
(:meth:`Repository.read_chunk` verifies each against its id) and written in disk order
by the calling thread, so the sink sees sequential writes and needs no locking.
Invariants:

- Only verified bytes are ever written. A chunk that is missing or fails its check
  stops the restore with :class:`RestoreFailed`, naming the chunk and its offset; no
  byte of it and nothing after it is written. The target is then incomplete, and the
  error says so: it never silently holds wrong data.
- Holes stay holes: hole entries are not written. When the target may hold old data
  (``zero_holes``), they are zeroed with the sink's ``zero``, which punches holes
  where the target can.
- Memory is bounded by the pipeline depth: at most ``depth`` chunks are in flight.
- A chunk used at many offsets (a repeated block) is fetched once per run of equal
  neighbours, not once per offset.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from vmguard.datamover.pipeline import Progress, bounded_map, default_workers
from vmguard.errors import ChunkCorruptError, ChunkMissingError, PermanentError
from vmguard.store import HOLE, ArchiveManifest, FixedIndex, Repository
from vmguard.transport.extents import BlockSink


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
    chunks_read: int
    holes: int


def _runs(index: FixedIndex) -> Iterator[tuple[bytes, int, int]]:
    """(chunk id, first chunk number, count) of runs of equal neighbouring entries."""
    first, current = 0, None
    for number, chunk_id in enumerate(index):
        if chunk_id != current:
            if current is not None:
                yield current, first, number - first
            first, current = number, chunk_id
    if current is not None:
        yield current, first, len(index) - first


def restore_disk(
    repo: Repository,
    manifest: ArchiveManifest,
    disk_key: str,
    sink: BlockSink,
    *,
    zero_holes: bool = False,
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

    def fetch(run: tuple[bytes, int, int]) -> tuple[bytes, int, int, bytes | None]:
        chunk_id, first, count = run
        if chunk_id == HOLE:
            return chunk_id, first, count, None
        try:
            return chunk_id, first, count, repo.read_chunk(chunk_id)
        except (ChunkCorruptError, ChunkMissingError) as exc:
            offset = first * index.chunk_size
            raise RestoreFailed(
                f"restore of disk {disk_key!r} of archive {manifest.archive_id} stopped at"
                f" offset {offset}: {exc}; nothing from this offset on was written, the"
                " target is incomplete",
                chunk_id=chunk_id.hex(),
                offset=offset,
            ) from exc

    written = chunks = holes = done = 0
    results = bounded_map(
        fetch, _runs(index), workers=workers, depth=depth, ordered=True, name="restore"
    )
    with contextlib.closing(results):
        for chunk_id, first, count, data in results:
            offset, _ = index.extent(first)
            end = min((first + count) * index.chunk_size, index.length)
            if data is None:
                holes += count
                if zero_holes:
                    sink.zero(offset, end - offset)
            else:
                chunks += 1
                for number in range(first, first + count):
                    at, length = index.extent(number)
                    if len(data) != length:
                        raise RestoreFailed(
                            f"chunk {chunk_id.hex()} holds {len(data)} bytes where the index"
                            f" of archive {manifest.archive_id} needs {length}",
                            chunk_id=chunk_id.hex(),
                            offset=at,
                        )
                    sink.write(at, data)
                    written += length
            done += end - offset
            if progress is not None:
                progress(done, index.length)
    sink.flush()
    return RestoreStats(index.length, written, chunks, holes)
