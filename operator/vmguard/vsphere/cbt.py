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
- a lower sequence number than before (the disk was reverted, e.g. to a snapshot: the ids
  after the snapshot belong to a history the disk no longer has);
- an in-place restore into the disk since the previous backup: :func:`mark_in_place_restore`
  leaves a token on the VM before the restore writes, each archive records the tokens its
  snapshot saw (:data:`RESTORE_MARKS_LABEL`), and a token the previous backup did not
  see breaks the chain, as CBT may not have tracked the restore's writes;
- vCenter refusing the change id (``InvalidArgument``, ``FileFault``).

Unknown never means "nothing changed": the engine then runs a full-scan incremental,
reading every allocated block and uploading only chunks the repository lacks.

:func:`enable_cbt` switches tracking on where it is allowed (hardware version ≥ 7 and
vCenter says the VM supports it) and makes it take effect with a create/remove
snapshot cycle, as ESXi only starts tracking at the next snapshot or power-on.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pyVmomi import vim, vmodl

from vmguard.errors import PermanentError, RetryableError
from vmguard.store.archive import CbtState
from vmguard.vsphere.inventory import find_vm, vm_record
from vmguard.vsphere.session import VSphereSession, wait_for
from vmguard.vsphere.snapshots import (
    RESTORE_MARK_KEY,
    SnapshotDisk,
    TakenSnapshot,
    restore_marks,
    snapshot_cycle,
)

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


def _sequence(change_id: str) -> int | None:
    """The number after the ``/`` of an ESXi-style change id; None when there is none."""
    _, sep, seq = change_id.rpartition("/")
    return int(seq) if sep and seq.isdigit() else None


def broken_reason(
    previous: CbtState | None,
    current: CbtState,
    restore_mark: str | None = None,
    previous_mark: str | None = None,
) -> str:
    """Why ``current`` cannot continue from ``previous``; "" when it may (pure).

    ``restore_mark`` is the token the last in-place restore into the disk left on the VM
    as the new snapshot saw it, ``previous_mark`` the one the previous backup's snapshot
    saw (:attr:`~vmguard.vsphere.snapshots.SnapshotDisk.restore_mark`): a token the
    previous backup did not see means a restore wrote into the disk after it.
    """
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
    prev_seq, cur_seq = _sequence(previous.change_id), _sequence(current.change_id)
    if prev_seq is not None and cur_seq is not None and cur_seq < prev_seq:
        return (
            f"the change id went backwards (/{prev_seq} → /{cur_seq}): the disk was "
            "reverted to an earlier state, such as a snapshot"
        )
    if restore_mark and restore_mark != previous_mark:
        return "in-place restore since the last backup (CBT may not have tracked its writes)"
    return ""


def plan_disk(
    session: VSphereSession,
    taken: TakenSnapshot,
    disk: SnapshotDisk,
    current: CbtState,
    previous: CbtState | None,
    previous_mark: str | None = None,
) -> DiskPlan:
    """Changed areas of one disk since ``previous``, or unknown with the reason.

    ``previous_mark`` is the restore token the previous backup's snapshot saw on this
    disk (:func:`seen_marks` of its archive's labels).
    """
    reason = broken_reason(previous, current, disk.restore_mark, previous_mark)
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
    session: VSphereSession,
    taken: TakenSnapshot,
    previous: Mapping[int, CbtState],
    previous_marks: Mapping[int, str] | None = None,
) -> dict[int, DiskPlan]:
    """A :class:`DiskPlan` for every disk of the snapshot.

    ``previous_marks``: the restore tokens the previous backup saw (:func:`seen_marks`).
    """
    states = chain_states(taken)
    if not taken.disks:
        raise PermanentError(f"snapshot {taken.moref} of {taken.before.name} has no disks")
    marks = previous_marks or {}
    return {
        d.key: plan_disk(session, taken, d, states[d.key], previous.get(d.key), marks.get(d.key))
        for d in taken.disks
    }


RESTORE_MARKS_LABEL = "cbt_restore_marks"
"""The archive label holding the restore tokens its snapshot saw, JSON ``{"<key>": token}``
(absent when there were none)."""


def marks_label(taken: TakenSnapshot) -> dict[str, str]:
    """The labels that record the restore tokens ``taken`` saw (none: no label)."""
    seen = {str(d.key): d.restore_mark for d in taken.disks if d.restore_mark}
    return {RESTORE_MARKS_LABEL: json.dumps(seen, sort_keys=True)} if seen else {}


def seen_marks(labels: Mapping[str, str]) -> dict[int, str]:
    """The restore tokens an archive's snapshot saw, from its labels ({} for none; a
    label nobody can read counts as none, so the next backup scans)."""
    try:
        return {int(k): str(v) for k, v in json.loads(labels[RESTORE_MARKS_LABEL]).items()}
    except (KeyError, ValueError, TypeError, AttributeError):
        return {}


def mark_in_place_restore(
    session: VSphereSession, vm_moref: str, keys: Iterable[int], archive_id: str
) -> str:
    """Record on the VM, *before* writing, that disks ``keys`` are about to be overwritten.

    A token unique to this restore goes into the VM's ``extraConfig`` for each disk
    (:data:`~vmguard.vsphere.snapshots.RESTORE_MARK_KEY`; other disks' tokens are kept).
    The next backup's snapshot carries it; a token the previous backup did not see breaks
    the chain (:func:`broken_reason`). Recorded first, so a restore that dies half-way
    leaves it too. Returns the token.
    """
    now = datetime.now(UTC)
    token = f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(6)}"
    wanted = sorted(set(keys))

    def mark(si: vim.ServiceInstance) -> None:
        vm = find_vm(si, vm_moref)
        marks = restore_marks(vm.config.extraConfig if vm.config else None) or {}
        marks.pop(-1, None)  # an unreadable mark is replaced by this one
        marks.update(dict.fromkeys(wanted, token))
        value = json.dumps(
            {
                "archive": archive_id,
                "time": now.isoformat(timespec="seconds"),
                "disks": {str(k): v for k, v in sorted(marks.items())},
            },
            sort_keys=True,
        )
        option = vim.option.OptionValue(key=RESTORE_MARK_KEY, value=value)
        wait_for(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(extraConfig=[option])))

    session.call(mark)
    return token
