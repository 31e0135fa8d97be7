"""``backup create`` turns what the user typed into the VMGuardBackup the CRD admits: the VM
by instance UUID, moref or name, and a name the apiserver can generate from any VM name
(the lab test in test_cluster_verbs.py creates one for real)."""

from __future__ import annotations

import pytest

from vmguard.cli.backup import build_vmbackup, name_prefix, vm_selector
from vmguard.cli.main import build_parser
from vmguard.cli.options import UsageError

pytestmark = pytest.mark.unit


def test_the_vm_is_named_the_way_it_was_typed() -> None:
    assert vm_selector("4211AAAA-0000-0000-0000-00000000000A") == {
        "instanceUuid": "4211aaaa-0000-0000-0000-00000000000a"
    }
    assert vm_selector("vm-42") == {"moref": "vm-42"}
    assert vm_selector("web/01 ü") == {"name": "web/01 ü"}
    assert vm_selector("vm-42x") == {"name": "vm-42x"}


def test_generated_names_are_dns_labels() -> None:
    assert name_prefix("Web/01 ü") == "web-01-"
    assert name_prefix("数据库") == "vm-"
    assert len(name_prefix("x" * 200)) <= 41


def test_policy_or_both_refs() -> None:
    parse = build_parser().parse_args
    body = build_vmbackup(parse(["backup", "create", "vm-7", "--policy", "daily"]), "ns")
    assert body["spec"] == {"vm": {"moref": "vm-7"}, "mode": "auto", "policyRef": {"name": "daily"}}
    assert body["metadata"] == {"namespace": "ns", "generateName": "vm-7-"}
    args = parse(
        ["backup", "create", "db", "--vcenter", "lab", "--repository", "r", "--name", "b1"]
    )
    body = build_vmbackup(args, "ns")
    assert body["spec"]["vcenterRef"] == {"name": "lab"} and body["metadata"]["name"] == "b1"
    with pytest.raises(UsageError, match="--policy"):
        build_vmbackup(parse(["backup", "create", "db", "--vcenter", "lab"]), "ns")
