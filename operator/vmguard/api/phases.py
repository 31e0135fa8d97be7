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


class VerificationPhase(StrEnum):
    """``VMGuardBackup.status.verification.phase``: a completed backup's verification run
    (docs/verification.md, "In the cluster"): Pending (waiting in its vCenter's admission
    queue) → Verifying (its proxy Job runs) → Completed (``result`` says how it went)."""

    PENDING = "Pending"
    VERIFYING = "Verifying"
    COMPLETED = "Completed"


class VerificationResult(StrEnum):
    """What a verification found: ``Passed`` (every check passed), ``Failed`` (a file
    system check found damage), ``Infected`` (a YARA rule matched a file), ``Error`` (no
    verdict: a tool missing, rules that do not compile, the Job failed). ``Failed`` and
    ``Infected`` mark the point bad; ``Error`` says nothing about the point."""

    PASSED = "Passed"
    FAILED = "Failed"
    INFECTED = "Infected"
    ERROR = "Error"


VERIFICATION_BAD: Final = frozenset({VerificationResult.FAILED, VerificationResult.INFECTED})
"""Results that mark a point bad: it is not a good (nor a clean) point any more."""


BACKUP_ACTIVE: Final = frozenset(
    {BackupPhase.SNAPSHOTTING, BackupPhase.TRANSFERRING, BackupPhase.FINALIZING}
)
"""Backups holding a snapshot or a proxy: what the concurrency limits count."""

BACKUP_TERMINAL: Final = frozenset({BackupPhase.COMPLETED, BackupPhase.FAILED})
"""Backups that have ended; the controller takes no further step."""


class CopyState(StrEnum):
    """``VMGuardBackup.status.copies[].state``: one copy target's copy of the backup's
    archive (issue 17). Pending → Running → Completed | Failed (a Failed copy is tried
    again, as a new Job, up to the copy controller's attempts); Completed → Pruned."""

    PENDING = "Pending"
    """Not started: waiting for its delay, its turn under the policy's concurrency, or
    the copy of an older point of the VM."""
    RUNNING = "Running"
    COMPLETED = "Completed"
    """The copy's manifest is committed in the target."""
    FAILED = "Failed"
    PRUNED = "Pruned"
    """The copy target's own retention removed the copy (the point may live on
    elsewhere); it is not copied again."""


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
