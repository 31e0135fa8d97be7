"""The operator's /metrics against the lab: a swept VCenter's counts, as Prometheus
would scrape them, equal what the sweep wrote into the VCenter's status; a VM the
simulator says needs consolidation is counted, gauged and named in a condition."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest
from tests.controller import objects
from tests.controller.conftest import OperatorProcess
from tests.controller.scrape import scrape, value

from vmguard.api import parse_time
from vmguard.api.kinds import POLICY
from vmguard_lab.procs import eventually

pytestmark = pytest.mark.lab


def test_metrics_show_the_sweeps_counts(
    kube_api: Any,
    vsim: Any,
    namespace: str,
    lab_vcenter: str,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    # Sweeps twelve times faster (docs/lab.md, "Lab time"): every 2.5 s, not 30 s.
    port = start_operator(speedup=12).metrics_port
    objects.create_policy(
        kube_api,
        namespace,
        "gold",
        selector={"tags": [{"category": "backup-tier", "name": "gold"}]},
    )
    vc = {"namespace": namespace, "vcenter": lab_vcenter}

    def swept(after: str = "") -> tuple[dict[str, Any], Any] | None:
        status = objects.get(kube_api, namespace, "vcenters", lab_vcenter).get("status") or {}
        samples = scrape(port)
        if (
            status.get("lastSweepTime", "") <= after
            or value(samples, "vmguard_vms_discovered", **vc) is None
        ):
            return None
        # The sweeper hands its outcome to the metrics only after its status patch
        # returns (vcenter/handlers.py): a scrape right after the status shows the
        # sweep may still hold the previous sweep's numbers. The gauge of the sweep's
        # time, set last, says which sweep the samples are.
        when = parse_time(status["lastSweepTime"])
        last = value(samples, "vmguard_vcenter_last_sweep_timestamp_seconds", **vc)
        if when is None or last != when.timestamp():
            return None
        # The sweep may run again between the two reads: compare one sweep's numbers.
        again = objects.get(kube_api, namespace, "vcenters", lab_vcenter)["status"]
        return (status, samples) if again["lastSweepTime"] == status["lastSweepTime"] else None

    status, samples = eventually(swept, timeout=90, what="a sweep reported in /metrics")
    counts = status["vms"]
    assert counts["discovered"] > 0 and counts["unprotected"] > 0
    assert value(samples, "vmguard_vms_discovered", **vc) == counts["discovered"]
    assert value(samples, "vmguard_vms_unprotected", **vc) == counts["unprotected"]
    assert value(samples, "vmguard_vms_protected", **vc) == counts["protected"]
    assert value(samples, "vmguard_vcenter_reachable", **vc) == 1
    assert value(samples, "vmguard_vcenter_sweeps_total", **vc, result="ok") >= 1
    assert counts["consolidationNeeded"] == 0
    assert value(samples, "vmguard_vms_consolidation_needed", **vc) == 0
    assert condition(status, "Consolidated")["reason"] == "NoneNeeded"
    # The policy's scheduler reports its VMs from the same sweeps: one vm_info each.
    gold = {**vc, "policy": "gold"}

    def policy_reported() -> Any:
        matched = objects.get(kube_api, namespace, POLICY.plural, "gold").get("status")
        samples = scrape(port)
        count = value(samples, "vmguard_policy_vms", **gold)
        if not matched or count is None or count != matched.get("matchedVMs"):
            return None
        return samples

    samples = eventually(policy_reported, timeout=90, what="policy gold's VMs in /metrics")
    infos = [
        labels for (name, labels) in samples if name == "vmguard_vm_info" and
        ("policy", "gold") in labels
    ]  # fmt: skip
    assert len(infos) == value(samples, "vmguard_policy_vms", **gold) > 0

    # An unprotected VM (no backup of this test will consolidate it) now needs it.
    vm = next(i for i in status["vmList"]["items"] if not i.get("p"))
    vsim.set_faults(vm["m"], consolidation_needed=True)
    try:
        # A sweep already under way may have read the VM before the change: wait for one
        # that saw it.
        status, samples = eventually(
            lambda: (
                (seen := swept(status["lastSweepTime"]))
                and seen[0]["vms"]["consolidationNeeded"] > 0
                and seen
            ),
            timeout=120,
            what="a sweep that saw the VM needing consolidation",
        )
        assert status["vms"]["consolidationNeeded"] == 1
        assert value(samples, "vmguard_vms_consolidation_needed", **vc) == 1
        cond = condition(status, "Consolidated")
        assert (cond["status"], cond["reason"]) == ("False", "ConsolidationNeeded")
        assert cond["message"] == f"1 VM(s) need their disks consolidated: {vm['n']}"
    finally:
        vsim.set_faults(vm["m"], consolidation_needed=False)


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


def test_a_taken_metrics_port_is_a_clear_error(
    start_operator: Callable[..., OperatorProcess],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start_operator("--metrics-port", str(port))
        # A run-time failure, not a usage error: exit 1 (docs/cli.md, exit codes).
        assert proc.proc.wait(timeout=60) == 1
    assert f"vmguard: cannot serve metrics on 127.0.0.1:{port}" in proc.text()
    assert "Traceback" not in proc.text()
