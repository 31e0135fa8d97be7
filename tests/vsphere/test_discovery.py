"""Discovery against the lab simulator: every property the records promise, and tags."""

from __future__ import annotations

from typing import Any

import pytest

from vmguard.vsphere.inventory import discover, find_by_name
from vmguard.vsphere.tags import TagClient
from vmguard_lab.vsim import VSimControl

pytestmark = pytest.mark.lab


def test_sweep_matches_the_simulator(vc: Any, vc_endpoint: Any, vsim: VSimControl) -> None:
    with TagClient(vc_endpoint) as tags:
        vm_tags = tags.vm_tags()
    records = vc.call(lambda si: discover(si, vm_tags))
    lab = {vm.moref: vm for vm in vsim.vms()}
    assert {r.moref for r in records} == set(lab)
    for r in records:
        want = lab[r.moref]
        assert r.name == want.name and r.instance_uuid == want.instance_uuid
        assert r.template == want.template and r.cbt_enabled == want.cbt_enabled
        assert r.hardware_version == int(want.hardware_version.removeprefix("vmx-"))
        assert r.power_state == want.power_state
        assert (r.folder_path + "/").startswith("/DC0/vm/") and r.datacenter == "DC0"
        assert r.bios_uuid and r.bios_uuid != r.instance_uuid
        assert r.datastores == ("LocalDS_0",)
        assert r.cbt_supported and not r.consolidation_needed
        assert [(d.key, d.capacity, d.backing_file, d.disk_uuid) for d in r.disks] == [
            (d.key, d.capacity, d.file_name, d.disk_uuid) for d in want.disks
        ]
        for d in r.disks:
            assert d.controller == "pvscsi:0" and d.mode == "persistent" and d.thin
            assert d.datastore == "LocalDS_0"
        assert [n.network for n in r.nics] == ["VM Network"]
        assert all(len(n.mac_address) == 17 for n in r.nics)
        if not r.template:
            assert r.resource_pool.startswith("/DC0/host/") and r.host
            assert r.cluster == "" or r.cluster_path == f"/DC0/host/{r.cluster}"
        # The lab tags environments by folder; templates and Infrastructure stay untagged.
        env = [t for t in r.tags if t.startswith("environment:")]
        if r.folder_path.startswith("/DC0/vm/Production"):
            assert env == ["environment:production"], r
        elif r.template or r.folder_path == "/DC0/vm/Infrastructure":
            assert env == []
    assert any(r.cluster for r in records) and any(not r.cluster for r in records)
    assert any("owner" in r.custom_attributes for r in records)
    assert {v for r in records for k, v in r.custom_attributes.items() if k == "backup"} <= {
        "daily",
        "weekly",
        "none",
    }
    assert any(t.startswith("backup-tier:") for r in records for t in r.tags)
    unicode_vm = find_by_name(records, "ünïcødé-数据库-0001")
    assert unicode_vm.folder_path == "/DC0/vm/Production/Databases"
    assert find_by_name(records, "web%2ffrontend-0002").folder_path.endswith("/Web")
