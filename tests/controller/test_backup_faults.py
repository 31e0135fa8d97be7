"""VMGuardBackup faults end to end: the proxy killed mid-transfer, the operator SIGKILLed in
every phase, a guest that cannot be quiesced on a VM needing consolidation. Each test
checks the invariants of BRIEF §9 that apply: the backup ends Completed or Failed with a
reason, no snapshot of ours is left, the VM has exactly one archive per completed backup
(nothing duplicated), and every archive restores bit-exact.

Timing comes from two hooks the lab installs (``vmguard_lab.run``, docs/lab.md):
``proxy_throttle`` slows every proxy's reads, ``stall`` parks the operator at a backup
step so it can be killed exactly there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.controller import objects
from tests.controller.backup_helpers import (
    create_backup,
    data_vm,
    disk_hashes,
    no_snapshot_left,
    open_repo,
    restored_hashes,
    wait_done,
)
from tests.vsphere.helpers import MiB, our_snapshots

from vmguard_lab.procs import eventually

pytestmark = pytest.mark.lab

RETRY_SOON = {"VMGUARD_BACKUP_RETRY_BACKOFF": "1"}
SLOW: dict[str, Any] = {"proxy_throttle": 3 * MiB, "extra_env": RETRY_SOON}


def _status(kube_api: Any, ns: str, name: str) -> dict[str, Any]:
    return dict(objects.get(kube_api, ns, "vmguardbackups", name).get("status") or {})


def _transferring(kube_api: Any, ns: str, name: str) -> dict[str, Any]:
    """The status once the proxy has reported some progress, not all of it."""

    def moving() -> dict[str, Any] | None:
        st = _status(kube_api, ns, name)
        done = (st.get("progress") or {}).get("bytesDone", 0)
        total = (st.get("progress") or {}).get("bytesTotal", 0)
        return st if st.get("phase") == "Transferring" and 0 < done < total else None

    result: dict[str, Any] = eventually(moving, timeout=120, what=f"{name} transferring")
    return result


def _completed_once(
    kube_api: Any,
    vc: Any,
    ns: str,
    name: str,
    vm: Any,
    bucket: dict[str, Any],
    tmp: Path,
    expected: dict[str, str],
) -> dict[str, Any]:
    status = wait_done(kube_api, ns, name)["status"]
    assert status["phase"] == "Completed", status
    no_snapshot_left(vc, vm.moref)
    repo = open_repo(bucket)
    archives = repo.list_archives(f"lab:{vm.instance_uuid}")
    assert [a.archive_id for a in archives] == [status["archiveId"]], "exactly one archive"
    assert restored_hashes(repo, status["archiveId"], tmp) == expected
    return status


def test_proxy_killed_mid_transfer_is_retried_to_completed(
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    s3_bucket: dict[str, Any],
    start_operator: Any,
    tmp_path: Path,
) -> None:
    start_operator(**SLOW)
    with data_vm(vc, vsim, image_factory, tmp_path) as vm:
        expected = disk_hashes(vsim, vm.moref)
        create_backup(kube_api, namespace, "killed", {"moref": vm.moref})
        _transferring(kube_api, namespace, "killed")
        core = client.CoreV1Api(kube_api)
        pods = core.list_namespaced_pod(namespace, label_selector="job-name=killed-1").items
        assert len(pods) == 1
        core.delete_namespaced_pod(pods[0].metadata.name, namespace, grace_period_seconds=0)
        status = _completed_once(
            kube_api, vc, namespace, "killed", vm, s3_bucket, tmp_path, expected
        )
        assert status["attempts"] == 2 and status["jobName"] == "killed-2"
        assert not status.get("error")
        # And the next backup of the VM succeeds, continuing the chain.
        create_backup(kube_api, namespace, "after", {"moref": vm.moref})
        after = wait_done(kube_api, namespace, "after")["status"]
        assert after["phase"] == "Completed" and after["parentArchiveId"] == status["archiveId"]
        no_snapshot_left(vc, vm.moref)


def test_proxy_failing_for_good_ends_failed_with_a_reason(
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
    start_operator(
        proxy_throttle=3 * MiB, extra_env={**RETRY_SOON, "VMGUARD_BACKUP_MAX_ATTEMPTS": "1"}
    )
    with data_vm(vc, vsim, image_factory, tmp_path) as vm:
        create_backup(kube_api, namespace, "once", {"moref": vm.moref})
        _transferring(kube_api, namespace, "once")
        core = client.CoreV1Api(kube_api)
        pod = core.list_namespaced_pod(namespace, label_selector="job-name=once-1").items[0]
        core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
        status = wait_done(kube_api, namespace, "once")["status"]
        assert status["phase"] == "Failed"
        assert status["error"]["reason"] in ("ProxyTerminated", "ProxyFailed"), status["error"]
        assert "gave up after 1 attempt" in status["error"]["message"]
        assert status["snapshot"]["removed"] is True and not status.get("archiveId")
        no_snapshot_left(vc, vm.moref)


def test_operator_killed_after_taking_the_snapshot_reuses_it(
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    s3_bucket: dict[str, Any],
    start_operator: Any,
    tmp_path: Path,
) -> None:
    first = start_operator(stall="snapshotted")
    with data_vm(vc, vsim, image_factory, tmp_path) as vm:
        expected = disk_hashes(vsim, vm.moref)
        uid = create_backup(kube_api, namespace, "snap", {"moref": vm.moref})["metadata"]["uid"]
        # This backup's snapshot, not a CBT activation cycle's (which comes first when
        # the VM's CBT was off, and is removed by the cycle itself).
        taken = eventually(
            lambda: [s for s in our_snapshots(vc, vm.moref) if s.backup_uid == uid],
            timeout=90,
            what="snapshot",
        )
        assert _status(kube_api, namespace, "snap")["phase"] == "Snapshotting"
        first.kill()
        start_operator()
        status = _completed_once(kube_api, vc, namespace, "snap", vm, s3_bucket, tmp_path, expected)
        assert status["snapshot"]["moref"] == taken[0].moref, "the snapshot was reused"


def test_operator_killed_while_transferring_adopts_the_job(
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    s3_bucket: dict[str, Any],
    start_operator: Any,
    tmp_path: Path,
) -> None:
    first = start_operator(**SLOW)
    with data_vm(vc, vsim, image_factory, tmp_path) as vm:
        expected = disk_hashes(vsim, vm.moref)
        create_backup(kube_api, namespace, "moving", {"moref": vm.moref})
        _transferring(kube_api, namespace, "moving")
        first.kill()
        start_operator(**SLOW)
        status = _completed_once(
            kube_api, vc, namespace, "moving", vm, s3_bucket, tmp_path, expected
        )
        assert status["attempts"] == 1 and status["jobName"] == "moving-1"
        jobs = client.BatchV1Api(kube_api).list_namespaced_job(namespace).items
        assert [j.metadata.name for j in jobs] == ["moving-1"]


def test_operator_killed_in_finalizing_removes_the_snapshot_after_restart(
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    s3_bucket: dict[str, Any],
    start_operator: Any,
    tmp_path: Path,
) -> None:
    first = start_operator(stall="finalizing")
    with data_vm(vc, vsim, image_factory, tmp_path) as vm:
        expected = disk_hashes(vsim, vm.moref)
        create_backup(kube_api, namespace, "fin", {"moref": vm.moref})
        objects.wait_phase(kube_api, namespace, "vmguardbackups", "fin", {"Finalizing"}, 120)
        assert len(our_snapshots(vc, vm.moref)) == 1
        first.kill()
        start_operator()
        _completed_once(kube_api, vc, namespace, "fin", vm, s3_bucket, tmp_path, expected)


def test_operator_killed_while_a_backup_waits_under_a_limit(
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    s3_bucket: dict[str, Any],
    start_operator: Any,
    tmp_path: Path,
) -> None:
    limits = {"perDatastore": 1, "perHost": 1, "total": 1}
    objects.create_policy(
        kube_api,
        namespace,
        "one-at-a-time",
        selector={"names": ["nothing-*"]},
        concurrency=limits,
    )
    first = start_operator(**SLOW)
    with (
        data_vm(vc, vsim, image_factory, tmp_path, seed=4) as vm_a,
        data_vm(vc, vsim, image_factory, tmp_path, seed=5) as vm_b,
    ):
        expected_a, expected_b = disk_hashes(vsim, vm_a.moref), disk_hashes(vsim, vm_b.moref)
        create_backup(
            kube_api, namespace, "a", {"moref": vm_a.moref}, policyRef={"name": "one-at-a-time"}
        )
        _transferring(kube_api, namespace, "a")
        create_backup(
            kube_api, namespace, "b", {"moref": vm_b.moref}, policyRef={"name": "one-at-a-time"}
        )

        def held() -> dict[str, Any] | None:
            obj = objects.get(kube_api, namespace, "vmguardbackups", "b")
            return obj if objects.condition(obj, "Admitted").get("status") == "False" else None

        obj = eventually(held, timeout=60, what="b held back")
        assert obj["status"]["phase"] == "Pending"
        assert objects.condition(obj, "Admitted")["reason"] == "ConcurrencyLimit"
        assert objects.condition(obj, "Admitted")["message"] == (
            "policy one-at-a-time runs at most 1 backups at once (total)"
        )
        first.kill()
        # Unthrottled: a's Job keeps the slow proxy it was made with; b's need not be slow.
        start_operator(extra_env=RETRY_SOON)
        _completed_once(kube_api, vc, namespace, "a", vm_a, s3_bucket, tmp_path, expected_a)
        _completed_once(kube_api, vc, namespace, "b", vm_b, s3_bucket, tmp_path, expected_b)


def test_deleted_in_flight_stops_the_proxy_and_removes_the_snapshot(
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
    start_operator(**SLOW)
    with data_vm(vc, vsim, image_factory, tmp_path) as vm:
        create_backup(kube_api, namespace, "gone", {"moref": vm.moref})
        _transferring(kube_api, namespace, "gone")
        assert len(our_snapshots(vc, vm.moref)) == 1
        objects.custom(kube_api).delete_namespaced_custom_object(
            objects.G, objects.V, namespace, "vmguardbackups", "gone"
        )

        def deleted() -> bool:
            return not objects.items(kube_api, namespace, "vmguardbackups")

        eventually(deleted, timeout=60, what="VMGuardBackup deleted")
        assert our_snapshots(vc, vm.moref) == []
        batch = client.BatchV1Api(kube_api)
        eventually(
            lambda: not batch.list_namespaced_job(namespace).items, timeout=60, what="Job gone"
        )


def test_a_fault_in_a_step_is_logged_and_the_step_retried_to_completed(
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    s3_bucket: dict[str, Any],
    start_operator: Any,
    tmp_path: Path,
) -> None:
    """The step raises once at ``finalizing`` (``fail_once``): the backup's task (the
    operator's own, kube/supervisor.py, no longer a kopf daemon) logs the fault with the
    backup's reference, keeps the backup, and retries the step (30 s later) to Completed:
    one archive, restored bit-exact, no snapshot left."""
    op = start_operator(fail_once="finalizing")
    with data_vm(vc, vsim, image_factory, tmp_path) as vm:
        expected = disk_hashes(vsim, vm.moref)
        create_backup(kube_api, namespace, "faulty", {"moref": vm.moref})
        _completed_once(kube_api, vc, namespace, "faulty", vm, s3_bucket, tmp_path, expected)
    faults = [line for line in op.text().splitlines() if "backup step failed" in line]
    assert len(faults) == 1, faults
    assert faults[0].endswith("lab: a fault at finalizing (vmguard_lab.run --fail-once)")


def test_quiesce_fallback_and_consolidation_follow_the_policy(
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    s3_bucket: dict[str, Any],
    start_operator: Any,
    tmp_path: Path,
) -> None:
    with data_vm(vc, vsim, image_factory, tmp_path) as vm:
        # The VM's effective policy (so the orphan sweep asks it too); paused, so the
        # fail-safe makes no backup of its own.
        objects.create_policy(
            kube_api,
            namespace,
            "careful",
            selector={"names": [vm.name]},
            paused=True,
            quiesce={"enabled": True, "fallbackToCrashConsistent": True},
            snapshot={"consolidate": False},
        )
        expected = disk_hashes(vsim, vm.moref)
        vsim.set_faults(vm.moref, quiesce_fault=True, consolidation_needed=True)
        start_operator()
        create_backup(
            kube_api, namespace, "careful", {"moref": vm.moref}, policyRef={"name": "careful"}
        )
        obj = wait_done(kube_api, namespace, "careful")
        status = obj["status"]
        assert status["phase"] == "Completed", status.get("error")
        assert status["quiesced"] is False
        quiesced = objects.condition(obj, "Quiesced")
        assert (quiesced["status"], quiesced["reason"]) == ("False", "CrashConsistentFallback")
        assert "An error occurred while quiescing the virtual machine" in quiesced["message"]
        removed = objects.condition(obj, "SnapshotRemoved")
        assert "consolidation: consolidation needed; not allowed" in removed["message"]
        assert vsim.faults(vm.moref).consolidation_needed is True
        no_snapshot_left(vc, vm.moref)
        repo = open_repo(s3_bucket)
        assert restored_hashes(repo, status["archiveId"], tmp_path) == expected
