"""The lab's vSphere simulator behaves like vSphere where vmguard depends on it.

Runs against the real ``vmguard-vcsim`` started by the lab: ``vsphere_si`` is a pyVmomi
ServiceInstance logged in to it and ``vsim`` a :class:`vmguard_lab.vsim.VSimControl` of
the same simulator. Every test works on VMs it switches to a known state itself and
removes the snapshots it takes.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl

from vmguard_lab.vsim import CBT_BLOCK_SIZE, VSimControl, VSimVM

pytestmark = pytest.mark.lab

CHANGE_ID = re.compile(r"^52( [0-9a-f]{2}){7}-[0-9a-f]{2}( [0-9a-f]{2}){7}/\d+$")
MiB = 1024 * 1024


def _vm_objects(si: Any) -> dict[str, Any]:
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        return {vm._moId: vm for vm in view.view}
    finally:
        view.DestroyView()


def _pick_vm(vsim: VSimControl, *, min_capacity: int = 512 * MiB) -> VSimVM:
    """A powered-on, non-template VM without CBT, whose first disk is big enough.

    Tests enable CBT themselves, so the VM they get has never tracked changes. The lab is
    shared with other tests, which tend to take the first VM that fits: take the last.
    """
    for vm in reversed(vsim.vms()):
        if (
            not vm.template
            and not vm.cbt_enabled
            and vm.power_state == "poweredOn"
            and vm.disks
            and vm.disks[0].capacity >= min_capacity
        ):
            return vm
    pytest.fail("the lab inventory has no powered-on VM without CBT and a large disk")


def _snapshot(vm: Any, name: str) -> Any:
    task = vm.CreateSnapshot_Task(
        name=name, description="vmguard lab test", memory=False, quiesce=False
    )
    WaitForTask(task)
    return task.info.result


def _disk_change_id(config: Any, key: int) -> str:
    for dev in config.hardware.device:
        if isinstance(dev, vim.vm.device.VirtualDisk) and dev.key == key:
            return str(dev.backing.changeId or "")
    raise AssertionError(f"no disk {key} in config")


def _changed_areas(vm: Any, snap: Any, key: int, change_id: str, capacity: int):
    """Pages QueryChangedDiskAreas until the whole disk is covered, like a backup does."""
    areas: list[tuple[int, int]] = []
    offset, calls = 0, 0
    while offset < capacity:
        info = vm.QueryChangedDiskAreas(
            snapshot=snap, deviceKey=key, startOffset=offset, changeId=change_id
        )
        calls += 1
        assert info.startOffset == offset and info.length > 0
        for a in info.changedArea or []:
            assert offset <= a.start and a.start + a.length <= offset + info.length
            areas.append((a.start, a.length))
        offset += info.length
    return _merge(areas), calls


def _merge(areas: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, length in sorted(areas):
        if out and start <= out[-1][0] + out[-1][1]:
            end = max(out[-1][0] + out[-1][1], start + length)
            out[-1] = (out[-1][0], end - out[-1][0])
        else:
            out.append((start, length))
    return out


def _blocks(offset: int, size: int, capacity: int) -> tuple[int, int]:
    start = offset // CBT_BLOCK_SIZE * CBT_BLOCK_SIZE
    end = min(-(-(offset + size) // CBT_BLOCK_SIZE) * CBT_BLOCK_SIZE, capacity)
    return start, end - start


def _read(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


@pytest.fixture
def cbt_vm(vsphere_si: Any, vsim: VSimControl, tmp_path: Path) -> Iterator[tuple[Any, VSimVM]]:
    """A VM with CBT just enabled through ReconfigVM.

    Afterwards its snapshots are removed, CBT is off again and a disk whose capacity the
    test changed gets an empty image of its old size, so the shared lab stays usable.
    """
    lab_vm = _pick_vm(vsim)
    vm = _vm_objects(vsphere_si)[lab_vm.moref]
    WaitForTask(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=True)))
    try:
        yield vm, vsim.vm(lab_vm.moref)
    finally:
        WaitForTask(vm.RemoveAllSnapshots_Task())
        WaitForTask(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=False)))
        for disk in lab_vm.disks:
            if vsim.disk(lab_vm.moref, disk.key).capacity != disk.capacity:
                empty = tmp_path / f"restore-{disk.key}.img"
                with open(empty, "wb") as f:
                    f.truncate(disk.capacity)
                vsim.put_image(lab_vm.moref, disk.key, str(empty))


def test_inventory_is_listed_through_pyvmomi(vsphere_si: Any, vsim: VSimControl) -> None:
    lab = {vm.moref: vm for vm in vsim.vms()}
    seen = _vm_objects(vsphere_si)
    assert set(seen) == set(lab)
    names = {moref: vm.name for moref, vm in seen.items()}
    assert names == {moref: vm.name for moref, vm in lab.items()}
    uuids = {moref: vm.config.instanceUuid for moref, vm in seen.items()}
    assert uuids == {moref: vm.instance_uuid for moref, vm in lab.items()}
    if len(lab) < 3:
        pytest.skip("the special VMs need an inventory of at least 3")
    assert any("%2f" in n for n in names.values()), "a VM name with an escaped slash"
    assert any(not n.isascii() for n in names.values()), "a VM with a unicode name"
    assert any(vm.template for vm in lab.values())
    assert {vm.cbt_enabled for vm in lab.values() if not vm.template} == {True, False}


def test_cbt_activates_on_snapshot_and_tracks_guest_writes(
    cbt_vm: tuple[Any, VSimVM], vsim: VSimControl
) -> None:
    vm, lab_vm = cbt_vm
    disk = lab_vm.disks[0]
    capacity = disk.capacity
    # Enabled but not active until the next snapshot: no change id anywhere yet.
    assert lab_vm.cbt_enabled and not lab_vm.cbt_active
    assert disk.change_id is None
    assert _disk_change_id(vm.config, disk.key) == ""

    snap1 = _snapshot(vm, "base")
    first = _disk_change_id(snap1.config, disk.key)
    assert CHANGE_ID.match(first), first
    assert vsim.vm(lab_vm.moref).cbt_active
    assert _disk_change_id(vm.config, disk.key) == first

    # Writes at known offsets: unaligned, spanning blocks, near a 256 MiB page
    # boundary, and at the very end of the disk.
    writes = [
        (0, os.urandom(4096)),
        (MiB + 100, os.urandom(70_000)),
        (256 * MiB - 10, os.urandom(20)),
        (300 * MiB, os.urandom(MiB)),
        (capacity - 512, os.urandom(512)),
    ]
    old = {off: _read(disk.path, off, len(data)) for off, data in writes}
    for off, data in writes:
        vsim.write(lab_vm.moref, disk.key, off, data)

    snap2 = _snapshot(vm, "after-writes")
    second = _disk_change_id(snap2.config, disk.key)
    assert CHANGE_ID.match(second) and second != first

    areas, calls = _changed_areas(vm, snap2, disk.key, first, capacity)
    expected = _merge([_blocks(off, len(data), capacity) for off, data in writes])
    assert areas == expected
    assert calls > 1, "a disk this large must take more than one QueryChangedDiskAreas call"
    # Nothing changed between the second snapshot and itself.
    assert _changed_areas(vm, snap2, disk.key, second, capacity)[0] == []

    # The first snapshot froze the old bytes; the live disk and the second hold the new.
    frozen1 = {d.key: d for d in vsim.snapshot_disks(snap1._moId)}[disk.key]
    frozen2 = {d.key: d for d in vsim.snapshot_disks(snap2._moId)}[disk.key]
    assert frozen1.change_id == first and frozen2.change_id == second
    for off, data in writes:
        assert _read(frozen1.path, off, len(data)) == old[off]
        assert _read(disk.path, off, len(data)) == data
        assert _read(frozen2.path, off, len(data)) == data

    # "*" lists the allocated areas of the frozen copy: at least what was written.
    everything, _ = _changed_areas(vm, snap2, disk.key, "*", capacity)
    for start, length in expected:
        assert any(s <= start and start + length <= s + n for s, n in everything)

    WaitForTask(snap1.RemoveSnapshot_Task(removeChildren=False))
    assert not os.path.exists(frozen1.path)
    assert os.path.exists(frozen2.path)


def _chain_is_refused(vm: Any, key: int, capacity: int, old: str) -> str:
    snap = _snapshot(vm, "after-break")
    new = _disk_change_id(snap.config, key)
    assert CHANGE_ID.match(new) and new.split("/")[0] != old.split("/")[0], "a new epoch"
    with pytest.raises(vmodl.fault.InvalidArgument) as err:
        vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=key, startOffset=0, changeId=old)
    assert err.value.invalidProperty == "changeId"
    # The new chain works from its first change id.
    assert _changed_areas(vm, snap, key, new, capacity)[0] == []
    return new


@pytest.mark.parametrize("how", ["reconfig", "control"])
def test_resize_breaks_the_cbt_chain(
    cbt_vm: tuple[Any, VSimVM], vsim: VSimControl, how: str
) -> None:
    vm, lab_vm = cbt_vm
    disk = lab_vm.disks[0]
    old = _disk_change_id(_snapshot(vm, "before-resize").config, disk.key)
    vsim.write(lab_vm.moref, disk.key, 4096, b"x" * 4096)
    capacity = disk.capacity + 64 * MiB
    if how == "reconfig":
        dev = next(
            d
            for d in vm.config.hardware.device
            if isinstance(d, vim.vm.device.VirtualDisk) and d.key == disk.key
        )
        dev.capacityInBytes = capacity
        dev.capacityInKB = capacity // 1024
        change = vim.vm.device.VirtualDeviceSpec(operation="edit", device=dev)
        WaitForTask(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=[change])))
    else:
        vsim.resize(lab_vm.moref, disk.key, capacity)
    resized = vsim.disk(lab_vm.moref, disk.key)
    assert resized.capacity == capacity
    assert os.path.getsize(resized.path) == capacity
    _chain_is_refused(vm, disk.key, capacity, old)


def test_cbt_reset_breaks_the_cbt_chain(cbt_vm: tuple[Any, VSimVM], vsim: VSimControl) -> None:
    vm, lab_vm = cbt_vm
    disk = lab_vm.disks[0]
    old = _disk_change_id(_snapshot(vm, "before-reset").config, disk.key)
    vsim.reset_cbt(lab_vm.moref, disk.key)
    _chain_is_refused(vm, disk.key, disk.capacity, old)


def test_malformed_and_future_change_ids_are_refused(
    cbt_vm: tuple[Any, VSimVM], vsim: VSimControl
) -> None:
    vm, lab_vm = cbt_vm
    disk = lab_vm.disks[0]
    snap = _snapshot(vm, "ids")
    current = _disk_change_id(snap.config, disk.key)
    epoch, seq = current.split("/")
    for bad in ["", "garbage", f"{epoch}/{int(seq) + 1}", f"{epoch}/x"]:
        with pytest.raises(vmodl.fault.InvalidArgument) as err:
            vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=disk.key, startOffset=0, changeId=bad)
        assert err.value.invalidProperty == "changeId", bad


def test_snapshot_without_cbt_has_no_change_ids(vsphere_si: Any, vsim: VSimControl) -> None:
    lab_vm = _pick_vm(vsim)
    vm = _vm_objects(vsphere_si)[lab_vm.moref]
    disk = lab_vm.disks[0]
    snap = _snapshot(vm, "no-cbt")
    try:
        assert _disk_change_id(snap.config, disk.key) == ""
        frozen = {d.key: d for d in vsim.snapshot_disks(snap._moId)}[disk.key]
        assert frozen.change_id is None and os.path.getsize(frozen.path) == disk.capacity
        with pytest.raises(vim.fault.FileFault):
            vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=disk.key, startOffset=0, changeId="*")
    finally:
        WaitForTask(vm.RemoveAllSnapshots_Task())
    assert not os.path.exists(frozen.path)


def test_put_image_replaces_content_and_starts_a_new_epoch(
    cbt_vm: tuple[Any, VSimVM], vsim: VSimControl, tmp_path: Path
) -> None:
    vm, lab_vm = cbt_vm
    disk = lab_vm.disks[0]
    old = _disk_change_id(_snapshot(vm, "before-image").config, disk.key)
    image = tmp_path / "disk.img"
    payload = os.urandom(3 * CBT_BLOCK_SIZE)
    with open(image, "wb") as f:
        f.seek(5 * MiB)
        f.write(payload)
        f.truncate(64 * MiB + 100)  # capacity rounds up to 512 bytes
    new = vsim.put_image(lab_vm.moref, disk.key, str(image))
    assert new.capacity == 64 * MiB + 512
    assert _read(new.path, 5 * MiB, len(payload)) == payload
    assert _read(new.path, 0, 4096) == bytes(4096)
    dev = next(
        d
        for d in vm.config.hardware.device
        if isinstance(d, vim.vm.device.VirtualDisk) and d.key == disk.key
    )
    assert dev.capacityInBytes == new.capacity
    _chain_is_refused(vm, disk.key, new.capacity, old)


def _retrieve_all(si: Any, objs: list[Any], kind: Any) -> None:
    pc = si.content.propertyCollector
    q = vmodl.query.PropertyCollector
    spec = q.FilterSpec(
        objectSet=[q.ObjectSpec(obj=o) for o in objs],
        propSet=[q.PropertySpec(type=kind, all=True)],
    )
    assert len(pc.RetrieveContents([spec])) == len(objs)


def test_every_property_deserializes_in_pyvmomi(vsphere_si: Any, vsim: VSimControl) -> None:
    """vcsim leaves some required enums empty; pyVmomi then fails on vm.runtime."""
    vms = list(_vm_objects(vsphere_si).values())[:50]
    _retrieve_all(vsphere_si, vms, vim.VirtualMachine)
    lab_vm = _pick_vm(vsim)
    vm = _vm_objects(vsphere_si)[lab_vm.moref]
    assert vm.runtime.powerState == "poweredOn"
    snap = _snapshot(vm, "props")
    try:
        _retrieve_all(vsphere_si, [vm], vim.VirtualMachine)
        _retrieve_all(vsphere_si, [snap], vim.vm.Snapshot)
        assert vm.snapshot.currentSnapshot == snap
    finally:
        WaitForTask(vm.RemoveAllSnapshots_Task())


def test_power_on_activates_and_disabling_clears_cbt(vsphere_si: Any, vsim: VSimControl) -> None:
    lab_vm = next(
        (
            v
            for v in vsim.vms()
            if not v.template and not v.cbt_enabled and v.power_state == "poweredOff"
        ),
        None,
    )
    if lab_vm is None:
        pytest.skip("no powered-off VM without CBT in this inventory")
    vm = _vm_objects(vsphere_si)[lab_vm.moref]
    key = lab_vm.disks[0].key
    WaitForTask(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=True)))
    assert not vsim.vm(lab_vm.moref).cbt_active
    WaitForTask(vm.PowerOnVM_Task())
    try:
        assert vsim.vm(lab_vm.moref).cbt_active
        assert CHANGE_ID.match(_disk_change_id(vm.config, key))
    finally:
        WaitForTask(vm.PowerOffVM_Task())
        WaitForTask(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=False)))
    after = vsim.vm(lab_vm.moref)
    assert not after.cbt_enabled and not after.cbt_active
    assert after.disks[0].change_id is None and _disk_change_id(vm.config, key) == ""


def test_clone_copies_disks_and_destroy_frees_them(vsphere_si: Any, vsim: VSimControl) -> None:
    template = next((v for v in vsim.vms() if v.template), None)
    if template is None:
        pytest.skip("no template in this inventory")
    disk = template.disks[0]
    data = os.urandom(2 * CBT_BLOCK_SIZE)
    vsim.write(template.moref, disk.key, 7 * MiB, data)
    src = _vm_objects(vsphere_si)[template.moref]
    spec = vim.vm.CloneSpec(location=vim.vm.RelocateSpec(pool=_any_pool(vsphere_si)))
    task = src.CloneVM_Task(folder=src.parent, name="clone-of-template", spec=spec)
    WaitForTask(task)
    clone = task.info.result
    try:
        lab_clone = vsim.vm(clone._moId)
        copied = {d.key: d for d in lab_clone.disks}[disk.key]
        assert copied.path != disk.path
        assert _read(copied.path, 7 * MiB, len(data)) == data
    finally:
        WaitForTask(clone.Destroy_Task())
        vsim.write(template.moref, disk.key, 7 * MiB, bytes(len(data)))
    deadline = time.monotonic() + 20
    while os.path.exists(copied.path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not os.path.exists(copied.path), "a destroyed VM's disk image is removed"
    assert os.path.exists(disk.path)


def _any_pool(si: Any) -> Any:
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.ResourcePool], True)
    try:
        return view.view[0]
    finally:
        view.DestroyView()


def test_snapshot_disk_attaches_frozen_like_hot_add(
    cbt_vm: tuple[Any, VSimVM], vsphere_si: Any, vsim: VSimControl
) -> None:
    vm, lab_vm = cbt_vm
    disk = lab_vm.disks[0]
    vsim.write(lab_vm.moref, disk.key, 0, b"before" * 100)
    snap = _snapshot(vm, "hot-add")
    vsim.write(lab_vm.moref, disk.key, 0, b"after!" * 100)
    snap_disk = next(
        d for d in snap.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)
    )
    frozen = {d.key: d for d in vsim.snapshot_disks(snap._moId)}[disk.key]
    assert snap_disk.backing.fileName == frozen.file_name != disk.file_name

    proxy_lab = next(v for v in vsim.vms() if v.moref != lab_vm.moref and not v.template)
    proxy = _vm_objects(vsphere_si)[proxy_lab.moref]
    ctrl = next(
        d
        for d in proxy.config.hardware.device
        if isinstance(d, vim.vm.device.VirtualSCSIController)
    )
    used = {d.unitNumber for d in proxy.config.hardware.device if d.controllerKey == ctrl.key}
    attach = vim.vm.device.VirtualDisk(
        key=-1,
        controllerKey=ctrl.key,
        unitNumber=min(set(range(16)) - used - {7}),
        capacityInBytes=frozen.capacity,
        backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
            fileName=frozen.file_name, diskMode="independent_nonpersistent"
        ),
    )
    spec = vim.vm.ConfigSpec(
        deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="add", device=attach)]
    )
    WaitForTask(proxy.ReconfigVM_Task(spec=spec))
    added = [d for d in vsim.vm(proxy_lab.moref).disks if d.file_name == frozen.file_name]
    assert len(added) == 1
    assert _read(added[0].path, 0, 600) == b"before" * 100
    assert _read(disk.path, 0, 600) == b"after!" * 100

    attached = next(
        d
        for d in proxy.config.hardware.device
        if isinstance(d, vim.vm.device.VirtualDisk) and d.backing.fileName == frozen.file_name
    )
    detach = vim.vm.device.VirtualDeviceSpec(operation="remove", device=attached)
    WaitForTask(proxy.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=[detach])))
    assert os.path.exists(frozen.path), "detaching leaves the snapshot's disk alone"
