"""The CBT chain after writes CBT may not have seen: an in-place restore, a revert.

Real vmguard-vcsim, nbdkit and MinIO. The in-place restore writes through the lab
locator with ``cbt="keep"``: like a restore through VDDK, it leaves the disk's change
tracking alone, so the disk's change id does not move although its bytes did. The
revert is vSphere's own RevertToSnapshot_Task, which the simulator answers like ESXi
(docs/lab.md). After each, the next backup must be a full-scan incremental that
restores bit-exact — never an incremental from a change id of a history the disk no
longer has.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.vsphere.helpers import MiB, pick_vm, restored_afterwards, sha256_file

from vmguard.engine.restore import restore_disk
from vmguard.transport.file import FileSink
from vmguard.vm.backup import BackupOptions, BackupResult, backup_vm
from vmguard.vm.restore import restore_in_place
from vmguard.vsphere.inventory import find_vm
from vmguard.vsphere.session import wait_for
from vmguard_lab.images import small_mixed
from vmguard_lab.vsim import LabDiskLocator, VSimControl, VSimVM

pytestmark = pytest.mark.lab

TAKEN: set[str] = set()
NBD = BackupOptions(transport="nbd")


@pytest.fixture
def one_disk_vm(vc: Any, vsim: VSimControl, image_factory: Any, tmp_path: Path) -> Iterator[VSimVM]:
    lab_vm = pick_vm(vsim, TAKEN)
    with restored_afterwards(vc, vsim, lab_vm, tmp_path):
        mixed = image_factory.build(small_mixed(), 4, tmp_path / "mixed.img")
        vsim.put_image(lab_vm.moref, lab_vm.disks[0].key, str(mixed.path))
        yield vsim.vm(lab_vm.moref)


def _archived(repo: Any, result: BackupResult, key: int, tmp: Path) -> str:
    """sha256 of disk ``key`` as the archive holds it (restored into a fresh file)."""
    disk = next(d for d in result.manifest.disks if int(d.key) == key)
    out = tmp / f"{result.manifest.archive_id}-{key}.img"
    sink = FileSink.create(out, disk.length)
    try:
        restore_disk(repo, result.manifest, str(key), sink)
    finally:
        sink.close()
    return sha256_file(str(out))


def test_in_place_restore_untracked_by_cbt_makes_the_next_backup_a_full_scan(
    vc: Any, vsim: VSimControl, repo: Any, one_disk_vm: VSimVM, tmp_path: Path
) -> None:
    vm, disk = one_disk_vm, one_disk_vm.disks[0]
    keep = LabDiskLocator(vsim, cbt="keep")
    full = backup_vm(vc, repo, vm.moref, keep, NBD)
    assert full.mode == "full"
    vsim.write(vm.moref, disk.key, 10 * MiB, os.urandom(2 * MiB))
    inc = backup_vm(vc, repo, vm.moref, keep, NBD)
    assert inc.mode == "incremental", inc.mode_reason

    # Back to the full, in place; the locator leaves CBT alone, so the disk's change id
    # is still the incremental's although 2 MiB went back to the full's bytes.
    before = vsim.disk(vm.moref, disk.key).change_id
    restored = restore_in_place(vc, repo, full.manifest.archive_id, vm.moref, keep, power_off=True)
    assert restored.reasons[disk.key].startswith("changed chunks only"), restored.reasons
    assert vsim.disk(vm.moref, disk.key).change_id == before, "the restore moved CBT"
    on_disk = sha256_file(vsim.disk(vm.moref, disk.key).path)

    after = backup_vm(vc, repo, vm.moref, keep, NBD)
    assert _archived(repo, after, disk.key, tmp_path) == on_disk, (
        f"the backup after the restore ({after.mode}: {after.mode_reason}) "
        "does not hold the restored disk"
    )
    assert after.mode == "full-scan", after.mode_reason
    assert "in-place restore" in after.reasons[disk.key], after.reasons
    assert "in-place restore" in after.mode_reason

    # A write moves the change id past the restore: the chain continues from there.
    vsim.write(vm.moref, disk.key, 40 * MiB, os.urandom(MiB))
    nxt = backup_vm(vc, repo, vm.moref, keep, NBD)
    assert nxt.mode == "incremental", nxt.mode_reason
    assert _archived(repo, nxt, disk.key, tmp_path) == sha256_file(
        vsim.disk(vm.moref, disk.key).path
    )


@pytest.mark.parametrize("write_after_revert", [False, True])
def test_revert_to_snapshot_is_a_broken_chain(
    vc: Any,
    vsim: VSimControl,
    repo: Any,
    one_disk_vm: VSimVM,
    tmp_path: Path,
    write_after_revert: bool,
) -> None:
    vm, disk = one_disk_vm, one_disk_vm.disks[0]
    locator = LabDiskLocator(vsim)
    full = backup_vm(vc, repo, vm.moref, locator, NBD)
    assert full.mode == "full"
    obj = vc.call(lambda si: find_vm(si, vm.moref))
    user = wait_for(obj.CreateSnapshot_Task(name="before-upgrade", memory=False, quiesce=False))
    vsim.write(vm.moref, disk.key, 20 * MiB, os.urandom(3 * MiB))
    inc = backup_vm(vc, repo, vm.moref, locator, NBD)
    assert inc.mode == "incremental", inc.mode_reason

    wait_for(user.RevertToSnapshot_Task())
    if write_after_revert:
        vsim.write(vm.moref, disk.key, 60 * MiB, os.urandom(MiB))
    on_disk = sha256_file(vsim.disk(vm.moref, disk.key).path)

    after = backup_vm(vc, repo, vm.moref, locator, NBD)
    assert _archived(repo, after, disk.key, tmp_path) == on_disk
    assert after.mode == "full-scan", after.mode_reason
    if write_after_revert:
        # The first write after a revert takes a number past the abandoned line: only
        # vCenter's refusal of the abandoned change id shows the break.
        assert after.reasons[disk.key].startswith("vCenter refused the change id")
    else:
        assert after.reasons[disk.key].startswith("the change id went backwards"), after.reasons
