"""Garbage collection: two-step fossil collection, safe against running backups (format §7.3).

A run (1) finishes the pending collection once every backup that was running when it
was made has ended: fossils still referenced are resurrected, the others deleted;
(2) makes a new collection: unreferenced chunks older than the oldest running
backup minus the grace period are moved to ``fossils/``, and the backups running at
that moment are recorded; (3) if none were running, finishes it at once; (4) removes
leftovers of failed backups and expired trash. ``docs/repository-format.md`` §7.5 has
the argument why no chunk an archive needs is ever lost.

Invariants kept here:

- Only one GC acts at a time: it holds the GC lock (:mod:`vmguard.store.gclock`, a
  generation taken with create-if-absent) and checks it (:meth:`GcLock.fence`) before
  every delete, so a GC whose lock was taken over stops before it deletes anything
  more. On a store without atomic create-if-absent GC refuses to run unless told it
  is the only GC. At most one collection is pending.
- "Running backups" are the leases that are not *gone* (``ttl + grace``), never only
  the live ones (format §7.3): a lease whose refresh lands late, or whose holder lets
  it run out after an ambiguous manifest PUT, still counts.
- GC deletes chunk data only by deleting fossils, and only after marking from all
  roots *after* every lease recorded with the collection is gone. Settling a
  collection touches only its own fossils and fossils no pending collection claims.
- If any root manifest or index cannot be read, GC stops before deleting anything:
  it cannot know what that archive references.
- Times compared with object timestamps come from the store's own clock.
- Object-locked chunks are skipped and reported once per run, never retried in a loop.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from vmguard.errors import (
    CorruptObjectError,
    ObjectLockedError,
    ObjectNotFoundError,
    RepositoryError,
)
from vmguard.store import names
from vmguard.store.backend import Retention
from vmguard.store.gclock import GcLock
from vmguard.store.lease import (
    LeaseInfo,
    expired_long_ago,
    is_gone,
    read_leases,
    read_running_leases,
)
from vmguard.store.repository import Repository

log = logging.getLogger(__name__)


@dataclass
class GcReport:
    dry_run: bool = False
    candidates: int = 0
    fossilised: int = 0
    collection: str | None = None
    deleted: int = 0
    deleted_bytes: int = 0
    resurrected: int = 0
    waiting_for: list[str] = field(default_factory=list)
    """Leases of running backups the pending collection waits for."""
    locked: int = 0
    locked_until: datetime | None = None
    orphan_indexes: int = 0
    stale_leases: int = 0
    trash_emptied: int = 0
    messages: list[str] = field(default_factory=list)


class GarbageCollector:
    """One GC run over one repository. Use :func:`collect_garbage`."""

    def __init__(
        self,
        repo: Repository,
        *,
        auto_refresh: bool = True,
        chunk_grace_seconds: float | None = None,
        assume_sole_gc: bool = False,
    ) -> None:
        self.repo = repo
        self.backend = repo.backend
        self.ttl = float(repo.config.gc.lease_ttl_seconds)
        # Judging a lease gone, and everything that follows from it (stale leases,
        # orphaned indexes, interrupted prunes), uses the repository's own grace: the
        # safety argument of format §7.1/§7.5 needs margin + grace to exceed the longest
        # manifest PUT. The chunk age cutoff is not part of that argument (§7.5), so a
        # caller may shorten it (a VMGuardRepository's spec.gc.gracePeriod).
        self.grace = timedelta(seconds=repo.config.gc.grace_seconds)
        self.chunk_grace = (
            self.grace if chunk_grace_seconds is None else timedelta(seconds=chunk_grace_seconds)
        )
        self.auto_refresh = auto_refresh
        self.report = GcReport()
        self.lock = GcLock(
            self.backend,
            repo.clock,
            ttl=self.ttl,
            grace=self.grace.total_seconds(),
            assume_sole_gc=assume_sole_gc,
        )

    def _running(self, now: datetime) -> list[LeaseInfo]:
        return read_running_leases(self.backend, now, self.ttl, self.grace.total_seconds())

    def _delete(self, name: str) -> None:
        """Every delete GC makes goes through here: it is fenced by the GC lock."""
        self.lock.fence()
        self.backend.delete(name)

    # -- marking --------------------------------------------------------------------------

    def _trash_entries(self) -> dict[str, set[str]]:
        entries: dict[str, set[str]] = {}
        for info in self.backend.list(names.TRASH):
            parts = info.name.split("/")
            if len(parts) == 3:
                entries.setdefault(parts[1], set()).add(parts[2])
        return entries

    def _trash_leases(self, archive_id: str) -> list[str] | None:
        try:
            doc = json.loads(self.backend.get(names.trash_leases_name(archive_id)))
        except ObjectNotFoundError:
            return None
        return [str(name) for name in doc.get("leases", [])]

    def _trash_is_root(self, archive_id: str, now: datetime) -> bool:
        leases = self._trash_leases(archive_id)
        if leases is None:
            return True  # a prune in progress (format §7.4, between steps 1 and 3)
        grace = self.grace.total_seconds()
        return not all(is_gone(self.backend, n, now, self.ttl, grace) for n in leases)

    def mark(self, now: datetime) -> set[bytes]:
        """Ids of every chunk referenced by a root (format §7.3)."""
        referenced: set[bytes] = set()
        # Read every manifest of archives/ before listing the trash. A concurrent
        # prune copies a manifest to the trash before deleting it from archives/, so
        # one we fail to read here is in the trash when we list it below.
        for info in self.backend.list(names.ARCHIVES):
            archive_id = names.archive_id_from_manifest_name(info.name)
            if archive_id is not None:
                self._mark_root(archive_id, info.name, referenced)
        for archive_id, members in self._trash_entries().items():
            if "manifest" not in members or not self._trash_is_root(archive_id, now):
                continue
            if "leases" not in members and self._stale_trash_copy(archive_id):
                continue
            self._mark_root(archive_id, names.trash_manifest_name(archive_id), referenced)
        return referenced

    def _stale_trash_copy(self, archive_id: str) -> bool:
        """A trash copy without leases whose archive is gone and whose indexes are gone.

        A prune in progress copies a committed archive, whose indexes exist. This is a
        copy whose PUT was answered after the client gave up and landed once the
        retried prune's entry had been emptied, which happens only when every backup
        that could depend on it had ended. Cleanup removes it; it is no root.
        """
        if self._committed(archive_id):
            return False
        return not any(True for _ in self.backend.list(f"{names.INDEXES}{archive_id}/"))

    def _mark_root(self, archive_id: str, name: str, referenced: set[bytes]) -> None:
        try:
            blob = self.backend.get(name)
        except ObjectNotFoundError:
            return  # pruned meanwhile (its trash copy is a root) or trash emptied
        try:
            manifest = self.repo.decode_manifest(archive_id, blob)
            for disk in manifest.disks:
                referenced |= self.repo.load_index(manifest, disk).referenced()
        except (CorruptObjectError, RepositoryError) as exc:
            raise RepositoryError(
                f"GC stopped before deleting anything: archive {archive_id} cannot be"
                f" read ({exc}); run verify, then forget or repair that archive"
            ) from exc

    # -- step 1: finish the pending collection --------------------------------------------

    def _collection_fossils(self, collection: str) -> set[bytes]:
        try:
            doc = json.loads(self.backend.get(names.collection_fossils_name(collection)))
        except ObjectNotFoundError:
            return set()  # finished but for its leases object (a crash between the deletes)
        return {bytes.fromhex(str(c)) for c in doc.get("fossils", [])}

    def finish_pending(self, now: datetime) -> bool:
        """Finish pending collections; False if one still waits for running backups."""
        pending = sorted(
            {info.name.split("/")[2] for info in self.backend.list(names.GC_COLLECTIONS)}
        )
        members = {collection: self._collection_fossils(collection) for collection in pending}
        for collection in pending:
            leases_name = names.collection_leases_name(collection)
            try:
                leases = json.loads(self.backend.get(leases_name))["leases"]
            except ObjectNotFoundError:
                leases = [lease.name for lease in self._running(now)]
                self.backend.put(leases_name, json.dumps({"leases": leases}).encode())
            grace = self.grace.total_seconds()
            waiting = [n for n in leases if not is_gone(self.backend, n, now, self.ttl, grace)]
            if waiting:
                self.report.waiting_for = waiting
                self.report.messages.append(
                    f"collection {collection} waits for {len(waiting)} running backup(s)"
                )
                return False
            # Fossils another pending collection listed wait for that collection's
            # leases, not this one's: they are left alone (format §7.3 step 1).
            claimed = set().union(*(m for c, m in members.items() if c != collection))
            self._settle_fossils(now, members.pop(collection), claimed)
            self._delete(names.collection_fossils_name(collection))
            self._delete(leases_name)
        return True

    def _settle_fossils(self, now: datetime, own: set[bytes], claimed: set[bytes]) -> None:
        referenced = self.mark(now)
        lock = self.repo.config.object_lock
        for info in list(self.backend.list(names.FOSSILS)):
            chunk_id = names.chunk_id_from_name(info.name)
            if chunk_id is None or (chunk_id in claimed and chunk_id not in own):
                continue
            if chunk_id in referenced:
                chunk = names.chunk_name(chunk_id)
                try:
                    self.backend.stat(chunk)
                except ObjectNotFoundError:
                    self.backend.copy(info.name, chunk)
                    if lock:
                        until = now + timedelta(days=lock.days)
                        self.backend.set_retention(chunk, Retention(lock.mode, until))
                    self.report.resurrected += 1
            try:
                self._delete(info.name)
            except ObjectLockedError:
                self._note_locked(None)
                continue
            if chunk_id not in referenced:
                self.report.deleted += 1
                self.report.deleted_bytes += info.size

    # -- step 2: make a new collection ----------------------------------------------------

    def collect(self, now: datetime, *, dry_run: bool) -> bool:
        """Fossilise old unreferenced chunks; True if a collection was made."""
        running = self._running(now)
        oldest = min((lease.started for lease in running), default=now)
        cutoff = min(now, oldest) - self.chunk_grace
        referenced = self.mark(now)
        candidates = []
        for info in self.backend.list(names.CHUNKS):
            chunk_id = names.chunk_id_from_name(info.name)
            if chunk_id is None or chunk_id in referenced or info.modified >= cutoff:
                continue
            if self.repo.config.object_lock:
                until = self.backend.stat(info.name).retain_until
                if until is not None and until > now:
                    self._note_locked(until)
                    continue
            candidates.append(chunk_id)
        self.report.candidates = len(candidates)
        if dry_run or not candidates:
            return False
        collection = names.new_stamped_id(now)
        doc = {"created": names.format_time(now), "fossils": [c.hex() for c in candidates]}
        self.lock.fence()
        self.backend.put(names.collection_fossils_name(collection), json.dumps(doc).encode())
        for chunk_id in candidates:
            chunk, fossil = names.chunk_name(chunk_id), names.fossil_name(chunk_id)
            try:
                self.backend.copy(chunk, fossil)
                self._delete(chunk)
            except ObjectNotFoundError:
                continue  # a concurrent run or a repair removed it; nothing to move
            except ObjectLockedError:
                self._delete(fossil)
                self._note_locked(None)
                continue
            self.report.fossilised += 1
        running = self._running(self.repo.server_now())
        doc_leases = {"leases": [lease.name for lease in running]}
        self.backend.put(names.collection_leases_name(collection), json.dumps(doc_leases).encode())
        self.report.collection = collection
        return True

    def _note_locked(self, until: datetime | None) -> None:
        self.report.locked += 1
        latest = self.report.locked_until
        if until is not None and (latest is None or until > latest):
            self.report.locked_until = until

    # -- step 4: leftovers ----------------------------------------------------------------

    def cleanup(self, now: datetime) -> None:
        grace = self.grace.total_seconds()
        running = self._running(now)
        for lease in read_leases(self.backend):
            if expired_long_ago(lease.modified, now, self.ttl, grace):
                self._delete(lease.name)
                self.report.stale_leases += 1
        trash = self._trash_entries()
        for archive_id, members in trash.items():
            if "leases" not in members:
                self._finish_interrupted_prune(archive_id, now, running)
                continue
            leases = self._trash_leases(archive_id) or []
            gone = all(is_gone(self.backend, n, now, self.ttl, grace) for n in leases)
            if gone and self._delete_indexes(archive_id):
                # The manifest before its leases: a trash manifest without a leases
                # object is a root (a prune in progress), and its indexes are gone.
                self._delete(names.trash_manifest_name(archive_id))
                self._delete(names.trash_leases_name(archive_id))
                self.report.trash_emptied += 1
        running_ids = {lease.archive_id for lease in running}
        by_archive: dict[str, datetime] = {}
        for info in self.backend.list(names.INDEXES):
            archive_id = info.name.split("/")[1]
            by_archive[archive_id] = max(info.modified, by_archive.get(archive_id, info.modified))
        for archive_id, newest in by_archive.items():
            if archive_id in trash or archive_id in running_ids or newest >= now - self.grace:
                continue
            # Check archives/ first and the trash second: a concurrent prune copies to
            # the trash before it deletes from archives/, so one of the two is seen.
            if not names.is_archive_id(archive_id) or self._committed(archive_id):
                continue
            if self._exists(names.trash_manifest_name(archive_id)):
                continue
            if self._delete_indexes(archive_id):
                self.report.orphan_indexes += 1

    def _finish_interrupted_prune(
        self, archive_id: str, now: datetime, running: list[LeaseInfo]
    ) -> None:
        """A trash copy without ``leases``: a prune in progress, or one that died.

        If the archive is still committed the copy is left alone (a duplicate root
        costs nothing; removing it could race a slow prune). Otherwise, once the copy
        is older than the grace period, record the leases (not gone) of the archive's
        children, as the prune would have.
        """
        if self._committed(archive_id):
            return
        try:
            if now - self.backend.stat(names.trash_manifest_name(archive_id)).modified < self.grace:
                return
        except ObjectNotFoundError:
            return
        children = [lease.name for lease in running if lease.body.get("parent") == archive_id]
        record = {"archive_id": archive_id, "leases": children}
        self.backend.put(names.trash_leases_name(archive_id), json.dumps(record).encode())

    def _exists(self, name: str) -> bool:
        try:
            self.backend.stat(name)
        except ObjectNotFoundError:
            return False
        return True

    def _committed(self, archive_id: str) -> bool:
        return self._exists(names.manifest_name(archive_id))

    def _delete_indexes(self, archive_id: str) -> bool:
        """Delete an archive's indexes; False if Object Lock still holds one."""
        for info in list(self.backend.list(f"{names.INDEXES}{archive_id}/")):
            try:
                self._delete(info.name)
            except ObjectLockedError:
                self._note_locked(None)
                return False
        return True

    # -- run ------------------------------------------------------------------------------

    def run(self, *, dry_run: bool = False) -> GcReport:
        self.report = GcReport(dry_run=dry_run)
        now = self.repo.server_now()
        if dry_run:
            self.collect(now, dry_run=True)
            return self.report
        self.lock.acquire(now, auto_refresh=self.auto_refresh)
        try:
            if self.finish_pending(now) and self.collect(now, dry_run=False):
                # No backup was running while the fossils were made: finish at once.
                self.finish_pending(self.repo.server_now())
            self.cleanup(self.repo.server_now())
        finally:
            self.lock.release()
        if self.report.locked:
            until = self.report.locked_until
            when = f" (until {names.format_time(until)} at the latest)" if until else ""
            message = f"{self.report.locked} unreferenced chunk(s) are under Object Lock{when}"
            self.report.messages.append(message + "; they will be collected once it ends")
            log.info(message)
        return self.report


def collect_garbage(
    repo: Repository,
    *,
    dry_run: bool = False,
    auto_refresh: bool = True,
    chunk_grace_seconds: float | None = None,
    assume_sole_gc: bool = False,
) -> GcReport:
    """Run one garbage collection over ``repo``; see the module docstring.

    ``chunk_grace_seconds``: how old an unreferenced chunk must be before it is
    collected (default: the repository's ``gc.grace_seconds``). Leases are always judged
    with the repository's grace (format §7.3). ``assume_sole_gc``: the caller promises
    that no other GC can run on this repository; only then does GC run on a store
    without atomic create-if-absent.
    """
    gc = GarbageCollector(
        repo,
        auto_refresh=auto_refresh,
        chunk_grace_seconds=chunk_grace_seconds,
        assume_sole_gc=assume_sole_gc,
    )
    return gc.run(dry_run=dry_run)
