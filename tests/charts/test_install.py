"""`helm install` of the chart into the lab, end to end: the lab's node agent runs the
operator's pod as a local process with the pod's own service-account token, so the
chart's RBAC is what the operator really gets. It must be enough to sweep a VCenter,
write its status, post events and serve /metrics — and nothing in its log may be a
permission refusal."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.charts.conftest import CHART, run_helm
from tests.controller import objects
from tests.controller.scrape import scrape, value

from vmguard_lab.procs import eventually, free_port

pytestmark = pytest.mark.lab

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def _pod_logs(lab: Any, namespace: str) -> str:
    pods = lab.paths.lab / "node" / "pods"
    return "\n".join(log.read_text(errors="replace") for log in pods.glob(f"{namespace}_*/*.log"))


@pytest.mark.parametrize("peering", [False, True], ids=["standalone", "peering"])
def test_helm_install_runs_the_operator_under_the_charts_rbac(
    peering: bool,
    helm: Path,
    lab: Any,
    lab_state: dict[str, Any],
    kube_api: Any,
    kubectl_run: Kubectl,
    namespaces: Callable[[], str],
    tmp_path: Path,
) -> None:
    ns = namespaces()
    release = "e2e"
    # Pods of the lab share the host's network: free ports instead of 8080/8081.
    metrics_port = free_port()
    values: dict[str, Any] = {
        "metrics": {"port": metrics_port},
        "probes": {"port": free_port()},
        # The CRDs are the vmguard_crds fixture's (kubectl apply): not this release's.
        "crds": {"enabled": False},
    }
    if peering:
        # One replica (two would share the host's ports here), electing itself through
        # the KopfPeering object the chart made: it may read and patch it, not create it.
        values["peering"] = {"enabled": True}
    kubeconfig = lab.paths.kubeconfig
    run_helm(
        helm,
        "install",
        release,
        str(CHART),
        "--namespace",
        ns,
        values=values,
        tmp=tmp_path,
        kubeconfig=kubeconfig,
    )
    try:
        objects.create_vcenter(kube_api, lab_state, ns, "lab")

        def swept() -> dict[str, Any] | None:
            status = objects.get(kube_api, ns, "vcenters", "lab").get("status") or {}
            return status if status.get("lastSweepTime") else None

        status = eventually(swept, timeout=120, what="the installed operator sweeping")
        assert status["reachable"] is True
        samples = eventually(
            lambda: (
                scrape(metrics_port)
                if value(
                    scrape(metrics_port), "vmguard_vms_discovered", namespace=ns, vcenter="lab"
                )
                else None
            ),
            timeout=60,
            what="the sweep in /metrics",
        )
        assert (
            value(samples, "vmguard_vms_discovered", namespace=ns, vcenter="lab")
            == (status["vms"]["discovered"])
        )

        # The UnprotectedVMs warning is posted as an event (no policy exists here). kopf
        # posts events from a queue of its own, after the sweep's status and metrics: wait.
        def evented() -> bool:
            events = kubectl_run("get", "events", "-n", ns, "-o", "json")
            return "UnprotectedVMs" in {e["reason"] for e in json.loads(events.stdout)["items"]}

        eventually(evented, timeout=30, what="an UnprotectedVMs event")

        # It ran as the chart's service account, and was refused nothing.
        pods = json.loads(kubectl_run("get", "pods", "-n", ns, "-o", "json").stdout)["items"]
        assert [p["spec"]["serviceAccountName"] for p in pods] == [f"{release}-vmguard"]
        if peering:
            peering_obj = json.loads(
                kubectl_run("get", "kopfpeering", "vmguard", "-n", ns, "-o", "json").stdout
            )
            assert list(peering_obj["status"]) == [p["metadata"]["name"] for p in pods]
        logs = _pod_logs(lab, ns)
        assert "metrics on http://0.0.0.0" in logs, "the operator pod's log was found"
        refused = sorted({line[-300:] for line in logs.splitlines() if "orbidden" in line})
        assert refused == [], "permissions were refused:\n" + "\n".join(refused)
    finally:
        run_helm(
            helm,
            "uninstall",
            release,
            "--namespace",
            ns,
            "--wait",
            tmp=tmp_path,
            kubeconfig=kubeconfig,
        )
