"""The lab's Kubernetes: real apiserver, controllers, scheduler and the lab node agent.

These prove what every later test relies on: custom resources round-trip through the
real kube-apiserver, Jobs get Pods that the node agent runs, pods read mounted Secrets
and authenticate with their own service-account tokens, and RBAC really refuses.
"""

from __future__ import annotations

import os
import secrets
import textwrap
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client

from vmguard_lab.procs import eventually

pytestmark = pytest.mark.lab

T = TypeVar("T")


@pytest.fixture
def namespace(kube_api: Any) -> str:
    core = client.CoreV1Api(kube_api)
    name = f"t-{secrets.token_hex(4)}"
    core.create_namespace({"metadata": {"name": name}})
    # The service-account controller creates "default" asynchronously.
    eventually(lambda: _has_sa(core, name, "default"), what="default service account")
    return name


def _has_sa(core: client.CoreV1Api, ns: str, name: str) -> bool:
    try:
        core.read_namespaced_service_account(name, ns)
        return True
    except client.ApiException:
        return False


def test_crd_and_custom_object_round_trip(kube_api: Any, namespace: str) -> None:
    ext = client.ApiextensionsV1Api(kube_api)
    group = f"g{secrets.token_hex(3)}.lab.vmguard.io"
    ext.create_custom_resource_definition(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"widgets.{group}"},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "properties": {
                                    "spec": {
                                        "type": "object",
                                        "properties": {"size": {"type": "integer", "minimum": 1}},
                                    }
                                },
                            }
                        },
                    }
                ],
            },
        }
    )
    custom = client.CustomObjectsApi(kube_api)

    def established() -> bool:
        crd = ext.read_custom_resource_definition(f"widgets.{group}")
        return any(
            c.type == "Established" and c.status == "True" for c in (crd.status.conditions or [])
        )

    eventually(established, what="CRD established")
    body = {
        "apiVersion": f"{group}/v1",
        "kind": "Widget",
        "metadata": {"name": "w1"},
        "spec": {"size": 3},
    }
    custom.create_namespaced_custom_object(group, "v1", namespace, "widgets", body)
    got = custom.get_namespaced_custom_object(group, "v1", namespace, "widgets", "w1")
    assert got["spec"] == {"size": 3}
    # The schema is enforced by the real apiserver.
    bad = {**body, "metadata": {"name": "w2"}, "spec": {"size": 0}}
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object(group, "v1", namespace, "widgets", bad)
    assert err.value.status == 422


# The pod's program: read the mounted Secret, then use the pod's own service-account
# token (in-cluster config) to read a ConfigMap and write the combination back.
PROBE = textwrap.dedent(
    """
    import sys
    from kubernetes import client, config
    config.load_incluster_config()
    core = client.CoreV1Api()
    secret = open("/etc/probe-secret/value").read()
    ns = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
    try:
        cm = core.read_namespaced_config_map("probe-input", ns)
        core.create_namespaced_config_map(ns, {"metadata": {"name": "probe-result"},
            "data": {"value": secret + "+" + cm.data["value"]}})
    except client.ApiException as exc:
        print("api error", exc.status)
        sys.exit(43 if exc.status == 403 else 1)
    """
)


def _probe_job(core: client.CoreV1Api, batch: client.BatchV1Api, ns: str, sa: str) -> str:
    name = f"probe-{sa}"
    batch.create_namespaced_job(
        ns,
        {
            "metadata": {"name": name},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "serviceAccountName": sa,
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "probe",
                                "image": "vmguard/lab-probe",
                                "command": ["python", "-c", PROBE],
                                "volumeMounts": [
                                    {
                                        "name": "s",
                                        "mountPath": "/etc/probe-secret",
                                        "readOnly": True,
                                    }
                                ],
                            }
                        ],
                        "volumes": [{"name": "s", "secret": {"secretName": "probe-secret"}}],
                    }
                },
            },
        },
    )
    return name


def _job_pod(core: client.CoreV1Api, ns: str, job: str) -> client.V1Pod | None:
    pods = core.list_namespaced_pod(ns, label_selector=f"job-name={job}").items
    done = [p for p in pods if p.status.phase in ("Succeeded", "Failed")]
    return done[0] if done else None


