"""The backup engine: block sources (and a parent archive) in, one archive out.

:func:`back_up` plans every disk first (:mod:`vmguard.engine.plan`), so the total to
read is known before the first byte moves, then streams each disk through a bounded
pipeline::

    source.read_many  →  whole chunks  →  [workers] hash → compress → encrypt → upload
       (main thread, several reads         (BackupWriter.put_chunk; BLAKE3, zstd and
        in flight on the transport)         AES-GCM release the GIL; uploads wait on I/O)
                      →  changed areas →  [workers] parent's chunk + areas → as above

A chunk the plan merges (few changed bytes) is read only in its changed areas; a worker
overlays them on the parent's chunk, fetched and verified from the repository
(:mod:`vmguard.engine.merge`). When that chunk cannot be had, the chunk is read whole
from the source in a second pass over the disk, never guessed. A parent chunk found
missing or failing its check is damaged evidence, not only a refused merge: the writer
stops trusting it (:meth:`BackupWriter.distrust`, which marks it corrupt), and the
second pass also reads again every other offset of the disk whose entry still names it
(an unchanged chunk with the same bytes, carried), so the archive never references it.
The writer's check that the parent's chunks are still there (format §8.1) runs in the
background while the first pass reads; the second pass also reads every carried chunk
it found missing, and the index is written only after it has ended (``add_disk``
settles it), so an incremental's fixed cost does not wait for a listing of the parent.

Invariants:

- Memory is bounded by the pipeline depth (chunks in flight) plus the transport's own
  read-ahead, never by the disk size: the only per-disk state is the fixed index
  (32 bytes per chunk) and the plan's extent lists.
- Every chunk read is stored or found in the repository before the index that names it
  is written, and the manifest is written last (format §7.1, through BackupWriter).
  Any failure aborts the writer: no manifest, so no archive; what was uploaded is
  re-used by the next attempt and otherwise collected by GC.
- All-zero chunks and chunks outside the allocated extents are holes: never stored.
- No archive references a chunk this backup found damaged: ``BackupWriter.add_disk``
  refuses such an index, and the commit check refuses an archive whose earlier disk
  named it before it was found (the retry reads it again: it is marked).
- Statistics are exact: bytes read are bytes the source returned, and
  ``compressibility`` is stored ÷ plaintext bytes of the changed chunks this backup
  uploaded (chunks that deduplicated were not compressed here). The manifest keeps
  them per disk; ``on_disk`` also hands the caller each disk's mode, reason, the
  numbers of chunks read whole and merged, and the bytes the changed areas cover, which
  the manifest does not record (``bytes_read`` over that is what a merge saves).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vmguard.engine.merge import Item, ReadChunk, WholeChunk, merged, read_items
from vmguard.engine.pipeline import Progress, bounded_map, default_workers
from vmguard.engine.plan import DiskPlan, plan_disk, repair_reason
from vmguard.errors import ChunkCorruptError, ChunkMissingError
from vmguard.store import HOLE, ArchiveManifest, CbtState, Repository, TransferStats, VmIdentity
from vmguard.store.archive import BackupMode
from vmguard.store.writer import BackupWriter, PutResult
from vmguard.transport.extents import BlockSource, Extent


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
    chunks_merged: int = 0
    """Chunks built from the parent's chunk and their changed areas (plan.py)."""
    merges_refused: int = 0
    """Planned merges whose parent chunk was missing or failed its check: read whole
    instead (counted in ``chunks_read``)."""
    carried_reread: int = 0
    """Unchanged chunks read again because their entry named a chunk a refused merge
    found damaged, or one the check of the parent's chunks found missing (counted in
    ``chunks_read``)."""
    changed_bytes: int | None = None
    """Bytes the changed areas (CBT) cover; None when they were unknown."""


@dataclass
class _Tally:
    chunks_read: int = 0
    merged: int = 0
    refused: list[int] = field(default_factory=list)
    reread: list[int] = field(default_factory=list)
    bytes_read: int = 0
    bytes_changed: int = 0
    bytes_stored: int = 0
    new: int = 0
    new_plain: int = 0


