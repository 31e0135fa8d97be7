"""Garbage collection: two-step fossil collection, safe against running backups (format §7.3).

A run (1) finishes the pending collection once every backup that was running when it
was made has ended: fossils still referenced are resurrected, the others deleted;
(2) makes a new collection: unreferenced chunks older than the oldest running
backup minus the grace period are moved to ``fossils/``, and the backups running at
that moment are recorded; (3) if none were running, finishes it at once; (4) removes
leftovers of failed backups and expired trash. ``docs/repository-format.md`` §7.5 has
the argument why no chunk an archive needs is ever lost.

Invariants kept here:

- Only one GC runs at a time (``gc/lock``, a refreshed lease taken with
  create-if-absent) and at most one collection is pending.
- GC deletes chunk data only by deleting fossils, and only after marking from all
  roots *after* every lease recorded with the collection is gone.
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
    GcBusyError,
    ObjectLockedError,
    ObjectNotFoundError,
    RepositoryError,
)
from vmguard.store import names
from vmguard.store.backend import Retention
from vmguard.store.lease import (
    Lease,
    LeaseInfo,
    is_gone,
    lease_body,
    read_leases,
    read_live_leases,
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
    ) -> None:
        self.repo = repo
        self.backend = repo.backend
        self.ttl = float(repo.config.gc.lease_ttl_seconds)
        # Judging a lease gone, and everything that follows from it (stale leases,
        # orphaned indexes, interrupted prunes), uses the repository's own grace: the
        # safety argument of format §7.1/§7.5 needs margin + grace to exceed the longest
        # manifest PUT. The chunk age cutoff is not part of that argument (§7.5), so a
        # caller may shorten it (a BackupRepository's spec.gc.gracePeriod).
        self.grace = timedelta(seconds=repo.config.gc.grace_seconds)
        self.chunk_grace = (
            self.grace if chunk_grace_seconds is None else timedelta(seconds=chunk_grace_seconds)
        )
        self.auto_refresh = auto_refresh
        self.report = GcReport()
        self._lease: Lease | None = None

    # -- lock -----------------------------------------------------------------------------

    def _acquire(self, now: datetime) -> None:
        body = lease_body("gc", self.repo.clock.now(), self.ttl)
        lease = Lease(self.backend, names.GC_LOCK, body, ttl=self.ttl, clock=self.repo.clock)
        if not lease.acquire(if_absent=True):
            try:
                held_since = self.backend.stat(names.GC_LOCK).modified
            except ObjectNotFoundError:
                held_since = None
            if held_since is not None and now - held_since <= timedelta(seconds=self.ttl):
                raise GcBusyError(f"another GC holds {names.GC_LOCK} (refreshed {held_since})")
            self.backend.delete(names.GC_LOCK)  # its holder died; the lock expired
            if not lease.acquire(if_absent=True):
                raise GcBusyError(f"another GC took {names.GC_LOCK} just now")
        if self.auto_refresh:
            lease.start_refreshing()
        self._lease = lease

    def _ensure_lock(self) -> None:
        assert self._lease is not None
        self._lease.ensure_valid()

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
            if "manifest" in members and self._trash_is_root(archive_id, now):
                self._mark_root(archive_id, names.trash_manifest_name(archive_id), referenced)
        return referenced

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

    def finish_pending(self, now: datetime) -> bool:
        """Finish pending collections; False if one still waits for running backups."""
        pending = sorted(
            {info.name.split("/")[2] for info in self.backend.list(names.GC_COLLECTIONS)}
        )
        for collection in pending:
            leases_name = names.collection_leases_name(collection)
            try:
                leases = json.loads(self.backend.get(leases_name))["leases"]
            except ObjectNotFoundError:
                live = read_live_leases(self.backend, now, self.ttl)
                leases = [lease.name for lease in live]
                self.backend.put(leases_name, json.dumps({"leases": leases}).encode())
            grace = self.grace.total_seconds()
            waiting = [n for n in leases if not is_gone(self.backend, n, now, self.ttl, grace)]
            if waiting:
                self.report.waiting_for = waiting
                self.report.messages.append(
                    f"collection {collection} waits for {len(waiting)} running backup(s)"
                )
                return False
            self._settle_fossils(now)
            self.backend.delete(names.collection_fossils_name(collection))
            self.backend.delete(leases_name)
        return True

    def _settle_fossils(self, now: datetime) -> None:
        referenced = self.mark(now)
        self._ensure_lock()
        lock = self.repo.config.object_lock
        for info in list(self.backend.list(names.FOSSILS)):
            chunk_id = names.chunk_id_from_name(info.name)
            if chunk_id is None:
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
                self.backend.delete(info.name)
            except ObjectLockedError:
                self._note_locked(None)
                continue
            if chunk_id not in referenced:
                self.report.deleted += 1
                self.report.deleted_bytes += info.size

    # -- step 2: make a new collection ----------------------------------------------------

    def collect(self, now: datetime, *, dry_run: bool) -> bool:
        """Fossilise old unreferenced chunks; True if a collection was made."""
        live = read_live_leases(self.backend, now, self.ttl)
        oldest = min((lease.started for lease in live), default=now)
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
        self.backend.put(names.collection_fossils_name(collection), json.dumps(doc).encode())
        self._ensure_lock()
        for chunk_id in candidates:
            chunk, fossil = names.chunk_name(chunk_id), names.fossil_name(chunk_id)
            try:
                self.backend.copy(chunk, fossil)
                self.backend.delete(chunk)
            except ObjectNotFoundError:
                continue  # a concurrent run or a repair removed it; nothing to move
            except ObjectLockedError:
                self.backend.delete(fossil)
                self._note_locked(None)
                continue
            self.report.fossilised += 1
        live = read_live_leases(self.backend, self.repo.server_now(), self.ttl)
        doc_leases = {"leases": [lease.name for lease in live]}
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
        live = read_live_leases(self.backend, now, self.ttl)
        for lease in read_leases(self.backend):
            if now - lease.modified > timedelta(seconds=self.ttl) + self.grace:
                self.backend.delete(lease.name)
                self.report.stale_leases += 1
        trash = self._trash_entries()
        for archive_id, members in trash.items():
            if "leases" not in members:
                self._finish_interrupted_prune(archive_id, now, live)
                continue
            leases = self._trash_leases(archive_id) or []
            gone = all(is_gone(self.backend, n, now, self.ttl, grace) for n in leases)
            if gone and self._delete_indexes(archive_id):
                self.backend.delete(names.trash_leases_name(archive_id))
                self.backend.delete(names.trash_manifest_name(archive_id))
                self.report.trash_emptied += 1
        running = {lease.archive_id for lease in live}
        by_archive: dict[str, datetime] = {}
        for info in self.backend.list(names.INDEXES):
            archive_id = info.name.split("/")[1]
            by_archive[archive_id] = max(info.modified, by_archive.get(archive_id, info.modified))
        for archive_id, newest in by_archive.items():
            if archive_id in trash or archive_id in running or newest >= now - self.grace:
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
        self, archive_id: str, now: datetime, live: list[LeaseInfo]
    ) -> None:
        """A trash copy without ``leases``: a prune in progress, or one that died.

        If the archive is still committed the copy is left alone (a duplicate root
        costs nothing; removing it could race a slow prune). Otherwise, once the copy
        is older than the grace period, record the live leases of the archive's
        children, as the prune would have.
        """
        if self._committed(archive_id):
            return
        try:
            if now - self.backend.stat(names.trash_manifest_name(archive_id)).modified < self.grace:
                return
        except ObjectNotFoundError:
            return
        children = [lease.name for lease in live if lease.body.get("parent") == archive_id]
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
                self.backend.delete(info.name)
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
        self._acquire(now)
        try:
            if self.finish_pending(now) and self.collect(now, dry_run=False):
                # No backup was running while the fossils were made: finish at once.
                self.finish_pending(self.repo.server_now())
            self.cleanup(self.repo.server_now())
        finally:
            assert self._lease is not None
            self._lease.release()
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
) -> GcReport:
    """Run one garbage collection over ``repo``; see the module docstring.

    ``chunk_grace_seconds``: how old an unreferenced chunk must be before it is
    collected (default: the repository's ``gc.grace_seconds``). Leases are always judged
    with the repository's grace (format §7.3).
    """
    gc = GarbageCollector(repo, auto_refresh=auto_refresh, chunk_grace_seconds=chunk_grace_seconds)
    return gc.run(dry_run=dry_run)
