"""vmguard's Kubernetes API vocabulary (``vmguard.io/v1alpha1``), each word defined once.

Everything that names or shapes vmguard's custom objects and the objects it creates
lives here, and everything else imports it from here:

- :mod:`.names` — group, version, label and annotation keys, the finalizer, trigger
  values;
- :mod:`.phases` — the phases of VMGuardBackup and VMGuardRestore as ``StrEnum``s (the CRDs'
  enums are generated from them) and which phases are active or terminal;
- :mod:`.reasons` — the failure reasons that mean the proxy Job, not its peers, failed;
- :mod:`.status` — ``TypedDict`` views of the statuses the controllers write (VMGuardBackup,
  VMGuardRestore, ProtectedVM);
- :mod:`.spec` — ``TypedDict`` views of the specs they read (VMGuardBackup's);
- :mod:`.times` — the one formatter and parser of API times, and of spec durations.

The package is the bottom of vmguard's layers (pyproject.toml's import-linter
contracts): it imports the standard library and :mod:`vmguard.errors`, nothing else,
so the CRD definitions, the store, the proxy, the controller and the CLI may all use
it. It is checked with ``mypy --strict``.
"""

from __future__ import annotations

from vmguard.api.names import (
    ANNOTATION_ARCHIVE_ID,
    ANNOTATION_PREFIX,
    ANNOTATION_SCHEMA_HASH,
    ANNOTATION_SYNCED_FROM,
    ANNOTATION_VM_NAME,
    API_VERSION,
    CATEGORY,
    DEFAULT_BACKUP_TTL,
    FINALIZER,
    GROUP,
    LABEL_ATTEMPT,
    LABEL_COPY_TARGET,
    LABEL_OWNER_NAMESPACE,
    LABEL_OWNER_UID,
    LABEL_POLICY,
    LABEL_PRIVILEGED_PROXIES,
    LABEL_REPOSITORY,
    LABEL_RUN,
    LABEL_SYNCED,
    LABEL_TRIGGER,
    LABEL_VCENTER,
    LABEL_VM,
    LABEL_VMBACKUP,
    LABEL_VMBACKUP_UID,
    LABEL_VMRESTORE,
    MAX_BACKUP_TTL,
    SYNCED,
    VERSION,
    Trigger,
)
from vmguard.api.phases import (
    BACKUP_ACTIVE,
    BACKUP_TERMINAL,
    RESTORE_TERMINAL,
    BackupPhase,
    CopyState,
    RestorePhase,
)
from vmguard.api.reasons import (
    FAILED_CREATE,
    PERMANENT_WAITING,
    PROXY_FAILED,
    PROXY_FAILURE_REASONS,
    PROXY_REPORTED_NOTHING,
    TRANSIENT_WAITING,
    UNSCHEDULABLE,
)
from vmguard.api.spec import BackupSpec, LocalRef, ObjectRef
from vmguard.api.status import (
    BackupCopy,
    BackupDisk,
    BackupPlacement,
    BackupSnapshot,
    BackupStatus,
    BackupTotals,
    Condition,
    ConditionStatus,
    Failure,
    LastGoodPoint,
    PointCopy,
    PointVerification,
    Progress,
    ProtectedVMStatus,
    RestoredDisk,
    RestorePoint,
    RestoreResult,
    RestoreStatus,
    RPOState,
    VMIdentity,
)
from vmguard.api.times import format_time, parse_duration, parse_time

__all__ = [
    "ANNOTATION_ARCHIVE_ID",
    "ANNOTATION_PREFIX",
    "ANNOTATION_SCHEMA_HASH",
    "ANNOTATION_SYNCED_FROM",
    "ANNOTATION_VM_NAME",
    "API_VERSION",
    "BACKUP_ACTIVE",
    "BACKUP_TERMINAL",
    "CATEGORY",
    "DEFAULT_BACKUP_TTL",
    "FAILED_CREATE",
    "FINALIZER",
    "GROUP",
    "LABEL_ATTEMPT",
    "LABEL_COPY_TARGET",
    "LABEL_OWNER_NAMESPACE",
    "LABEL_OWNER_UID",
    "LABEL_POLICY",
    "LABEL_PRIVILEGED_PROXIES",
    "LABEL_REPOSITORY",
    "LABEL_RUN",
    "LABEL_SYNCED",
    "LABEL_TRIGGER",
    "LABEL_VCENTER",
    "LABEL_VM",
    "LABEL_VMBACKUP",
    "LABEL_VMBACKUP_UID",
    "LABEL_VMRESTORE",
    "MAX_BACKUP_TTL",
    "PERMANENT_WAITING",
    "PROXY_FAILED",
    "PROXY_FAILURE_REASONS",
    "PROXY_REPORTED_NOTHING",
    "RESTORE_TERMINAL",
    "SYNCED",
    "TRANSIENT_WAITING",
    "UNSCHEDULABLE",
    "VERSION",
    "BackupCopy",
    "BackupDisk",
    "BackupPhase",
    "BackupPlacement",
    "BackupSnapshot",
    "BackupSpec",
    "BackupStatus",
    "BackupTotals",
    "Condition",
    "ConditionStatus",
    "CopyState",
    "Failure",
    "LastGoodPoint",
    "LocalRef",
    "ObjectRef",
    "PointCopy",
    "PointVerification",
    "Progress",
    "ProtectedVMStatus",
    "RPOState",
    "RestorePhase",
    "RestorePoint",
    "RestoreResult",
    "RestoreStatus",
    "RestoredDisk",
    "Trigger",
    "VMIdentity",
    "format_time",
    "parse_duration",
    "parse_time",
]
