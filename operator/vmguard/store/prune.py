"""Prune: choose which archives a retention policy keeps, and retire the rest (format §7.4).

:func:`select_retained` is a pure function of archive times and the policy, with the
semantics users know from restic and Proxmox Backup Server: ``keep_last`` keeps the
newest N archives; ``keep_hourly`` (daily, weekly, monthly, yearly) keeps the newest
archive of each of the newest N hours (days, ISO weeks, months, years) that have one.
An archive kept for any reason is kept.

:func:`prune` applies it per VM. Invariants:

- A policy that keeps nothing is refused: a typo never empties a repository.
- Pruning moves the manifest to the trash (copy, delete, record the leases that are
  not gone of backups that name it as their parent: a lease past its ttl may still be
  refreshed late, format §7.3), so a backup that loaded it as its parent stays safe
  until it finishes; chunks are only ever removed by GC.
- Archives whose Object Lock retention has not passed are not touched; they are
  reported once each with their date, never retried in a loop.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo

from vmguard.errors import ConfigError, ObjectLockedError, ObjectNotFoundError
from vmguard.store import names
from vmguard.store.lease import read_running_leases
from vmguard.store.repository import ArchiveRef, Repository


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0

    def __post_init__(self) -> None:
        if min(self.counts().values()) < 0:
            raise ConfigError("retention counts must not be negative")

    def counts(self) -> dict[str, int]:
        return {
            "last": self.keep_last,
            "hourly": self.keep_hourly,
            "daily": self.keep_daily,
            "weekly": self.keep_weekly,
            "monthly": self.keep_monthly,
            "yearly": self.keep_yearly,
        }

    @property
    def keeps_nothing(self) -> bool:
        return not any(self.counts().values())


_BUCKETS: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar()[:2]),
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: (t.year,),
}


def select_retained(
    archives: Iterable[tuple[str, datetime]], policy: RetentionPolicy, tz: tzinfo = UTC
) -> dict[str, list[str]]:
    """Archive id -> reasons to keep it, for the archives the policy keeps.

    ``archives`` are (id, time) pairs of one VM; periods are computed in ``tz``.
    """
    if policy.keeps_nothing:
        raise ConfigError("the retention policy keeps nothing; refusing to prune everything")
    newest_first = sorted(archives, key=lambda item: (item[1], item[0]), reverse=True)
    keep: dict[str, list[str]] = defaultdict(list)
    for archive_id, _ in newest_first[: policy.keep_last]:
        keep[archive_id].append("last")
    for kind, bucket_of in _BUCKETS.items():
        remaining = policy.counts()[kind]
        last_bucket: tuple[int, ...] | None = None
        for archive_id, when in newest_first:
            if remaining <= 0:
                break
            bucket = bucket_of(when.astimezone(tz))
            if bucket != last_bucket:
                keep[archive_id].append(kind)
                last_bucket = bucket
                remaining -= 1
    return dict(keep)


@dataclass
class PruneReport:
    kept: dict[str, list[str]] = field(default_factory=dict)
    pruned: list[str] = field(default_factory=list)
    locked: list[tuple[str, datetime]] = field(default_factory=list)
    """Archives the policy would drop but Object Lock retains, with the lock's end."""
    dry_run: bool = False


def _by_vm(refs: Iterable[ArchiveRef]) -> dict[str, list[ArchiveRef]]:
    groups: dict[str, list[ArchiveRef]] = defaultdict(list)
    for ref in refs:
        groups[ref.vm_tag].append(ref)
    return groups


def prune(
    repo: Repository,
    policy: RetentionPolicy,
    *,
    vm_id: str | None = None,
    tz: tzinfo = UTC,
    dry_run: bool = False,
) -> PruneReport:
    """Retire the archives ``policy`` does not keep, per VM (or of one VM)."""
    report = PruneReport(dry_run=dry_run)
    for refs in _by_vm(repo.list_archives(vm_id)).values():
        kept = select_retained(((r.archive_id, r.started) for r in refs), policy, tz)
        report.kept.update(kept)
        for ref in refs:
            if ref.archive_id in kept:
                continue
            if dry_run:
                report.pruned.append(ref.archive_id)
                continue
            until = retire_archive(repo, ref.archive_id)
            if until is None:
                report.pruned.append(ref.archive_id)
            else:
                report.locked.append((ref.archive_id, until))
    return report


def retire_archive(repo: Repository, archive_id: str) -> datetime | None:
    """Move one archive to the trash; return its lock's end instead if it is locked."""
    manifest_name = names.manifest_name(archive_id)
    trash_manifest = names.trash_manifest_name(archive_id)
    try:
        blob = repo.backend.get(manifest_name)
    except ObjectNotFoundError:
        return None  # already gone (a concurrent prune)
    manifest = repo.decode_manifest(archive_id, blob)
    now = repo.clock.now()
    if manifest.retain_until is not None and manifest.retain_until > now:
        return manifest.retain_until
    repo.backend.put(trash_manifest, blob)
    try:
        repo.backend.delete(manifest_name)
    except ObjectLockedError:
        # The store's lock outlives the manifest's record of it (clock skew, or a
        # bucket default retention): leave the archive alone, and no stray trash root.
        repo.backend.delete(trash_manifest)
        return manifest.retain_until or now
    ttl = float(repo.config.gc.lease_ttl_seconds)
    grace = float(repo.config.gc.grace_seconds)
    server_now = repo.server_now()
    # Only a backup that names this archive as its parent can have loaded its index
    # (BackupWriter loads no other manifest), so only those leases keep it a root.
    children = [
        lease.name
        for lease in read_running_leases(repo.backend, server_now, ttl, grace)
        if lease.body.get("parent") == archive_id
    ]
    record = {
        "archive_id": archive_id,
        "pruned": names.format_time(server_now),
        "leases": children,
    }
    repo.backend.put(names.trash_leases_name(archive_id), json.dumps(record).encode())
    return None
