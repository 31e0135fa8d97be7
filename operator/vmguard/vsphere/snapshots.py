"""The snapshot cycle of one backup, and the sweep that removes snapshots that escaped it.

:func:`snapshot_cycle` is a context manager (docs/snapshot-cycle.md):

1. record the VM as it is (every disk's change id, backing file, UUID, capacity);
2. create the snapshot named ``vmguard-<backup uid>`` with the UID in its description,
   quiesced when asked; if quiescing fails and the policy allows it, take a
   crash-consistent one instead and record why (:attr:`TakenSnapshot.fallback_reason`);
3. hand the snapshot to the transfer;
4. in *every* outcome — success, exception, KeyboardInterrupt — remove the snapshot,
   wait for the removal (vSphere consolidates the delta into the base disk then), and
   consolidate when vSphere still reports ``consolidationNeeded`` and the policy allows.

A process that dies inside step 3 cannot run step 4: :func:`sweep_orphans` finds our
snapshots (name prefix *and* UID in the description, :func:`~.records.backup_uid_of`)
whose backup no longer runs or that are older than a limit, and removes them. A user's
snapshot is never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from pyVmomi import vim, vmodl

from vmguard.api import parse_time
from vmguard.errors import PermanentError, RetryableError
from vmguard.vsphere.inventory import find_vm, moid, vm_record
from vmguard.vsphere.records import (
    SnapshotRecord,
    VMRecord,
    our_snapshot_description,
    our_snapshot_name,
)
from vmguard.vsphere.session import VSphereSession, wait_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotDisk:
    """One disk as the snapshot froze it (what a transport reads)."""

    key: int
    label: str
    file_name: str
    """The datastore path the snapshot's config names (what NBD/VDDK and hot-add open)."""
    capacity: int
    change_id: str
    disk_uuid: str
    thin: bool
    restore_mark: str | None = None
    """The mark the last in-place restore into this disk left on the VM (a token unique
    to that restore, :data:`RESTORE_MARK_KEY`) as the snapshot's config holds it; None
    when no such restore is recorded."""


RESTORE_MARK_KEY = "vmguard.inPlaceRestore"
"""The VM's ``extraConfig`` key where an in-place restore records, before it writes, a
token unique to it for each disk it overwrites (JSON ``{"archive": id, "time": iso,
"disks": {"<key>": token}}``). A backup records in its archive the tokens its snapshot
saw; the next one trusts its change id only if the token is still the same, since CBT
may not have tracked the restore's writes (docs/cbt-chain.md)."""


def restore_marks(extra_config: Iterable[Any] | None) -> dict[int, str] | None:
    """Per disk key, the token of the last in-place restore; None without a mark.

    A mark that cannot be parsed stands for a restore nobody can place: every disk gets
    ``?<hash of the text>`` under the key -1, which no backup has recorded before it
    was written.
    """
    raw = next(
        (str(o.value) for o in extra_config or () if getattr(o, "key", "") == RESTORE_MARK_KEY),
        None,
    )
    if raw is None:
        return None
    try:
        disks = json.loads(raw)["disks"]
        return {int(k): str(v) for k, v in dict(disks).items() if v}
    except (ValueError, KeyError, TypeError):
        return {-1: "?" + hashlib.sha256(raw.encode()).hexdigest()[:16]}


@dataclass
class TakenSnapshot:
    vm_moref: str
    moref: str
    name: str
    backup_uid: str
    quiesced: bool
    before: VMRecord
    """The VM as recorded just before the snapshot (change ids, backing files)."""
    disks: tuple[SnapshotDisk, ...]
    fallback_reason: str = ""
    """Why a quiesced snapshot was asked for and a crash-consistent one taken."""
    removed: bool = False
    consolidation: ConsolidationReport | None = None

    def disk(self, key: int) -> SnapshotDisk:
        for d in self.disks:
            if d.key == key:
                return d
        raise KeyError(f"snapshot {self.moref} has no disk {key}")


@dataclass(frozen=True)
class ConsolidationReport:
    needed: bool
    consolidated: bool = False
    error: str = ""


def snapshot_disks(snapshot: Any) -> tuple[SnapshotDisk, ...]:
    out = []
    marks = restore_marks(snapshot.config.extraConfig)
    for d in snapshot.config.hardware.device:
        if isinstance(d, vim.vm.device.VirtualDisk):
            b = d.backing
            mark = None
            if marks is not None:
                mark = marks.get(int(d.key), marks.get(-1))
            out.append(
                SnapshotDisk(
                    key=int(d.key),
                    label=d.deviceInfo.label if d.deviceInfo else "",
                    file_name=str(getattr(b, "fileName", "")),
                    capacity=int(d.capacityInBytes or (d.capacityInKB or 0) * 1024),
                    change_id=str(getattr(b, "changeId", "") or ""),
                    disk_uuid=str(getattr(b, "uuid", "") or ""),
                    thin=bool(getattr(b, "thinProvisioned", False)),
                    restore_mark=mark,
                )
            )
    return tuple(out)


