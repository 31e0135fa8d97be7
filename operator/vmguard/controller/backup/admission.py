"""The backups' lane of the admission queue (:mod:`vmguard.controller.kube.workqueue`).

What the queue needs to know of a VMGuardBackup: :func:`queued_of` makes the compact
record the watch keeps of a resolved backup in flight (the ``backup_queue`` index of
:mod:`.handlers`), and :class:`BackupLane` the status patches that start one (it moves
on to ``Snapshotting``), tell one why it waits and where it stands, and fail one that
waited past the backup deadline. The loop itself, its order, fairness and limits are
the shared queue's (docs/admission.md).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vmguard.api import BACKUP_ACTIVE, BackupPhase, format_time, parse_time
from vmguard.api.kinds import BACKUP
from vmguard.controller.kube.admission import Waiting, WorkKind
from vmguard.controller.kube.conditions import lifecycle_conditions, set_condition
from vmguard.controller.kube.workqueue import (
    Queued,
    admitted_conditions,
    object_fields,
    placement_disks,
    run_time,
    waiting_conditions,
)

INDEX = "backup_queue"
"""The kopf index of the backups' records (the function's name in :mod:`.handlers`)."""


def queued_of(body: Mapping[str, Any], policy_of_labels: str | None = None) -> Queued | None:
    """The record of a backup in the queue, or None when it is not (yet, or any more):
    not resolved, ended, deleted while waiting, or synced (the caller filters synced
    ones). A running backup being deleted still counts until it is gone: its proxy and
    snapshot are being cleaned up."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    phase = status.get("phase") or BackupPhase.PENDING
    resolved = bool((status.get("vm") or {}).get("moref")) and bool(status.get("vcenter"))
    if not resolved:
        return None
    if phase != BackupPhase.PENDING and phase not in BACKUP_ACTIVE:
        return None
    if meta.get("deletionTimestamp") and phase == BackupPhase.PENDING:
        return None  # deleted while waiting: it will not start (a running one still counts)
    where = status.get("placement") or {}
    policy = ((body.get("spec") or {}).get("policyRef") or {}).get("name") or policy_of_labels
    labels = meta.get("labels") or {}
    return Queued(
        **object_fields(meta),
        vcenter=str(status["vcenter"]),
        policy=str(policy or ""),
        vm=str(status["vm"]["moref"]),
        host=str(where.get("host", "")),
        disks=placement_disks(where),
        created=parse_time(meta.get("creationTimestamp")),
        scheduled=run_time(labels),
        started=parse_time(status.get("startTime")),
        waiting=phase == BackupPhase.PENDING,
        conditions=tuple(dict(c) for c in status.get("conditions") or ()),
        position=status.get("queuePosition"),
        kind=WorkKind.BACKUP,
    )


def waiting_status(q: Queued, w: Waiting, now: dt.datetime) -> dict[str, Any]:
    """The status patch telling ``q`` why it waits and where it stands."""
    at = format_time(now)
    conditions = lifecycle_conditions(
        waiting_conditions(q, w, now),
        BackupPhase.PENDING,
        terminal=False,
        failure=None,
        generation=q.generation,
        at=at,
    )
    return {"queuePosition": w.position, "conditions": conditions}


def start_status(q: Queued, now: dt.datetime) -> dict[str, Any]:
    """The status patch admitting ``q``: it moves on to Snapshotting."""
    at = format_time(now)
    conditions = lifecycle_conditions(
        admitted_conditions(q, BackupPhase.SNAPSHOTTING, "taking the snapshot", now),
        BackupPhase.SNAPSHOTTING,
        terminal=False,
        failure=None,
        generation=q.generation,
        at=at,
    )
    return {
        "phase": BackupPhase.SNAPSHOTTING,
        "queuePosition": None,
        "conditions": conditions,
        "observedGeneration": q.generation,
    }


def expired_status(q: Queued, deadline: float, now: dt.datetime) -> dict[str, Any]:
    """The status patch failing ``q``, which waited past the backup deadline."""
    at = format_time(now)
    message = f"the backup did not start within {deadline:.0f}s"
    error = {"reason": "DeadlineExceeded", "message": message, "retryable": False}
    conditions = set_condition(
        q.conditions, "Ready", False, "DeadlineExceeded", message, q.generation, at
    )
    conditions = lifecycle_conditions(
        conditions, BackupPhase.FAILED, terminal=True, failure=error, generation=q.generation, at=at
    )
    out: dict[str, Any] = {
        "phase": BackupPhase.FAILED,
        "error": error,
        "queuePosition": None,
        "completionTime": at,
        "conditions": conditions,
    }
    if q.started:
        out["durationSeconds"] = round((now - q.started).total_seconds(), 1)
    return out


@dataclass(frozen=True)
class BackupLane:
    """The backups' :class:`~vmguard.controller.kube.workqueue.Lane`."""

    deadline: float = 6 * 3600.0
    """``VMGUARD_BACKUP_DEADLINE``: a backup waiting longer fails."""
    kind: WorkKind = WorkKind.BACKUP
    plural: str = BACKUP.plural
    index: str = INDEX
    controller: str = "backups"

    def start_status(self, q: Queued, now: dt.datetime) -> dict[str, Any]:
        return start_status(q, now)

    def waiting_status(self, q: Queued, w: Waiting, now: dt.datetime) -> dict[str, Any]:
        return waiting_status(q, w, now)

    def expired_status(self, q: Queued, now: dt.datetime) -> dict[str, Any]:
        return expired_status(q, self.deadline, now)
