"""A VM's line of archives: its newest archive, the archive of one backup, and the mode.

The operator asks three questions of the repository before and during a backup, and the
answers must come from the bucket alone (a restarted operator, or a proxy Job on another
node, knows nothing else):

- :func:`latest_archive` — the parent of the next backup: the VM's newest committed
  archive (archive ids sort by start time, format §1.1);
- :func:`archive_of_backup` — the archive a given backup (by its UID, recorded in the
  manifest's ``backup_uid`` label) already committed. A proxy that died after the commit
  and is run again must report that archive and write nothing, so a retried transfer
  never produces a second archive;
- :func:`decide_mode` — what the next backup should read (pure): ``full`` without a
  parent, when a full was asked for, or when ``full_every`` is reached; otherwise
  ``incremental`` (which the CBT chain may still turn into a full scan, per disk).

Invariants: nothing here writes; manifests are read newest first and the scans are
bounded (``limit``), so the cost does not grow with a VM's history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vmguard.store.archive import ArchiveManifest
from vmguard.store.repository import Repository

BACKUP_UID_LABEL = "backup_uid"
"""Manifest label carrying the UID of the VMGuardBackup (or CLI run) that made the archive."""

ORIGIN_NAMESPACE = "vmguard.io/namespace"
ORIGIN_VMBACKUP = "vmguard.io/vmbackup"
ORIGIN_POLICY = "vmguard.io/policy"
"""Manifest labels naming the VMGuardBackup (namespace, name) and policy that made the archive;
catalog sync reads them back when it rebuilds VMGuardBackup objects from the bucket. They are
the repository format's (docs/repository-format.md), not the Kubernetes API's: spelled
like :mod:`vmguard.api`'s label keys but defined here, because archives outlive any
version of the API and these keys must not change when it does."""

SCAN_LIMIT = 64
"""Newest archives of a VM searched for a backup's UID: a retry comes soon after."""

RequestedMode = Literal["full", "incremental"]


def latest_archive(repo: Repository, vm_id: str) -> ArchiveManifest | None:
    """The VM's newest committed archive, or None for its first backup.

    Archive ids order by their start second (format §1.1); two archives that started in
    the same second tie, and their random suffixes order them by chance. Of the tied
    ones the newest is the one no other tied archive names as its parent (a child
    started after its parent committed), so a quick incremental is never passed over
    for the parent it was made from."""
    refs = repo.list_archives(vm_id)
    if not refs:
        return None
    tied = [ref for ref in refs if ref.started == refs[-1].started]
    manifests = [repo.load_archive(ref.archive_id) for ref in tied]
    parents = {m.parent for m in manifests}
    children = [m for m in manifests if m.archive_id not in parents]
    return (children or manifests)[-1]


def archive_of_backup(
    repo: Repository, vm_id: str, backup_uid: str, limit: int = SCAN_LIMIT
) -> ArchiveManifest | None:
    """The archive committed by backup ``backup_uid`` (newest ``limit`` searched)."""
    if not backup_uid:
        return None
    for ref in reversed(repo.list_archives(vm_id)[-limit:]):
        manifest = repo.load_archive(ref.archive_id)
        if manifest.labels.get(BACKUP_UID_LABEL) == backup_uid:
            return manifest
    return None


def backups_since_full(repo: Repository, vm_id: str, limit: int) -> int:
    """How many of the VM's newest archives (at most ``limit``) were not read in full.

    A full scan counts as full: it read every allocated block, so a CBT fault before it
    cannot hide anything after it.
    """
    count = 0
    for ref in reversed(repo.list_archives(vm_id)[-limit:] if limit > 0 else []):
        if repo.load_archive(ref.archive_id).mode in ("full", "full-scan"):
            break
        count += 1
    return count


@dataclass(frozen=True)
class ModeDecision:
    mode: RequestedMode
    reason: str
    parent: str | None
    """The archive the backup continues from; None for a full."""


def decide_mode(
    parent: ArchiveManifest | None,
    requested: str = "auto",
    full_every: int = 0,
    since_full: int = 0,
) -> ModeDecision:
    """The mode of the next backup (pure); ``since_full`` from :func:`backups_since_full`."""
    if parent is None:
        return ModeDecision("full", "first backup of this VM", None)
    if requested == "full":
        return ModeDecision("full", "a full backup was requested", None)
    if full_every > 0 and since_full + 1 >= full_every:
        return ModeDecision("full", f"fullEvery {full_every} reached", None)
    return ModeDecision("incremental", f"incremental from {parent.archive_id}", parent.archive_id)
