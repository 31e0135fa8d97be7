"""Typed views of the statuses the controllers write: VMGuardBackup, VMGuardRestore,
ProtectedVM, conditions.

Each ``TypedDict`` mirrors one object of the CRD's status schema, key for key
(tests/api/test_status.py walks both and fails when they part). The controllers
build their status patches as these types, so mypy catches a misspelt key or a
phase that does not exist before the apiserver would reject the patch.

They are ``total=False``: a status is written piecewise by JSON merge patches (the
controller and the proxy Job each patch what they learn), and a reader finds any
subset. In a patch, ``None`` removes a key; the fields the controllers clear that way
say so in their type (``Failure | None``).
"""

from __future__ import annotations

from typing import Literal, TypedDict

from vmguard.api.phases import BackupPhase, RestorePhase

ConditionStatus = Literal["True", "False", "Unknown"]


class _ConditionKeys(TypedDict):
    type: str
    status: ConditionStatus
    reason: str
    message: str
    lastTransitionTime: str


class Condition(_ConditionKeys, total=False):
    """One entry of ``status.conditions`` (the shape of ``metav1.Condition``).

    (Two classes rather than ``NotRequired``: under postponed annotations Python 3.11
    cannot tell a ``NotRequired`` key from a required one at run time.)
    """

    observedGeneration: int


class Failure(TypedDict, total=False):
    """``status.error``: why an operation failed. Never holds a secret value."""

    reason: str
    message: str
    retryable: bool


class Progress(TypedDict, total=False):
    """``status.progress`` of a transfer, patched by the proxy Job as it goes."""

    percent: int
    bytesDone: int
    bytesTotal: int
    bytesPerSecond: int
    updateTime: str


class VMIdentity(TypedDict, total=False):
    """The three ids vSphere gives a VM; the instance UUID is the one that lasts."""

    instanceUuid: str
    moref: str
    name: str


class DatastoreDisks(TypedDict):
    datastore: str
    count: int


class BackupPlacement(TypedDict, total=False):
    """Where the VM runs, as resolved (the admission limits count by it)."""

    host: str
    datastores: list[str]
    disks: list[DatastoreDisks]


class BackupSnapshot(TypedDict, total=False):
    moref: str
    name: str
    createTime: str
    removed: bool


class BackupDisk(TypedDict, total=False):
    """One disk of a backed-up VM (``status.disks[]``, keyed by ``key``)."""

    key: int
    label: str
    uuid: str
    backing: str
    datastore: str
    capacityBytes: int
    mode: str
    changeId: str
    bytesRead: int
    bytesChanged: int
    bytesUploaded: int
    chunksNew: int
    chunksReused: int


class BackupTotals(TypedDict, total=False):
    capacityBytes: int
    bytesRead: int
    bytesChanged: int
    bytesUploaded: int
    chunksNew: int
    chunksReused: int
    compressibility: float


class BackupCopy(TypedDict, total=False):
    """One copy target's copy of the backup (``status.copies[]``, keyed by ``repository``)."""

    repository: str
    state: str
    time: str
    bytes: int
    archiveId: str
    attempts: int
    message: str


class VerificationFinding(TypedDict, total=False):
    """One thing a verification found (``verification.findings[]``): a YARA match names
    the volume, the file's path in it and the rule; a file-system check's damage the
    volume and the checker's message."""

    disk: str
    volume: str
    check: str
    path: str
    rule: str
    message: str


class BootCheck(TypedDict, total=False):
    """``verification.boot``: the boot test of a point (docs/verification.md, Boot test)."""

    phase: str
    restoreName: str
    vm: VMIdentity
    startTime: str
    poweredOnTime: str
    heartbeatTime: str
    result: str
    exitCode: int
    output: str
    message: str
    durationSeconds: float
    recoveryTimeSeconds: float


class BackupCopyQueue(TypedDict, total=False):
    """``VMGuardBackup.status.copyQueue``: the backup's copy that waits in its vCenter's
    admission queue (its entry in ``copies`` says Pending), and why it waits."""

    repository: str
    queuePosition: int | None
    reason: str
    message: str


