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
  so the chunk is uploaded again, which repairs it, and the marker is removed. A chunk
  this backup itself found damaged when reading it (:meth:`distrust`, a merge's parent
  chunk) is marked and treated the same way from then on.
- Nothing is trusted unseen (format §8.1): a chunk taken from the parent is known only
  after :mod:`vmguard.store.carry` found it present (or it was seen by an earlier
  backup of the chain); one that is missing is reported by :meth:`needs_upload` so the
  caller reads it again, and ``add_disk`` refuses an index that still names it.
  :meth:`commit` reads ``corrupt/`` again and refuses to commit an archive that
  references a chunk marked while the backup ran.
- :meth:`commit` writes the manifest only while the lease has at least its margin of
  validity left; afterwards it releases the lease. Once the manifest PUT was sent
  and did not succeed, its outcome is unknown (it may land later): the lease is then
  never deleted but left to run out its time (``ttl + grace``), so GC keeps counting
  this backup as running until the manifest has landed or never will (format §7.1).
- With Object Lock (format §9), the manifest and indexes are retained until
  ``retain_until``; every chunk the archive references is retained at least until its
  ``lock_horizon`` ≥ ``retain_until`` when the manifest is written: uploads and
  extensions go to ``retain_until`` plus one period, carried chunks are covered by the
  parent's horizon or extended, and chunks found by an existence check are extended
  when they end before half a period past ``retain_until``.
  The retained copy of the config (the key material that decrypts the archive) is kept
  at least until ``retain_until`` before the manifest is written.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Protocol

import blake3

from vmguard.errors import RepositoryError
from vmguard.store import names
from vmguard.store.archive import (
    ArchiveManifest,
    BackupMode,
    CbtState,
    DiskRecord,
    TransferStats,
    VmIdentity,
)
from vmguard.store.backend import Backend
from vmguard.store.carry import Checked, LockTarget, check_carried, earliest, look
from vmguard.store.chunk import HOLE, ChunkCodec, ChunkId, is_zero
from vmguard.store.clock import Clock
from vmguard.store.config import RepositoryConfig
from vmguard.store.envelope import Bytes, Envelope, Kind, Opened
from vmguard.store.index import FixedIndex
from vmguard.store.lease import Lease, lease_body


class WriterRepository(Protocol):
    """What a writer needs of an open repository (:class:`~vmguard.store.Repository` is one).

    Declared here, narrowly, so that the writer does not import the repository module,
    which starts writers (:meth:`Repository.begin_backup`): no import cycle.
    """

    backend: Backend
    config: RepositoryConfig
    clock: Clock
    envelope: Envelope
    codec: ChunkCodec

    @property
    def chunk_size(self) -> int: ...

    def load_archive(self, archive_id: str) -> ArchiveManifest: ...

    def load_index(self, manifest: ArchiveManifest, disk: DiskRecord | str) -> FixedIndex: ...

    def encode_manifest(self, manifest: ArchiveManifest) -> bytes: ...

    def retain_config(self, until: datetime) -> None: ...


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
    missing: set[bytes] = field(default_factory=set)
    """Parent chunks found absent or implausible: read again, never carried."""
    referenced: set[bytes] = field(default_factory=set)
    disks: list[DiskRecord] = field(default_factory=list)
    parent: ArchiveManifest | None = None
    parent_loaded: bool = False
    grandparent: ArchiveManifest | None = None
    grandparent_loaded: bool = False
    floor: datetime | None = None
    """With Object Lock: every known chunk is retained at least until then."""
    retention_requests: int = 0
    closed: bool = False
    manifest_sent: bool = False


