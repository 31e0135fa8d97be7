"""Lock-check: find and repair Object Lock retentions shorter than an archive promises
(format §9.2).

Every archive whose retention is still running promises that its manifest and indexes
are retained until its ``retain_until``, and every chunk it references until its
``lock_horizon`` (``retain_until`` for an archive written before the horizon existed).
Backups keep that promise by themselves; lock-check reads the truth back from the store
for the cases they cannot see: a GOVERNANCE retention shortened or removed by someone
holding ``s3:BypassGovernanceRetention``, archives written by a release that did not
extend carried chunks, a bucket restored from a copy without its retentions.

Invariants:

- One HEAD per object of a locked archive (and a retention request per shortfall when
  repairing); no object is read, written or deleted otherwise. It is a maintenance
  pass, like verify, not part of a backup.
- A shortfall is repaired by extending the retention to exactly what the archives
  referencing the object need: never shortened, never longer than promised.
- An object that is missing (or only a fossil, which GC will resurrect) cannot be
  locked: it is reported, unrepaired, with every archive that needs it; verify names
  the damage and a later backup repairs the chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from vmguard.errors import (
    CorruptObjectError,
    ObjectLockedError,
    ObjectNotFoundError,
    RepositoryError,
)
from vmguard.store import names
from vmguard.store.backend import Retention
from vmguard.store.repository import Repository

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class LockShortfall:
    name: str
    """The object whose retention ends too early."""
    until: datetime | None
    """Its retention as the store reports it (None: none, or the object is missing)."""
    needed: datetime
    archives: tuple[str, ...]
    """Every archive whose promise needs it, oldest first."""
    repaired: bool
    detail: str = ""


@dataclass
class LockCheckReport:
    object_lock: bool
    """False: the repository does not use Object Lock; nothing was checked."""
    archives: int = 0
    """Archives whose retention is still running (the ones checked)."""
    objects: int = 0
    shortfalls: list[LockShortfall] = field(default_factory=list)
    retention_requests: int = 0
    problems: list[str] = field(default_factory=list)
    """Archives that could not be read, so their objects were not checked."""

    @property
    def repaired(self) -> int:
        return sum(1 for s in self.shortfalls if s.repaired)

    @property
    def ok(self) -> bool:
        """True when every promise holds now (after repairs)."""
        return not self.problems and all(s.repaired for s in self.shortfalls)


@dataclass
class _Need:
    until: datetime
    archives: list[str]


def _needs(repo: Repository, now: datetime, report: LockCheckReport) -> dict[str, _Need]:
    """Object name → the longest retention a running archive promises for it."""
    needs: dict[str, _Need] = {}

    def need(name: str, until: datetime, archive_id: str) -> None:
        entry = needs.get(name)
        if entry is None:
            needs[name] = _Need(until, [archive_id])
        else:
            entry.until = max(entry.until, until)
            entry.archives.append(archive_id)

    for ref in repo.list_archives():
        try:
            manifest = repo.load_archive(ref.archive_id)
        except (CorruptObjectError, RepositoryError) as exc:
            report.problems.append(f"archive {ref.archive_id}: {exc}")
            continue
        until = manifest.retain_until
        horizon = manifest.lock_horizon or until
        if until is None or horizon is None or max(until, horizon) <= now:
            continue
        report.archives += 1
        if until > now:
            need(names.manifest_name(ref.archive_id), until, ref.archive_id)
        for disk in manifest.disks:
            if until > now:
                need(disk.index, until, ref.archive_id)
            try:
                index = repo.load_index(manifest, disk)
            except CorruptObjectError as exc:
                report.problems.append(f"archive {ref.archive_id}: {exc}")
                continue
            for chunk_id in index.referenced():
                need(names.chunk_name(chunk_id), horizon, ref.archive_id)
    return needs


def lock_check(
    repo: Repository,
    *,
    repair: bool = True,
    workers: int = 16,
    progress: Progress | None = None,
) -> LockCheckReport:
    """Check (and unless ``repair`` is False, extend) every retention a running archive
    promises. See the module docstring."""
    lock = repo.config.object_lock
    report = LockCheckReport(object_lock=lock is not None)
    if lock is None:
        return report
    needs = _needs(repo, repo.clock.now(), report)
    report.objects = len(needs)

    def check(name: str) -> tuple[LockShortfall | None, int]:
        want = needs[name]
        archives = tuple(sorted(set(want.archives)))
        try:
            until = repo.backend.stat(name).retain_until
        except ObjectNotFoundError:
            detail = "missing"
            chunk_id = names.chunk_id_from_name(name)
            if chunk_id is not None and _exists(repo, names.fossil_name(chunk_id)):
                detail = "only a fossil (GC resurrects it; check again after GC)"
            return LockShortfall(name, None, want.until, archives, False, detail), 0
        if until is not None and until >= want.until:
            return None, 0
        if not repair:
            return LockShortfall(name, until, want.until, archives, False), 0
        try:
            repo.backend.set_retention(name, Retention(lock.mode, want.until))
        except (ObjectLockedError, ObjectNotFoundError, RepositoryError) as exc:
            return LockShortfall(name, until, want.until, archives, False, str(exc)), 1
        return LockShortfall(name, until, want.until, archives, True), 1

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for done, (shortfall, requests) in enumerate(pool.map(check, sorted(needs)), 1):
            report.retention_requests += requests
            if shortfall is not None:
                report.shortfalls.append(shortfall)
            if progress:
                progress(done, len(needs))
    return report


def _exists(repo: Repository, name: str) -> bool:
    try:
        repo.backend.stat(name)
    except ObjectNotFoundError:
        return False
    return True
