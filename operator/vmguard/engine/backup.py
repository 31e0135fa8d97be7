"""The backup engine: block sources (and a parent archive) in, one archive out.

:func:`back_up` plans every disk first (:mod:`vmguard.engine.plan`), so the total to
read is known before the first byte moves, then streams each disk through a bounded
pipeline::

    source.read_many  →  whole chunks  →  [workers] hash → compress → encrypt → upload
       (main thread, several reads         (BackupWriter.put_chunk; BLAKE3, zstd and
        in flight on the transport)         AES-GCM release the GIL; uploads wait on I/O)

Invariants:

- Memory is bounded by the pipeline depth (chunks in flight) plus the transport's own
  read-ahead, never by the disk size: the only per-disk state is the fixed index
  (32 bytes per chunk) and the plan's extent lists.
- Every chunk read is stored or found in the repository before the index that names it
  is written, and the manifest is written last (format §7.1, through BackupWriter).
  Any failure aborts the writer: no manifest, so no archive; what was uploaded is
  re-used by the next attempt and otherwise collected by GC.
- All-zero chunks and chunks outside the allocated extents are holes: never stored.
- Statistics are exact: bytes read are bytes the source returned, and
  ``compressibility`` is stored ÷ plaintext bytes of the changed chunks this backup
  uploaded (chunks that deduplicated were not compressed here). The manifest keeps
  them per disk; ``on_disk`` also hands the caller each disk's mode, reason and the
  number of chunks read, which the manifest does not record.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from vmguard.engine.pipeline import Progress, bounded_map, default_workers
from vmguard.engine.plan import DiskPlan, plan_disk
from vmguard.store import HOLE, ArchiveManifest, CbtState, Repository, TransferStats, VmIdentity
from vmguard.store.archive import BackupMode
from vmguard.store.writer import BackupWriter, PutResult
from vmguard.transport.extents import BlockSource, Bytes, Extent


@dataclass
class DiskInput:
    """One disk to back up."""

    key: str
    """Stable key within the VM (vSphere device key, or a name on the CLI)."""
    source: BlockSource
    label: str = ""
    changed: list[Extent] | None = None
    """Changed extents since the parent (CBT), or None when unknown."""
    cbt: CbtState | None = None


@dataclass(frozen=True)
class DiskOutcome:
    """What the engine did with one disk, beyond the stats the manifest keeps."""

    key: str
    mode: BackupMode
    reason: str
    """The plan's reason for the mode ("" for a plain incremental)."""
    stats: TransferStats
    chunks_read: int
    """Whole chunks read from the source (holes among them included)."""


@dataclass
class _Tally:
    chunks_read: int = 0
    bytes_read: int = 0
    bytes_changed: int = 0
    bytes_stored: int = 0
    new: int = 0
    new_plain: int = 0


def _chunks(
    source: BlockSource, extents: list[Extent], chunk_size: int
) -> Iterator[tuple[int, Bytes]]:
    """Whole chunks ``(number, data)`` of chunk-aligned ``extents``, read in order.

    The transport yields pieces of its own request size; a piece that is exactly one
    chunk is passed on without a copy, anything else is cut or joined.
    """
    pending = bytearray()
    start = 0
    for offset, data in source.read_many(extents):
        if pending and offset != start + len(pending):
            raise RuntimeError(f"source skipped from {start + len(pending)} to {offset}")
        if not pending:
            start = offset
            if offset % chunk_size == 0 and len(data) == chunk_size:
                yield offset // chunk_size, data
                continue
        pending += data
        # Cut whole chunks; a short final chunk comes at the end of its extent.
        while len(pending) >= chunk_size:
            yield start // chunk_size, bytes(pending[:chunk_size])
            del pending[:chunk_size]
            start += chunk_size
        if pending and _ends_extent(start + len(pending), extents):
            yield start // chunk_size, bytes(pending)
            pending.clear()
    if pending:
        raise RuntimeError(f"source ended inside the chunk at {start}")


def _ends_extent(position: int, extents: list[Extent]) -> bool:
    # Only the disk's last chunk is short, and it ends the last extent.
    return bool(extents) and position == extents[-1].end


