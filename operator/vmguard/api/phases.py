"""The phases of VMGuardBackup and VMGuardRestore, and which of them mean what.

The CRDs' ``status.phase`` enums are generated from these classes (:mod:`vmguard.crds`),
so the apiserver admits exactly the phases the code knows. A ``StrEnum`` member is
its string: it compares, hashes and serialises as ``"Completed"``, so a phase read
from an object's status (a plain ``str``) is tested with ``in BACKUP_TERMINAL`` or
``== BackupPhase.COMPLETED`` without converting it.

An object without a phase yet is ``Pending`` for every reader.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class BackupPhase(StrEnum):
    """``VMGuardBackup.status.phase``: Pending → Snapshotting → Transferring → Finalizing →
    Completed | Failed."""

    PENDING = "Pending"
    """Waiting for its references, its VM, or a slot under the concurrency limits."""
    SNAPSHOTTING = "Snapshotting"
    TRANSFERRING = "Transferring"
    FINALIZING = "Finalizing"
    """Removing the snapshot, then settling the outcome."""
    COMPLETED = "Completed"
    """The archive is committed: every disk of the VM is in it."""
    FAILED = "Failed"
    """No archive was made (nothing of a failed backup is restorable)."""


BACKUP_ACTIVE: Final = frozenset(
    {BackupPhase.SNAPSHOTTING, BackupPhase.TRANSFERRING, BackupPhase.FINALIZING}
)
"""Backups holding a snapshot or a proxy: what the concurrency limits count."""

BACKUP_TERMINAL: Final = frozenset({BackupPhase.COMPLETED, BackupPhase.FAILED})
"""Backups that have ended; the controller takes no further step."""


class RestorePhase(StrEnum):
    """``VMGuardRestore.status.phase``: Pending → Restoring → Finalizing → Completed | Failed."""

    PENDING = "Pending"
    """Checking the source and preparing the target; then the Job is created."""
    RESTORING = "Restoring"
    FINALIZING = "Finalizing"
    """Powering the VM on when asked."""
    COMPLETED = "Completed"
    FAILED = "Failed"


RESTORE_TERMINAL: Final = frozenset({RestorePhase.COMPLETED, RestorePhase.FAILED})
