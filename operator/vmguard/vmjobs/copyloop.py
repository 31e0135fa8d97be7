"""A thin chunk loop between block sources/sinks and the repository.

STAND-IN for the data mover's engine (``vmguard.datamover``, built in parallel): it
does the least a correct backup and restore need, sequentially, so that the vSphere
side can be proven end to end. At merge it is replaced by the engine, which keeps the
same inputs: a source, the disk's chain plan (changed areas or unknown), a writer.

Rules it keeps (BRIEF §5):

- incremental (areas known, parent index of the same length): read only the chunks
  that intersect a changed area; every other chunk is the parent's, unless the
  repository marked it corrupt (then it is read again);
- full or full-scan (areas unknown): read every chunk that intersects an allocated
  range of the source; the rest are holes. ``put_chunk`` uploads only chunks the
  repository lacks, so a full-scan after a broken chain costs reads, not uploads;
- restore: write only non-hole chunks (a new thin disk stays thin); for an overwrite,
  holes over existing data are zeroed. Inside a chunk, runs of zeroes are skipped at
  :data:`SPARSE_BLOCK` granularity (or zeroed, when overwriting).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from vmguard.store import HOLE, ArchiveManifest, FixedIndex, Repository, TransferStats
from vmguard.store.writer import BackupWriter
from vmguard.transport.extents import BlockSink, BlockSource, Extent, normalise

Area = tuple[int, int]


def chunks_touching(areas: Iterable[Area], chunk_size: int, length: int) -> list[int]:
    """Numbers of the chunks that intersect any of ``areas`` (sorted, unique)."""
    out: set[int] = set()
    for start, size in areas:
        end = min(start + size, length)
        if end <= start:
            continue
        out.update(range(start // chunk_size, (end - 1) // chunk_size + 1))
    return sorted(out)


def _runs(numbers: list[int], chunk_size: int, length: int) -> list[Extent]:
    extents = [Extent(n * chunk_size, min(chunk_size, length - n * chunk_size)) for n in numbers]
    return normalise(extents)


@dataclass(frozen=True)
class DiskResult:
    mode: str
    """``full``, ``incremental`` or ``full-scan``."""
    stats: TransferStats
    chunks_read: int


def backup_disk(
    writer: BackupWriter,
    source: BlockSource,
    key: str,
    label: str,
    areas: list[Area] | None,
    *,
    cbt: object = None,
    first: bool = False,
) -> DiskResult:
    """Store one disk; ``areas`` None means unknown (full or full-scan)."""
    size = writer.repo.chunk_size
    length = source.size
    index = FixedIndex(size, length)
    parent = writer.parent_index(key)
    if areas is not None and parent is not None and parent.length == length:
        mode = "incremental"
        wanted = set(chunks_touching(areas, size, length))
        for n in range(len(index)):
            if n in wanted:
                continue
            carried = parent[n]
            if writer.needs_upload(carried):
                wanted.add(n)
            else:
                index[n] = carried
        to_read = sorted(wanted)
    else:
        mode = "full" if first or parent is None else "full-scan"
        allocated = source.allocated()
        to_read = chunks_touching(((e.offset, e.length) for e in allocated), size, length)
    new = reused = holes = stored = changed = read = 0
    buf = bytearray()
    current = -1
    for offset, data in source.read_many(_runs(to_read, size, length)):
        pos = 0
        while pos < len(data):
            n = (offset + pos) // size
            if n != current:
                current, buf = n, bytearray()
            chunk_end = min((n + 1) * size, length)
            take = min(len(data) - pos, chunk_end - (offset + pos))
            buf += data[pos : pos + take]
            pos += take
            if len(buf) == chunk_end - n * size:
                result = writer.put_chunk(bytes(buf))
                index[n] = result.chunk_id
                read += 1
                if result.chunk_id == HOLE:
                    holes += 1
                elif result.was_new:
                    new += 1
                    stored += result.stored_bytes
                    changed += len(buf)
                else:
                    reused += 1
                current, buf = -1, bytearray()
    stats = TransferStats(
        logical_bytes=length,
        bytes_read=sum(e.length for e in _runs(to_read, size, length)),
        bytes_changed=changed,
        bytes_stored=stored,
        chunks_new=new,
        chunks_reused=reused + (len(index) - len(to_read) if mode == "incremental" else 0),
        chunks_hole=holes,
        compressibility=(stored / changed) if changed else None,
    )
    writer.add_disk(key, label, index, cbt=cbt, stats=stats)  # type: ignore[arg-type]
    return DiskResult(mode, stats, read)


SPARSE_BLOCK = 64 * 1024
"""Zero runs inside a chunk at this granularity are skipped, so thin stays thin."""


def _zero(sink: BlockSink, offset: int, length: int) -> None:
    zero = getattr(sink, "zero", None)
    if zero is not None:
        zero(offset, length)
    else:
        sink.write(offset, bytes(length))


def _write_sparse(sink: BlockSink, offset: int, data: bytes, zero_holes: bool) -> int:
    """Write the non-zero blocks of ``data``; zero the others only when overwriting."""
    view = memoryview(data)
    written = pos = 0
    empty = bytes(SPARSE_BLOCK)
    while pos < len(data):
        is_zero = view[pos : pos + SPARSE_BLOCK] == empty[: min(SPARSE_BLOCK, len(data) - pos)]
        end = pos
        while end < len(data):
            block = view[end : end + SPARSE_BLOCK]
            if (block == empty[: len(block)]) != is_zero:
                break
            end += len(block)
        if not is_zero:
            sink.write(offset + pos, bytes(view[pos:end]))
            written += end - pos
        elif zero_holes:
            _zero(sink, offset + pos, end - pos)
        pos = end
    return written


@dataclass(frozen=True)
class RestoreResult:
    chunks_written: int
    chunks_zeroed: int
    bytes_written: int


def restore_disk(
    repo: Repository,
    manifest: ArchiveManifest,
    key: str,
    sink: BlockSink,
    *,
    only: set[int] | None = None,
    zero_holes: bool = False,
) -> RestoreResult:
    """Write disk ``key`` of an archive into ``sink``.

    ``only``: chunk numbers to write (an in-place restore of what changed); ``zero_holes``:
    make hole chunks read as zeroes (an overwrite); a fresh thin disk needs neither.
    """
    index = repo.load_index(manifest, key)
    if sink.size < index.length:
        raise ValueError(f"target disk of {sink.size} bytes < backup of {index.length}")
    written = zeroed = nbytes = 0
    for n, chunk_id in enumerate(index):
        if only is not None and n not in only:
            continue
        offset, length = index.extent(n)
        if chunk_id == HOLE:
            if zero_holes:
                _zero(sink, offset, length)
                zeroed += 1
            continue
        data = repo.read_chunk(chunk_id)
        nbytes += _write_sparse(sink, offset, data, zero_holes)
        written += 1
    sink.flush()
    return RestoreResult(written, zeroed, nbytes)
