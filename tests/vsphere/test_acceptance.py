"""Issue 4's acceptance: backup and restore of a two-disk VM through the lab simulator.

Real vmguard-vcsim, real nbdkit, real MinIO. The VM gets a GPT+ext4 disk and a
mixed-content disk from the image factory; every restore is compared by sha256 with
the source at snapshot time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.vsphere.helpers import MiB, our_snapshots, pick_vm, restored_afterwards, sha256_file

from vmguard.engine.plan import chunks_touching
from vmguard.transport.extents import Extent
from vmguard.vm.backup import BackupOptions, backup_vm
from vmguard.vm.restore import restore_in_place, restore_new_vm
from vmguard.vsphere import restore as vrestore
from vmguard.vsphere.inventory import vm_record
from vmguard.vsphere.vmconfig import capture_vm
from vmguard_lab.images import gpt_ext4, small_mixed
from vmguard_lab.vsim import LabDiskLocator, VSimControl, VSimVM

pytestmark = pytest.mark.lab

TAKEN: set[str] = set()


@pytest.fixture
def two_disk_vm(vc: Any, vsim: VSimControl, image_factory: Any, tmp_path: Path) -> Iterator[VSimVM]:
    lab_vm = pick_vm(vsim, TAKEN, disks=2, any_power=True)
    with restored_afterwards(vc, vsim, lab_vm, tmp_path):
        first, second = lab_vm.disks[:2]
        ext4 = image_factory.build(gpt_ext4(), 1, tmp_path / "ext4.img")
        mixed = image_factory.build(small_mixed(), 2, tmp_path / "mixed.img")
        vsim.put_image(lab_vm.moref, first.key, str(ext4.path))
        vsim.put_image(lab_vm.moref, second.key, str(mixed.path))
        yield vsim.vm(lab_vm.moref)


def _hashes(vsim: VSimControl, moref: str) -> dict[int, str]:
    return {d.key: sha256_file(d.path) for d in vsim.vm(moref).disks}


def _proxy_uuid(vc: Any, vsim: VSimControl, not_this: str) -> str:
    proxy = next(v for v in reversed(vsim.vms()) if v.moref != not_this and not v.template)
    return str(vc.call(lambda si: vm_record(si, proxy.moref)).bios_uuid)


def test_full_incremental_restore_new_and_in_place(
    vc: Any, vsim: VSimControl, repo: Any, locator: LabDiskLocator, two_disk_vm: VSimVM
) -> None:
    vm = two_disk_vm
    original = _hashes(vsim, vm.moref)

    full = backup_vm(vc, repo, vm.moref, locator, BackupOptions(transport="nbd"))
    assert full.mode == "full" and full.transport.transport == "nbd"
    assert our_snapshots(vc, vm.moref) == []
    assert full.manifest.config_blob and {d.key for d in full.manifest.disks} == {
        str(d.key) for d in vm.disks
    }

    # Guest writes, then an incremental through hot-add reading only touched chunks.
    disk = vm.disks[0]
    writes = [(5 * MiB + 3, 10_000), (100 * MiB, 2 * MiB), (disk.capacity - 4096, 4096)]
    for off, size in writes:
        vsim.write(vm.moref, disk.key, off, os.urandom(size))
    after_writes = _hashes(vsim, vm.moref)
    hot = LabDiskLocator(vsim, proxy_uuid=_proxy_uuid(vc, vsim, vm.moref))
    inc = backup_vm(vc, repo, vm.moref, hot, BackupOptions(transport="auto"))
    assert inc.transport.transport == "hotadd", inc.transport.reason
    assert inc.mode == "incremental", inc.mode_reason
    touched = chunks_touching([Extent(*w) for w in writes], repo.chunk_size, disk.capacity)
    # Each touched chunk changed in at most half its bytes: merged, its changed areas read
    # (the simulator's CBT reports 64 KiB blocks), the rest taken from the full's chunk.
    changed = inc.disks[disk.key]
    assert (changed.chunks_read, changed.chunks_merged) == (0, len(touched))
    assert changed.stats.bytes_read <= 2 * MiB + 2 * 64 * 1024
    assert inc.disks[vm.disks[1].key].chunks_read == 0
    assert inc.manifest.parent == full.manifest.archive_id
    assert our_snapshots(vc, vm.moref) == []
    proxy = vsim.vm(inc.transport.proxy_moref)
    assert len(proxy.disks) == len(vsim.vm(proxy.moref).disks) and all(
        inc.snapshot_moref not in d.file_name for d in proxy.disks
    ), "hot-added disks are detached"

    # Restore the incremental as a new VM: same hardware, bit-identical disks.
    target = vrestore.NewVMTarget(
        name="restored-äö/1", datastore="LocalDS_0", folder="/DC0/vm/Test"
    )
    made = restore_new_vm(vc, repo, inc.manifest.archive_id, target, locator, power_on=True)
    try:
        source_cfg = vc.call(lambda si: capture_vm(si, vm.moref))
        new_cfg = vc.call(lambda si: capture_vm(si, made.vm.moref))
        for attr in ("num_cpus", "memory_mb", "firmware", "guest_id", "hardware_version"):
            assert getattr(new_cfg, attr) == getattr(source_cfg, attr), attr
        assert [(d.capacity, d.thin) for d in new_cfg.disks] == [
            (d.capacity, d.thin) for d in source_cfg.disks
        ]
        assert vsim.vm(made.vm.moref).power_state == "poweredOn"
        restored = {
            d.source_key: sha256_file(vsim.disk(made.vm.moref, d.key).path) for d in made.vm.disks
        }
        assert restored == after_writes
        for d in made.vm.disks:  # thin stays thin: about the source's allocation, not more
            used = os.stat(vsim.disk(made.vm.moref, d.key).path).st_blocks * 512
            source = os.stat(vsim.disk(vm.moref, d.source_key).path).st_blocks * 512
            assert used <= source * 1.25 + MiB, (d, used, source)
    finally:
        vrestore.power(vc, made.vm.moref, on=False)
        vrestore.destroy(vc, made.vm.moref)

    # In place, back to the full: only the chunks the writes touched are written.
    back = restore_in_place(vc, repo, full.manifest.archive_id, vm.moref, locator, power_off=True)
    assert back.reasons[disk.key].startswith("changed chunks only"), back.reasons
    assert back.disks[disk.key].chunks_written + back.disks[disk.key].chunks_zeroed == len(touched)
    assert back.disks[vm.disks[1].key].chunks_written == 0
    assert _hashes(vsim, vm.moref) == original
    assert our_snapshots(vc, vm.moref) == []


@pytest.fixture
def one_disk_vm(vc: Any, vsim: VSimControl, image_factory: Any, tmp_path: Path) -> Iterator[VSimVM]:
    lab_vm = pick_vm(vsim, TAKEN)
    with restored_afterwards(vc, vsim, lab_vm, tmp_path):
        mixed = image_factory.build(small_mixed(), 3, tmp_path / "mixed.img")
        vsim.put_image(lab_vm.moref, lab_vm.disks[0].key, str(mixed.path))
        yield vsim.vm(lab_vm.moref)


def _replace_disk_uuid(vc: Any, moref: str, key: int) -> None:
    from pyVmomi import vim

    from vmguard.vsphere.inventory import find_vm
    from vmguard.vsphere.session import wait_for

    vm = vc.call(lambda si: find_vm(si, moref))
    dev = next(d for d in vm.config.hardware.device if d.key == key)
    dev.backing.uuid = "1a2b3c4d-0000-4000-8000-" + os.urandom(6).hex()
    change = vim.vm.device.VirtualDeviceSpec(operation="edit", device=dev)
    wait_for(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=[change])))


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("resize", "disk resized"),
        ("cbt-reset", "CBT was reset"),
        ("cbt-off-on", "CBT was reset"),
        ("disk-replaced", "disk replaced"),
        ("unknown-change-id", "vCenter refused the change id (changeId)"),
    ],
)
def test_broken_chain_runs_a_full_scan_and_restores_bit_exact(
    vc: Any,
    vsim: VSimControl,
    repo: Any,
    locator: LabDiskLocator,
    one_disk_vm: VSimVM,
    how: str,
    reason: str,
) -> None:
    from pyVmomi import vim

    from vmguard.vsphere.inventory import find_vm
    from vmguard.vsphere.session import wait_for

    vm, disk = one_disk_vm, one_disk_vm.disks[0]
    full = backup_vm(vc, repo, vm.moref, locator, BackupOptions(transport="nbd"))
    assert full.mode == "full"
    if how == "resize":
        vsim.resize(vm.moref, disk.key, disk.capacity + 8 * MiB)
    elif how == "cbt-reset":
        vsim.reset_cbt(vm.moref, disk.key)
    elif how == "unknown-change-id":
        # Same CBT epoch, but the disk no longer knows the full backup's change id.
        vsim.lose_cbt_history(vm.moref, disk.key)
    elif how == "cbt-off-on":
        obj = vc.call(lambda si: find_vm(si, vm.moref))
        for on in (False, True):
            wait_for(obj.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=on)))
    else:
        _replace_disk_uuid(vc, vm.moref, disk.key)
    vsim.write(vm.moref, disk.key, 2 * MiB, os.urandom(300_000))
    scan = backup_vm(vc, repo, vm.moref, locator, BackupOptions(transport="nbd"))
    assert scan.mode == "full-scan", scan.mode_reason
    assert reason in scan.reasons[disk.key] and reason in scan.mode_reason
    stats = scan.disks[disk.key].stats
    assert stats.chunks_new >= 1 and stats.chunks_reused >= 1, "uploads only what is missing"
    assert our_snapshots(vc, vm.moref) == []
    expected = sha256_file(vsim.disk(vm.moref, disk.key).path)
    target = vrestore.NewVMTarget(name=f"scan-{how}", datastore="LocalDS_0")
    made = restore_new_vm(vc, repo, scan.manifest.archive_id, target, locator)
    try:
        assert sha256_file(vsim.disk(made.vm.moref, made.vm.disks[0].key).path) == expected
    finally:
        vrestore.destroy(vc, made.vm.moref)
