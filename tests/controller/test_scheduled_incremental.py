"""Issue #5 end to end: a policy's scheduled runs back a VM up through the VMGuardBackup
controller and its proxy Jobs, and the second run is an incremental that reads far less
than the disk (lab: real apiserver, the operator as a process, node-agent Jobs, the
vSphere simulator, MinIO). The operator runs twelve times faster (docs/lab.md, "Lab
time"): the policy's cron minutes last five seconds."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tests.controller import objects
from tests.controller.backup_helpers import data_vm, no_snapshot_left
from tests.controller.scrape import scrape, value

from vmguard.api import BACKUP_TERMINAL
from vmguard_lab.procs import eventually

pytestmark = [pytest.mark.lab, pytest.mark.operator_speedup(12)]
MiB = 1 << 20


def _completed(kube_api: Any, ns: str, moref: str) -> list[dict[str, Any]]:
    done = [
        b
        for b in objects.items(kube_api, ns, "vmguardbackups", "vmguard.io/policy=every-minute")
        if (b.get("status") or {}).get("phase") == "Completed"
        and b["status"]["vm"]["moref"] == moref
    ]
    return sorted(done, key=lambda b: b["status"]["completionTime"])


def paused(kube_api: Any, ns: str, value: bool) -> None:
    objects.custom(kube_api).patch_namespaced_custom_object(
        objects.G, objects.V, ns, "vmprotectionpolicies", "every-minute",
        {"spec": {"paused": value}},
    )  # fmt: skip
    if not value:
        return
    # A scheduler turn that read the spec before the patch may still create a backup
    # (policy/runs.py, turn: the spec is copied at its start). Turns run one after the
    # other, so once one says Paused, none that could create is left.
    eventually(
        lambda: (
            objects.condition(
                objects.get(kube_api, ns, "vmprotectionpolicies", "every-minute"), "Paused"
            ).get("status")
            == "True"
        ),
        timeout=60,
        what="the policy's scheduler saying Paused",
    )


def finished(kube_api: Any, ns: str) -> bool:
    """Every backup of the policy has ended (none waits or runs)."""
    return all(
        (b.get("status") or {}).get("phase") in BACKUP_TERMINAL
        for b in objects.items(kube_api, ns, "vmguardbackups", "vmguard.io/policy=every-minute")
    )


def test_second_scheduled_run_is_incremental(
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    start_operator: Any,
    tmp_path: Path,
) -> None:
    op = start_operator()
    with data_vm(vc, vsim, image_factory, tmp_path) as vm:
        objects.create_policy(
            kube_api,
            namespace,
            "every-minute",
            selector={"names": [vm.name]},
            schedule={"cron": "* * * * *"},
            # Runs every five seconds: keep them all, so /metrics' counts (which include
            # pruned backups) are compared with every backup that completed.
            retention={"keepLast": 100},
        )
        first = eventually(
            lambda: _completed(kube_api, namespace, vm.moref),
            timeout=240,
            what="the first backup of the policy",
        )[0]
        assert first["status"]["modeUsed"] == "full"
        # A run every five seconds would snapshot the VM while this test writes: hold
        # the policy, let what runs finish, write, and let the schedule go on. The
        # first scheduled backup after that has a parent from before the write.
        paused(kube_api, namespace, True)
        eventually(lambda: finished(kube_api, namespace), timeout=180, what="runs to finish")
        disk = vm.disks[0]
        vsim.write(vm.moref, disk.key, 3 * MiB, os.urandom(100_000))
        written_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        paused(kube_api, namespace, False)

        def later_scheduled() -> dict[str, Any] | None:
            for b in _completed(kube_api, namespace, vm.moref):
                trigger = b["metadata"]["labels"].get("vmguard.io/trigger")
                if b["metadata"]["creationTimestamp"] >= written_at and trigger == "schedule":
                    return b
            return None

        second = eventually(later_scheduled, timeout=240, what="a later scheduled run")
        status = second["status"]
        assert status["modeUsed"] == "incremental", status.get("modeReason")
        assert status["parentArchiveId"]
        totals = status["totals"]
        assert totals["bytesRead"] <= totals["capacityBytes"] // 10, totals
        assert totals["bytesRead"] > 0, "the write was read"
        # Stop the schedule and let what runs finish before the VM is put back.
        paused(kube_api, namespace, True)
        eventually(
            lambda: finished(kube_api, namespace),
            timeout=180,
            what="the policy's backups to finish",
        )
        no_snapshot_left(vc, vm.moref)
        # /metrics agrees with the VMGuardBackup statuses (issue #6).
        done = _completed(kube_api, namespace, vm.moref)
        labels = {"namespace": namespace, "vcenter": "lab", "policy": "every-minute"}

        def counted() -> Any:
            samples = scrape(op.metrics_port)
            n = value(samples, "vmguard_backups_total", outcome="Completed", **labels)
            return samples if n == len(done) else None

        samples = eventually(counted, timeout=30, what="the finished backups counted")
        uploaded = sum(b["status"]["totals"]["bytesUploaded"] for b in done)
        read = sum(b["status"]["totals"]["bytesRead"] for b in done)
        assert value(samples, "vmguard_backup_uploaded_bytes_total", **labels) == uploaded
        assert value(samples, "vmguard_backup_read_bytes_total", **labels) == read
        newest = max(
            datetime.fromisoformat(b["status"]["completionTime"].replace("Z", "+00:00"))
            for b in done
        )
        # The VM's deadline is its last good backup plus the policy's RPO.
        deadline = value(
            samples, "vmguard_vm_backup_deadline_timestamp_seconds",
            vm_uuid=vm.instance_uuid, **labels,
        )  # fmt: skip
        rpo = value(samples, "vmguard_policy_rpo_seconds", **labels)
        assert deadline is not None and rpo is not None
        assert deadline - rpo == newest.timestamp()
    policy = objects.get(kube_api, namespace, "vmprotectionpolicies", "every-minute")
    assert policy["status"]["lastSuccessfulTime"]
