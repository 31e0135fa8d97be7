"""Snapshots of ours that escaped their backup: found and removed by the vCenter sweeper.

A backup removes its snapshot in every outcome it lives to see (the VMGuardBackup controller's
Finalizing phase, and its finalizer when the object is deleted). What a crash can leave
behind — an operator SIGKILLed in the middle of a CBT activation cycle, a VMGuardBackup
deleted while its vCenter was unreachable — is removed here, after each successful
sweep, from the VM records that sweep just read (BRIEF §9.3: within minutes of any
failure, no snapshot of ours is left).

Which snapshot goes, by the UID in its name (``vmguard-<uid>``):

- the UID of a VMGuardBackup in this namespace (or one the VCenter's
  ``allowedNamespaces`` names) that has finished (or a CBT activation
  cycle's ``cbt-…``): removed once older than :data:`GRACE` (5 minutes;
  ``VMGUARD_SNAPSHOT_GRACE`` seconds instead);
- the UID of a VMGuardBackup still in flight: kept (its own controller removes it), unless
  older than :data:`MAX_AGE`;
- a UID we do not know: kept until :data:`MAX_AGE`. The same vCenter may be watched from
  another namespace, whose VMGuardBackups this namespace cannot see; a day is longer than any
  backup we allow (``VMGUARD_BACKUP_DEADLINE``, 6 h).

Boot tests' temporary VMs (docs/verification.md, "Boot test") are swept here too
(:func:`sweep_boot_vms`): a VM named ``vmguard-boot.<namespace>.…`` of a namespace this
vCenter serves that carries a VMGuardRestore's marker is destroyed when that restore is
gone, or when the VMGuardBackup its label names is gone or no longer runs that boot test
(an operator killed mid-test whose run then ended, a backup deleted); the restore goes
with it. A VM without the marker is never touched.

Removal consolidates the VM's disks; a VM vSphere still reports as needing consolidation
is consolidated when its effective policy allows (``spec.snapshot.consolidate``, default
true; a VM no policy protects: allowed), else reported. The snapshots of ours still
present are also handed to the metrics, which expose their age (the stale-snapshot
alert).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from vmguard.api import (
    BACKUP_TERMINAL,
    BOOT_VM_PREFIX,
    LABEL_BOOT_TEST,
    RESTORE_VM_MARKER,
    parse_time,
)
from vmguard.api.kinds import BACKUP, RESTORE
from vmguard.controller.kube.bodies import backup_status
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.migration import migrated_uid
from vmguard.controller.kube.policy_spec import consolidation_allowed
from vmguard.controller.kube.verifications import boot_in_use
from vmguard.vsphere.matching import MatchResult
from vmguard.vsphere.records import VMRecord
from vmguard.vsphere.session import Endpoint
from vmguard.vsphere.snapshots import SweepResult

GRACE = timedelta(minutes=5)
GRACE_ENV = "VMGUARD_SNAPSHOT_GRACE"
"""Seconds instead of :data:`GRACE` (tests use a few seconds)."""
MAX_AGE = timedelta(hours=24)
CBT_CYCLE_PREFIX = "cbt-"


def finished_uids(backups: list[dict[str, Any]]) -> set[str]:
    """UIDs of this namespace's VMGuardBackups that will not touch their snapshot again
    (and the UIDs of the old objects the finished ones were migrated from)."""
    finished = [b for b in backups if backup_status(b).get("phase") in BACKUP_TERMINAL]
    # A backup copied from the old kind made its snapshot under the old object's UID.
    migrated = {uid for b in finished if (uid := migrated_uid(b))}
    return {b["metadata"]["uid"] for b in finished} | migrated


def keep(uid: str, finished: set[str]) -> bool:
    """Whether a snapshot of backup ``uid`` counts as in use (see the module docstring)."""
    return not (uid in finished or uid.startswith(CBT_CYCLE_PREFIX))


def grace() -> timedelta:
    raw = os.environ.get(GRACE_ENV)
    return timedelta(seconds=float(raw)) if raw else GRACE


def snapshot_ages(records: list[VMRecord], now: datetime) -> list[tuple[str, str, float]]:
    """(VM name, snapshot name, creation time in Unix seconds) of each snapshot of ours;
    one without a creation time counts as made ``now``."""
    out = []
    for vm in records:
        for snap in vm.our_snapshots:
            created = parse_time(snap.created) or now
            if created.tzinfo is None:
                created = created.replace(tzinfo=UTC)
            out.append((vm.name, snap.name, created.timestamp()))
    return out


def consolidation_policy(
    result: MatchResult | None, policies: list[dict[str, Any]]
) -> Callable[[VMRecord], bool]:
    """Whether a VM may be consolidated, by its effective policy in ``result``."""
    specs = {p["metadata"]["name"]: p.get("spec") or {} for p in policies}
    allowed = {
        a.vm.moref: consolidation_allowed(specs.get(a.policy) or {})
        for a in (result.assignments if result else [])
        if a.policy is not None
    }
    return lambda vm: allowed.get(vm.moref, True)


async def sweep(
    api: KubeAPI,
    ep: Endpoint,
    namespace: str,
    records: list[VMRecord],
    allow_consolidate: Callable[[VMRecord], bool] = lambda _: True,
    now: datetime | None = None,
    also: Sequence[str] = (),
) -> SweepResult:
    """Remove the escaped snapshots among ``records`` (blocking calls in a thread); ages
    are taken at ``now`` (the controller's clock; the system clock when None). ``also``:
    the namespaces the VCenter admits (``spec.allowedNamespaces``), whose VMGuardBackups
    make snapshots through it too."""
    holding = [r for r in records if r.our_snapshots]
    if not holding:
        return SweepResult()
    backups = []
    for ns in dict.fromkeys([namespace, *also]):
        backups += await api.list_objects(BACKUP.plural, ns)
    finished = finished_uids(backups)

    def run() -> SweepResult:
        from vmguard.vsphere.session import VSphereSession
        from vmguard.vsphere.snapshots import sweep_orphans

        session = VSphereSession(ep)
        try:
            return sweep_orphans(
                session,
                holding,
                lambda uid: keep(uid, finished),
                MAX_AGE,
                now=now,
                grace=grace(),
                allow_consolidate=allow_consolidate,
            )
        finally:
            session.close()

    return await asyncio.to_thread(run)


def boot_vm_namespace(name: str) -> str | None:
    """The namespace a boot test's temporary VM's name carries (None: not such a name)."""
    if not name.startswith(BOOT_VM_PREFIX):
        return None
    return name[len(BOOT_VM_PREFIX) :].split(".", 1)[0] or None


def boot_vms_to_destroy(
    vms: Sequence[tuple[str, str, str]],
    namespaces: Sequence[str],
    restores: Sequence[dict[str, Any]],
    backups: Sequence[dict[str, Any]],
) -> list[tuple[str, str, str, str | None]]:
    """``(moref, VM name, restore UID, restore name or None)`` of the temporary VMs to
    destroy among ``vms`` (``(moref, name, marker UID)``), given the VMGuardRestores and
    VMGuardBackups of ``namespaces`` (pure; see the module doc)."""
    by_uid = {r["metadata"]["uid"]: r for r in restores}
    by_name = {(b["metadata"]["namespace"], b["metadata"]["name"]): b for b in backups}
    out: list[tuple[str, str, str, str | None]] = []
    for moref, name, uid in vms:
        ns = boot_vm_namespace(name)
        if ns is None or ns not in namespaces:
            continue  # another namespace's (or not a boot test's): not ours to judge
        restore = by_uid.get(uid)
        if restore is None:
            out.append((moref, name, uid, None))
            continue
        rmeta = restore["metadata"]
        owner = (rmeta.get("labels") or {}).get(LABEL_BOOT_TEST, "")
        backup = by_name.get((rmeta["namespace"], owner))
        if backup is None or not boot_in_use(backup_status(backup), rmeta["name"]):
            out.append((moref, name, uid, str(rmeta["name"])))
    return out


async def sweep_boot_vms(
    api: KubeAPI,
    ep: Endpoint,
    namespace: str,
    records: list[VMRecord],
    also: Sequence[str] = (),
) -> list[str]:
    """Destroy the boot tests' temporary VMs among ``records`` (the sweep's) that nothing
    uses any more, and delete their VMGuardRestores; the names of the VMs destroyed. Only
    VMs named like a boot test's are asked for their marker."""
    from vmguard.vsphere.adoption import destroy_marked, marker_values
    from vmguard.vsphere.session import VSphereSession

    named = {r.moref: r.name for r in records if boot_vm_namespace(r.name) is not None}
    if not named:
        return []

    def listed() -> list[tuple[str, str, str]]:
        session = VSphereSession(ep)
        try:
            marks = marker_values(session, sorted(named), RESTORE_VM_MARKER)
        finally:
            session.close()
        return [(moref, named[moref], uid) for moref, uid in sorted(marks.items())]

    vms = await asyncio.to_thread(listed)
    if not vms:
        return []
    namespaces = list(dict.fromkeys([namespace, *also]))
    restores: list[dict[str, Any]] = []
    backups: list[dict[str, Any]] = []
    for ns in namespaces:
        restores += await api.list_objects(RESTORE.plural, ns)
        backups += await api.list_objects(BACKUP.plural, ns)
    doomed = boot_vms_to_destroy(vms, namespaces, restores, backups)

    def destroy() -> list[str]:
        session = VSphereSession(ep)
        try:
            return [
                name for moref, name, uid, _ in doomed
                if destroy_marked(session, moref, RESTORE_VM_MARKER, uid)
            ]  # fmt: skip
        finally:
            session.close()

    gone = await asyncio.to_thread(destroy) if doomed else []
    for _, vm_name, _, restore in doomed:
        owner_ns = boot_vm_namespace(vm_name)
        if restore and owner_ns:
            await api.delete_object(RESTORE.plural, owner_ns, restore)
    return gone
