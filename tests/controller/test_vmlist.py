"""``status.vmList``: the compact per-VM list a sweep writes into VCenter status."""

from __future__ import annotations

import json

import pytest

from vmguard.controller.vcenter.vmlist import (
    MAX_BYTES,
    build_vm_list,
    changed,
    read_vm_list,
)
from vmguard.vsphere.matching import Assignment
from vmguard.vsphere.records import VMRecord

pytestmark = pytest.mark.unit


def vm(i: int, name: str = "", **kw: object) -> VMRecord:
    return VMRecord(
        moref=f"vm-{i}",
        name=name or f"vm-{i:05d}",
        instance_uuid=f"4211AAAA-0000-0000-0000-{i:012d}",
        folder_path="/DC0/vm/Production",
        **kw,  # type: ignore[arg-type]
    )


def test_entries_are_short_and_ordered_by_attention() -> None:
    assignments = [
        Assignment(vm(1, "zeta", power_state="poweredOn"), "gold", "Matched"),
        Assignment(vm(2, "alpha"), "gold", "Matched"),
        Assignment(vm(3, "web%2ffrontend"), None, "Unprotected"),
        Assignment(vm(4, "db"), "fail-safe", "Default"),
        Assignment(vm(5, "tpl", template=True), None, "Template"),
    ]
    doc = build_vm_list(assignments)
    assert (doc["total"], doc["listed"], doc["truncated"]) == (4, 4, False)
    assert [i["n"] for i in doc["items"]] == ["web%2ffrontend", "db", "alpha", "zeta"]
    assert doc["items"][0] == {
        "n": "web%2ffrontend",
        "u": "4211aaaa-0000-0000-0000-000000000003",
        "m": "vm-3",
        "s": "off",
        "f": "/DC0/vm/Production",
    }
    assert doc["items"][1]["p"] == "fail-safe" and doc["items"][1]["d"] is True
    assert doc["items"][3]["p"] == "gold" and "d" not in doc["items"][3]
    assert doc["items"][3]["s"] == "on"


def test_the_list_is_capped_by_count_and_bytes_keeping_the_unprotected() -> None:
    assignments = [Assignment(vm(i), "gold", "Matched") for i in range(50)]
    assignments.append(Assignment(vm(99, "zz-lonely"), None, "Unprotected"))
    doc = build_vm_list(assignments, max_items=10)
    assert (doc["total"], doc["listed"], doc["truncated"]) == (51, 10, True)
    assert doc["items"][0]["n"] == "zz-lonely"
    doc = build_vm_list(assignments, max_bytes=2000)
    assert len(json.dumps(doc["items"], separators=(",", ":"))) <= 2000 and doc["truncated"]
    assert doc["listed"] == len(doc["items"]) > 5


def test_five_thousand_wide_named_vms_fit_under_the_etcd_limit() -> None:
    # Worst realistic case: 5,000 VMs with long CJK names and deep folders. The list is
    # bounded by MAX_BYTES whatever the names; the apiserver stores UTF-8, so the
    # escaped measure is an upper bound.
    assignments = [
        Assignment(vm(i, "数据库-服务器-" * 6 + str(i)), "a-policy-name", "Matched")
        for i in range(5000)
    ]
    doc = build_vm_list(assignments)
    stored = len(json.dumps(doc["items"], ensure_ascii=False, separators=(",", ":")).encode())
    assert stored <= MAX_BYTES < 1.5 * 1024 * 1024
    assert doc["listed"] == len(doc["items"]) and doc["total"] == 5000


def test_unchanged_list_is_not_resent_and_reads_back() -> None:
    doc = build_vm_list([Assignment(vm(1), "gold", "Matched")])
    assert changed({}, doc) and changed(None, doc)
    round_trip = json.loads(json.dumps({"vmList": doc}))
    assert not changed(round_trip, build_vm_list([Assignment(vm(1), "gold", "Matched")]))
    assert changed(round_trip, build_vm_list([Assignment(vm(1), None, "Unprotected")]))
    listed = read_vm_list(round_trip)
    assert listed.present and not listed.truncated and listed.total == 1
    [one] = listed.vms
    assert (one.name, one.moref, one.policy, one.by_default) == ("vm-00001", "vm-1", "gold", False)
    assert not read_vm_list({"vms": {"discovered": 3}}).present
