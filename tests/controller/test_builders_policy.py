"""The VMGuardBackups a policy builds: deterministic DNS-1123 names, labels, owner, spec."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from vmguard.api import Trigger
from vmguard.controller.policy.builders import (
    backup_name,
    build_vmbackup,
    run_label,
)
from vmguard.crds.fields import DNS_LABEL, UUID
from vmguard.vsphere.records import VMRecord

pytestmark = pytest.mark.unit

WHEN = dt.datetime(2025, 1, 7, 2, 0, tzinfo=dt.UTC)
VM = VMRecord(
    moref="vm-42", name="web/01 — prod%2f", instance_uuid="5012ABCD-1111-2222-3333-444455556666"
)


def policy(name: str = "gold", **spec: object) -> dict[str, object]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": "0f1e2d3c-aaaa-bbbb-cccc-000011112222",
        },
        "spec": {"vcenterRef": {"name": "lab"}, "repositoryRef": {"name": "repo"}, **spec},
    }


def test_names_are_deterministic_and_distinct() -> None:
    a = backup_name("gold", VM.instance_uuid, WHEN, Trigger.SCHEDULE)
    assert a == backup_name("gold", VM.instance_uuid.lower(), WHEN, Trigger.SCHEDULE)
    assert a.startswith("gold-") and a.endswith("-s202501070200")
    others = {
        backup_name("gold", VM.instance_uuid, WHEN + dt.timedelta(minutes=1), Trigger.SCHEDULE),
        backup_name("gold", VM.instance_uuid, WHEN, Trigger.FAILSAFE),
        backup_name("gold", "5012abcd-1111-2222-3333-444455556667", WHEN, Trigger.SCHEDULE),
        backup_name("silver", VM.instance_uuid, WHEN, Trigger.SCHEDULE),
    }
    assert a not in others and len(others) == 4


def test_name_uses_utc_whatever_the_zone() -> None:
    from zoneinfo import ZoneInfo

    berlin = WHEN.astimezone(ZoneInfo("Europe/Berlin"))
    assert backup_name("p", VM.instance_uuid, berlin, Trigger.SCHEDULE) == backup_name(
        "p", VM.instance_uuid, WHEN, Trigger.SCHEDULE
    )
    assert run_label(berlin) == "20250107T0200Z"


@pytest.mark.parametrize("length", [1, 40, 41, 62, 63])
def test_names_are_dns_labels_of_at_most_63(length: int) -> None:
    name = ("p" + "x" * 70)[:length]
    got = backup_name(name, VM.instance_uuid, WHEN, Trigger.FAILSAFE)
    assert len(got) <= 63
    assert re.match(DNS_LABEL, got)


def test_long_policy_names_do_not_collide() -> None:
    a = "a" * 50 + "-one"
    b = "a" * 50 + "-two"
    assert backup_name(a, VM.instance_uuid, WHEN, Trigger.SCHEDULE) != backup_name(
        b, VM.instance_uuid, WHEN, Trigger.SCHEDULE
    )


def test_vmbackup_object() -> None:
    obj = build_vmbackup(policy(), VM, WHEN, Trigger.SCHEDULE)
    meta = obj["metadata"]
    assert obj["apiVersion"] == "vmguard.io/v1alpha1" and obj["kind"] == "VMGuardBackup"
    assert meta["name"] == backup_name("gold", VM.instance_uuid, WHEN, Trigger.SCHEDULE)
    assert meta["namespace"] == "ns"
    assert meta["labels"] == {
        "vmguard.io/policy": "gold",
        "vmguard.io/vcenter": "lab",
        "vmguard.io/vm": "5012abcd-1111-2222-3333-444455556666",
        "vmguard.io/trigger": "schedule",
        "vmguard.io/run": "20250107T0200Z",
    }
    # Label values must be valid: free text (the VM name) goes in an annotation.
    for value in meta["labels"].values():
        assert re.match(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$", value)
    assert meta["annotations"] == {"vmguard.io/vm-name": "web/01 — prod%2f"}
    # Created with the operator's finalizer: kopf need not PATCH it in (docs/scale.md).
    assert meta["finalizers"] == ["vmguard.io/finalizer"]
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "vmguard.io/v1alpha1",
            "kind": "VMProtectionPolicy",
            "name": "gold",
            "uid": "0f1e2d3c-aaaa-bbbb-cccc-000011112222",
            "controller": True,
        }
    ]
    assert obj["spec"] == {
        "vm": {
            "instanceUuid": "5012abcd-1111-2222-3333-444455556666",
            "moref": "vm-42",
            "name": "web/01 — prod%2f",
        },
        "policyRef": {"name": "gold"},
        "mode": "auto",
    }
    assert re.match(UUID, obj["spec"]["vm"]["instanceUuid"])


def test_mode_full_and_failsafe_trigger() -> None:
    obj = build_vmbackup(policy(mode={"type": "full"}), VM, WHEN, Trigger.FAILSAFE)
    assert obj["spec"]["mode"] == "full"
    assert obj["metadata"]["labels"]["vmguard.io/trigger"] == "failsafe"
    assert obj["metadata"]["name"].endswith("-f202501070200")
    auto = build_vmbackup(policy(mode={"type": "auto", "fullEvery": 7}), VM, WHEN, Trigger.SCHEDULE)
    assert auto["spec"]["mode"] == "auto"


def test_a_moref_the_crd_would_refuse_is_left_out() -> None:
    odd = VMRecord(moref="ha-vm-3", name="x", instance_uuid=VM.instance_uuid)
    assert "moref" not in build_vmbackup(policy(), odd, WHEN, Trigger.SCHEDULE)["spec"]["vm"]