def _back_up_disk(
    writer: BackupWriter,
    read_chunk: ReadChunk,
    disk: DiskInput,
    plan: DiskPlan,
    *,
    workers: int,
    depth: int,
    advance: Progress,
) -> DiskOutcome:
    chunk_size = writer.repo.chunk_size
    tally = _Tally()
    index, parent = plan.index, plan.parent

    def store(item: Item) -> tuple[int, int, int, PutResult | None]:
        """(chunk number, its length, bytes read from the source, result or None when
        a merge found no base)."""
        if isinstance(item, WholeChunk):
            return item.number, len(item.data), len(item.data), writer.put_chunk(item.data)
        assert parent is not None  # a plan merges only onto a parent's index
        extent = Extent(*index.extent(item.number))
        data = merged(read_chunk, parent[item.number], extent, item.pieces)
        result = None if data is None else writer.put_chunk(data)
        return item.number, extent.length, item.read_bytes, result

    def run(whole: list[Extent], merge: dict[int, list[Extent]]) -> None:
        results = bounded_map(
            store,
            read_items(disk.source, whole, merge, chunk_size),
            workers=workers,
            depth=depth,
            ordered=False,
            name=f"backup-{disk.key}",
        )
        with contextlib.closing(results):
            for number, length, read, result in results:
                tally.bytes_read += read
                if result is None:
                    tally.refused.append(number)
                    advance(read, length)  # the whole chunk is read after all
                    continue
                if number in merge:
                    tally.merged += 1
                else:
                    tally.chunks_read += 1
                _count(tally, plan, number, length, result)
                index[number] = result.chunk_id
                advance(read, 0)

    run(plan.read, plan.merge)
    writer.settle()  # the check of the parent's chunks, which ran beside the first pass
    refused = set(tally.refused)
    tally.reread = [
        number
        for number, chunk_id in enumerate(index)
        if number not in refused and chunk_id != HOLE and writer.needs_upload(chunk_id)
    ]
    damaged_bases = {parent[number] for number in refused} if parent is not None else set()
    found = {index[number] for number in tally.reread} - damaged_bases
    if found:  # carried chunks the check found missing (or marked meanwhile)
        plan.repaired |= found
        plan.reason = repair_reason(len(plan.repaired))
    if refused or tally.reread:  # second pass, from the source: never a guess
        for number in tally.reread:
            index[number] = HOLE  # unless read below: never the damaged chunk
            advance(0, index.extent(number)[1])
        again = sorted(refused | set(tally.reread))
        run([Extent(*index.extent(number)) for number in again], {})
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
    return DiskOutcome(
        disk.key,
        plan.mode,
        plan.reason,
        stats,
        tally.chunks_read,
        chunks_merged=tally.merged,
        merges_refused=len(tally.refused),
        carried_reread=len(tally.reread),
        changed_bytes=plan.changed_bytes,
    )


def _base_reader(repo: Repository, writer: BackupWriter) -> ReadChunk:
    """The merges' read of a parent chunk: verified, and a chunk found missing or failing
    its check is reported to the writer, which then never trusts it again."""

    def read(chunk_id: bytes) -> bytes:
        try:
            return repo.read_chunk(chunk_id)
        except (ChunkMissingError, ChunkCorruptError) as exc:
            writer.distrust(chunk_id, f"found by a backup's merge: {exc}")
            raise

    return read


def _count(tally: _Tally, plan: DiskPlan, number: int, length: int, result: PutResult) -> None:
    parent = plan.parent
    before = parent[number] if parent is not None and parent.length == plan.size else HOLE
    if result.chunk_id != before:
        tally.bytes_changed += length
        if result.was_new:
            tally.new_plain += length
    if result.was_new:
        tally.new += 1
        tally.bytes_stored += result.stored_bytes


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
        read_base = _base_reader(repo, writer)
        goal = sum(p.read_bytes for p in plans)
        done = 0

        def advance(n: int, more: int) -> None:
            """``n`` bytes read; the goal grows by ``more`` (a merge read whole after all)."""
            nonlocal done, goal
            done += n
            goal += more
            if progress is not None:
                progress(done, goal)

        if progress is not None:
            progress(0, goal)
        for disk, plan in zip(disks, plans, strict=True):
            outcome = _back_up_disk(
                writer, read_base, disk, plan, workers=workers, depth=depth, advance=advance
            )
            writer.add_disk(
                disk.key, disk.label or disk.key, plan.index, cbt=disk.cbt, stats=outcome.stats
            )
            if on_disk is not None:
                on_disk(outcome)
        mode, reason = _archive_mode(plans, parent)
        return writer.commit(
            mode=mode,
            mode_reason=reason if mode_reason is None else mode_reason,
            labels=labels,
            config_format=config_format,
            config_blob=config_blob,
        )