def _back_up_disk(
    writer: BackupWriter,
    disk: DiskInput,
    plan: DiskPlan,
    *,
    workers: int,
    depth: int,
    advance: Progress,
) -> tuple[TransferStats, int]:
    chunk_size = writer.repo.chunk_size
    tally = _Tally()
    index, parent = plan.index, plan.parent

    def store(item: tuple[int, Bytes]) -> tuple[int, int, PutResult]:
        number, data = item
        return number, len(data), writer.put_chunk(data)

    results = bounded_map(
        store,
        _chunks(disk.source, plan.read, chunk_size),
        workers=workers,
        depth=depth,
        ordered=False,
        name=f"backup-{disk.key}",
    )
    with contextlib.closing(results):
        for number, length, result in results:
            index[number] = result.chunk_id
            tally.chunks_read += 1
            tally.bytes_read += length
            before = parent[number] if parent is not None and parent.length == plan.size else HOLE
            if result.chunk_id != before:
                tally.bytes_changed += length
                if result.was_new:
                    tally.new_plain += length
            if result.was_new:
                tally.new += 1
                tally.bytes_stored += result.stored_bytes
            advance(length, 0)
    holes = sum(1 for chunk_id in index if chunk_id == HOLE)
    stats = TransferStats(
        logical_bytes=plan.size,
        bytes_read=tally.bytes_read,
        bytes_changed=tally.bytes_changed,
        bytes_stored=tally.bytes_stored,
        chunks_new=tally.new,
        chunks_reused=len(index) - holes - tally.new,
        chunks_hole=holes,
        compressibility=tally.bytes_stored / tally.new_plain if tally.new_plain else None,
    )
    return stats, tally.chunks_read


def _archive_mode(plans: Sequence[DiskPlan], parent: str | None) -> tuple[BackupMode, str]:
    reasons = [f"{p.key}: {p.reason}" for p in plans if p.reason]
    if all(p.mode == "incremental" for p in plans) and plans:
        return "incremental", "; ".join(reasons)
    if parent is None or all(p.mode == "full" for p in plans):
        return "full", "; ".join(reasons)
    return "full-scan", "; ".join(reasons)


def back_up(
    repo: Repository,
    vm: VmIdentity,
    disks: Sequence[DiskInput],
    *,
    parent: str | None = None,
    labels: dict[str, str] | None = None,
    config_format: str = "",
    config_blob: bytes = b"",
    mode_reason: str | None = None,
    progress: Progress | None = None,
    on_disk: Callable[[DiskOutcome], None] | None = None,
    workers: int | None = None,
    depth: int | None = None,
) -> ArchiveManifest:
    """Back up ``disks`` of ``vm`` as one archive (incremental against ``parent``).

    ``mode_reason`` replaces the engine's account of the mode (the plans' reasons) for
    a caller that knows better why the changes are known or not, e.g. the CBT chain.
    ``on_disk`` is called once per disk after its index is added, before the commit.
    """
    if len({d.key for d in disks}) != len(disks):
        raise ValueError("disk keys must be unique within a backup")
    workers = workers or default_workers()
    depth = depth or workers + 2
    with repo.begin_backup(vm, parent=parent) as writer:
        plans = [plan_disk(writer, d.key, d.source, d.changed) for d in disks]
        goal = sum(p.read_bytes for p in plans)
        done = 0

        def advance(n: int, _: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, goal)

        if progress is not None:
            progress(0, goal)
        for disk, plan in zip(disks, plans, strict=True):
            stats, read = _back_up_disk(
                writer, disk, plan, workers=workers, depth=depth, advance=advance
            )
            writer.add_disk(disk.key, disk.label or disk.key, plan.index, cbt=disk.cbt, stats=stats)
            if on_disk is not None:
                on_disk(DiskOutcome(disk.key, plan.mode, plan.reason, stats, read))
        mode, reason = _archive_mode(plans, parent)
        return writer.commit(
            mode=mode,
            mode_reason=reason if mode_reason is None else mode_reason,
            labels=labels,
            config_format=config_format,
            config_blob=config_blob,
        )
