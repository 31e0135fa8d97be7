"""Copying archives from one repository to another (format §11, issue 17's copies).

A copy is a backup of the target whose source is an archive of another repository
instead of vSphere: :func:`copy_archive` reads the source archive's chunks (decrypted
with the source's key), and writes them through the target's own
:class:`~vmguard.store.writer.BackupWriter` (encrypted with the target's key, under the
target's lease and Object Lock): chunks, then indexes, then the manifest last. Every
rule the target keeps for a backup therefore holds for a copy. Invariants:

- The target's chunk ids differ from the source's (they are keyed hashes, format §4.1),
  so "only what the target lacks" is found by position: when the source archive's
  parent (or another earlier archive of the VM) was copied before, a chunk whose source
  id equals that archive's at the same position is, byte for byte, the chunk the
  target's copy holds at that position; its target id is taken from the copy's index
  (checked by the writer like any carried chunk) and the source is not read.
  Everything else is read from the source, re-sealed and uploaded unless the target
  has it already (the writer's existence check).
- A chunk is decompressed only to check its source id and compute its target id:
  when both repositories compress at the same level its verified zstd frame is
  encrypted again as it is, never compressed again (format §11).
- Chunks are read, re-sealed and uploaded ``workers`` at once, at most ``workers + 2``
  in flight (memory is bounded by that, not by the disk); each source chunk is read
  once per disk however many positions name it, and a failure stops the disk's copy
  before its index is added (nothing is committed).
- A copied manifest records its source archive id in the label
  :data:`COPIED_FROM_LABEL` (and the source repository's id in
  :data:`COPIED_FROM_REPOSITORY_LABEL`). An archive whose copy is already in the target
  is skipped: re-running a copy is idempotent, and a killed copy resumes, finding the
  chunks it uploaded already stored (no chunk is uploaded twice). What a killed copy
  left (chunks, indexes without a manifest, its lease) is what GC reclaims after any
  failed backup (format §7.3).
- Source and target must be different repositories that do not overlap (same bucket
  and nested prefixes, or nested directories), and have the same chunk size (the
  positional mapping and the index format depend on it); otherwise nothing is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from vmguard.errors import ConfigError, RepositoryError
from vmguard.store.archive import ArchiveManifest, TransferStats
from vmguard.store.chunk import HOLE, ChunkId
from vmguard.store.index import FixedIndex
from vmguard.store.location import Location, parse_location
from vmguard.store.repository import Repository
from vmguard.store.writer import BackupWriter, PutResult

_T = TypeVar("_T")
_R = TypeVar("_R")

COPIED_FROM_LABEL = "vmguard.io/copied-from"
"""Label of a copied manifest: the source archive's id (format §11)."""
COPIED_FROM_REPOSITORY_LABEL = "vmguard.io/copied-from-repository"
"""Label of a copied manifest: the source repository's config id (format §11)."""

Progress = Callable[[int, int], None]
"""``(chunks done, chunks total)`` of the archive being copied."""


@dataclass
class CopyResult:
    """What one archive's copy did. ``chunks_read`` counts the chunks read from the
    source: with a previously copied archive, only the ones that changed since."""

    source_archive: str
    target_archive: str
    skipped: bool = False
    """The archive was already in the target (its copy is ``target_archive``)."""
    based_on: str | None = None
    """The target archive the positional mapping used (None: a full copy)."""
    chunks_total: int = 0
    chunks_read: int = 0
    chunks_mapped: int = 0
    """Taken from the earlier copy's index by position, not read from the source."""
    chunks_uploaded: int = 0
    chunks_present: int = 0
    """Read from the source but found already stored in the target."""
    chunks_hole: int = 0
    bytes_read: int = 0
    bytes_stored: int = 0


@dataclass
class CopyReport:
    copies: list[CopyResult] = field(default_factory=list)

    @property
    def chunks_read(self) -> int:
        return sum(c.chunks_read for c in self.copies)

    @property
    def chunks_uploaded(self) -> int:
        return sum(c.chunks_uploaded for c in self.copies)


def _within(outer: str, inner: str) -> bool:
    """True if path ``inner`` equals ``outer`` or lies below it (by whole segments)."""
    a = [s for s in outer.split("/") if s]
    b = [s for s in inner.split("/") if s]
    return b[: len(a)] == a


def _endpoint(location: Location) -> str:
    """``host:port`` as a comparison key: host names are case-insensitive and may end in
    the root's dot, and a missing port is the scheme's (443, or 80 for ``s3+http``)."""
    parts = urlsplit(f"//{location.endpoint}")
    host = (parts.hostname or "").rstrip(".")
    try:
        port = parts.port or (443 if location.secure else 80)
    except ValueError:  # not a port number: the request would fail; compare as written
        return location.endpoint.lower()
    return f"{host}:{port}"