class BackupVerification(TypedDict, total=False):
    """``VMGuardBackup.status.verification``: the verification run of a completed backup."""

    phase: str
    run: int
    requestTime: str
    startTime: str
    time: str
    jobName: str | None
    queuePosition: int | None
    reason: str
    message: str
    checks: list[str]
    result: str
    findings: list[VerificationFinding]
    durationSeconds: float
    boot: BootCheck


class BackupStatus(TypedDict, total=False):
    """``VMGuardBackup.status``."""

    observedGeneration: int | None
    conditions: list[Condition]
    phase: BackupPhase
    vm: VMIdentity
    vcenter: str
    repository: str
    vcenterNamespace: str
    repositoryNamespace: str
    jobNamespace: str
    placement: BackupPlacement
    queuePosition: int | None
    modeRequested: str
    parentArchiveId: str
    modeUsed: str
    modeReason: str
    quiesced: bool
    snapshot: BackupSnapshot
    jobName: str | None
    attempts: int
    proxyStartSince: str | None
    progress: Progress
    disks: list[BackupDisk]
    totals: BackupTotals
    archiveId: str
    startTime: str
    completionTime: str
    durationSeconds: float
    error: Failure | None
    copies: list[BackupCopy]
    copyQueue: BackupCopyQueue | None
    verification: BackupVerification


class RestoredDisk(TypedDict, total=False):
    """One disk a restore wrote (``status.result.disks[]``)."""

    sourceKey: int
    vm: str
    key: int
    label: str
    backing: str
    bytesWritten: int


class RestoreResult(TypedDict, total=False):
    """What a restore produced: a VM, disks, or files at a location."""

    vm: VMIdentity
    disks: list[RestoredDisk]
    filesRestored: int
    bytesRestored: int
    location: str


class RestoreStatus(TypedDict, total=False):
    """``VMGuardRestore.status``."""

    observedGeneration: int | None
    conditions: list[Condition]
    phase: RestorePhase
    archiveId: str
    vcenter: str
    repository: str
    vcenterNamespace: str
    repositoryNamespace: str
    jobNamespace: str
    powerOnAfter: bool
    jobName: str
    placement: BackupPlacement
    queuePosition: int | None
    progress: Progress
    result: RestoreResult
    startTime: str
    completionTime: str
    error: Failure | None


class PointCopy(TypedDict, total=False):
    """One copy of a restore point in another repository (``points[].copies[]``, keyed
    by ``repository``): the run's :class:`BackupCopy` without its message."""

    repository: str
    state: str
    time: str
    bytes: int
    archiveId: str
    attempts: int


class PointBoot(TypedDict, total=False):
    """The boot test of a point's last verification (``points[].verification.boot``)."""

    result: str
    exitCode: int
    recoveryTimeSeconds: float


class PointVerification(TypedDict, total=False):
    """The last verification of a restore point (``points[].verification``)."""

    result: str
    time: str
    checks: list[str]
    findings: list[VerificationFinding]
    boot: PointBoot


class RestorePoint(TypedDict, total=False):
    """One restore point of a VM (``ProtectedVM.status.points[]``, keyed by ``archiveId``)."""

    archiveId: str
    repository: str
    repositoryNamespace: str
    time: str
    mode: str
    bytes: int
    backup: str
    policy: str
    copies: list[PointCopy]
    verification: PointVerification


class LastGoodPoint(TypedDict, total=False):
    archiveId: str
    time: str


class RPOState(TypedDict, total=False):
    """``ProtectedVM.status.rpo``: the VM's recovery point objective, as its policy sets it."""

    objectiveSeconds: int
    due: str
    state: str


class ProtectedVMStatus(TypedDict, total=False):
    """``ProtectedVM.status``: the VM, its policy and its restore points, newest first."""

    observedGeneration: int | None
    conditions: list[Condition]
    vm: VMIdentity
    vcenter: str
    policy: str
    lastGoodPoint: LastGoodPoint | None
    rpo: RPOState
    pointCount: int
    points: list[RestorePoint]