def _create(si: vim.ServiceInstance, vm_moref: str, uid: str, quiesce: bool, detail: str) -> Any:
    vm = find_vm(si, vm_moref)
    task = vm.CreateSnapshot_Task(
        name=our_snapshot_name(uid),
        description=our_snapshot_description(uid, detail),
        memory=False,
        quiesce=quiesce,
    )
    return wait_for(task)


def create_snapshot(
    session: VSphereSession,
    vm_moref: str,
    backup_uid: str,
    *,
    quiesce: bool = False,
    crash_consistent_fallback: bool = True,
) -> TakenSnapshot:
    """Record the VM, then take our snapshot (see the module docstring, steps 1-2)."""
    before = session.call(lambda si: vm_record(si, vm_moref))
    fallback = ""
    try:
        snap = session.call(lambda si: _create(si, vm_moref, backup_uid, quiesce, ""))
    except vmodl.MethodFault as exc:
        # ApplicationQuiesceFault, ToolsUnavailable, a timeout of VSS... all end here.
        if not quiesce or not crash_consistent_fallback:
            raise PermanentError(
                f"snapshot of {before.name} ({vm_moref}) failed: {_fault_text(exc)}"
            ) from exc
        fallback = f"quiesced snapshot failed ({_fault_text(exc)}); took a crash-consistent one"
        log.warning("%s: %s", before.name, fallback)
        snap = session.call(
            lambda si: _create(si, vm_moref, backup_uid, False, "crash-consistent fallback")
        )
    taken = TakenSnapshot(
        vm_moref=vm_moref,
        moref=moid(snap),
        name=our_snapshot_name(backup_uid),
        backup_uid=backup_uid,
        quiesced=quiesce and not fallback,
        before=before,
        disks=(),
        fallback_reason=fallback,
    )
    taken.disks = session.call(lambda si: snapshot_disks(vim.vm.Snapshot(taken.moref, si._stub)))
    return taken


def find_our_snapshot(vm: VMRecord, backup_uid: str) -> SnapshotRecord | None:
    """Our snapshot of backup ``backup_uid`` on ``vm`` (by name *and* description)."""
    return next((s for s in vm.our_snapshots if s.backup_uid == backup_uid), None)


def load_snapshot(
    session: VSphereSession,
    vm_moref: str,
    snapshot_moref: str,
    backup_uid: str,
    backings: Mapping[int, str] | None = None,
) -> TakenSnapshot:
    """A snapshot another process took, as :func:`create_snapshot` would have returned it.

    The proxy Job reads a snapshot the operator took: it must still exist and be ours for
    ``backup_uid``. ``backings`` are the disks' backing files recorded before the snapshot
    (the VM now points at deltas); without them the live ones are used.
    """
    vm = session.call(lambda si: vm_record(si, vm_moref))
    snap = next((s for s in vm.snapshots if s.moref == snapshot_moref), None)
    if snap is None:
        raise PermanentError(f"snapshot {snapshot_moref} of {vm.name} ({vm_moref}) is gone")
    if snap.backup_uid != backup_uid:
        raise PermanentError(
            f"snapshot {snapshot_moref} of {vm.name} is not the one of backup {backup_uid}"
        )
    if backings:
        disks = tuple(
            replace(d, backing_file=backings.get(d.key, d.backing_file)) for d in vm.disks
        )
        vm = replace(vm, disks=disks)
    taken = TakenSnapshot(
        vm_moref=vm_moref,
        moref=snapshot_moref,
        name=snap.name,
        backup_uid=backup_uid,
        quiesced=snap.quiesced,
        before=vm,
        disks=(),
    )
    taken.disks = session.call(lambda si: snapshot_disks(vim.vm.Snapshot(snapshot_moref, si._stub)))
    return taken


def _fault_text(exc: BaseException) -> str:
    msg = getattr(exc, "msg", "") or str(exc)
    return f"{type(exc).__name__}: {msg}".strip()


def remove_snapshot(session: VSphereSession, vm_moref: str, snapshot_moref: str) -> None:
    """Remove one snapshot (children kept) and wait; a snapshot already gone is fine."""

    def remove(si: vim.ServiceInstance) -> None:
        snap = vim.vm.Snapshot(snapshot_moref, si._stub)
        try:
            wait_for(snap.RemoveSnapshot_Task(removeChildren=False, consolidate=True))
        except vmodl.fault.ManagedObjectNotFound:
            log.info("snapshot %s of %s is already gone", snapshot_moref, vm_moref)

    session.call(remove)