def test_job_pod_reads_secret_and_uses_its_own_token(kube_api: Any, namespace: str) -> None:
    core, batch, rbac = (
        client.CoreV1Api(kube_api),
        client.BatchV1Api(kube_api),
        client.RbacAuthorizationV1Api(kube_api),
    )
    secret_value = secrets.token_hex(8)
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "probe-secret"}, "stringData": {"value": secret_value}}
    )
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "probe-input"}, "data": {"value": "from-api"}}
    )
    for sa in ("allowed", "denied"):
        core.create_namespaced_service_account(namespace, {"metadata": {"name": sa}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "probe"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "probe"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "probe"},
            "subjects": [{"kind": "ServiceAccount", "name": "allowed", "namespace": namespace}],
        },
    )

    allowed = _probe_job(core, batch, namespace, "allowed")
    pod = eventually(lambda: _job_pod(core, namespace, allowed), what="allowed probe pod")
    assert pod.status.phase == "Succeeded"
    assert pod.spec.node_name == "vmguard-lab-node"
    result = core.read_namespaced_config_map("probe-result", namespace)
    assert result.data["value"] == f"{secret_value}+from-api"
    job = eventually(
        lambda: (j := batch.read_namespaced_job(allowed, namespace)).status.succeeded and j,
        what="job complete",
    )
    assert job.status.succeeded == 1

    core.delete_namespaced_config_map("probe-result", namespace)
    denied = _probe_job(core, batch, namespace, "denied")
    pod = eventually(lambda: _job_pod(core, namespace, denied), what="denied probe pod")
    assert pod.status.phase == "Failed"
    state = pod.status.container_statuses[0].state.terminated
    assert state.exit_code == 43, "the pod's own token must be refused with 403"
    with pytest.raises(client.ApiException) as err:
        core.read_namespaced_config_map("probe-result", namespace)
    assert err.value.status == 404


def test_deleting_a_pod_kills_its_process(kube_api: Any, namespace: str, tmp_path: Path) -> None:
    core = client.CoreV1Api(kube_api)
    pidfile = tmp_path / "pid"
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "sleeper"},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 2,
                "containers": [
                    {
                        "name": "s",
                        "image": "lab",
                        "command": ["sh", "-c", f"echo $$ > {pidfile}; exec sleep 600"],
                    }
                ],
            },
        },
    )
    eventually(lambda: pidfile.exists() and pidfile.read_text().strip(), what="pod started")
    pid = int(pidfile.read_text())
    eventually(
        lambda: core.read_namespaced_pod("sleeper", namespace).status.phase == "Running",
        what="pod Running",
    )
    core.delete_namespaced_pod("sleeper", namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_pod("sleeper", namespace)
            return False
        except client.ApiException as exc:
            return exc.status == 404

    eventually(gone, what="pod deleted")
    assert not os.path.exists(f"/proc/{pid}"), "the pod's process must be killed"


def test_pod_logs_through_the_apiserver_and_only_for_it(
    kube_api: Any, lab: Any, lab_state: dict[str, Any], namespace: str
) -> None:
    """``pods/log`` works as on a real cluster (the node agent serves the kubelet's
    /containerLogs), with tailLines; the node's log port answers nobody but the
    apiserver: the admin's certificate, signed by the same CA, is refused."""
    import ssl
    import urllib.error
    import urllib.request

    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "talker"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "t", "image": "lab", "command": ["sh", "-c", "seq 1 5"]}],
            },
        },
    )
    eventually(
        lambda: core.read_namespaced_pod("talker", namespace).status.phase == "Succeeded",
        what="pod Succeeded",
    )
    assert core.read_namespaced_pod_log("talker", namespace) == "1\n2\n3\n4\n5\n"
    assert core.read_namespaced_pod_log("talker", namespace, tail_lines=2) == "4\n5\n"

    node = core.read_node(lab_state["kubernetes"]["node"])
    port = node.status.daemon_endpoints.kubelet_endpoint.port
    context = ssl.create_default_context(cafile=lab_state["kubernetes"]["ca"])
    pki = lab.paths.pki
    context.load_cert_chain(pki / "admin.crt", pki / "admin.key")
    url = f"https://127.0.0.1:{port}/containerLogs/{namespace}/talker/t"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, context=context, timeout=10)
    assert refused.value.code == 403
