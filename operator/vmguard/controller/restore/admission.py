"""The restores' lane of the admission queue (:mod:`vmguard.controller.kube.workqueue`).

A restore into vSphere writes through NBD to a host and its datastores, so it waits in
its vCenter's queue under the same limits as the backups (docs/admission.md): once its
target is prepared, :mod:`.reconcile` records where it writes (``status.vcenter``,
``status.placement``: the target VM's host and the written disks per datastore) and
stays ``Pending``; the loop's start patch moves it to ``Restoring`` (``Admitted=True``,
no ``jobName`` yet), and only then does the controller power a target off and create the
Job. A files restore touches no vCenter and does not queue.

Invariants: a record exists exactly for a restore that is resolved and waiting
(``Pending`` with a placement) or writing (``Restoring``); a restore deleted while
waiting leaves the queue; it has no policy, so no per-policy share (restores take turns
with the other kinds, see :mod:`vmguard.controller.kube.admission`).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vmguard.api import RestorePhase, format_time, parse_time
from vmguard.api.kinds import RESTORE
from vmguard.controller.kube.admission import Waiting, WorkKind
from vmguard.controller.kube.conditions import set_condition
from vmguard.controller.kube.workqueue import (
    Queued,
    admitted_conditions,
    object_fields,
    placement_disks,
    waiting_conditions,
)

INDEX = "restore_queue"
"""The kopf index of the restores' records (the function's name in :mod:`.handlers`)."""


def resolved(status: Mapping[str, Any]) -> bool:
    """Prepared and placed: from here the queue, not the controller, moves it on."""
    return bool(status.get("vcenter")) and bool(status.get("placement"))


def waiting(status: Mapping[str, Any]) -> bool:
    """Resolved and not admitted yet (the controller leaves it alone meanwhile)."""
    phase = status.get("phase") or RestorePhase.PENDING
    return phase == RestorePhase.PENDING and resolved(status)


def queued_of(body: Mapping[str, Any]) -> Queued | None:
    """The record of a restore in the queue, or None when it is not (yet, or any more)."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    phase = status.get("phase") or RestorePhase.PENDING
    if not resolved(status) or phase not in (RestorePhase.PENDING, RestorePhase.RESTORING):
        return None
    if meta.get("deletionTimestamp") and phase == RestorePhase.PENDING:
        return None
    where = status.get("placement") or {}
    result = status.get("result") or {}
    vm = (result.get("vm") or {}).get("moref") or next(
        (d.get("vm") for d in result.get("disks") or () if d.get("vm")), ""
    )
    return Queued(
        **object_fields(meta),
        vcenter=str(status["vcenter"]),
        policy="",
        vm=str(vm),
        host=str(where.get("host", "")),
        disks=placement_disks(where),
        created=parse_time(meta.get("creationTimestamp")),
        scheduled=None,
        started=parse_time(status.get("startTime")),
        waiting=phase == RestorePhase.PENDING,
        conditions=tuple(dict(c) for c in status.get("conditions") or ()),
        position=status.get("queuePosition"),
        kind=WorkKind.RESTORE,
        nfc=True,  # the restore proxy writes over NBD
    )


@dataclass(frozen=True)
class RestoreLane:
    """The restores' :class:`~vmguard.controller.kube.workqueue.Lane`."""

    deadline: float = math.inf
    """A restore waits until it is admitted or deleted: someone asked for it, and the
    kinds' turns keep it near the head of the queue. (Failing it here would skip the
    controller's clean-up of a VM it created while preparing.)"""
    kind: WorkKind = WorkKind.RESTORE
    plural: str = RESTORE.plural
    index: str = INDEX
    controller: str = "restores"

    def start_status(self, q: Queued, now: dt.datetime) -> dict[str, Any]:
        """Admitted: ``Restoring`` without a Job yet; the controller creates it."""
        return {
            "phase": RestorePhase.RESTORING,
            "queuePosition": None,
            "conditions": admitted_conditions(
                q, RestorePhase.RESTORING, "starting the restore Job", now
            ),
        }

    def waiting_status(self, q: Queued, w: Waiting, now: dt.datetime) -> dict[str, Any]:
        return {"queuePosition": w.position, "conditions": waiting_conditions(q, w, now)}

    def expired_status(self, q: Queued, now: dt.datetime) -> dict[str, Any]:
        message = f"the restore did not start within {self.deadline:.0f}s"
        at = format_time(now)
        return {
            "phase": RestorePhase.FAILED,
            "error": {"reason": "DeadlineExceeded", "message": message, "retryable": False},
            "queuePosition": None,
            "completionTime": at,
            "conditions": set_condition(
                q.conditions, "Ready", False, "DeadlineExceeded", message, q.generation, at
            ),
        }
