"""The VMBackup controller end to end: real apiserver, the operator as a process, proxy
Jobs run by the lab's node agent, the vSphere simulator and MinIO.

Every Completed backup is restored from the bucket and compared by sha256 with the disk
as it was at snapshot time; no snapshot of ours may be left on the VM.
"""

from __future__ import annotations

import json
import os
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
from tests.vsphere.helpers import MiB

pytestmark = pytest.mark.lab


def test_adhoc_full_then_incremental_restore_bit_exact(
    lab: Any,
    lab_state: dict[str, Any],
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    s3_bucket: dict[str, Any],
    operator_log: Path,
    tmp_path: Path,
) -> None:
    with data_vm(vc, vsim, image_factory, tmp_path) as vm:
        at_full = disk_hashes(vsim, vm.moref)
        create_backup(kube_api, namespace, "first", {"name": vm.name})
        full = wait_done(kube_api, namespace, "first")
        status = full["status"]
        assert status["phase"] == "Completed", status
        assert status["modeUsed"] == "full" and status["modeRequested"] == "full"
        assert status["vm"] == {
            "moref": vm.moref,
            "name": vm.name,
            "instanceUuid": vm.instance_uuid,
        }
        assert status["totals"]["bytesRead"] > 0 and status["snapshot"]["removed"] is True
        assert status["attempts"] == 1 and status["jobName"] == "first-1"
        assert objects.condition(full, "Ready")["reason"] == "Completed"
        no_snapshot_left(vc, vm.moref)
        repo = open_repo(s3_bucket)
        assert restored_hashes(repo, status["archiveId"], tmp_path) == at_full

        # Guest writes, then a second backup (by moref): incremental, reading little.
        disk = vm.disks[0]
        for off, size in [(3 * MiB + 5, 20_000), (disk.capacity - 8192, 8192)]:
            vsim.write(vm.moref, disk.key, off, os.urandom(size))
        at_inc = disk_hashes(vsim, vm.moref)
        create_backup(kube_api, namespace, "second", {"moref": vm.moref})
        inc = wait_done(kube_api, namespace, "second")["status"]
        assert inc["phase"] == "Completed", inc
        assert inc["modeUsed"] == "incremental", inc["modeReason"]
        assert inc["parentArchiveId"] == status["archiveId"]
        assert inc["totals"]["bytesRead"] <= 2 * 4 * MiB < disk.capacity / 4  # two chunks
        assert inc["totals"]["bytesRead"] < status["totals"]["bytesRead"]
        no_snapshot_left(vc, vm.moref)
        assert restored_hashes(repo, inc["archiveId"], tmp_path) == at_inc
        assert len(repo.list_archives()) == 2

        # The proxy ran as its own ServiceAccount, in a Job owned by the VMBackup.
        job = client.BatchV1Api(kube_api).read_namespaced_job("second-1", namespace)
        assert job.spec.template.spec.service_account_name == "vmguard-proxy"
        owner = job.metadata.owner_references[0]
        assert (owner.kind, owner.name, owner.controller) == ("VMBackup", "second", True)

        # No secret value in any object, event or log of the run (BRIEF §9.4).
        secrets = [lab_state["vsphere"]["password"], s3_bucket["secret_key"]]
        seen = [operator_log.read_text()]
        seen += [
            p.read_text() for p in (lab.paths.lab / "node" / "pods").glob(f"{namespace}_*/*.log")
        ]
        seen.append(json.dumps(kube_api.sanitize_for_serialization(job)))
        seen.append(json.dumps(objects.items(kube_api, namespace, "vmbackups")))
        events = client.CoreV1Api(kube_api).list_namespaced_event(namespace)
        seen.append(json.dumps(kube_api.sanitize_for_serialization(events)))
        assert len(seen) >= 6, "two proxy logs were read"
        for text in seen:
            assert not any(secret in text for secret in secrets)
    assert "Traceback" not in operator_log.read_text()


def test_unknown_vm_fails_with_a_reason_and_the_operator_stays_up(
    kube_api: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    start_operator: Any,
) -> None:
    operator = start_operator()
    create_backup(kube_api, namespace, "ghost", {"name": "no such VM ✓/x"})
    done = wait_done(kube_api, namespace, "ghost", timeout=90)
    status = done["status"]
    assert status["phase"] == "Failed"
    assert status["error"]["reason"] == "VMNotFound"
    assert "no such VM" in status["error"]["message"]
    assert objects.condition(done, "Ready")["reason"] == "VMNotFound"
    assert not (status.get("snapshot") or {}).get("moref")
    assert operator.alive()


def test_missing_repository_waits_with_a_condition(
    kube_api: Any, namespace: str, lab_vcenter: str, operator_log: Path
) -> None:
    create_backup(
        kube_api, namespace, "early", {"name": "whatever"}, repositoryRef={"name": "later"}
    )

    def waiting() -> dict[str, Any] | None:
        obj = objects.get(kube_api, namespace, "vmbackups", "early")
        cond = objects.condition(obj, "RefsResolved")
        return obj if cond.get("reason") == "RepositoryNotFound" else None

    from vmguard.lab.procs import eventually

    obj = eventually(waiting, timeout=60, what="RepositoryNotFound condition")
    assert obj["status"]["phase"] == "Pending"
    assert (
        "BackupRepository later does not exist" in objects.condition(obj, "RefsResolved")["message"]
    )
