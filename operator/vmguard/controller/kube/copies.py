"""Where a restore point's copies are recorded: the one reader and the one writer.

A copy of a point (issue 17) is recorded as ``{repository, state, time, bytes,
archiveId, attempts, message}`` (:class:`~vmguard.api.BackupCopy`), one entry per copy
target. Today the entries live in the point's VMGuardBackup, ``status.copies`` (a list
keyed by ``repository``); docs/resource-model.md ("Restore points at scale") moves them
into the point's entry of the VM's ProtectedVM (``points[].copies[]``). Every reader and
writer of copies goes through :func:`copies_of` and :func:`record_copy`, so that move
changes this module only: the point is identified by what both places know, the
backup's namespace, VM and archive id.

Invariant: one writer. Only the copy controller (``controller/policy/copying.py``, in
the policy's scheduler) records copies, so replacing the whole list from the object it
read cannot lose another writer's entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from vmguard.api import BackupCopy
from vmguard.api.kinds import BACKUP
from vmguard.controller.kube.kubeapi import KubeAPI


def copies_of(backup: Mapping[str, Any]) -> dict[str, BackupCopy]:
    """The point's copies by target repository, as last recorded."""
    entries = (backup.get("status") or {}).get("copies") or []
    return {str(e.get("repository")): cast(BackupCopy, dict(e)) for e in entries}


async def record_copy(api: KubeAPI, backup: dict[str, Any], entry: BackupCopy) -> None:
    """Record ``entry`` (replacing the entry of its repository) for the point of
    ``backup``; ``backup`` is updated in place, so a caller's later reads see it."""
    meta = backup["metadata"]
    copies = copies_of(backup)
    copies[entry["repository"]] = entry
    listed = [copies[name] for name in sorted(copies)]
    await api.patch_status(BACKUP.plural, meta["namespace"], meta["name"], {"copies": listed})
    backup.setdefault("status", {})["copies"] = listed


__all__ = ["copies_of", "record_copy"]