def check_distinct(source: str | Location, target: str | Location) -> None:
    """ConfigError when the two locations are the same or one lies inside the other."""
    a = source if isinstance(source, Location) else parse_location(source)
    b = target if isinstance(target, Location) else parse_location(target)
    if a.scheme != b.scheme:
        return
    if a.scheme == "file":
        overlap = _within(a.path, b.path) or _within(b.path, a.path)
    else:
        same_bucket = _endpoint(a) == _endpoint(b) and a.bucket == b.bucket
        overlap = same_bucket and (_within(a.prefix, b.prefix) or _within(b.prefix, a.prefix))
    if overlap:
        raise ConfigError(
            f"copy target {b} overlaps the source {a} (the same place, or one inside the"
            " other): a copy must live in another bucket or a disjoint prefix"
        )


def _location(repo: Repository) -> Location | None:
    """Where the repository lives, when its backend is reachable by URL (not memory)."""
    try:
        return parse_location(repo.backend.location)
    except ConfigError:
        return None


def check_compatible(source: Repository, target: Repository) -> None:
    """ConfigError when the target cannot hold copies of the source's archives: the
    same repository, overlapping locations, or another chunk size."""
    here, there = _location(source), _location(target)
    if here is not None and there is not None:
        check_distinct(here, there)
    if source.config.id == target.config.id:
        raise ConfigError(
            f"source and target are the same repository ({source.config.id}): a copy"
            " must go to another repository"
        )
    if source.chunk_size != target.chunk_size:
        raise ConfigError(
            f"the target's chunk size {target.chunk_size} differs from the source's"
            f" {source.chunk_size}: copies need a target created with --chunk-size"
            f" {source.chunk_size}"
        )


def copied_archives(target: Repository, vm_id: str | None = None) -> dict[str, str]:
    """Source archive id -> target archive id, for every copied archive in the target."""
    found: dict[str, str] = {}
    for ref in target.list_archives(vm_id):
        try:
            manifest = target.load_archive(ref.archive_id)
        except RepositoryError:
            continue  # pruned meanwhile, or unreadable: not a base to rely on
        origin = manifest.labels.get(COPIED_FROM_LABEL)
        if origin:
            found.setdefault(origin, ref.archive_id)
    return found


def select_archives(
    source: Repository, ids: Iterable[str] = (), *, vm_id: str | None = None
) -> list[str]:
    """The source archives to copy, oldest first and every parent before its children
    (archive ids order only to the second): the ones named, else those of ``vm_id``,
    else all."""
    wanted = list(ids)
    refs = source.list_archives(vm_id)
    known = [r.archive_id for r in refs]
    if wanted:
        missing = [a for a in wanted if a not in set(known)]
        if missing:
            raise RepositoryError(f"no archive {missing[0]} in the source repository")
        known = [a for a in known if a in set(wanted)]
    parents: dict[str, str | None] = {}
    for archive_id in known:
        try:
            parents[archive_id] = source.load_archive(archive_id).parent
        except RepositoryError:
            parents[archive_id] = None  # pruned meanwhile: copy_archive will say so
    ordered: list[str] = []
    placed: set[str] = set()

    def place(archive_id: str) -> None:
        chain = []
        current: str | None = archive_id
        while current is not None and current in parents and current not in placed:
            chain.append(current)
            placed.add(current)
            current = parents[current]
        ordered.extend(reversed(chain))

    for archive_id in known:
        place(archive_id)
    return ordered


def _base(
    source: Repository, manifest: ArchiveManifest, copied: dict[str, str]
) -> tuple[str, str] | None:
    """(source archive, its target copy) to map positions through: the parent's copy,
    else the newest earlier copied archive of the VM still in the source."""
    if manifest.parent and manifest.parent in copied:
        return manifest.parent, copied[manifest.parent]
    earlier = [
        r.archive_id
        for r in source.list_archives(manifest.vm.id)
        if r.archive_id in copied
        and r.started <= manifest.started
        and r.archive_id != manifest.archive_id
    ]
    return (earlier[-1], copied[earlier[-1]]) if earlier else None


def copy_archive(
    source: Repository,
    target: Repository,
    archive_id: str,
    *,
    copied: dict[str, str] | None = None,
    progress: Progress | None = None,
    workers: int = 1,
) -> CopyResult:
    """Copy one archive unless the target holds it already; ``copied`` is
    :func:`copied_archives` of the target (updated with the new copy). ``workers``
    chunks are read, sealed and uploaded at once (network waits and the codec overlap;
    the writer takes chunks from any thread)."""
    check_compatible(source, target)
    manifest = source.load_archive(archive_id)
    if copied is None:
        copied = copied_archives(target, manifest.vm.id)
    if archive_id in copied:
        return CopyResult(archive_id, copied[archive_id], skipped=True)
    base = _base(source, manifest, copied)
    base_manifest = source.load_archive(base[0]) if base else None
    result = CopyResult(archive_id, "", based_on=base[1] if base else None)
    total = 0
    indexes = []
    for disk in manifest.disks:
        index = source.load_index(manifest, disk)
        indexes.append(index)
        total += len(index)
    result.chunks_total = total
    done = 0
    with target.begin_backup(manifest.vm, parent=base[1] if base else None) as writer:
        result.target_archive = writer.archive_id
        for disk, index in zip(manifest.disks, indexes, strict=True):
            target_base = writer.parent_index(disk.key) if base else None
            source_base: FixedIndex | None = None
            if base_manifest is not None and target_base is not None:
                if disk.key in {d.key for d in base_manifest.disks}:
                    source_base = source.load_index(base_manifest, disk.key)
                if source_base is not None and source_base.length != target_base.length:
                    source_base = None  # not the copy we think it is: map nothing
            out = FixedIndex(target.chunk_size, index.length)
            stats = _copy_disk(
                source, writer, index, source_base, target_base, out, result, workers
            )
            writer.add_disk(disk.key, disk.label, out, cbt=disk.cbt, stats=stats)
            done += len(index)
            if progress is not None:
                progress(done, total)
        labels = dict(manifest.labels)
        labels[COPIED_FROM_LABEL] = archive_id
        labels[COPIED_FROM_REPOSITORY_LABEL] = source.config.id
        writer.commit(
            mode=manifest.mode,
            mode_reason=manifest.mode_reason,
            config_format=manifest.config_format,
            config_blob=manifest.config_blob,
            labels=labels,
        )
    copied[archive_id] = result.target_archive
    return result


