"""The VMGuardBackup controller end to end: real apiserver, the operator as a process, proxy
Jobs run by the lab's node agent, the vSphere simulator and MinIO.

Every Completed backup is restored from the bucket and compared by sha256 with the disk
as it was at snapshot time; no snapshot of ours may be left on the VM. The end-to-end
test runs on an encrypted repository with canary secrets (tests/controller/canary.py)
and ends with a restore Job and a scan of everything the run left for those secrets.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from kubernetes import client
from tests.controller import canary, objects
from tests.controller.backup_helpers import (
    create_backup,
    data_vm,
    disk_hashes,
    no_snapshot_left,
    open_repo,
    restored_hashes,
    wait_done,
)
from tests.controller.conftest import OperatorProcess
from tests.controller.restore_helpers import create_restore, destroy_vm
from tests.controller.scrape import page
from tests.vsphere.helpers import MiB, sha256_file

from vmguard.controller.kube.points import protected_vm_name
from vmguard.controller.kube.proxyjob import KEY_VOLUME
from vmguard.proxy.contract import S3_SECRET_ENV, VC_PASSWORD_ENV
from vmguard.store import Repository

pytestmark = pytest.mark.lab


class CanaryRepository(NamedTuple):
    bucket: dict[str, Any]  # endpoint, bucket and the canary credentials
    key: str


@pytest.fixture
def canary_repository(
    kube_api: Any, lab_state: dict[str, Any], namespace: str, s3_bucket: dict[str, Any]
) -> Iterator[CanaryRepository]:
    """VMGuardRepository ``repo`` over a fresh bucket, reached with a canary S3 secret
    (a MinIO service account of its own) and encrypted under a canary key."""
    key = canary.new_value("key")
    with canary.minio_account(lab_state, s3_bucket) as bucket:
        objects.create_repository(kube_api, namespace, "repo", bucket, key=key)
        yield CanaryRepository(bucket, key)


def test_full_incremental_and_restore_are_bit_exact_and_leak_no_secret(
    lab: Any,
    lab_state: dict[str, Any],
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    canary_repository: CanaryRepository,
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    """The product's whole path on an encrypted repository — a full and an incremental
    VMGuardBackup, then a VMGuardRestore to a new VM, all through the operator and proxy Jobs —
    and then no secret value in anything the run left behind (BRIEF §9.4)."""
    bucket, key = canary_repository
    # At DEBUG kopf also logs every patch it sends and every change it sees: more to scan.
    operator = start_operator(extra_env={"VMGUARD_LOG_LEVEL": "DEBUG"})
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
        repo = open_repo(bucket, key)
        assert repo.encrypted
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

        # Both points are in the VM's one ProtectedVM, newest first.
        pvm = objects.get(
            kube_api, namespace, "protectedvms", protected_vm_name(lab_vcenter, vm.instance_uuid)
        )["status"]
        assert [(p["archiveId"], p["mode"], p["bytes"], p["backup"]) for p in pvm["points"]] == [
            (inc["archiveId"], "incremental", inc["totals"]["bytesUploaded"], "second"),
            (status["archiveId"], "full", status["totals"]["bytesUploaded"], "first"),
        ]
        assert pvm["pointCount"] == 2 and pvm["lastGoodPoint"]["archiveId"] == inc["archiveId"]
        assert [p["time"] for p in pvm["points"]] == [
            inc["snapshot"]["createTime"],
            status["snapshot"]["createTime"],
        ]

        # The proxy ran as its own ServiceAccount, in a Job owned by the VMGuardBackup.
        job = client.BatchV1Api(kube_api).read_namespaced_job("second-1", namespace)
        assert job.spec.template.spec.service_account_name == "vmguard-proxy"
        owner = job.metadata.owner_references[0]
        assert (owner.kind, owner.name, owner.controller) == ("VMGuardBackup", "second", True)

        # The incremental's point restored to a new VM by a restore Job: bit-exact.
        create_restore(
            kube_api,
            namespace,
            "second-new",
            "second",
            {"newVM": {"name": f"canary-{vm.name}", "datastore": "LocalDS_0", "folder": "/DC0/vm"}},
        )
        done = objects.wait_phase(
            kube_api, namespace, "vmguardrestores", "second-new", {"Completed", "Failed"}, 240
        )
        assert done["status"]["phase"] == "Completed", done["status"]
        result = done["status"]["result"]
        try:
            restored = {
                str(d["sourceKey"]): sha256_file(vsim.disk(result["vm"]["moref"], d["key"]).path)
                for d in result["disks"]
            }
        finally:
            destroy_vm(vc, result["vm"]["moref"])
        assert restored == at_inc

    scan = _scan_everything(lab, kube_api, namespace, operator, bucket, repo)
    canaries = [
        canary.Canary("the vCenter password (the lab's own)", lab_state["vsphere"]["password"]),
        canary.Canary("the S3 secret key", bucket["secret_key"]),
        canary.Canary("the repository key", key),
        canary.Canary("the MinIO root secret (never given)", lab_state["minio"]["secret_key"]),
    ]
    assert scan.leaks(canaries) == []

    # The scan is no formality: it finds the values where they are by design, and it
    # saw every object, log and repository object it claims to have searched.
    held = canary.Scan()
    secrets = client.CoreV1Api(kube_api).list_namespaced_secret(namespace)
    held.add("secrets", json.dumps(kube_api.sanitize_for_serialization(secrets)))
    assert len(held.leaks(canaries[:3])) == 3
    assert scan.names("vcenters.vmguard.io") == {"lab"}
    assert scan.names("vmguardrepositories.vmguard.io") == {"repo"}
    assert scan.names("vmguardbackups.vmguard.io") == {"first", "second"}
    assert scan.names("vmguardrestores.vmguard.io") == {"second-new"}
    assert len(scan.names("protectedvms.vmguard.io")) == 1
    jobs = scan.names("jobs.batch")
    assert {"first-1", "second-1"} < jobs and len(jobs) == 3
    assert len(scan.objects["pods"]) == 3 and scan.objects["events"]
    assert "kube-root-ca.crt" in scan.names("configmaps")
    assert "vmguard-proxy" in scan.names("serviceaccounts")
    pod_logs = [text for source, text in scan.pieces.items() if source.startswith("log pods/")]
    assert len(pod_logs) == 3 and all(pod_logs)
    assert any(f"restore {namespace}/second-new written: 1 disk(s)" in t for t in pod_logs)
    operator_log = operator.text()
    assert "Job first-1 created" in operator_log and "Job second-1 created" in operator_log
    assert "Merge-patching the resource with" in operator_log  # DEBUG: kopf's own patches
    assert "vmguard_backups_total" in scan.pieces["metrics operator"]
    names = scan.pieces["s3 object names"].split("\n")
    for prefix in ("config", "chunks/", "indexes/", "archives/"):
        assert any(n.startswith(prefix) for n in names), prefix
    assert len([s for s in scan.pieces if s.startswith("manifest ")]) == 2

    # Pods name the Secrets; they never carry their values.
    for pod in scan.objects["pods"]:
        (proxy,) = pod["spec"]["containers"]
        env = {e["name"]: e for e in proxy["env"]}
        assert env[VC_PASSWORD_ENV]["valueFrom"]["secretKeyRef"]["name"] == "lab-creds"
        assert env[S3_SECRET_ENV]["valueFrom"]["secretKeyRef"]["name"] == "repo-s3"
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes[KEY_VOLUME]["secret"]["secretName"] == "repo-key"
    assert "Traceback" not in operator_log


def _scan_everything(
    lab: Any,
    kube_api: Any,
    namespace: str,
    operator: OperatorProcess,
    bucket: dict[str, Any],
    repo: Repository,
) -> canary.Scan:
    """What the run left: the namespace's objects, the operator's and every proxy pod's
    log, the operator's /metrics, the bucket's objects and the decoded manifests."""
    scan = canary.Scan()
    scan.kube(kube_api, namespace)
    scan.logs("operator", [operator.log])
    scan.logs("pods", sorted((lab.paths.lab / "node" / "pods").glob(f"{namespace}_*/*.log")))
    scan.add("metrics operator", page(operator.metrics_port) or "")
    scan.bucket(bucket)
    for ref in repo.list_archives():
        scan.add(f"manifest {ref.archive_id}", repo.load_archive(ref.archive_id).to_json().decode())
    return scan


def test_unknown_vm_fails_with_a_reason_and_the_operator_stays_up(
    kube_api: Any,
    lab: Any,
    kubectl: Path,
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
    # kstatus reads it as Failed: Stalled=True with the failure's reason, no Reconciling=True,
    # and the status describes the current generation.
    stalled = objects.condition(done, "Stalled")
    assert (stalled.get("status"), stalled.get("reason")) == ("True", "VMNotFound"), stalled
    assert "no such VM" in stalled["message"]
    assert objects.condition(done, "Reconciling").get("status", "False") == "False"
    assert status["observedGeneration"] == done["metadata"]["generation"]
    wait = [
        "wait",
        "--for=condition=Stalled",
        "--timeout=20s",
        "-n",
        namespace,
        "vmguardbackup/ghost",
    ]
    waited = subprocess.run(
        [str(kubectl), *wait],
        env=dict(os.environ, KUBECONFIG=str(lab.paths.kubeconfig)),
        capture_output=True,
        text=True,
    )
    assert waited.returncode == 0, waited.stderr
    # The printer columns show Ready and its reason.
    shown = subprocess.run(
        [str(kubectl), "get", "-n", namespace, "vmguardbackup/ghost", "--no-headers", "-o", "wide"],
        env=dict(os.environ, KUBECONFIG=str(lab.paths.kubeconfig)),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert shown[shown.index("Failed") + 1 :][:2] == ["False", "VMNotFound"], shown
    assert operator.alive()


def test_missing_repository_waits_with_a_condition(
    kube_api: Any, namespace: str, lab_vcenter: str, operator_log: Path
) -> None:
    create_backup(
        kube_api, namespace, "early", {"name": "whatever"}, repositoryRef={"name": "later"}
    )

    def waiting() -> dict[str, Any] | None:
        obj = objects.get(kube_api, namespace, "vmguardbackups", "early")
        cond = objects.condition(obj, "RefsResolved")
        return obj if cond.get("reason") == "RepositoryNotFound" else None

    from vmguard_lab.procs import eventually

    obj = eventually(waiting, timeout=60, what="RepositoryNotFound condition")
    assert obj["status"]["phase"] == "Pending"
    reconciling = objects.condition(obj, "Reconciling")
    assert (reconciling.get("status"), reconciling.get("reason")) == ("True", "Pending")
    assert not objects.condition(obj, "Stalled")
    assert (
        "VMGuardRepository later does not exist"
        in objects.condition(obj, "RefsResolved")["message"]
    )
