"""Copies in the admission queue: the copies' lane of each vCenter's loop
(docs/admission.md, "Kinds of work"; docs/copies.md).

A copy of a completed backup to a copy target goes through the backup's vCenter's
admission queue like any proxy work:

1. **Queued** by the copy controller (:mod:`.copying`): when the copy is due (the
   target's ``delay`` past, attempts left), the backup's entry for the target in
   ``status.copies`` says ``Pending``.
2. **Admitted** by the vCenter's admission loop (:class:`CopyLane`, records from the
   ``copy_queue`` index, :func:`queued_of`): the start patch sets the entry ``Running``
   with its attempt number, under the object's ``resourceVersion`` (so the entry list it
   writes is the one it read). While it waits, ``status.copyQueue`` (a map of its own,
   never the entry list) says its position and why.
3. **Run** by the copy controller: an entry that says ``Running`` has its copy Job
   created (or adopted: named after the backup, target and attempt) and settled.

Copies are a background kind (:data:`vmguard.controller.kube.admission.BACKGROUND`):
every waiting backup and restore is placed before them, they hold no NFC disk, host or
datastore (a copy reads and writes repositories only), and their VM key is their own
per target (``<moref> copy to <target>``), so a copy never holds a backup back; only
the policy's ``concurrency.total`` bounds its copies. One VM's points are copied to one
target one at a time, oldest first (the work's creation time is the point's
completion), which lets each copy map its chunks through the previous one (format §11).

Invariants: one record per backup — its first ``Running`` entry (by target name), else
its first ``Pending`` one — so a backup's copies to several targets run one after the
other; the start and expiry patches replace the entry list only under the
``resourceVersion`` the record was read at; the waiting patch touches ``copyQueue``
only. Pure: no I/O.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vmguard.api import BackupPhase, CopyState, format_time, parse_time
from vmguard.api.kinds import BACKUP
from vmguard.controller.kube.admission import Waiting, WorkKind
from vmguard.controller.kube.copies import copies_of
from vmguard.controller.kube.workqueue import Queued, object_fields

INDEX = "copy_queue"
"""The kopf index of the copies' records (the function's name in :mod:`.handlers`)."""
PLURAL = BACKUP.plural
QUEUED = "waiting for admission"
"""The message of a Pending entry the copy controller queued."""


@dataclass(frozen=True)
class CopyQueued(Queued):
    """A copy's record: the queue's fields, plus the target and the entry list it was
    read with (the start patch rewrites that list)."""

    target: str = ""
    entries: tuple[Mapping[str, Any], ...] = ()


def _entry(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The entry the backup's record stands for: its first Running, else first Pending."""
    copies = copies_of(body)
    for state in (CopyState.RUNNING, CopyState.PENDING):
        for target in sorted(copies):
            if copies[target].get("state") == state:
                return copies[target]
    return None


def queued_of(body: Mapping[str, Any]) -> CopyQueued | None:
    """The record of a backup's copy in the queue, or None (no copy queued or running,
    not a completed backup, or deleted while its copy waits)."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    if status.get("phase") != BackupPhase.COMPLETED or not status.get("archiveId"):
        return None
    vm = status.get("vm") or {}
    # The VM key: its moref, else (a synced backup may lack it) its instance UUID.
    moref = vm.get("moref") or vm.get("instanceUuid") or meta.get("name")
    if not status.get("vcenter"):
        return None
    entry = _entry(body)
    if entry is None:
        return None
    waiting = entry.get("state") == CopyState.PENDING
    if meta.get("deletionTimestamp") and waiting:
        return None
    target = str(entry.get("repository") or "")
    completed = parse_time(status.get("completionTime")) or parse_time(
        meta.get("creationTimestamp")
    )
    shown = status.get("copyQueue") or {}
    if shown.get("repository") != target:
        shown = {}
    return CopyQueued(
        **object_fields(meta),
        vcenter=str(status["vcenter"]),
        policy=str(((body.get("spec") or {}).get("policyRef") or {}).get("name") or ""),
        vm=f"{moref} copy to {target}",
        host="",
        disks=(),
        created=completed,
        scheduled=None,
        started=parse_time(entry.get("time")),
        waiting=waiting,
        conditions=(
            {
                "type": "Admitted",
                "reason": shown.get("reason", ""),
                "message": shown.get("message", ""),
            },
        ),
        position=shown.get("queuePosition"),
        kind=WorkKind.COPY,
        nfc=False,
        target=target,
        entries=tuple(copies_of(body).values()),
    )


def _with(q: Queued, entry: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """``q``'s entry list with ``entry`` in place of its target's, sorted by target."""
    entries = {str(e.get("repository")): e for e in getattr(q, "entries", ())}
    entries[str(entry["repository"])] = entry
    return [entries[name] for name in sorted(entries)]


def _current(q: Queued) -> Mapping[str, Any]:
    target = getattr(q, "target", "")
    return next(
        (e for e in getattr(q, "entries", ()) if e.get("repository") == target),
        {"repository": target},
    )


@dataclass(frozen=True)
class CopyLane:
    """The copies' :class:`~vmguard.controller.kube.workqueue.Lane`."""

    deadline: float = 24 * 3600.0
    """A copy that waited this long counts as a failed attempt (``DeadlineExceeded``);
    the copy controller queues it again while attempts are left."""
    kind: WorkKind = WorkKind.COPY
    plural: str = PLURAL
    index: str = INDEX
    controller: str = "policies"

    def start_status(self, q: Queued, now: dt.datetime) -> dict[str, Any]:
        entry = _current(q)
        running = {
            "repository": entry["repository"],
            "state": CopyState.RUNNING,
            "time": format_time(now),
            "attempts": int(entry.get("attempts") or 0) + 1,
        }
        return {"copies": _with(q, running), "copyQueue": None}

    def waiting_status(self, q: Queued, w: Waiting, now: dt.datetime) -> dict[str, Any]:
        return {
            "copyQueue": {
                "repository": getattr(q, "target", ""),
                "queuePosition": w.position,
                "reason": w.reason,
                "message": w.message,
            }
        }

    def expired_status(self, q: Queued, now: dt.datetime) -> dict[str, Any]:
        entry = _current(q)
        limit = "∞" if math.isinf(self.deadline) else f"{self.deadline:.0f}s"
        failed = {
            "repository": entry["repository"],
            "state": CopyState.FAILED,
            "time": format_time(now),
            "attempts": int(entry.get("attempts") or 0) + 1,
            "message": f"DeadlineExceeded: the copy did not start within {limit}",
        }
        return {"copies": _with(q, failed), "copyQueue": None}


__all__ = ["INDEX", "QUEUED", "CopyLane", "CopyQueued", "queued_of"]
