"""VM config capture: what a restore needs, serialised; unsafe extraConfig left out."""

from __future__ import annotations

from typing import Any

import pytest

from vmguard.lab.vsim import VSimControl
from vmguard.vsphere.vmconfig import CONFIG_FORMAT, VMConfig, capture_vm, safe_extra_config


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
