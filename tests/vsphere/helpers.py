"""Helpers for vSphere lab tests: pick a VM of the shared lab and leave it as found."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from vmguard.vsphere.inventory import find_vm, vm_record
from vmguard.vsphere.session import VSphereSession, wait_for
from vmguard_lab.vsim import VSimControl, VSimVM

MiB = 1 << 20


def pick_vm(
    vsim: VSimControl,
    taken: set[str],
    *,
    disks: int = 1,
    cbt: bool = False,
    any_power: bool = False,
) -> VSimVM:
    """A (powered-on) non-template VM with ``disks`` disks not used by another test."""
    for vm in reversed(vsim.vms()):
        if (
            vm.moref not in taken
            and not vm.template
            and (any_power or vm.power_state == "poweredOn")
            and len(vm.disks) >= disks
            and vm.cbt_enabled == cbt
            and not vm.name.startswith("vmguard-")
        ):
            taken.add(vm.moref)
            return vm
    pytest.fail(f"no free VM with {disks} disk(s), cbt={cbt} in the lab")


@contextlib.contextmanager
def borrowed(
    vc: VSphereSession, vsim: VSimControl, taken: set[str], tmp: Path, **pick: Any
) -> Iterator[VSimVM]:
    """A VM picked as :func:`pick_vm` does (``pick``: its keyword arguments), left as
    found afterwards (:func:`restored_afterwards`) and then free for the next test: a
    module that only ever takes VMs runs the lab out of them as it grows."""
    lab_vm = pick_vm(vsim, taken, **pick)
    try:
        with restored_afterwards(vc, vsim, lab_vm, tmp):
            yield lab_vm
    finally:
        taken.discard(lab_vm.moref)


def our_snapshots(vc: VSphereSession, moref: str) -> list[Any]:
    return list(vc.call(lambda si: vm_record(si, moref)).our_snapshots)


@contextlib.contextmanager
def restored_afterwards(
    vc: VSphereSession, vsim: VSimControl, lab_vm: VSimVM, tmp: Path
) -> Iterator[None]:
    """Afterwards: no snapshots, CBT, power and faults as before, disks at their old size."""
    faults = vsim.faults(lab_vm.moref)
    try:
        yield
    finally:
        vsim.set_faults(
            lab_vm.moref,
            quiesce_fault=faults.quiesce_fault,
            consolidation_needed=faults.consolidation_needed,
            consolidate_fault=faults.consolidate_fault,
            tools_down=faults.tools_down,
        )
        vm = vc.call(lambda si: find_vm(si, lab_vm.moref))
        wait_for(vm.RemoveAllSnapshots_Task())
        spec = vim.vm.ConfigSpec(changeTrackingEnabled=lab_vm.cbt_enabled)
        wait_for(vm.ReconfigVM_Task(spec=spec))
        if lab_vm.power_state == "poweredOn" and vm.runtime.powerState != "poweredOn":
            wait_for(vm.PowerOnVM_Task())
        for disk in lab_vm.disks:
            if vsim.disk(lab_vm.moref, disk.key).capacity != disk.capacity:
                empty = tmp / f"reset-{lab_vm.moref}-{disk.key}.img"
                with open(empty, "wb") as f:
                    f.truncate(disk.capacity)
                vsim.put_image(lab_vm.moref, disk.key, str(empty))


def blocks(offset: int, size: int, capacity: int, block: int = 64 * 1024) -> tuple[int, int]:
    start = offset // block * block
    end = min(-(-(offset + size) // block) * block, capacity)
    return start, end - start


def random_writes(vsim: VSimControl, moref: str, key: int, capacity: int) -> list[tuple[int, int]]:
    """A few guest writes at known places; returns their CBT blocks."""
    writes = [(0, 4096), (MiB + 100, 70_000), (300 * MiB, MiB), (capacity - 512, 512)]
    for off, size in writes:
        vsim.write(moref, key, off, os.urandom(size))
    return [blocks(off, size, capacity) for off, size in writes]


def sha256_file(path: str, length: int | None = None) -> str:
    import hashlib

    h = hashlib.sha256()
    left = length if length is not None else os.path.getsize(path)
    with open(path, "rb") as f:
        while left > 0:
            block = f.read(min(8 * MiB, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h.hexdigest()
