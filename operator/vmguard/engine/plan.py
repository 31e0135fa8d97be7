"""What a backup of one disk must read: the plan, made before any data moves.

Given the disk's allocation, its changed extents (or "unknown") and the parent's
index, :func:`plan_disk` decides the disk's mode and which chunks to read. Rules
(BRIEF §5, format §6):

- **incremental** (parent index of the same length, changed extents known): read
  exactly the chunks that intersect a changed extent *and* an allocated one; a
  changed chunk that is now unallocated becomes a hole without being read; every
  other entry is the parent's. A parent chunk marked corrupt, or found missing when
  the writer checked the parent's chunks (format §8.1), is read again, never carried,
  so the backup repairs it.
- **full-scan** (parent exists but the changes are unknown, or the disk was resized):
  read every chunk that intersects an allocated extent; the repository's dedup keeps
  the upload to what it lacks. Never an incremental that silently copies the parent.
- **full** (no parent, or the disk is new): as full-scan, without a parent.

Chunks are always read whole (a changed 4 KiB inside a 4 MiB chunk reads 4 MiB),
because a chunk's id is the hash of all of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmguard.store import HOLE, FixedIndex
from vmguard.store.archive import BackupMode
from vmguard.store.writer import BackupWriter
from vmguard.transport.extents import BlockSource, Extent, align, normalise, total


@dataclass
class DiskPlan:
    key: str
    size: int
    mode: BackupMode
    reason: str
    index: FixedIndex
    """Starts as the parent's entries (incremental) or all holes; reads fill it in."""
    parent: FixedIndex | None
    read: list[Extent]
    """Chunk-aligned, normalised ranges to read from the source."""

    @property
    def read_bytes(self) -> int:
        return total(self.read)


def intersect(a: list[Extent], b: list[Extent]) -> list[Extent]:
    """Ranges in both of two normalised lists."""
    out: list[Extent] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start, end = max(a[i].offset, b[j].offset), min(a[i].end, b[j].end)
        if end > start:
            out.append(Extent(start, end - start))
        if a[i].end < b[j].end:
            i += 1
        else:
            j += 1
    return out


def chunks_touching(extents: list[Extent], chunk_size: int, size: int) -> list[int]:
    """Numbers of the chunks of a ``size``-byte disk that intersect ``extents`` (sorted)."""
    numbers: list[int] = []
    for ext in align(extents, chunk_size, size):
        numbers.extend(range(ext.offset // chunk_size, -(-ext.end // chunk_size)))
    return numbers


def plan_disk(
    writer: BackupWriter, key: str, source: BlockSource, changed: list[Extent] | None
) -> DiskPlan:
    """Decide the mode of one disk and the chunks to read (see the module docstring)."""
    chunk = writer.repo.chunk_size
    size = source.size
    allocated = align(source.allocated(), chunk, size)
    parent_manifest = writer.parent_manifest()
    parent = writer.parent_index(key) if parent_manifest is not None else None

    mode: BackupMode
    if parent_manifest is None:
        mode = "full"
        reason = (
            f"parent archive {writer.parent_id} no longer exists"
            if writer.parent_id
            else "no parent archive"
        )
    elif parent is None:
        mode, reason = "full", f"disk {key!r} is not in the parent archive"
    elif parent.length != size:
        mode, reason = "full-scan", f"disk size changed from {parent.length} to {size}"
    elif changed is None:
        mode, reason = "full-scan", "changed areas unknown"
    else:
        mode, reason = "incremental", ""

    if mode != "incremental" or parent is None or changed is None:
        # A resized disk's parent is no base to carry from, but its chunks are still
        # known to the writer (parent_index loaded them), which speeds up dedup.
        return DiskPlan(key, size, mode, reason, FixedIndex(chunk, size), parent, allocated)

    index = parent.copy()
    changed_chunks = align(changed, chunk, size)
    for number in chunks_touching(changed_chunks, chunk, size):
        index[number] = HOLE  # unless read below, a changed unallocated chunk is a hole
    read = intersect(changed_chunks, allocated)
    repairs = [
        Extent(*index.extent(number))
        for number, chunk_id in enumerate(index)
        if chunk_id != HOLE and writer.needs_upload(chunk_id)
    ]
    if repairs:
        for ext in repairs:
            index[ext.offset // chunk] = HOLE
        read = normalise([*read, *repairs])
        reason = f"{len(repairs)} parent chunks missing or marked corrupt are read again"
    return DiskPlan(key, size, mode, reason, index, parent, read)
