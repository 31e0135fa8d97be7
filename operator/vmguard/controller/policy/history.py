"""What a policy's VMGuardBackup objects say: per VM and per run. Pure; no API calls.

A backup belongs to a policy when its ``spec.policyRef`` names it (those we create also
carry the ``vmguard.io/policy`` label; a person's ad-hoc backup under the policy counts
too). Its VM is the ``vmguard.io/vm`` label or ``spec.vm.instanceUuid``, compared in
lower case; an ad-hoc backup named only by VM name is not attributed to any VM.

Phases: ``Completed`` is a success; ``Failed`` is a failure; anything else, including no
phase yet, is in progress.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vmguard.api import (
    ANNOTATION_ARCHIVE_ID,
    BACKUP_TERMINAL,
    LABEL_RUN,
    LABEL_TRIGGER,
    LABEL_VM,
    BackupPhase,
    Trigger,
    VerificationPhase,
    VerificationResult,
    parse_time,
)
from vmguard.controller.kube.bodies import backup_spec, backup_status, ref_name
from vmguard.controller.kube.points import StandIn


@dataclass(frozen=True, slots=True)
class BackupRecord:
    name: str
    vm: str
    phase: str
    trigger: str
    run: str
    created: dt.datetime | None
    completed: dt.datetime | None
    verified: dt.datetime | None = None
    """When its verification ended (None: none ended)."""
    verification: str = ""
    """That verification's result."""

    @property
    def in_progress(self) -> bool:
        return self.phase not in BACKUP_TERMINAL

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> BackupRecord:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        spec, status = backup_spec(obj), backup_status(obj)
        verification = status.get("verification") or {}
        vm = labels.get(LABEL_VM) or (spec.get("vm") or {}).get("instanceUuid") or ""
        return cls(
            name=meta.get("name", ""),
            vm=vm.lower(),
            phase=status.get("phase") or BackupPhase.PENDING,
            trigger=labels.get(LABEL_TRIGGER, ""),
            run=labels.get(LABEL_RUN, ""),
            created=parse_time(meta.get("creationTimestamp")),
            completed=parse_time(status.get("completionTime")),
            verified=parse_time(verification.get("time"))
            if verification.get("phase") == VerificationPhase.COMPLETED
            else None,
            verification=str(verification.get("result") or ""),
        )

    @classmethod
    def from_stand_in(cls, stand_in: StandIn) -> BackupRecord:
        """What :meth:`from_object` reads of the stand-in's body
        (:func:`~vmguard.controller.kube.points.stand_in_body`), read from the point
        itself: no body is built, the time is parsed once (``StandIn.at``)."""
        # The body's verification is the point's, its phase Completed unless it says.
        verification = stand_in.point.verification
        verified = None
        if verification and verification.get("phase", VerificationPhase.COMPLETED) == (
            VerificationPhase.COMPLETED
        ):
            verified = parse_time(verification.get("time"))
        return cls(
            name=stand_in.name,
            vm=stand_in.vm,
            phase=BackupPhase.COMPLETED,
            trigger="",
            run="",
            created=stand_in.at,
            completed=stand_in.at,
            verified=verified,
            verification=str(verification.get("result") or "") if verification else "",
        )


