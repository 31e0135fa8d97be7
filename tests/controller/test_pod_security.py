"""Proxies under Pod Security (process mode: the apiserver's PodSecurity admission is
what would refuse a pod; the container-mode install is tests/images).

In a namespace that enforces the ``restricted`` level (set up as
tests/images/test_install_restricted.py does), a policy with ``transport: auto`` backs
up over NBD through a restricted proxy, no pod refused; a policy that demands ``hotadd``
fails at once, before any snapshot or Job, with a reason that names Pod Security.
(Before, ``auto`` made every proxy privileged: admission refused its pod.) In a
namespace labelled for privileged proxies, a privileged proxy still runs only on a node
that can hot-add the VM: the lab's node is no VM, so ``auto`` is NBD and ``hotadd``
fails (``NoHotAddNode``) with its snapshot removed.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.controller import objects
from tests.controller.backup_helpers import create_backup, data_vm, no_snapshot_left, wait_done
from tests.vsphere.helpers import our_snapshots

from vmguard.api import LABEL_PRIVILEGED_PROXIES
from vmguard.api.kinds import BACKUP

pytestmark = pytest.mark.lab

RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
HOTADD_ALLOWED = {LABEL_PRIVILEGED_PROXIES: "true"}


@pytest.fixture
def namespace(kube_api: Any, vmguard_crds: None, request: pytest.FixtureRequest) -> str:
    """A namespace with the labels the test is parametrized with."""
    name = f"t-pss-{secrets.token_hex(3)}"
    body = {"metadata": {"name": name, "labels": request.param}}
    client.CoreV1Api(kube_api).create_namespace(body)
    return name


def _refusals(kube_api: Any, ns: str) -> list[str]:
    events = client.CoreV1Api(kube_api).list_namespaced_event(ns).items
    return [f"{e.involved_object.name}: {e.message}" for e in events if e.reason == "FailedCreate"]


def _transport(kube_api: Any, ns: str, name: str) -> dict[str, Any]:
    return objects.condition(objects.get(kube_api, ns, BACKUP.plural, name), "Transport")


def _restricted_proxy(job: Any) -> None:
    pod = job.spec.template.spec
    assert pod.security_context.run_as_non_root is True
    assert pod.containers[0].security_context.privileged is False
    assert pod.affinity is None


@pytest.mark.parametrize("namespace", [RESTRICTED], indirect=True, ids=["restricted"])
def test_auto_backs_up_over_nbd_and_a_demanded_hotadd_fails_naming_pod_security(
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
    nobody = {"names": ["no-such-vm-pss"]}  # the VMGuardBackups below name their VM
    objects.create_policy(kube_api, ns, "auto", transport="auto", selector=nobody)
    objects.create_policy(kube_api, ns, "hot", transport="hotadd", selector=nobody)
    batch = client.BatchV1Api(kube_api)
    with data_vm(vc, vsim, image_factory, tmp_path) as vm:
        create_backup(kube_api, ns, "auto-1", {"moref": vm.moref}, policyRef={"name": "auto"})
        done = wait_done(kube_api, ns, "auto-1", timeout=180)["status"]
        assert done["phase"] == "Completed", done
        jobs = batch.list_namespaced_job(ns).items
        assert len(jobs) == 1, [j.metadata.name for j in jobs]
        _restricted_proxy(jobs[0])
        assert _refusals(kube_api, ns) == []
        transport = _transport(kube_api, ns, "auto-1")
        assert transport["reason"] == "NBD" and "Pod Security" in transport["message"], transport

        create_backup(kube_api, ns, "hot-1", {"moref": vm.moref}, policyRef={"name": "hot"})
        hot = wait_done(kube_api, ns, "hot-1", timeout=60)["status"]
        assert hot["phase"] == "Failed", hot
        assert hot["error"]["reason"] == "PodSecurity", hot
        assert "Pod Security" in hot["error"]["message"], hot
        ready = objects.condition(objects.get(kube_api, ns, BACKUP.plural, "hot-1"), "Ready")
        assert ready["status"] == "False" and "Pod Security" in ready["message"], ready
        assert [j.metadata.name for j in batch.list_namespaced_job(ns).items] == [
            jobs[0].metadata.name
        ], "no Job for the refused backup"
        assert not hot.get("snapshot"), "refused before any snapshot"
        assert our_snapshots(vc, vm.moref) == []
        assert _refusals(kube_api, ns) == []


@pytest.mark.parametrize("namespace", [HOTADD_ALLOWED], indirect=True, ids=["privileged-proxies"])
def test_where_privileged_proxies_are_allowed_only_a_node_that_can_hot_add_gets_one(
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
    """The lab's node is no VM (its system UUID is empty): no privileged proxy at all."""
    ns = namespace
    nobody = {"names": ["no-such-vm-pss"]}
    objects.create_policy(kube_api, ns, "auto", transport="auto", selector=nobody)
    objects.create_policy(kube_api, ns, "hot", transport="hotadd", selector=nobody)
    batch = client.BatchV1Api(kube_api)
    with data_vm(vc, vsim, image_factory, tmp_path) as vm:
        create_backup(kube_api, ns, "auto-1", {"moref": vm.moref}, policyRef={"name": "auto"})
        done = wait_done(kube_api, ns, "auto-1", timeout=180)["status"]
        assert done["phase"] == "Completed", done
        (job,) = batch.list_namespaced_job(ns).items
        _restricted_proxy(job)
        transport = _transport(kube_api, ns, "auto-1")
        assert transport["reason"] == "NBD", transport
        assert "no node can hot-add" in transport["message"], transport
        assert "not a virtual machine" in transport["message"], transport

        create_backup(kube_api, ns, "hot-1", {"moref": vm.moref}, policyRef={"name": "hot"})
        hot = wait_done(kube_api, ns, "hot-1", timeout=90)["status"]
        assert hot["phase"] == "Failed", hot
        assert hot["error"]["reason"] == "NoHotAddNode", hot
        assert [j.metadata.name for j in batch.list_namespaced_job(ns).items] == [
            job.metadata.name
        ], "no Job for the refused backup"
        assert hot["snapshot"]["removed"] is True, hot  # decided at the Job: snapshot undone
        no_snapshot_left(vc, vm.moref)
