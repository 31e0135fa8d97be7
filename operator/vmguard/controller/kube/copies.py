"""Where a restore point's copies are recorded: the one reader and the one writer.

A copy of a point (issue 17) is recorded as ``{repository, state, time, bytes,
archiveId, attempts, message}`` (:class:`~vmguard.api.BackupCopy`), one entry per copy
target, in two places:

- the point's VMGuardBackup, ``status.copies`` (a list keyed by ``repository``): what
  the copy controller (``controller/policy/copying.py``) and the restore read today;
- the point's entry of the VM's ProtectedVM, ``points[].copies[]``
  (:class:`~vmguard.api.PointCopy`: the same without ``message``), written through
  :func:`vmguard.controller.kube.points.update_point`, the ProtectedVM's only writer. A
  VMGuardBackup expires ``ttlSecondsAfterFinished`` after it finished; the point, and
  so what is known of its copies, stays (docs/resource-model.md, "Restore points at
  scale").

Every reader and writer of copies goes through :func:`copies_of` and
:func:`record_copy`, so moving the readers to the point changes this module only: the
point is identified by what both places know, the backup's namespace, VM and archive id.

Invariants: two writers of the run's list — the copy controller, through
:func:`record_copy`, and the vCenter's admission loop, which sets a ``Pending`` entry
``Running`` (``controller/policy/copyqueue.py``) only under the resourceVersion it read.
A record made from an object read before such a start can set the entry back to
``Pending``; no Job was created for it (the copy controller creates one only for an entry
it read as ``Running``), so the queue admits it again under the same attempt number:
nothing is lost or doubled. The run is
written first, then the point: a point missing (not added yet, or cut from a full list)
or a ProtectedVM of another VM costs the point's record only, never the run's, and is
logged; a failed write to the point raises (RetryableError), and the next record of the
same entry writes it again (:func:`with_copy` is idempotent).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

from vmguard.api import BackupCopy, CopyState, PointCopy, RestorePoint, parse_duration
from vmguard.api.kinds import BACKUP
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.points import PointNotFound, backup_key, update_point
from vmguard.errors import ConfigError

ATTEMPTS = 3
"""Copy Jobs started for one point and target before its copy stays Failed."""
POINT_FIELDS = ("repository", "state", "time", "bytes", "archiveId", "attempts")
"""What a point keeps of a copy's entry (its ``message`` stays with the run)."""

log = logging.getLogger(__name__)


def copies_of(backup: Mapping[str, Any]) -> dict[str, BackupCopy]:
    """The point's copies by target repository, as last recorded."""
    entries = (backup.get("status") or {}).get("copies") or []
    return {str(e.get("repository")): cast(BackupCopy, dict(e)) for e in entries}


def settled(entry: Mapping[str, Any] | None) -> bool:
    """Whether a copy entry is final: made, pruned there, or given up (failed
    :data:`ATTEMPTS` times)."""
    state = (entry or {}).get("state")
    if state in (CopyState.COMPLETED, CopyState.PRUNED):
        return True
    return state == CopyState.FAILED and int((entry or {}).get("attempts") or 0) >= ATTEMPTS


def awaited(backup: Mapping[str, Any], policy_spec: Mapping[str, Any] | None) -> list[str]:
    """The copy targets of ``policy_spec`` (its ``copies``) whose copy of ``backup`` is not
    settled yet, in spec order (pure): the run is kept for them (``backup/expiry.py``)."""
    copies = copies_of(backup)
    out = []
    for target in (policy_spec or {}).get("copies") or ():
        name = str((target.get("repositoryRef") or {}).get("name") or "")
        if name and not settled(copies.get(name)):
            out.append(name)
    return out


def longest_delay(policy_spec: Mapping[str, Any] | None) -> float:
    """Seconds of the longest ``delay`` of the policy's copy targets (0: none)."""
    return max(
        (parse_duration(t.get("delay"), 0.0) for t in (policy_spec or {}).get("copies") or ()),
        default=0.0,
    )


def point_copies(point: Mapping[str, Any]) -> dict[str, BackupCopy]:
    """A ProtectedVM point's copies by target repository, as last recorded (the run's
    entries without their messages)."""
    entries = point.get("copies") or []
    return {str(e.get("repository")): cast(BackupCopy, dict(e)) for e in entries}


def point_copy(entry: BackupCopy) -> PointCopy:
    """A run's copy entry as its point keeps it (pure)."""
    raw: Mapping[str, Any] = entry
    return cast(PointCopy, {k: raw[k] for k in POINT_FIELDS if raw.get(k) is not None})


def with_copy(point: RestorePoint, copy: PointCopy) -> RestorePoint | None:
    """``point`` with ``copy`` replacing the entry of its repository, entries sorted by
    repository; None when the point says so already (pure)."""
    entries = {str(c.get("repository")): c for c in point.get("copies") or []}
    if entries.get(copy["repository"]) == copy:
        return None
    entries[copy["repository"]] = copy
    out = cast(RestorePoint, dict(point))
    out["copies"] = [entries[name] for name in sorted(entries)]
    return out


async def record_copy(api: KubeAPI, backup: dict[str, Any], entry: BackupCopy) -> None:
    """Record ``entry`` (replacing the entry of its repository) for the point of
    ``backup``, in the run and in the point; ``backup`` is updated in place, so a
    caller's later reads see it."""
    meta = backup["metadata"]
    copies = copies_of(backup)
    copies[entry["repository"]] = entry
    listed = [copies[name] for name in sorted(copies)]
    await api.patch_status(BACKUP.plural, meta["namespace"], meta["name"], {"copies": listed})
    backup.setdefault("status", {})["copies"] = listed
    await _record_in_point(api, backup, entry, "recorded in the run only")


async def record_point_copy(api: KubeAPI, stand_in: dict[str, Any], entry: BackupCopy) -> None:
    """Record ``entry`` in the point only: the point of an expired run (its stand-in,
    ``points.stand_ins``), which has no object to patch — a copy made outside the
    operator (``vmguard repo copy``) found in the target. ``stand_in`` is updated in
    place."""
    copies = copies_of(stand_in)
    copies[entry["repository"]] = entry
    stand_in.setdefault("status", {})["copies"] = [copies[name] for name in sorted(copies)]
    await _record_in_point(api, stand_in, entry, "not recorded")


async def _record_in_point(
    api: KubeAPI, backup: Mapping[str, Any], entry: BackupCopy, outcome: str
) -> None:
    meta = backup["metadata"]
    archive = (backup.get("status") or {}).get("archiveId")
    try:
        key = backup_key(backup)
        if not archive:
            raise ConfigError("the backup's status names no archive")
        copy = point_copy(entry)
        await update_point(api, key, str(archive), lambda point: with_copy(point, copy))
    except (ConfigError, PointNotFound) as exc:
        log.warning(
            "copy of %s/%s to %s: %s, not in its restore point: %s",
            meta["namespace"],
            meta["name"],
            entry["repository"],
            outcome,
            exc,
        )


__all__ = [
    "ATTEMPTS",
    "POINT_FIELDS",
    "awaited",
    "copies_of",
    "longest_delay",
    "point_copies",
    "point_copy",
    "record_copy",
    "record_point_copy",
    "settled",
    "with_copy",
]
