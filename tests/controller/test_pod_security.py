"""Proxies under Pod Security, in a namespace that enforces the ``restricted`` level (set
up as tests/images/test_install_restricted.py does; here the operator and its pods run as
processes, and it is the apiserver's PodSecurity admission that refuses a pod).

A policy with ``transport: auto`` backs up over NBD through a restricted proxy: no pod of
its Job is refused. A policy that demands ``hotadd`` fails at once, before any snapshot
or Job, with a reason that names Pod Security. (Before, ``auto`` made every proxy
privileged: admission refused its pod and the backup hung on its snapshot.)
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.controller import objects
from tests.controller.backup_helpers import create_backup, data_vm, no_snapshot_left, wait_done
from tests.vsphere.helpers import our_snapshots

pytestmark = pytest.mark.lab

RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


@pytest.fixture
def namespace(kube_api: Any, vmguard_crds: None) -> Iterator[str]:
    """This module's namespace enforces the restricted Pod Security level."""
    name = f"t-restricted-{secrets.token_hex(3)}"
    core = client.CoreV1Api(kube_api)
    core.create_namespace({"metadata": {"name": name, "labels": RESTRICTED}})
    yield name


def _refusals(kube_api: Any, ns: str) -> list[str]:
    events = client.CoreV1Api(kube_api).list_namespaced_event(ns).items
    return [f"{e.involved_object.name}: {e.message}" for e in events if e.reason == "FailedCreate"]


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
    nobody = {"names": ["no-such-vm-pss"]}  # the VMBackups below name their VM
    objects.create_policy(kube_api, ns, "auto", transport="auto", selector=nobody)
    objects.create_policy(kube_api, ns, "hot", transport="hotadd", selector=nobody)
    batch = client.BatchV1Api(kube_api)
    with data_vm(vc, vsim, image_factory, tmp_path) as vm:
        create_backup(kube_api, ns, "auto-1", {"moref": vm.moref}, policyRef={"name": "auto"})
        done = wait_done(kube_api, ns, "auto-1", timeout=180)["status"]
        assert done["phase"] == "Completed", done
        jobs = batch.list_namespaced_job(ns).items
        assert len(jobs) == 1, [j.metadata.name for j in jobs]
        pod = jobs[0].spec.template.spec
        assert pod.security_context.run_as_non_root is True
        assert pod.containers[0].security_context.privileged is False
        assert _refusals(kube_api, ns) == []
        transport = objects.condition(objects.get(kube_api, ns, "vmbackups", "auto-1"), "Transport")
        assert transport["reason"] == "NBD" and "Pod Security" in transport["message"], transport

        create_backup(kube_api, ns, "hot-1", {"moref": vm.moref}, policyRef={"name": "hot"})
        hot = wait_done(kube_api, ns, "hot-1", timeout=60)["status"]
        assert hot["phase"] == "Failed", hot
        assert hot["error"]["reason"] == "PodSecurity", hot
        assert "Pod Security" in hot["error"]["message"], hot
        ready = objects.condition(objects.get(kube_api, ns, "vmbackups", "hot-1"), "Ready")
        assert ready["status"] == "False" and "Pod Security" in ready["message"], ready
        assert [j.metadata.name for j in batch.list_namespaced_job(ns).items] == [
            jobs[0].metadata.name
        ], "no Job for the refused backup"
        assert not hot.get("snapshot"), "refused before any snapshot"
        no_snapshot_left(vc, vm.moref)
        assert our_snapshots(vc, vm.moref) == []
        assert _refusals(kube_api, ns) == []
