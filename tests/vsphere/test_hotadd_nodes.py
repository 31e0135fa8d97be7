"""Which Kubernetes nodes could hot-add a VM's disks, asked of the lab's vCenter by the
nodes' system UUIDs (what the operator does before it makes a proxy privileged)."""

from __future__ import annotations

from typing import Any

import pytest

from vmguard.vsphere.hotadd import hotadd_nodes
from vmguard.vsphere.inventory import vm_record

pytestmark = pytest.mark.lab


def test_only_a_node_that_is_another_vm_of_the_vcenter_can_hot_add(vc: Any, vsim: Any) -> None:
    vms = [v for v in vsim.vms() if not v.template]
    target, proxy = vms[-1], vms[-2]
    target_record = vc.call(lambda si: vm_record(si, target.moref))
    proxy_uuid = vc.call(lambda si: vm_record(si, proxy.moref)).bios_uuid
    nodes = {
        "vm-node": proxy_uuid.upper(),  # Kubernetes may report it in capitals
        "bare-metal": "",
        "stranger": "4211c3e0-0000-4000-8000-000000000000",
        "itself": target_record.bios_uuid,
    }
    able, why_not = hotadd_nodes(vc, target_record, nodes)
    assert able == ["vm-node"]
    assert "not a virtual machine" in why_not["bare-metal"]
    assert "no VM of this vCenter" in why_not["stranger"]
    assert "its own disks" in why_not["itself"]