class BackupWriter:
    """One backup in progress. Create with :meth:`Repository.begin_backup`."""

    def __init__(
        self,
        repo: WriterRepository,
        vm: VmIdentity,
        archive_id: str,
        parent: str | None,
        lease: Lease,
    ) -> None:
        self.repo = repo
        self.vm = vm
        self.archive_id = archive_id
        self.parent_id = parent
        self.lease = lease
        self.started = names.parse_archive_id(archive_id).started
        self._state = _State()
        self._lock = threading.Lock()
        self._checks: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []
        lock = repo.config.object_lock
        # Times are kept to the second, as the manifest stores them.
        self.lock = LockTarget.at(lock.mode, lock.days, repo.clock.now()) if lock else None

    @classmethod
    def start(
        cls, repo: WriterRepository, vm: VmIdentity, *, parent: str | None, auto_refresh: bool
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

    def parent_index(self, disk_key: str, *, check_now: bool = True) -> FixedIndex | None:
        """The parent's index of this disk, its chunks known to this writer once checked.

        Checked (format §8.1, §9): the chunks the parent added are looked at, and with
        Object Lock the parent's horizon covers the rest or every chunk is extended.
        Missing ones stay unknown; :meth:`needs_upload` names them. With ``check_now``
        false the check runs in the background (a backup reads its changed chunks
        meanwhile) and :meth:`needs_upload` knows only the chunks marked corrupt until
        :meth:`settle` has returned; :meth:`add_disk` and :meth:`commit` settle first,
        so no index and no lock horizon is ever written on an unfinished check.
        """
        parent = self.parent_manifest()
        if parent is None or disk_key not in {d.key for d in parent.disks}:
            return None
        index = self.repo.load_index(parent, disk_key)
        referenced = index.referenced()
        with self._lock:
            chunks = referenced - self._state.corrupt - self._state.known
        self.lease.ensure_valid()
        added = self._added_by_parent(parent, disk_key, referenced) & chunks

        def check() -> None:
            checked = check_carried(
                self.repo.backend, self.repo.codec, chunks, added, parent, self.lock
            )
            with self._lock:
                self._record(checked)
                # A chunk this writer stored or saw itself meanwhile (put_chunk, has_chunk)
                # is there, whatever a listing made before that said.
                found_missing = checked.missing - self._state.known
                self._state.missing |= found_missing
                self._state.known |= chunks - found_missing

        if check_now:
            check()
        else:
            with self._lock:
                if self._checks is None:
                    self._checks = ThreadPoolExecutor(1, thread_name_prefix="vmguard-carried")
                self._pending.append(self._checks.submit(check))
        return index

    def settle(self) -> None:
        """Wait for the background checks of :meth:`parent_index`; their first failure is
        raised here (then the backup fails: nothing unchecked is committed)."""
        with self._lock:
            pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def _added_by_parent(
        self, parent: ArchiveManifest, disk_key: str, referenced: set[bytes]
    ) -> set[bytes]:
        """Chunks of the parent's disk not already in the grandparent's: the ones nobody
        but their uploader may have seen yet. All of them when the parent was written
        without the rule (an earlier release) or its own parent is gone."""
        if not parent.carried_checked or not parent.parent:
            return referenced
        with self._lock:
            if not self._state.grandparent_loaded:
                try:
                    self._state.grandparent = self.repo.load_archive(parent.parent)
                except RepositoryError:
                    self._state.grandparent = None
                self._state.grandparent_loaded = True
            grandparent = self._state.grandparent
        if grandparent is None or disk_key not in {d.key for d in grandparent.disks}:
            return referenced
        try:
            before = self.repo.load_index(grandparent, disk_key).referenced()
        except RepositoryError:
            return referenced
        return referenced - before

    def marked_corrupt(self, chunk_id: bytes) -> bool:
        """True if the chunk is marked corrupt (``corrupt/``, or :meth:`distrust`):
        known at once, unlike the findings of a background check (:meth:`settle`)."""
        return chunk_id in self._state.corrupt

    def needs_upload(self, chunk_id: bytes) -> bool:
        """True if the chunk was found corrupt or missing: re-read it from the source,
        do not carry it."""
        return chunk_id in self._state.corrupt or chunk_id in self._state.missing

    def distrust(self, chunk_id: bytes, reason: str) -> None:
        """Record that a read of ``chunk_id`` found it missing or failing its check.

        From then on this writer treats it as a chunk marked corrupt (format §8.1): never
        deduplicated against, so the next upload of those bytes repairs it; ``add_disk``
        refuses an index that still names it. The finding is also written as
        ``corrupt/<id>``, as verify writes its own (§8), so the archives that need the
        chunk are known to be damaged, every other writer stops trusting it, and the
        commit check refuses this archive if an index already added names it.
        """
        marker = {
            "id": chunk_id.hex(),
            "detected": names.format_time(self.repo.clock.now()),
            "reason": reason,
        }
        with self._lock:
            self._state.known.discard(chunk_id)
            self._state.corrupt.add(chunk_id)
        self.repo.backend.put(names.corrupt_name(chunk_id), json.dumps(marker).encode())

    def _record(self, checked: Checked) -> None:
        """Fold a check's floor and requests into the writer's (under ``_lock``)."""
        self._state.floor = earliest(self._state.floor, checked.floor)
        self._state.retention_requests += checked.requests

    # -- chunks ---------------------------------------------------------------------------

    def has_chunk(self, chunk_id: bytes) -> bool:
        """True if ``chunks/<id>`` exists, plausibly sized, and is neither marked corrupt
        nor found missing; with Object Lock it is then retained long enough."""
        if chunk_id in self._state.corrupt or chunk_id in self._state.missing:
            return False
        if chunk_id in self._state.known:
            return True
        # Truncated or garbage, or gone before its lock could be extended (GC may have
        # just fossilised it): upload it again.
        lock = self.lock
        checked = look(
            self.repo.backend, self.repo.codec, chunk_id, lock, lock.renew_below if lock else None
        )
        with self._lock:
            self._record(checked)
            if checked.missing:
                return False
            self._state.known.add(chunk_id)
        return True

    def put_chunk(self, data: Bytes, *, like: Opened | None = None) -> PutResult:
        """Store ``data`` unless an identical chunk exists; holes are never stored.

        ``like``: ``data`` as a repository of this one's compression level opened it
        (a copy's source): its zstd frame is stored as it is, not compressed again.
        """
        if not data:
            raise ValueError("empty chunk")
        if is_zero(data):
            return PutResult(HOLE, 0, False)
        self._check_open()
        self.lease.ensure_valid()
        chunk_id = self.repo.codec.chunk_id(data)
        if self.has_chunk(chunk_id):
            return PutResult(chunk_id, 0, False)
        blob = self.repo.codec.seal(chunk_id, data, like=like)
        lock = self.lock
        retention = lock.chunk_retention if lock else None
        self.repo.backend.put(names.chunk_name(chunk_id), blob, retention=retention)
        with self._lock:
            repaired = chunk_id in self._state.corrupt or chunk_id in self._state.missing
        if repaired:
            # A repair is looked at once more: the chain's next backup will trust it as
            # a chunk of the grandparent it already was (format §8.1).
            if look(self.repo.backend, self.repo.codec, chunk_id).missing:
                raise RepositoryError(f"chunk {chunk_id.hex()} is missing after its upload")
            self.repo.backend.delete(names.corrupt_name(chunk_id))
        with self._lock:
            self._state.known.add(chunk_id)
            self._state.corrupt.discard(chunk_id)
            self._state.missing.discard(chunk_id)
            self._state.floor = earliest(self._state.floor, lock.chunk_until if lock else None)
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
        self.settle()
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
            lock = self.lock
            self.repo.backend.put(name, blob, retention=lock.archive_retention if lock else None)
            self._state.referenced |= index.referenced()
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
        self.settle()
        self._check_no_new_marks()
        lock = self.lock
        horizon = self._lock_horizon()
        disks = tuple(self._state.disks)
        total = TransferStats()
        for disk in disks:
            total = total + disk.stats
        requests = self._state.retention_requests
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
            retain_until=lock.retain_until if lock else None,
            lock_horizon=horizon,
            carried_checked=True,
            labels=dict(labels or {}),
            stats=dataclasses.replace(stats or total, retention_requests=requests),
        )
        blob = self.repo.encode_manifest(manifest)
        if lock is not None:  # the config copy must outlive the archive (§9)
            self.repo.retain_config(lock.retain_until)
        self.lease.ensure_valid()
        retention = lock.archive_retention if lock else None
        self._state.manifest_sent = True
        self.repo.backend.put(names.manifest_name(self.archive_id), blob, retention=retention)
        self._state.closed = True
        self._stop_checks()  # settled above: only the idle thread is left
        self.lease.release()  # the manifest is stored: nothing of ours can land later
        return manifest

    def _check_no_new_marks(self) -> None:
        """Refuse to commit over a chunk a verify marked while this backup ran (§8.1)."""
        marked = set()
        for info in self.repo.backend.list(names.CORRUPT):
            chunk_id = names.chunk_id_from_name(info.name)
            if chunk_id is not None:
                marked.add(chunk_id)
        hit = marked & self._state.referenced
        if hit:
            raise RepositoryError(
                f"{len(hit)} chunk(s) this backup references were marked corrupt while it"
                f" ran (first {min(hit).hex()}); no archive was committed: the next backup"
                " reads them again from the source"
            )

    def _lock_horizon(self) -> datetime | None:
        """Until when every chunk of this archive is locked (format §9); None without
        Object Lock."""
        lock = self.lock
        if lock is None:
            return None
        floor = self._state.floor
        if floor is None:  # no chunk at all: nothing to hold
            return lock.chunk_until
        if floor < lock.retain_until:
            raise RepositoryError(
                f"a chunk of backup {self.archive_id} is locked only until {floor}, before"
                f" its retain_until {lock.retain_until}; not committed"
            )
        return floor

    def abort(self) -> None:
        """Give up: release the lease; what was uploaded is left for GC (or a retry).

        After a manifest PUT that failed, the lease is left to run out instead: the
        manifest may still land (a timeout after the server stored it).
        """
        if self._state.closed:
            return
        self._state.closed = True
        self._stop_checks()
        if self._state.manifest_sent:
            self.lease.abandon()
        else:
            self.lease.release()

    def _stop_checks(self) -> None:
        """Let a background check end before the lease goes: it reads and extends
        retentions under this writer's lease (its failure no longer matters)."""
        if self._checks is not None:
            self._checks.shutdown(wait=True, cancel_futures=True)
            self._checks = None
        self._pending = []

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
