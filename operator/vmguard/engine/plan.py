"""What a backup of one disk must read: the plan, made before any data moves.

Given the disk's allocation, its changed extents (or "unknown") and the parent's
index, :func:`plan_disk` decides the disk's mode and which chunks to read. Rules
(BRIEF §5, format §6):

- **incremental** (parent index of the same length, changed extents known): read
  exactly the chunks that intersect a changed extent *and* an allocated one (whole, or
  only their changed areas: merged, below); a changed chunk that is now unallocated
  becomes a hole without being read; every other entry is the parent's. A parent
  chunk marked corrupt is read again, never carried, so the backup repairs it; one
  found missing by the writer's check of the parent's chunks (format §8.1), which runs
  while the changed chunks are read, is read again in the engine's second pass.
- **full-scan** (parent exists but the changes are unknown, or the disk was resized):
  read every chunk that intersects an allocated extent; the repository's dedup keeps
  the upload to what it lacks. Never an incremental that silently copies the parent.
- **full** (no parent, or the disk is new): as full-scan, without a parent.

A chunk's id is the hash of all of it, so a changed chunk is stored whole. It need not
be *read* whole: in an incremental, a changed chunk whose changed bytes (widened to
:data:`MERGE_ALIGN`) are at most :data:`MERGE_MAX_CHANGED` of it is **merged** — only its
changed areas are read from the source, the rest is taken from the parent's chunk
(:mod:`vmguard.engine.merge`; docs/cbt-chain.md, "Reading only what changed"). A chunk
is merged only onto a base that can be trusted: the parent's entry is a hole (the range
read as zeros) or a chunk not marked corrupt, which the merge fetches and verifies
against its id; one that is missing or fails that check refuses the merge, and the
chunk is read whole (engine/backup.py). The plan does not wait for the writer's check
of the parent's chunks (format §8.1), which runs beside the reads, so what it decides
does not depend on how far that check got. Full and full-scan backups never merge:
their changes are unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vmguard.store import HOLE, FixedIndex
from vmguard.store.archive import BackupMode
from vmguard.store.writer import BackupWriter
from vmguard.transport.extents import BlockSource, Extent, align, clip, normalise, total

MERGE_MAX_CHANGED = 0.5
"""A changed chunk is merged when its changed bytes are at most this fraction of it.

A merge reads the changed bytes from the source and fetches the parent's chunk from the
repository (one GET of its stored size, then decrypt, decompress, hash); a whole read
reads the chunk from the source. In production the source is the narrow end (NBD from
ESXi runs at 80-200 MB/s per disk, against a repository read in parallel), so a merge
wins by the bytes it does not read — until most of the chunk changed, when the saving
no longer pays for the fetch and for the extra requests of many small reads."""

MERGE_ALIGN = 4096
"""Changed areas are widened to this before a merge reads them: whole sectors and pages
for every transport (VDDK reads whole sectors), and never finer than CBT reports."""


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
    """Chunk-aligned, normalised ranges to read whole from the source."""
    merge: dict[int, list[Extent]] = field(default_factory=dict)
    """Chunks to merge: chunk number → the normalised ranges inside it to read."""
    changed_bytes: int | None = None
    """Bytes the changed areas cover (clipped to the disk); None when unknown."""
    repaired: set[bytes] = field(default_factory=set)
    """Parent chunks read again because they are marked corrupt or were found missing
    (the engine adds those the background check finds)."""

    @property
    def read_bytes(self) -> int:
        return total(self.read) + sum(total(pieces) for pieces in self.merge.values())


def repair_reason(count: int) -> str:
    """The mode reason of an incremental that reads ``count`` parent chunks again."""
    return f"{count} parent chunks missing or marked corrupt are read again"


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


def cut_at_chunks(extents: list[Extent], chunk_size: int) -> dict[int, list[Extent]]:
    """Normalised ``extents`` cut at chunk boundaries, grouped by chunk number."""
    pieces: dict[int, list[Extent]] = {}
    for ext in extents:
        pos = ext.offset
        while pos < ext.end:
            number = pos // chunk_size
            end = min(ext.end, (number + 1) * chunk_size)
            pieces.setdefault(number, []).append(Extent(pos, end - pos))
            pos = end
    return pieces


def plan_disk(
    writer: BackupWriter, key: str, source: BlockSource, changed: list[Extent] | None
) -> DiskPlan:
    """Decide the mode of one disk and the chunks to read (see the module docstring)."""
    chunk = writer.repo.chunk_size
    size = source.size
    allocated = align(source.allocated(), chunk, size)
    parent_manifest = writer.parent_manifest()
    # The parent's chunks are checked in the background while the changed ones are read:
    # a carried chunk found missing is read in the engine's second pass (backup.py).
    parent = writer.parent_index(key, check_now=False) if parent_manifest is not None else None

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
    plan_repaired: set[bytes] = set()
    repairs = [
        Extent(*index.extent(number))
        for number, chunk_id in enumerate(index)
        if chunk_id != HOLE and writer.marked_corrupt(chunk_id)
    ]
    if repairs:
        for ext in repairs:
            plan_repaired.add(index[ext.offset // chunk])
            index[ext.offset // chunk] = HOLE
        reason = repair_reason(len(plan_repaired))
    merge = _merges(writer, parent, changed, read, chunk, size)
    whole = [
        Extent(*index.extent(number))
        for ext in read
        for number in range(ext.offset // chunk, -(-ext.end // chunk))
        if number not in merge
    ]
    changed_bytes = total(normalise(clip(changed, size)))
    return DiskPlan(
        key,
        size,
        mode,
        reason,
        index,
        parent,
        normalise([*whole, *repairs]),
        merge,
        changed_bytes,
        plan_repaired,
    )


def _merges(
    writer: BackupWriter,
    parent: FixedIndex,
    changed: list[Extent],
    read: list[Extent],
    chunk: int,
    size: int,
) -> dict[int, list[Extent]]:
    """The chunks of ``read`` to merge, with the ranges of each to read (see the module
    docstring): few changed bytes, and a base the writer trusts."""
    fine = intersect(align(changed, MERGE_ALIGN, size), read)
    merge: dict[int, list[Extent]] = {}
    for number, pieces in cut_at_chunks(fine, chunk).items():
        base = parent[number]
        if base != HOLE and writer.marked_corrupt(base):
            continue  # read whole, which repairs it (a missing base: the merge is refused)
        _, length = parent.extent(number)
        if total(pieces) <= MERGE_MAX_CHANGED * length:
            merge[number] = pieces
    return merge
