"""File-system checks of verification Jobs under Pod Security (docs/verification.md,
"Where file systems are checked"), in the lab's process mode: the apiserver's PodSecurity
admission is real, proxy pods run as processes of the node agent, where FUSE works.

A file-system check mounts each volume with FUSE, so its Job's pod is privileged, which
only a namespace labelled for privileged proxies gets (as hot-add). In a namespace that
enforces ``restricted``: the policies say so before any backup (``VerificationReady``
False, ``PodSecurity``); a verification asking for the check alone ends ``Error`` naming
Pod Security with no Job; one that also scans runs the YARA scan in a restricted pod (no
pod refused) and reports the file systems as not checked. Where privileged proxies are
allowed the check runs: a clean point passes, one with a damaged ext4 superblock fails
naming the volume.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.controller import objects
from tests.controller.backup_helpers import create_backup, data_vm, wait_done
from tests.controller.test_verification import RULES, SPEC, config_map, verified

from vmguard.api import LABEL_PRIVILEGED_PROXIES
from vmguard.api.kinds import BACKUP, POLICY
from vmguard.controller.kube.podsecurity import PSS_ENFORCE
from vmguard_lab.imaging import damage
from vmguard_lab.procs import eventually

pytestmark = [pytest.mark.lab, pytest.mark.operator_controllers("backups,policies,repositories")]

SEED = 1818
RESTRICTED = {PSS_ENFORCE: "restricted", f"{PSS_ENFORCE}-version": "latest"}
PRIVILEGED_PROXIES = {LABEL_PRIVILEGED_PROXIES: "true"}
NOBODY = {"names": ["no-such-vm-fsck"]}  # the VMGuardBackups below name their VM


@pytest.fixture
def namespace(kube_api: Any, vmguard_crds: None, request: pytest.FixtureRequest) -> str:
    """A namespace with the labels the test is parametrized with."""
    name = f"t-fsck-{secrets.token_hex(3)}"
    client.CoreV1Api(kube_api).create_namespace(
        {"metadata": {"name": name, "labels": request.param}}
    )
    return name


def _ready(kube_api: Any, ns: str, policy: str, status: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        obj = objects.get(kube_api, ns, POLICY.plural, policy)
        condition = objects.condition(obj, "VerificationReady")
        return condition if condition.get("status") == status else None

    result: dict[str, Any] = eventually(found, timeout=60, what=f"{policy} VerificationReady")
    return result


def _back_up(kube_api: Any, ns: str, name: str, moref: str, policy: str) -> dict[str, Any]:
    create_backup(kube_api, ns, name, {"moref": moref}, policyRef={"name": policy})
    done = wait_done(kube_api, ns, name)["status"]
    assert done["phase"] == "Completed", done
    return verified(kube_api, ns, name)


def _pod_security(kube_api: Any, ns: str, job_name: str) -> Any:
    job = client.BatchV1Api(kube_api).read_namespaced_job(job_name, ns)
    return job.spec.template.spec


def _refusals(kube_api: Any, ns: str) -> list[str]:
    events = client.CoreV1Api(kube_api).list_namespaced_event(ns).items
    return [f"{e.involved_object.name}: {e.message}" for e in events if e.reason == "FailedCreate"]


@pytest.mark.parametrize("namespace", [RESTRICTED], indirect=True, ids=["restricted"])
def test_where_pod_security_is_restricted_fsck_is_refused_naming_it_and_the_scan_runs(
    kube_api: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    operator_log: Path,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    tmp_path: Path,
) -> None:
    ns = namespace
    config_map(kube_api, ns, "rules", {"marker.yar": RULES})
    scan = {"fsck": True, "yara": {"configMapRef": {"name": "rules"}}}
    objects.create_policy(kube_api, ns, "scan", selector=NOBODY, verification=scan)
    objects.create_policy(kube_api, ns, "fsck", selector=NOBODY, verification={"fsck": True})
    for policy in ("scan", "fsck"):
        ready = _ready(kube_api, ns, policy, "False")
        assert ready["reason"] == "PodSecurity", ready
        assert "FUSE" in ready["message"] and "'restricted'" in ready["message"], ready
    with data_vm(vc, vsim, image_factory, tmp_path, spec=SPEC) as vm:
        scanned = _back_up(kube_api, ns, "scan-1", vm.moref, "scan")["status"]["verification"]
        alone = _back_up(kube_api, ns, "fsck-1", vm.moref, "fsck")
    # Scan and check asked for: the scan ran in a restricted pod, the check did not run.
    assert scanned["checks"] == ["fsck", "yara"], scanned
    assert scanned["result"] == "Error", scanned
    [finding] = scanned["findings"]
    assert finding["check"] == "fsck", finding
    assert finding["message"].startswith("error: not run: file-system checks mount"), finding
    assert "Pod Security admission refuses privileged pods" in finding["message"], finding
    pod = _pod_security(kube_api, ns, scanned["jobName"])
    assert pod.security_context.run_as_non_root is True
    assert pod.containers[0].security_context.privileged is False
    assert "--fsck" not in pod.containers[0].args and "--yara" in pod.containers[0].args
    # The check alone: refused before any Job.
    refused = alone["status"]["verification"]
    assert refused["result"] == "Error" and not refused.get("jobName"), refused
    assert "Pod Security admission refuses privileged pods" in refused["message"], refused
    condition = objects.condition(alone, "Verified")
    assert (condition["status"], condition["reason"]) == ("Unknown", "Error"), condition
    assert "Pod Security" in condition["message"], condition
    jobs = [j.metadata.name for j in client.BatchV1Api(kube_api).list_namespaced_job(ns).items]
    assert [j for j in jobs if j.startswith("vmv-")] == [scanned["jobName"]], jobs
    assert _refusals(kube_api, ns) == []


@pytest.mark.parametrize(
    "namespace", [PRIVILEGED_PROXIES], indirect=True, ids=["privileged-proxies"]
)
def test_where_privileged_proxies_are_allowed_fsck_runs_privileged_and_finds_damage(
    kube_api: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    operator_log: Path,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    tmp_path: Path,
) -> None:
    ns = namespace
    objects.create_policy(kube_api, ns, "fsck", selector=NOBODY, verification={"fsck": True})
    ready = _ready(kube_api, ns, "fsck", "True")
    assert ready["reason"] == "Valid", ready
    with data_vm(vc, vsim, image_factory, tmp_path, spec=SPEC) as vm:
        clean = _back_up(kube_api, ns, "clean", vm.moref, "fsck")["status"]["verification"]
        image = image_factory.build(SPEC.next_point(1), SEED, tmp_path / "damaged.img")
        damage.damage_ext4_superblock(image.path, image.partition(2).offset)
        vsim.put_image(vm.moref, vm.disks[0].key, str(image.path))
        broken = _back_up(kube_api, ns, "broken", vm.moref, "fsck")["status"]["verification"]
    assert (clean["result"], clean["findings"]) == ("Passed", []), clean
    pod = _pod_security(kube_api, ns, clean["jobName"])
    assert pod.containers[0].security_context.privileged is True
    assert "--fsck" in pod.containers[0].args
    assert broken["result"] == "Failed", broken
    assert [(f["volume"], f["check"]) for f in broken["findings"]] == [("p2", "fsck")], broken
    assert "e2fsck exited 8" in broken["findings"][0]["message"], broken
    backup = objects.get(kube_api, ns, BACKUP.plural, "broken")
    assert objects.condition(backup, "Verified")["status"] == "False"
    assert _refusals(kube_api, ns) == []
