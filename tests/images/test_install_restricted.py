"""The built images, installed by the chart, run as real containers under the
``restricted`` Pod Security level: a sweep, a backup over NBD, a restore to a new VM.

The lab's node agent runs every pod of the namespace in container mode (podman + runc,
the pods carry ``lab.vmguard.io/runtime: container``): the operator from
``vmguard-operator`` by digest, each proxy Job from ``vmguard-proxy:lab`` by digest (the
product's proxy image plus the lab's disk locator). Admission (PodSecurity) and the
runtime see the securityContext the chart and the Job builders set, so a privilege the
pods need but the profile refuses, or a file a non-root container cannot read, fails
here. The policy asks for ``transport: auto``: in a namespace whose Pod Security level
refuses privileged pods the operator gives the proxy NBD and the restricted profile
(docs/transports.md, "Pod Security"), so it runs where it would otherwise be refused;
the chart's RBAC lets the operator read the namespace's labels to know.

What each container ran with, as podman reports it, is printed (``-s``) and checked.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.charts.conftest import CHART, run_helm
from tests.controller import objects
from tests.controller.backup_helpers import create_backup, data_vm, disk_hashes, wait_done
from tests.controller.restore_helpers import MASTER_KEY, create_restore, destroy_vm
from tests.vsphere.helpers import sha256_file
from vmguard_lab.containers import ANNOTATION, CONTAINER, ContainerRuntime
from vmguard_lab.procs import eventually, free_port

pytestmark = pytest.mark.lab

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
# What podman reports of a container run as the restricted profile asks.
RESTRICTED_SECURITY = {
    "User": "65532:65532",
    "Privileged": False,
    "ReadonlyRootfs": True,
    "NetworkMode": "host",
}


def _restricted_namespace(kube_api: Any) -> str:
    name = f"restricted-{secrets.token_hex(3)}"
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    client.CoreV1Api(kube_api).create_namespace({"metadata": {"name": name, "labels": labels}})
    return name


def _ran_with(lab: Any, ns: str) -> dict[str, dict[str, Any]]:
    """podman's report of every container the node agent ran in ``ns``, by pod name: the
    saved report of those that finished, a fresh one of those still running."""
    out: dict[str, dict[str, Any]] = {}
    for pod_dir in sorted((lab.paths.lab / "node" / "pods").glob(f"{ns}_*")):
        for report in pod_dir.glob("*.inspect.json"):
            out[pod_dir.name.split("_")[1]] = json.loads(report.read_text())
    return out


def _security(report: dict[str, Any]) -> dict[str, Any]:
    return {k: report.get(k) for k in RESTRICTED_SECURITY}


def test_restricted_install_backs_up_and_restores_through_containers(
    built_images: dict[str, dict[str, Any]],
    helm: Path,
    lab: Any,
    lab_state: dict[str, Any],
    kube_api: Any,
    vmguard_crds: None,
    vsim: Any,
    s3_bucket: dict[str, Any],
    image_factory: Any,
    tmp_path: Path,
) -> None:
    from vmguard.vsphere.session import Endpoint, VSphereSession

    ns = _restricted_namespace(kube_api)
    core = client.CoreV1Api(kube_api)
    on_containers = {ANNOTATION: CONTAINER}
    values: dict[str, Any] = {
        "image": {
            "repository": "localhost/vmguard-operator",
            "digest": built_images["operator"]["digest"],
        },
        "podAnnotations": on_containers,
        "proxy": {
            "image": {
                "repository": "localhost/vmguard-proxy",
                "digest": built_images["proxy-lab"]["digest"],
            },
            "locator": f"lab:{lab_state['vsphere']['control_url']}",
            "podAnnotations": on_containers,
        },
        # The CRDs are the vmguard_crds fixture's (kubectl apply): not this release's.
        "crds": {"enabled": False},
        # The pods share the host's network: free ports.
        "metrics": {"port": free_port()},
        "probes": {"port": free_port()},
    }
    kubeconfig = lab.paths.kubeconfig
    vs = lab_state["vsphere"]
    vc = VSphereSession(Endpoint(vs["sdk_url"], vs["username"], vs["password"], ca_file=vs["ca"]))
    run_helm(helm, "install", "e2e", str(CHART), "--namespace", ns,
             values=values, tmp=tmp_path, kubeconfig=kubeconfig)  # fmt: skip
    restored_moref = ""
    try:
        objects.create_vcenter(kube_api, lab_state, ns, "lab")
        objects.create_repository(kube_api, ns, "repo", s3_bucket, key=MASTER_KEY)
        # Selects no VM of the lab: the one VMGuardBackup below names it; nothing else runs.
        objects.create_policy(
            kube_api, ns, "auto", transport="auto", selector={"names": ["no-such-vm-e2e"]}
        )

        def swept() -> dict[str, Any] | None:
            status = objects.get(kube_api, ns, "vcenters", "lab").get("status") or {}
            return status if status.get("lastSweepTime") else None

        assert eventually(swept, timeout=90, what="the operator's sweep")["reachable"] is True
        operator_pod = core.list_namespaced_pod(ns).items[0]
        assert operator_pod.spec.containers[0].image.endswith(built_images["operator"]["digest"])
        cid = operator_pod.status.container_statuses[0].container_id
        assert cid.startswith("podman://"), cid

        with data_vm(vc, vsim, image_factory, tmp_path) as vm:
            at_backup = disk_hashes(vsim, vm.moref)
            create_backup(kube_api, ns, "b1", {"moref": vm.moref}, policyRef={"name": "auto"})
            backup = wait_done(kube_api, ns, "b1", timeout=180)["status"]
            assert backup["phase"] == "Completed", backup
            name = f"restored-{secrets.token_hex(3)}"
            target = {"newVM": {"name": name, "datastore": "LocalDS_0", "folder": "/DC0/vm"}}
            create_restore(kube_api, ns, "r1", "b1", target)
            restore = objects.wait_phase(
                kube_api, ns, "vmguardrestores", "r1", {"Completed", "Failed"}, timeout=180
            )["status"]
            assert restore["phase"] == "Completed", restore
            restored_moref = restore["result"]["vm"]["moref"]
            restored = {
                str(d["sourceKey"]): sha256_file(vsim.disk(restored_moref, d["key"]).path)
                for d in restore["result"]["disks"]
            }
            assert restored == at_backup

        # Every pod of the namespace ran as a container, and with what.
        ran = _ran_with(lab, ns)
        ran[operator_pod.metadata.name] = ContainerRuntime([]).inspect(
            cid.removeprefix("podman://")
        )
        pods = {p.metadata.name: p for p in core.list_namespaced_pod(ns).items}
        assert set(ran) == set(pods), (sorted(ran), sorted(pods))
        jobs = {p.metadata.labels.get("job-name", "") for p in pods.values()} - {""}
        assert len(jobs) == 2, jobs  # one backup proxy, one restore proxy
        for pod_name, report in sorted(ran.items()):
            print(f"{pod_name}: {report['ImageName']}")
            shown = ("EffectiveCaps", "SecurityOpt", "OCIRuntime")
            print("   ", json.dumps({**_security(report), **{k: report[k] for k in shown}}))
            assert _security(report) == RESTRICTED_SECURITY, pod_name
            assert "no-new-privileges" in report["SecurityOpt"], pod_name
            # drop: [ALL] leaves no capability at all.
            assert not report.get("EffectiveCaps"), pod_name
            assert not report.get("BoundingCaps"), pod_name
            assert report["OCIRuntime"] == "runc", pod_name
        proxies = [r for n, r in ran.items() if pods[n].metadata.labels.get("job-name")]
        assert all(r["ImageName"].endswith(built_images["proxy-lab"]["digest"]) for r in proxies)
    finally:
        if restored_moref:
            destroy_vm(vc, restored_moref)
        vc.close()
        run_helm(helm, "uninstall", "e2e", "--namespace", ns, "--wait", tmp=tmp_path,
                 kubeconfig=kubeconfig)  # fmt: skip
        core.delete_namespace(ns)
