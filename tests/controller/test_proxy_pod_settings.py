"""The chart's proxy pod settings, and what a policy adds within the chart's allow-list,
reach the proxy Jobs the operator creates.

End to end from the chart: ``helm template`` with ``proxy.imagePullSecrets``,
``nodeSelector``, ``tolerations``, ``affinity``, ``priorityClassName``, ``resources``
and ``policyMay`` gives the operator's environment; an operator started with exactly
that environment backs up a lab VM under a policy whose ``spec.proxy`` adds a node label
and a toleration, and the Job it created — read back from the lab's apiserver — carries
every setting, merged. The settings are chosen so the lab can run the pod (the node
selectors and affinity match the lab's node, the PriorityClass is made here), so the
backup also completes with them. A policy naming a priority class the chart does not
allow (admitted: this lab has no admission policy installed) fails its backup with
``ProxySettingsNotAllowed`` before any snapshot is taken.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from tests.charts.conftest import CHART, run_helm
from tests.controller import objects
from tests.controller.backup_helpers import create_backup, data_vm, no_snapshot_left, wait_done

from vmguard.api import LABEL_VMBACKUP

pytestmark = pytest.mark.lab


@pytest.fixture
def priority_class(kube_api: Any) -> Iterator[str]:
    name = f"vmguard-proxies-{secrets.token_hex(4)}"
    scheduling = client.SchedulingV1Api(kube_api)
    scheduling.create_priority_class({"metadata": {"name": name}, "value": 1000})
    yield name
    scheduling.delete_priority_class(name)


def _chart_env(lab: Any, values: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    """The operator's VMGUARD_PROXY_* environment as `helm template` renders it."""
    from vmguard_lab import build

    helm = build.ensure_built(lab.paths, only=("helm",))["helm"]
    out = run_helm(helm, "template", "vmguard", str(CHART), values=values, tmp=tmp_path)
    (deployment,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {
        e["name"]: e["value"]
        for e in container["env"]
        if e["name"].startswith("VMGUARD_PROXY_")
        and "value" in e
        # The lab runs the proxy from this checkout: its own image, command and locator.
        and e["name"] not in {"VMGUARD_PROXY_IMAGE", "VMGUARD_PROXY_LOCATOR"}
    }


def test_the_charts_proxy_pod_settings_are_on_the_job_the_operator_creates(
    lab: Any,
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    start_operator: Any,
    priority_class: str,
    tmp_path: Path,
) -> None:
    pod = {
        "imagePullSecrets": [{"name": "proxy-registry"}],
        "nodeSelector": {"vmguard.io/lab-node": "true"},
        "tolerations": [{"key": "backup", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}
                            ]
                        }
                    ]
                }
            }
        },
        "priorityClassName": priority_class,
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "3Gi"}},
    }
    may = {
        "priorityClassNames": ["backup-low"],
        "nodeSelectorKeys": ["kubernetes.io/os"],
        "tolerationKeys": ["dedicated-backup"],
    }
    env = _chart_env(lab, {"proxy": {**pod, "policyMay": may}}, tmp_path)
    assert {"VMGUARD_PROXY_NODE_SELECTOR", "VMGUARD_PROXY_POLICY_MAY"} <= set(env)
    start_operator(extra_env=env)
    own = {"key": "dedicated-backup", "operator": "Exists", "effect": "NoSchedule"}
    with data_vm(vc, vsim, image_factory, tmp_path) as vm:
        # The VM's policies are paused: they make no backups of their own.
        objects.create_policy(
            kube_api,
            namespace,
            "placed",
            selector={"names": [vm.name]},
            paused=True,
            proxy={"nodeSelector": {"kubernetes.io/os": "linux"}, "tolerations": [own]},
        )
        objects.create_policy(
            kube_api,
            namespace,
            "greedy",
            selector={"names": [vm.name]},
            paused=True,
            proxy={"priorityClassName": "system-node-critical"},
        )
        create_backup(
            kube_api, namespace, "greedy", {"moref": vm.moref}, policyRef={"name": "greedy"}
        )
        status = wait_done(kube_api, namespace, "greedy")["status"]
        assert status["phase"] == "Failed", status
        assert status["error"]["reason"] == "ProxySettingsNotAllowed", status["error"]
        assert "system-node-critical" in status["error"]["message"]
        assert not status.get("snapshot"), "refused before any snapshot"

        create_backup(
            kube_api, namespace, "placed", {"moref": vm.moref}, policyRef={"name": "placed"}
        )
        status = wait_done(kube_api, namespace, "placed")["status"]
        assert status["phase"] == "Completed", status
        no_snapshot_left(vc, vm.moref)
    (job,) = (
        client.BatchV1Api(kube_api)
        .list_namespaced_job(namespace, label_selector=f"{LABEL_VMBACKUP}=placed")
        .items
    )
    spec = client.ApiClient().sanitize_for_serialization(job.spec.template.spec)
    assert spec["imagePullSecrets"] == pod["imagePullSecrets"]
    assert spec["nodeSelector"] == {**pod["nodeSelector"], "kubernetes.io/os": "linux"}
    assert spec["tolerations"] == [*pod["tolerations"], own]
    assert spec["affinity"] == pod["affinity"]
    assert spec["priorityClassName"] == priority_class
    (ran,) = (
        client.CoreV1Api(kube_api)
        .list_namespaced_pod(namespace, label_selector=f"job-name={job.metadata.name}")
        .items
    )
    assert ran.spec.priority == 1000, "the apiserver resolved the class for the proxy's pod"
    (container,) = spec["containers"]
    assert container["resources"] == pod["resources"]