def _copy_disk(
    source: Repository,
    writer: BackupWriter,
    index: FixedIndex,
    source_base: FixedIndex | None,
    target_base: FixedIndex | None,
    out: FixedIndex,
    result: CopyResult,
    workers: int,
) -> TransferStats:
    # Positions first (no I/O): holes, positions mapped through the earlier copy, and
    # the source chunks to read, each once however many positions name it.
    wanted: dict[ChunkId, list[int]] = {}  # source id -> positions, in index order
    reused = holes = 0
    for number, chunk_id in enumerate(index):
        if chunk_id == HOLE:
            holes += 1
        elif (
            source_base is not None
            and target_base is not None
            and number < len(source_base)
            and source_base[number] == chunk_id
            and target_base[number] != HOLE
            and not writer.needs_upload(target_base[number])
        ):
            out[number] = target_base[number]
            result.chunks_mapped += 1
            reused += 1
        else:
            wanted.setdefault(chunk_id, []).append(number)

    # The same compression level on both sides: the source's verified zstd frame is
    # stored as it is (decompressed only to hash it with the target's key), not
    # compressed again, which was most of a copy's CPU (docs/benchmarks.md).
    reuse = source.config.compression_level == writer.repo.config.compression_level

    def move(chunk_id: ChunkId) -> tuple[ChunkId, int, PutResult]:
        opened = source.open_chunk(chunk_id)
        data = opened.plaintext
        return chunk_id, len(data), writer.put_chunk(data, like=opened if reuse else None)

    read = stored = new = 0
    for source_id, length, put in _bounded(move, wanted, workers):
        positions = wanted[source_id]
        for number in positions:
            out[number] = put.chunk_id
        result.chunks_read += 1
        result.bytes_read += length
        read += length
        reused += len(positions) - 1
        if put.was_new:
            result.chunks_uploaded += 1
            result.bytes_stored += put.stored_bytes
            stored += put.stored_bytes
            new += 1
        else:
            result.chunks_present += 1
            reused += 1
    result.chunks_hole += holes
    return TransferStats(
        logical_bytes=index.length,
        bytes_read=read,
        bytes_changed=read,
        bytes_stored=stored,
        chunks_new=new,
        chunks_reused=reused,
        chunks_hole=holes,
    )


def _bounded(fn: Callable[[_T], _R], items: Iterable[_T], workers: int) -> Iterator[_R]:
    """``fn`` over ``items`` on ``workers`` threads, results in completion order, at most
    ``workers + 2`` in flight (memory: that many chunks, whatever the disk's size; the
    backup engine's depth). The first failure is raised once the calls already running
    have ended; the rest are not started. (The engine's ``bounded_map`` does this for
    backups; the store sits below the engine and keeps its own.)"""
    if workers <= 1:
        yield from map(fn, items)
        return
    pending = iter(items)
    with ThreadPoolExecutor(workers, thread_name_prefix="vmguard-copy") as pool:
        running: set[Future[_R]] = set()
        try:
            while True:
                for item in pending:
                    running.add(pool.submit(fn, item))
                    if len(running) >= workers + 2:
                        break
                if not running:
                    return
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            for future in running:
                future.cancel()


def copy_archives(
    source: Repository,
    target: Repository,
    archive_ids: Iterable[str],
    *,
    progress: Callable[[str], Progress | None] | None = None,
    workers: int = 1,
) -> CopyReport:
    """Copy ``archive_ids`` (oldest first) that the target does not hold yet."""
    check_compatible(source, target)
    copied = copied_archives(target)
    report = CopyReport()
    for archive_id in archive_ids:
        callback = progress(archive_id) if progress else None
        report.copies.append(
            copy_archive(
                source, target, archive_id, copied=copied, progress=callback, workers=workers
            )
        )
    return report


__all__ = [
    "COPIED_FROM_LABEL",
    "COPIED_FROM_REPOSITORY_LABEL",
    "CopyReport",
    "CopyResult",
    "check_compatible",
    "check_distinct",
    "copied_archives",
    "copy_archive",
    "copy_archives",
    "select_archives",
]
