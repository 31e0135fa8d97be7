"""The CBT chain: which areas of each disk changed since the previous backup, or "unknown".

Per disk a backup keeps a :class:`~vmguard.store.archive.CbtState` — (disk UUID, backing
file, capacity, change id) — and the next backup continues from it
(docs/cbt-chain.md). :func:`plan_disk` compares the recorded state with the disk at the
new snapshot and either pages ``QueryChangedDiskAreas`` until the whole disk is
covered, or answers *unknown* with the reason:

- no earlier state (the first backup of the disk);
- another disk UUID (disk replaced), another backing file (storage moved), another
  capacity (resized);
- no change id then or now (CBT off or not yet active);
- another change id epoch (CBT was reset: ESXi-style ids are ``<epoch>/<sequence>``);
- vCenter refusing the change id (``InvalidArgument``, ``FileFault``).

Unknown never means "nothing changed": the engine then runs a full-scan incremental,
reading every allocated block and uploading only chunks the repository lacks.

:func:`enable_cbt` switches tracking on where it is allowed (hardware version ≥ 7 and
vCenter says the VM supports it) and makes it take effect with a create/remove
snapshot cycle, as ESXi only starts tracking at the next snapshot or power-on.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyVmomi import vim, vmodl

from vmguard.errors import PermanentError, RetryableError
from vmguard.store.archive import CbtState
from vmguard.vsphere.inventory import find_vm, vm_record
from vmguard.vsphere.session import VSphereSession, wait_for
from vmguard.vsphere.snapshots import SnapshotDisk, TakenSnapshot, snapshot_cycle

MIN_HARDWARE_VERSION = 7
_DELTA = re.compile(r"-\d{6}(\.vmdk)$")

Area = tuple[int, int]
"""(offset, length) in bytes."""


def base_backing(file_name: str) -> str:
    """The base disk's name: ``[ds] vm/disk-000002.vmdk`` → ``[ds] vm/disk.vmdk``.

    While a snapshot exists a VM's disk points at a delta file; the chain is about the
    base disk, so deltas must not look like a storage move.
    """
    return _DELTA.sub(r"\1", file_name)


@dataclass(frozen=True)
class DiskPlan:
    """What to read from one disk of a snapshot."""

    key: int
    state: CbtState
    """The chain point this backup records (at the snapshot)."""
    areas: list[Area] | None
    """Changed areas, sorted and merged; None when the chain is unknown."""
    reason: str
    """Why the areas are known (``incremental since <id>``) or why not."""

    @property
    def known(self) -> bool:
        return self.areas is not None


@dataclass(frozen=True)
class EnableResult:
    enabled: bool
    changed: bool
    reason: str


def enable_cbt(
    session: VSphereSession, vm_moref: str, allowed: bool = True, *, allow_consolidate: bool = True
) -> EnableResult:
    """Switch CBT on where allowed and make it active; idempotent.

    ``allow_consolidate`` is the policy's word on consolidating the disks after the
    activation snapshot is removed (a VM already needing it is only reported otherwise).
    """
    vm = session.call(lambda si: vm_record(si, vm_moref))
    if vm.cbt_enabled and all(d.change_id for d in vm.disks):
        return EnableResult(True, False, "CBT is on and active")
    if not allowed:
        return EnableResult(vm.cbt_enabled, False, "the policy does not allow enabling CBT")
    if vm.template:
        return EnableResult(False, False, "a template cannot track changes")
    if vm.hardware_version < MIN_HARDWARE_VERSION:
        return EnableResult(
            False, False, f"hardware version vmx-{vm.hardware_version:02d} < {MIN_HARDWARE_VERSION}"
        )
    if not vm.cbt_supported:
        return EnableResult(False, False, "vCenter reports that the VM cannot track changes")
    if not vm.cbt_enabled:
        spec = vim.vm.ConfigSpec(changeTrackingEnabled=True)
        session.call(lambda si: wait_for(find_vm(si, vm_moref).ReconfigVM_Task(spec=spec)))
    # Tracking starts at the next snapshot (or power-on): take and drop one now.
    cycle = snapshot_cycle(
        session, vm_moref, "cbt-" + secrets.token_hex(6), allow_consolidate=allow_consolidate
    )
    with cycle:
        pass
    after = session.call(lambda si: vm_record(si, vm_moref))
    if not all(d.change_id for d in after.disks):
        raise RetryableError(f"CBT on {vm.name} did not become active after a snapshot")
    return EnableResult(True, True, "CBT enabled and activated by a snapshot cycle")


def chain_states(taken: TakenSnapshot) -> dict[int, CbtState]:
    """The chain point of each disk at the snapshot (what the next backup continues from).

    UUID, capacity and change id come from the snapshot's config; the backing file from
    the VM as recorded before the snapshot, reduced to the base disk.
    """
    live = {d.key: d for d in taken.before.disks}
    out = {}
    for d in taken.disks:
        backing = live[d.key].backing_file if d.key in live else d.file_name
        out[d.key] = CbtState(
            disk_uuid=d.disk_uuid,
            backing_file=base_backing(backing),
            capacity=d.capacity,
            change_id=d.change_id,
        )
    return out


def changed_areas(
    session: VSphereSession, vm_moref: str, snapshot_moref: str, key: int, capacity: int, since: str
) -> list[Area]:
    """Page QueryChangedDiskAreas from offset 0 until the whole capacity is covered.

    ``since="*"`` lists the allocated areas of the snapshot's disk.
    """
    areas: list[Area] = []
    offset = 0
    while offset < capacity:

        def query(si: vim.ServiceInstance, at: int = offset) -> Any:
            snapshot = vim.vm.Snapshot(snapshot_moref, si._stub)
            return find_vm(si, vm_moref).QueryChangedDiskAreas(
                snapshot=snapshot, deviceKey=key, startOffset=at, changeId=since
            )

        info = session.call(query)
        if info.length <= 0 or info.startOffset != offset:
            raise RetryableError(
                f"QueryChangedDiskAreas made no progress at offset {offset} of disk {key}"
            )
        for area in info.changedArea or ():
            start = max(int(area.start), offset)
            end = min(int(area.start + area.length), capacity)
            if end > start:
                areas.append((start, end - start))
        offset = int(info.startOffset + info.length)
    return merge(areas)


def merge(areas: list[Area]) -> list[Area]:
    out: list[Area] = []
    for start, length in sorted(areas):
        if out and start <= out[-1][0] + out[-1][1]:
            last_start, last_length = out[-1]
            out[-1] = (last_start, max(last_start + last_length, start + length) - last_start)
        elif length > 0:
            out.append((start, length))
    return out


def _epoch(change_id: str) -> str:
    return change_id.rsplit("/", 1)[0]


def broken_reason(previous: CbtState | None, current: CbtState) -> str:
    """Why ``current`` cannot continue from ``previous``; "" when it may (pure)."""
    if previous is None:
        return "no earlier backup of this disk"
    if previous.disk_uuid != current.disk_uuid:
        return f"disk replaced (UUID {previous.disk_uuid or '-'} → {current.disk_uuid or '-'})"
    if base_backing(previous.backing_file) != current.backing_file:
        return f"backing file moved ({previous.backing_file} → {current.backing_file})"
    if previous.capacity != current.capacity:
        return f"disk resized ({previous.capacity} → {current.capacity} bytes)"
    if not previous.change_id:
        return "no change id was recorded by the previous backup"
    if not current.change_id:
        return "CBT is not active on the disk"
    if _epoch(previous.change_id) != _epoch(current.change_id):
        return "CBT was reset (the change id epoch changed)"
    return ""


def plan_disk(
    session: VSphereSession,
    taken: TakenSnapshot,
    disk: SnapshotDisk,
    current: CbtState,
    previous: CbtState | None,
) -> DiskPlan:
    """Changed areas of one disk since ``previous``, or unknown with the reason."""
    reason = broken_reason(previous, current)
    if reason:
        return DiskPlan(disk.key, current, None, reason)
    assert previous is not None
    try:
        areas = changed_areas(
            session, taken.vm_moref, taken.moref, disk.key, disk.capacity, previous.change_id
        )
    except vmodl.fault.InvalidArgument as exc:
        what = exc.invalidProperty or "argument"
        return DiskPlan(disk.key, current, None, f"vCenter refused the change id ({what})")
    except vim.fault.FileFault as exc:
        detail = getattr(exc, "msg", "") or type(exc).__name__
        return DiskPlan(disk.key, current, None, f"vCenter cannot track this disk ({detail})")
    return DiskPlan(disk.key, current, areas, f"incremental since {previous.change_id}")


def plan(
    session: VSphereSession, taken: TakenSnapshot, previous: Mapping[int, CbtState]
) -> dict[int, DiskPlan]:
    """A :class:`DiskPlan` for every disk of the snapshot."""
    states = chain_states(taken)
    if not taken.disks:
        raise PermanentError(f"snapshot {taken.moref} of {taken.before.name} has no disks")
    return {
        d.key: plan_disk(session, taken, d, states[d.key], previous.get(d.key)) for d in taken.disks
    }
