"""Writing one backup: chunks, then indexes, then the manifest, under a lease (format §7.1).

``BackupWriter`` is what the data mover drives. Usage::

    with repo.begin_backup(vm, parent=previous_id) as writer:
        parent_index = writer.parent_index("2000")       # None for a full backup
        index = FixedIndex(repo.chunk_size, disk_length)
        for number, data in chunks:                       # any order, any threads
            index[number] = writer.put_chunk(data).chunk_id
        writer.add_disk("2000", "Hard disk 1", index, cbt=state, stats=stats)
        manifest = writer.commit(mode="incremental")

Invariants (the preconditions of the GC safety argument, format §7.5):

- The lease is written before anything is read or written, and the known-chunks cache
  lives and dies with this writer (one lease).
- Every id in an index given to :meth:`add_disk` was uploaded, seen to exist, or taken
  from the parent's index by this writer; ``add_disk`` refuses any other id. A bug in
  the caller therefore cannot commit a reference GC was not told about.
- Chunks recorded as corrupt are never deduplicated against: ``has_chunk`` says no,
  so the chunk is uploaded again, which repairs it, and the marker is removed.
- :meth:`commit` writes the manifest only while the lease has at least its margin of
  validity left; afterwards it releases the lease.
- With Object Lock, every object written gets the same retention (``retain_until`` in
  the manifest), and re-used chunks whose retention ends before half the lock period
  from now are extended; the retained copy of the config (the key material that
  decrypts the archive) is kept at least until ``retain_until`` before the manifest
  is written.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType

import blake3

from vmguard.errors import ObjectNotFoundError, RepositoryError
from vmguard.store import names
from vmguard.store.archive import (
    ArchiveManifest,
    BackupMode,
    CbtState,
    DiskRecord,
    TransferStats,
    VmIdentity,
)
from vmguard.store.backend import Retention
from vmguard.store.chunk import HOLE, ChunkId, is_zero
from vmguard.store.envelope import Bytes, Kind
from vmguard.store.index import FixedIndex
from vmguard.store.lease import Lease, lease_body
from vmguard.store.repository import Repository


@dataclass(frozen=True)
class PutResult:
    chunk_id: ChunkId
    stored_bytes: int
    """Bytes written to the store (0 when the chunk already existed or is a hole)."""
    was_new: bool


@dataclass
class _State:
    known: set[bytes] = field(default_factory=set)
    corrupt: set[bytes] = field(default_factory=set)
    disks: list[DiskRecord] = field(default_factory=list)
    parent: ArchiveManifest | None = None
    parent_loaded: bool = False
    closed: bool = False


class BackupWriter:
    """One backup in progress. Create with :meth:`Repository.begin_backup`."""

    def __init__(
        self, repo: Repository, vm: VmIdentity, archive_id: str, parent: str | None, lease: Lease
    ) -> None:
        self.repo = repo
        self.vm = vm
        self.archive_id = archive_id
        self.parent_id = parent
        self.lease = lease
        self.started = names.parse_archive_id(archive_id).started
        self._state = _State()
        self._lock = threading.Lock()
        lock = repo.config.object_lock
        # Times are kept to the second, as the manifest stores them.
        now = repo.clock.now().replace(microsecond=0)
        self.retention = Retention(lock.mode, now + timedelta(days=lock.days)) if lock else None

    @classmethod
    def start(
        cls, repo: Repository, vm: VmIdentity, *, parent: str | None, auto_refresh: bool
    ) -> BackupWriter:
        now = repo.clock.now()
        archive_id = names.new_archive_id(vm.id, now)
        ttl = float(repo.config.gc.lease_ttl_seconds)
        body = lease_body("backup", now, ttl, archive_id=archive_id, parent=parent)
        name = names.lease_name(names.new_stamped_id(now))
        lease = Lease(repo.backend, name, body, ttl=ttl, clock=repo.clock)
        lease.acquire()
        if auto_refresh:
            lease.start_refreshing()
        writer = cls(repo, vm, archive_id, parent, lease)
        try:
            for info in repo.backend.list(names.CORRUPT):
                marked = names.chunk_id_from_name(info.name)
                if marked is not None:
                    writer._state.corrupt.add(marked)
        except BaseException:
            lease.release()
            raise
        return writer

    # -- parent ---------------------------------------------------------------------------

    def parent_manifest(self) -> ArchiveManifest | None:
        """The parent's manifest, or None (no parent, or it no longer exists)."""
        with self._lock:
            if not self._state.parent_loaded and self.parent_id:
                try:
                    self._state.parent = self.repo.load_archive(self.parent_id)
                except RepositoryError:
                    self._state.parent = None
            self._state.parent_loaded = True
            return self._state.parent

    def parent_index(self, disk_key: str) -> FixedIndex | None:
        """The parent's index of this disk, its chunks now known to this writer."""
        parent = self.parent_manifest()
        if parent is None or disk_key not in {d.key for d in parent.disks}:
            return None
        index = self.repo.load_index(parent, disk_key)
        with self._lock:
            self._state.known.update(index.referenced() - self._state.corrupt)
        return index

    def needs_upload(self, chunk_id: bytes) -> bool:
        """True if the chunk was found corrupt: re-read it from the source, do not carry it."""
        return chunk_id in self._state.corrupt

    # -- chunks ---------------------------------------------------------------------------

    def has_chunk(self, chunk_id: bytes) -> bool:
        """True if ``chunks/<id>`` exists, plausibly sized, and is not marked corrupt."""
        if chunk_id in self._state.corrupt:
            return False
        if chunk_id in self._state.known:
            return True
        try:
            info = self.repo.backend.stat(names.chunk_name(chunk_id))
        except ObjectNotFoundError:
            return False
        codec = self.repo.codec
        if not codec.min_stored_size <= info.size <= codec.max_stored_size:
            return False  # truncated or garbage: upload it again
        if self.retention is not None and self._lock_ends_soon(info.retain_until):
            self.repo.backend.set_retention(names.chunk_name(chunk_id), self.retention)
        with self._lock:
            self._state.known.add(chunk_id)
        return True

    def _lock_ends_soon(self, until: datetime | None) -> bool:
        lock = self.repo.config.object_lock
        assert lock is not None
        horizon = self.repo.clock.now() + timedelta(days=lock.days / 2)
        return until is None or until < horizon

    def put_chunk(self, data: Bytes) -> PutResult:
        """Store ``data`` unless an identical chunk exists; holes are never stored."""
        if not data:
            raise ValueError("empty chunk")
        if is_zero(data):
            return PutResult(HOLE, 0, False)
        self._check_open()
        self.lease.ensure_valid()
        chunk_id = self.repo.codec.chunk_id(data)
        if self.has_chunk(chunk_id):
            return PutResult(chunk_id, 0, False)
        blob = self.repo.codec.seal(chunk_id, data)
        self.repo.backend.put(names.chunk_name(chunk_id), blob, retention=self.retention)
        with self._lock:
            self._state.known.add(chunk_id)
            repaired = chunk_id in self._state.corrupt
            self._state.corrupt.discard(chunk_id)
        if repaired:
            self.repo.backend.delete(names.corrupt_name(chunk_id))
        return PutResult(chunk_id, len(blob), True)

    # -- indexes and manifest -------------------------------------------------------------

    def add_disk(
        self,
        key: str,
        label: str,
        index: FixedIndex,
        *,
        cbt: CbtState | None = None,
        stats: TransferStats | None = None,
    ) -> DiskRecord:
        """Write the disk's index (format §7.1, step 3) and remember it for the manifest."""
        self._check_open()
        if index.chunk_size != self.repo.chunk_size:
            raise ValueError("index chunk size differs from the repository's")
        unknown = index.referenced() - self._state.known
        if unknown:
            raise ValueError(
                f"index of disk {key!r} references {len(unknown)} chunks this backup never"
                " stored, checked or took from its parent"
            )
        with self._lock:
            if any(d.key == key for d in self._state.disks):
                raise ValueError(f"disk {key!r} added twice")
            number = len(self._state.disks)
            plaintext = index.to_bytes()
            name = names.index_name(self.archive_id, number)
            binding = names.index_binding(self.archive_id, number)
            blob = self.repo.envelope.seal(Kind.INDEX, plaintext, binding)
            self.repo.backend.put(name, blob, retention=self.retention)
            record = DiskRecord(
                key=key,
                label=label,
                length=index.length,
                index=name,
                index_hash=blake3.blake3(plaintext).hexdigest(),
                cbt=cbt,
                stats=stats or TransferStats(logical_bytes=index.length),
            )
            self._state.disks.append(record)
            return record

    def commit(
        self,
        *,
        mode: BackupMode = "full",
        mode_reason: str = "",
        config_format: str = "",
        config_blob: bytes = b"",
        labels: dict[str, str] | None = None,
        stats: TransferStats | None = None,
    ) -> ArchiveManifest:
        """Write the manifest, which commits the archive, then release the lease."""
        self._check_open()
        disks = tuple(self._state.disks)
        total = TransferStats()
        for disk in disks:
            total = total + disk.stats
        manifest = ArchiveManifest(
            archive_id=self.archive_id,
            vm=self.vm,
            disks=disks,
            started=self.started,
            finished=self.repo.clock.now().replace(microsecond=0),
            parent=self.parent_id,
            mode=mode,
            mode_reason=mode_reason,
            config_format=config_format,
            config_blob=config_blob,
            retain_until=self.retention.until if self.retention else None,
            labels=dict(labels or {}),
            stats=stats or total,
        )
        blob = self.repo.encode_manifest(manifest)
        if self.retention is not None:  # the config copy must outlive the archive (§9)
            self.repo.retain_config(self.retention.until)
        self.lease.ensure_valid()
        self.repo.backend.put(names.manifest_name(self.archive_id), blob, retention=self.retention)
        self._close()
        return manifest

    def abort(self) -> None:
        """Give up: release the lease; what was uploaded is left for GC (or a retry)."""
        if not self._state.closed:
            self._close()

    def _close(self) -> None:
        self._state.closed = True
        self.lease.release()

    def _check_open(self) -> None:
        if self._state.closed:
            raise RepositoryError(f"backup {self.archive_id} is already committed or aborted")

    def __enter__(self) -> BackupWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()