def consolidate(session: VSphereSession, vm_moref: str, allowed: bool) -> ConsolidationReport:
    """Report ``consolidationNeeded``; consolidate when it is set and ``allowed``."""
    needed = bool(session.call(lambda si: find_vm(si, vm_moref).runtime.consolidationNeeded))
    if not needed:
        return ConsolidationReport(needed=False)
    if not allowed:
        return ConsolidationReport(needed=True, error="consolidation needed; not allowed")
    try:
        session.call(lambda si: wait_for(find_vm(si, vm_moref).ConsolidateVMDisks_Task()))
    except vmodl.MethodFault as exc:
        return ConsolidationReport(needed=True, error=_fault_text(exc))
    return ConsolidationReport(needed=True, consolidated=True)


@contextlib.contextmanager
def snapshot_cycle(
    session: VSphereSession,
    vm_moref: str,
    backup_uid: str,
    *,
    quiesce: bool = False,
    crash_consistent_fallback: bool = True,
    allow_consolidate: bool = True,
) -> Iterator[TakenSnapshot]:
    """Our snapshot for the duration of the block; removed in every outcome."""
    taken = create_snapshot(
        session,
        vm_moref,
        backup_uid,
        quiesce=quiesce,
        crash_consistent_fallback=crash_consistent_fallback,
    )
    failed = True
    try:
        yield taken
        failed = False
    finally:
        try:
            remove_snapshot(session, vm_moref, taken.moref)
            taken.removed = True
            taken.consolidation = consolidate(session, vm_moref, allow_consolidate)
        except (RetryableError, vmodl.MethodFault) as exc:
            # The orphan sweep will find it; do not hide the transfer's own error.
            log.error("snapshot %s of %s not removed: %s", taken.moref, vm_moref, exc)
            if not failed:
                raise RetryableError(
                    f"snapshot {taken.name} of {taken.before.name} could not be removed"
                    " (the orphan sweep will retry)"
                ) from exc


@dataclass(frozen=True)
class SweptSnapshot:
    vm_moref: str
    vm_name: str
    snapshot_moref: str
    backup_uid: str
    reason: str
    removed: bool
    error: str = ""


@dataclass
class SweepResult:
    swept: list[SweptSnapshot] = field(default_factory=list)
    consolidation_needed: list[str] = field(default_factory=list)
    """Names of VMs that still need consolidation after the sweep (reported, not hidden)."""
    consolidations: dict[str, ConsolidationReport] = field(default_factory=dict)
    """By VM name, every VM that needed consolidation: consolidated, or why not."""


def sweep_orphans(
    session: VSphereSession,
    records: Iterable[VMRecord],
    backup_running: Callable[[str], bool],
    max_age: timedelta,
    now: datetime | None = None,
    allow_consolidate: bool | Callable[[VMRecord], bool] = True,
    grace: timedelta = timedelta(0),
) -> SweepResult:
    """Remove our snapshots whose backup does not run any more or that are too old.

    ``records`` come from a discovery sweep; ``backup_running(uid)`` says whether the
    backup with that UID is still in progress (the operator asks the VMGuardBackup objects).
    A snapshot younger than ``grace`` is left alone whatever its backup says: it may be
    one a backup (or a CBT activation cycle) is taking right now. A VM touched here, or
    needing consolidation, is consolidated when ``allow_consolidate`` (or, per VM, its
    answer) allows; a consolidation that fails is reported, never raised.
    """
    now = now or datetime.now(UTC)
    allowed = allow_consolidate if callable(allow_consolidate) else lambda _: allow_consolidate
    result = SweepResult()
    for vm in records:
        touched = False
        for snap in vm.our_snapshots:
            created = parse_time(snap.created) or now
            if now - created < grace:
                continue
            if not backup_running(snap.backup_uid):
                reason = "its backup is not running"
            elif now - created > max_age:
                reason = f"older than {max_age}"
            else:
                continue
            try:
                remove_snapshot(session, vm.moref, snap.moref)
            except (RetryableError, vmodl.MethodFault) as exc:
                result.swept.append(
                    SweptSnapshot(
                        vm.moref,
                        vm.name,
                        snap.moref,
                        snap.backup_uid,
                        reason,
                        False,
                        _fault_text(exc),
                    )
                )
                continue
            touched = True
            result.swept.append(
                SweptSnapshot(vm.moref, vm.name, snap.moref, snap.backup_uid, reason, True)
            )
        if touched or vm.consolidation_needed:
            report = consolidate(session, vm.moref, allowed(vm))
            if report.needed:
                result.consolidations[vm.name] = report
            if report.needed and not report.consolidated:
                result.consolidation_needed.append(vm.name)
    return result
