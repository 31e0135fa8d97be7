"""The VCenter controller against the lab: real apiserver, the operator as a process, the
vSphere simulator. Sweeps set status, give every VM one policy, and name the unprotected."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client

from vmguard.lab.procs import eventually

pytestmark = pytest.mark.lab
T = TypeVar("T")
G, V = "vmguard.io", "v1alpha1"


@pytest.fixture
def namespace(kube_api: Any, vmguard_crds: None) -> str:
    name = f"vc-{secrets.token_hex(4)}"
    client.CoreV1Api(kube_api).create_namespace({"metadata": {"name": name}})
    return name


@pytest.fixture
def operator_log(lab: Any, namespace: str, tmp_path: Path) -> Iterator[Path]:
    log = tmp_path / "operator.log"
    env = dict(os.environ, KUBECONFIG=str(lab.paths.kubeconfig))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vmguard.cli", "operator", "--namespace", namespace],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _vcenter(lab_state: dict[str, Any], kube_api: Any, ns: str, password: str) -> None:
    vs = lab_state["vsphere"]
    host_port = vs["sdk_url"].split("//", 1)[1].split("/", 1)[0]
    port = int(host_port.rsplit(":", 1)[1])
    client.CoreV1Api(kube_api).create_namespaced_secret(
        ns,
        {
            "metadata": {"name": "vc-creds"},
            "stringData": {"username": vs["username"], "password": password},
        },
    )
    client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        G,
        V,
        ns,
        "vcenters",
        {
            "apiVersion": f"{G}/{V}",
            "kind": "VCenter",
            "metadata": {"name": "lab"},
            "spec": {
                "host": "127.0.0.1",
                "port": port,
                "credentialsSecretRef": {"name": "vc-creds"},
                "tls": {"caBundle": Path(vs["ca"]).read_text()},
                "sweepInterval": "30s",
            },
        },
    )


def _policy(kube_api: Any, ns: str, name: str, **spec: Any) -> None:
    body = {
        "apiVersion": f"{G}/{V}",
        "kind": "VMProtectionPolicy",
        "metadata": {"name": name},
        "spec": {
            "vcenterRef": {"name": "lab"},
            "repositoryRef": {"name": "repo"},
            "schedule": {"cron": "0 1 * * *"},
            "retention": {"keepLast": 3},
            **spec,
        },
    }
    client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        G, V, ns, "vmprotectionpolicies", body
    )


def _get(kube_api: Any, ns: str, plural: str, name: str) -> dict[str, Any]:
    return client.CustomObjectsApi(kube_api).get_namespaced_custom_object(G, V, ns, plural, name)


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return dict(c)
    return {}


def test_sweep_assigns_policies_and_names_unprotected_vms(
    kube_api: Any, lab_state: dict[str, Any], vsim: Any, namespace: str, operator_log: Path
) -> None:
    password = lab_state["vsphere"]["password"]
    _vcenter(lab_state, kube_api, namespace, password)
    _policy(
        kube_api,
        namespace,
        "gold",
        selector={"tags": [{"category": "backup-tier", "name": "gold"}]},
    )
    vms = [v for v in vsim.vms() if not v.template]

    def swept() -> dict[str, Any] | None:
        vc = _get(kube_api, namespace, "vcenters", "lab")
        return vc if vc.get("status", {}).get("lastSweepTime") else None

    vc = eventually(swept, timeout=90, what="first sweep")
    status = vc["status"]
    assert status["reachable"] is True
    assert _condition(vc, "Reachable")["status"] == "True"
    counts = status["vms"]
    assert counts["discovered"] == len(vms)
    gold = _get(kube_api, namespace, "vmprotectionpolicies", "gold")
    matched = gold["status"]["matchedVMs"]
    assert 0 < matched < len(vms), "the lab tags some VMs gold, not all"
    assert counts["protected"] == matched
    assert counts["unprotected"] == len(vms) - matched
    protected = _condition(vc, "Protected")
    assert (protected["status"], protected["reason"]) == ("False", "UnprotectedVMs")
    assert f"{len(vms) - matched} VM(s) have no policy" in protected["message"]

    events = client.CoreV1Api(kube_api).list_namespaced_event(namespace).items
    assert any(e.reason == "UnprotectedVMs" and e.involved_object.name == "lab" for e in events)

    # A default policy catches every other VM: creating it wakes the sweeper at once
    # (the interval is 30 s; the wait below is shorter than two intervals).
    _policy(kube_api, namespace, "fail-safe", default=True)

    def all_protected() -> dict[str, Any] | None:
        vc = _get(kube_api, namespace, "vcenters", "lab")
        return vc if vc["status"]["vms"]["unprotected"] == 0 else None

    vc = eventually(all_protected, timeout=25, what="default policy applied")
    assert vc["status"]["vms"]["protectedByDefault"] == len(vms) - matched
    assert _condition(vc, "Protected")["status"] == "True"
    fail_safe = eventually(
        lambda: (
            _get(kube_api, namespace, "vmprotectionpolicies", "fail-safe")
            .get("status", {})
            .get("matchedVMs")
            is not None
            and _get(kube_api, namespace, "vmprotectionpolicies", "fail-safe")
        ),
        what="fail-safe status",
    )
    assert fail_safe["status"]["matchedVMs"] == len(vms) - matched
    assert password not in operator_log.read_text()


def test_wrong_password_is_a_condition_not_a_crash(
    kube_api: Any, lab_state: dict[str, Any], namespace: str, operator_log: Path
) -> None:
    canary = "canary-" + secrets.token_hex(8)
    _vcenter(lab_state, kube_api, namespace, canary)

    def failed() -> dict[str, Any] | None:
        vc = _get(kube_api, namespace, "vcenters", "lab")
        return vc if _condition(vc, "Reachable").get("status") == "False" else None

    vc = eventually(failed, timeout=90, what="Reachable=False")
    reachable = _condition(vc, "Reachable")
    assert reachable["reason"] == "InvalidConfiguration"
    assert "refused the login" in reachable["message"]
    assert canary not in str(vc)
    assert canary not in operator_log.read_text()