def history_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a VMGuardBackup that :class:`BackupRecord`, :meth:`BackupHistory.of_policy`
    and :func:`~vmguard.controller.kube.points.expired_points` read, and nothing else (pure): a
    caller that lists a namespace's backups for a history alone keeps this of each page, a
    fifth of the object (its disks, conditions and managed fields are most of it)."""
    meta = obj.get("metadata") or {}
    spec, status = backup_spec(obj), backup_status(obj)
    labels = meta.get("labels") or {}
    archive = (meta.get("annotations") or {}).get(ANNOTATION_ARCHIVE_ID)
    verification = status.get("verification") or {}
    return {
        "metadata": {
            "name": meta.get("name", ""),
            "namespace": meta.get("namespace", ""),
            "creationTimestamp": meta.get("creationTimestamp"),
            "labels": {k: labels[k] for k in (LABEL_VM, LABEL_TRIGGER, LABEL_RUN) if k in labels},
            "annotations": {ANNOTATION_ARCHIVE_ID: archive} if archive else {},
        },
        "spec": {
            "vm": {"instanceUuid": spec["vm"].get("instanceUuid") if "vm" in spec else None},
            "policyRef": {"name": ref_name(spec.get("policyRef"))},
        },
        "status": {
            "phase": status.get("phase"),
            "completionTime": status.get("completionTime"),
            "archiveId": status.get("archiveId"),
            "verification": {
                k: verification[k] for k in ("phase", "time", "result") if k in verification
            },
        },
    }


@dataclass
class BackupHistory:
    """The backups of one policy, indexed by VM."""

    records: list[BackupRecord]
    by_vm: dict[str, list[BackupRecord]] = field(default_factory=dict)
    _last_completed: dict[str, dt.datetime | None] = field(
        default_factory=dict, repr=False, compare=False
    )
    """:meth:`last_completed` by VM: a pass asks it of each VM four times (status, RPO
    states, metrics); the records are not changed once the history is made."""

    def __post_init__(self) -> None:
        for r in self.records:
            if r.vm:
                self.by_vm.setdefault(r.vm, []).append(r)

    @classmethod
    def of_policy(
        cls,
        objects: Iterable[Mapping[str, Any]],
        policy: str,
        expired: Iterable[StandIn] = (),
    ) -> BackupHistory:
        """The policy's backups among ``objects``, then its points among ``expired``
        (as their stand-in bodies would be, after ``objects``)."""
        mine = [
            BackupRecord.from_object(o)
            for o in objects
            if ((o.get("spec") or {}).get("policyRef") or {}).get("name") == policy
        ]
        # A stand-in's body names its point's policy, when the point has one.
        mine += [
            BackupRecord.from_stand_in(s)
            for s in expired
            if s.point.policy and s.point.policy == policy
        ]
        return cls(mine)

    def of(self, vm: str) -> list[BackupRecord]:
        return self.by_vm.get(vm.lower(), [])

    def last_completed(self, vm: str) -> dt.datetime | None:
        key = vm.lower()
        if key not in self._last_completed:
            times = [
                r.completed or r.created for r in self.of(vm) if r.phase == BackupPhase.COMPLETED
            ]
            self._last_completed[key] = max((t for t in times if t), default=None)
        return self._last_completed[key]

    def first_completed(self, vm: str) -> dt.datetime | None:
        """The completion of the VM's oldest Completed backup the policy still holds."""
        times = [r.completed or r.created for r in self.of(vm) if r.phase == BackupPhase.COMPLETED]
        return min((t for t in times if t), default=None)

    def last_passed(self, vm: str) -> dt.datetime | None:
        """When the VM's newest verification that Passed ended, if any did."""
        done = [r.verified for r in self.of(vm) if r.verification == VerificationResult.PASSED]
        return max((t for t in done if t), default=None)

    def last_finished(self, vm: str) -> BackupRecord | None:
        """The VM's newest Completed or Failed backup (by completion time), if any."""
        done = [r for r in self.of(vm) if r.phase in BACKUP_TERMINAL and r.completed]
        return max(done, key=lambda r: r.completed or dt.datetime.min, default=None)

    def last_verified(self, vm: str) -> BackupRecord | None:
        """The VM's backup whose verification ended last, if any."""
        done = [r for r in self.of(vm) if r.verified and r.verification]
        return max(done, key=lambda r: r.verified or dt.datetime.min, default=None)

    def in_progress_by_phase(self) -> dict[str, int]:
        """How many of the policy's backups are in each unfinished phase."""
        counts: dict[str, int] = {}
        for r in self.records:
            if r.in_progress:
                counts[r.phase] = counts.get(r.phase, 0) + 1
        return counts

    def has_completed(self, vm: str) -> bool:
        return any(r.phase == BackupPhase.COMPLETED for r in self.of(vm))

    def in_progress(self, vm: str) -> list[BackupRecord]:
        return [r for r in self.of(vm) if r.in_progress]

    def failsafes(self, vm: str) -> list[BackupRecord]:
        return [r for r in self.of(vm) if r.trigger == Trigger.FAILSAFE]

    def last_success(self) -> dt.datetime | None:
        times = [r.completed or r.created for r in self.records if r.phase == BackupPhase.COMPLETED]
        return max((t for t in times if t), default=None)

    def run_counts(self, run: str) -> dict[str, int]:
        """``lastRun`` counts for the scheduled run labelled ``run``."""
        mine = [r for r in self.records if r.run == run and r.trigger != Trigger.FAILSAFE]
        return {
            "backups": len(mine),
            "completed": sum(1 for r in mine if r.phase == BackupPhase.COMPLETED),
            "failed": sum(1 for r in mine if r.phase == BackupPhase.FAILED),
            "running": sum(1 for r in mine if r.in_progress),
        }

    def outside_rpo(self, vms: Iterable[str], now: dt.datetime, rpo: dt.timedelta) -> int:
        """VMs without a completed backup newer than ``now - rpo`` (never backed up included)."""
        count = 0
        for vm in vms:
            last = self.last_completed(vm)
            if last is None or now - last > rpo:
                count += 1
        return count
