"""VM config capture: what a restore needs, serialised; unsafe extraConfig left out."""

from __future__ import annotations

from typing import Any

import pytest

from vmguard.vsphere.vmconfig import CONFIG_FORMAT, VMConfig, capture_vm, safe_extra_config
from vmguard_lab.vsim import VSimControl


@pytest.mark.lab
def test_capture_round_trips_and_matches_the_vm(vc: Any, vsim: VSimControl) -> None:
    lab_vm = next(v for v in vsim.vms() if not v.template and len(v.disks) >= 1)
    config = vc.call(lambda si: capture_vm(si, lab_vm.moref))
    assert VMConfig.from_json(config.to_json()) == config
    assert config.name == lab_vm.name and config.hardware_version == lab_vm.hardware_version
    assert config.num_cpus >= 1 and config.memory_mb >= 512 and config.firmware == "bios"
    assert [(d.key, d.capacity, d.file_name) for d in config.disks] == [
        (d.key, d.capacity, d.file_name) for d in lab_vm.disks
    ]
    assert {c.kind for c in config.controllers} >= {"pvscsi"}
    scsi = next(c for c in config.controllers if c.kind == "pvscsi")
    assert all(d.controller_key == scsi.key and d.thin for d in config.disks)
    assert [(n.kind, n.network) for n in config.nics] == [("vmxnet3", "VM Network")]
    assert CONFIG_FORMAT.endswith("/v1")


@pytest.mark.unit
def test_only_safe_extra_config_is_kept() -> None:
    class Opt:
        def __init__(self, key: str, value: str) -> None:
            self.key, self.value = key, value

    kept = safe_extra_config(
        [
            Opt("disk.EnableUUID", "TRUE"),
            Opt("guestinfo.userdata", "c2VjcmV0"),
            Opt("isolation.tools.copy.disable", "TRUE"),
            Opt("uuid.bios", "42 00"),
        ]
    )
    assert kept == {"disk.EnableUUID": "TRUE", "isolation.tools.copy.disable": "TRUE"}


@pytest.mark.lab
def test_an_efi_secure_boot_vm_is_recreated_with_its_shape(vc: Any, vsim: VSimControl) -> None:
    """Firmware, secure boot, CPU topology and memory survive capture → create, and a
    MAC is kept only when asked (the source still exists here, so it is not)."""
    from pyVmomi import vim

    from vmguard.vsphere import restore as vrestore
    from vmguard.vsphere.inventory import find_vm
    from vmguard.vsphere.session import wait_for

    lab_vm = next(v for v in vsim.vms() if not v.template and v.power_state == "poweredOff")
    before = vc.call(lambda si: capture_vm(si, lab_vm.moref))
    vm = vc.call(lambda si: find_vm(si, lab_vm.moref))
    efi = vim.vm.ConfigSpec(
        firmware="efi",
        bootOptions=vim.vm.BootOptions(efiSecureBootEnabled=True),
        numCPUs=4,
        numCoresPerSocket=2,
        memoryMB=3072,
    )
    wait_for(vm.ReconfigVM_Task(spec=efi))
    made = None
    try:
        config = vc.call(lambda si: capture_vm(si, lab_vm.moref))
        assert (config.firmware, config.secure_boot) == ("efi", True)
        assert (config.num_cpus, config.cores_per_socket, config.memory_mb) == (4, 2, 3072)
        datastore = config.disks[0].file_name.split("]")[0].lstrip("[")
        target = vrestore.NewVMTarget(name=f"{lab_vm.name}-efi-copy", datastore=datastore)
        made = vrestore.create_vm(vc, config, target)
        copy = vc.call(lambda si: capture_vm(si, made.moref))
        assert (copy.firmware, copy.secure_boot) == ("efi", True)
        assert (copy.num_cpus, copy.cores_per_socket, copy.memory_mb) == (4, 2, 3072)
        assert (copy.guest_id, copy.hardware_version) == (config.guest_id, config.hardware_version)
        assert [d.capacity for d in copy.disks] == [d.capacity for d in config.disks]
        assert [n.network for n in copy.nics] == [n.network for n in config.nics]
        source_macs = {n.mac_address for n in config.nics}
        assert not source_macs & {n.mac_address for n in copy.nics}, "a new MAC, not a clone's"
    finally:
        if made is not None:
            vrestore.destroy(vc, made.moref)
        back = vim.vm.ConfigSpec(
            firmware=before.firmware,
            bootOptions=vim.vm.BootOptions(efiSecureBootEnabled=before.secure_boot),
            numCPUs=before.num_cpus,
            numCoresPerSocket=before.cores_per_socket,
            memoryMB=before.memory_mb,
        )
        wait_for(vm.ReconfigVM_Task(spec=back))
