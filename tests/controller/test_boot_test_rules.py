"""The boot test's pure parts: the policy's condition for a boot test without an isolated
network (issue 18, acceptance 5's boot half), the temporary VM's VMGuardRestore, how the
boot result joins the Job's, what the point records, and which temporary VMs the orphan
sweep destroys. No lab."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from vmguard.controller.backup.boottest import build_boot_restore, restore_name, vm_name
from vmguard.controller.backup.verification import (
    all_findings,
    overall_result,
    point_verification,
)
from vmguard.controller.kube.verifications import again, boot_in_use, wanted
from vmguard.controller.policy.judgement import verification_ready
from vmguard.controller.vcenter.orphans import boot_vm_namespace, boot_vms_to_destroy

pytestmark = pytest.mark.unit

BACKUP: dict[str, Any] = {
    "metadata": {"name": "web01-b1", "namespace": "team-a", "uid": "u-1"},
    "spec": {"policyRef": {"name": "gold"}},
}
BOOT = {"isolatedNetwork": "isolated-pg", "host": "esx1", "timeout": "5m"}


def test_a_boot_test_without_an_isolated_network_is_a_false_verification_ready() -> None:
    # The CRD refuses this at admission (tests/crds); one stored all the same (an older
    # CRD) is refused here, before anything reads the cluster or vCenter: api is unused.
    ok, reason, message = asyncio.run(
        verification_ready(None, "team-a", {"fsck": False, "boot": {"timeout": "5m"}})  # type: ignore[arg-type]
    )
    assert (ok, reason) == (False, "BootWithoutIsolatedNetwork")
    assert "never falls back to the source network" in message


def test_the_temporary_vm_is_a_restore_owned_by_the_backup_with_every_nic_isolated() -> None:
    body = build_boot_restore(BACKUP, BOOT, 2)
    assert body["metadata"]["name"] == restore_name("web01-b1", 2) == "vmb-web01-b1-2"
    assert body["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert body["metadata"]["labels"] == {"vmguard.io/boot-test": "web01-b1"}
    new_vm = body["spec"]["target"]["newVM"]
    assert new_vm == {
        "name": "vmguard-boot.team-a.web01-b1.2",
        "isolatedNetwork": "isolated-pg",
        "host": "esx1",
        "powerOn": False,
    }
    assert "networkMap" not in new_vm
    assert boot_vm_namespace(new_vm["name"]) == "team-a"
    assert boot_vm_namespace("vmguard-backup-web01") is None


def test_a_policy_with_a_boot_test_asks_for_it_and_a_new_run_clears_the_last() -> None:
    spec = {"verification": {"fsck": False, "boot": BOOT}}
    assert wanted(spec) == ["boot"]
    now = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
    body = again(spec, now, {"run": 1, "boot": {"phase": "Completed"}})
    assert body is not None and body["run"] == 2
    assert body.get("boot", "kept") is None  # a merge patch removes it


@pytest.mark.parametrize(
    ("job", "boot", "expected"),
    [
        ("Passed", "Passed", "Passed"),
        ("Passed", "Failed", "Failed"),
        ("Infected", "Passed", "Infected"),
        ("Error", "Failed", "Failed"),
        ("Passed", None, "Error"),
    ],
)
def test_the_verification_result_is_the_worst_of_the_job_and_the_boot(
    job: str, boot: str | None, expected: str
) -> None:
    v = {"checks": ["fsck", "boot"], "result": job, "boot": {"result": boot} if boot else {}}
    assert overall_result(v) == expected


def test_a_failed_boot_is_the_first_finding_and_the_point_records_its_outcome() -> None:
    v = {
        "checks": ["boot"],
        "boot": {"result": "Failed", "exitCode": 3, "message": "check script: exit code 3"},
    }
    assert overall_result(v) == "Failed"
    first = all_findings(v)[0]
    assert first["check"] == "boot" and first["message"].startswith("exit code 3")
    point = point_verification(v, "2026-12-06T00:00:00Z")
    assert point["result"] == "Failed" and point["boot"] == {"result": "Failed", "exitCode": 3}
    passed = {
        "checks": ["boot"],
        "boot": {"result": "Passed", "exitCode": 0, "recoveryTimeSeconds": 12.5},
    }
    point = point_verification(passed, "2026-12-06T00:00:00Z")
    assert point["boot"] == {"result": "Passed", "exitCode": 0, "recoveryTimeSeconds": 12.5}
    assert "findings" not in point


def _backup(name: str, phase: str, boot: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "team-a"},
        "status": {"phase": "Completed", "verification": {"phase": phase, "boot": boot}},
    }


def _restore(name: str, uid: str, backup: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "uid": uid,
            "labels": {"vmguard.io/boot-test": backup},
        }
    }


def test_the_sweep_destroys_the_temporary_vms_whose_boot_test_is_over_or_gone() -> None:
    vms = [
        ("vm-1", vm_name("team-a", "b1", 1), "r-1"),  # its boot test runs: kept
        ("vm-2", vm_name("team-a", "b2", 1), "r-2"),  # its verification ended: destroyed
        ("vm-3", vm_name("team-a", "b3", 1), "r-gone"),  # its restore is gone: destroyed
        ("vm-4", vm_name("team-b", "b4", 1), "r-4"),  # another namespace's: not judged
        ("vm-5", vm_name("team-a", "b5", 1), "r-5"),  # its backup is gone: destroyed
    ]
    restores = [
        _restore("vmb-b1-1", "r-1", "b1"),
        _restore("vmb-b2-1", "r-2", "b2"),
        _restore("vmb-b5-1", "r-5", "b5"),
    ]
    backups = [
        _backup("b1", "Verifying", {"phase": "Booting", "restoreName": "vmb-b1-1"}),
        _backup("b2", "Completed", {"phase": "Cleaning", "restoreName": "vmb-b2-1"}),
    ]
    doomed = boot_vms_to_destroy(vms, ["team-a"], restores, backups)
    assert [(m, r) for m, _, _, r in doomed] == [
        ("vm-2", "vmb-b2-1"),
        ("vm-3", None),
        ("vm-5", "vmb-b5-1"),
    ]


def test_a_boot_test_that_created_its_restore_but_not_recorded_it_keeps_its_vm() -> None:
    starting = _backup("b1", "Verifying", {"startTime": "2026-12-06T00:00:00Z"})["status"]
    assert boot_in_use(starting, "vmb-b1-1")
    assert not boot_in_use(
        _backup("b1", "Verifying", {"phase": "Booting", "restoreName": "vmb-b1-2"})["status"],
        "vmb-b1-1",
    )


def test_a_measured_recovery_time_is_a_histogram_sample_of_the_policy() -> None:
    from vmguard.metrics import Metrics

    metrics = Metrics(clock=lambda: 1_000.0)
    backup = {
        "metadata": {"name": "b1", "namespace": "team-a", "uid": "u-1"},
        "spec": {"policyRef": {"name": "gold"}},
        "status": {
            "vcenter": "lab",
            "vm": {"moref": "vm-1", "name": "web01"},
            "verification": {
                "phase": "Completed",
                "run": 1,
                "result": "Passed",
                "time": "2026-12-06T00:00:00Z",
                "boot": {"result": "Passed", "recoveryTimeSeconds": 42.5},
            },
        },
    }
    metrics.started = 0.0
    metrics.observe_verification(backup)
    metrics.observe_verification(backup)  # counted once per run
    labels = {"namespace": "team-a", "vcenter": "lab", "policy": "gold"}
    get = metrics.registry.get_sample_value
    assert get("vmguard_boot_test_recovery_seconds_count", labels) == 1.0
    assert get("vmguard_boot_test_recovery_seconds_sum", labels) == 42.5
