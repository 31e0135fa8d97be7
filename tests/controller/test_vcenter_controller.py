"""The VCenter controller against the lab: real apiserver, the operator as a process, the
vSphere simulator. Sweeps set status, give every VM one policy, and name the unprotected."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.controller import objects

from vmguard_lab.procs import eventually

# Policies here select most of the lab: they create VMGuardBackups, which nobody runs.
pytestmark = [pytest.mark.lab, pytest.mark.operator_controllers("vcenters,policies,restores")]


def test_sweep_assigns_policies_and_names_unprotected_vms(
    kube_api: Any, lab_state: dict[str, Any], vsim: Any, namespace: str, operator_log: Path
) -> None:
    password = lab_state["vsphere"]["password"]
    objects.create_vcenter(kube_api, lab_state, namespace, "lab", password=password)
    objects.create_policy(
        kube_api,
        namespace,
        "gold",
        selector={"tags": [{"category": "backup-tier", "name": "gold"}]},
    )
    vms = [v for v in vsim.vms() if not v.template]

    def swept() -> dict[str, Any] | None:
        vc = objects.get(kube_api, namespace, "vcenters", "lab")
        return vc if vc.get("status", {}).get("lastSweepTime") else None

    vc = eventually(swept, timeout=90, what="first sweep")
    status = vc["status"]
    assert status["reachable"] is True
    assert objects.condition(vc, "Reachable")["status"] == "True"
    counts = status["vms"]
    assert counts["discovered"] == len(vms)
    # The sweep patches the VCenter's status and then each policy's: wait for the policy.
    gold = eventually(
        lambda: (
            objects.get(kube_api, namespace, "vmprotectionpolicies", "gold")
            .get("status", {})
            .get("matchedVMs")
            is not None
            and objects.get(kube_api, namespace, "vmprotectionpolicies", "gold")
        ),
        what="gold's status",
    )
    matched = gold["status"]["matchedVMs"]
    assert 0 < matched < len(vms), "the lab tags some VMs gold, not all"
    assert counts["protected"] == matched
    assert counts["unprotected"] == len(vms) - matched
    protected = objects.condition(vc, "Protected")
    assert (protected["status"], protected["reason"]) == ("False", "UnprotectedVMs")
    assert f"{len(vms) - matched} VM(s) have no policy" in protected["message"]

    # kopf posts events from a queue of its own, after the status patch: wait for it.
    def evented() -> bool:
        events = client.CoreV1Api(kube_api).list_namespaced_event(namespace).items
        return any(e.reason == "UnprotectedVMs" and e.involved_object.name == "lab" for e in events)

    eventually(evented, timeout=30, what="an UnprotectedVMs event")

    # A default policy catches every other VM: creating it wakes the sweeper at once
    # (the interval is 30 s; the wait below is shorter than two intervals).
    objects.create_policy(kube_api, namespace, "fail-safe", default=True)

    def all_protected() -> dict[str, Any] | None:
        vc = objects.get(kube_api, namespace, "vcenters", "lab")
        return vc if vc["status"]["vms"]["unprotected"] == 0 else None

    vc = eventually(all_protected, timeout=25, what="default policy applied")
    assert vc["status"]["vms"]["protectedByDefault"] == len(vms) - matched
    assert objects.condition(vc, "Protected")["status"] == "True"
    fail_safe = eventually(
        lambda: (
            objects.get(kube_api, namespace, "vmprotectionpolicies", "fail-safe")
            .get("status", {})
            .get("matchedVMs")
            is not None
            and objects.get(kube_api, namespace, "vmprotectionpolicies", "fail-safe")
        ),
        what="fail-safe status",
    )
    assert fail_safe["status"]["matchedVMs"] == len(vms) - matched
    assert password not in operator_log.read_text()


def test_wrong_password_is_a_condition_not_a_crash(
    kube_api: Any,
    lab: Any,
    kubectl: Path,
    lab_state: dict[str, Any],
    namespace: str,
    operator_log: Path,
    lab_repository: str,
) -> None:
    """A vCenter that refuses the login: a condition that says so, no crash. Its policy is
    judged fit (its vCenter exists; the vCenter's own conditions say it cannot be swept),
    and its first pass, which waits for the vCenter's first sweep attempt
    (controller/policy/runs.py), works once that attempt has failed: its runs and points
    are read, retention applied (``status.retention``), not held back for
    ``FIRST_SWEEP_WAIT``."""
    canary = "canary-" + secrets.token_hex(8)
    objects.create_vcenter(kube_api, lab_state, namespace, "lab", password=canary)
    objects.create_policy(kube_api, namespace, "gold", selector={"names": ["g-*"]})

    def failed() -> dict[str, Any] | None:
        vc = objects.get(kube_api, namespace, "vcenters", "lab")
        return vc if objects.condition(vc, "Reachable").get("status") == "False" else None

    vc = eventually(failed, timeout=90, what="Reachable=False")
    reachable = objects.condition(vc, "Reachable")
    assert reachable["reason"] == "InvalidConfiguration"
    assert "refused the login" in reachable["message"]
    # kstatus reads it as Failed (Stalled=True), not as in progress for ever.
    stalled = objects.condition(vc, "Stalled")
    assert (stalled.get("status"), stalled.get("reason")) == ("True", "InvalidConfiguration")
    wait = ["wait", "--for=condition=Stalled", "--timeout=20s", "-n", namespace, "vcenter/lab"]
    waited = subprocess.run(
        [str(kubectl), *wait],
        env=dict(os.environ, KUBECONFIG=str(lab.paths.kubeconfig)),
        capture_output=True,
        text=True,
    )
    assert waited.returncode == 0, waited.stderr
    assert canary not in str(vc)
    assert canary not in operator_log.read_text()

    def worked() -> dict[str, Any] | None:
        policy = objects.get(kube_api, namespace, "vmprotectionpolicies", "gold")
        return policy if "retention" in policy.get("status", {}) else None

    policy = eventually(worked, timeout=60, what="the policy's pass on its runs and points")
    ready = objects.condition(policy, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Scheduled")
    assert "matchedVMs" not in policy["status"], "no sweep matched its VMs"


@pytest.mark.parametrize("woken", ["reading its credentials", "after reading the policies"])
def test_a_policy_change_during_a_sweep_calls_for_another_only_if_the_sweep_missed_it(
    kube_api: Any, lab_state: dict[str, Any], namespace: str, woken: str
) -> None:
    """The sweeper's loop (controller/vcenter/handlers.py) on the simulator and the real
    apiserver, without an operator: a policy change wakes the sweeper while a sweep is
    under way. Woken before the sweep reads the policies (as kopf's creation handler of
    every policy applied while no operator ran wakes it during its first sweep at a
    start), the sweep matched the change: the loop goes to sleep after it. Woken after,
    the change was missed: one more sweep. Counted as sweeps until the loop sleeps with
    nothing waking it (the clock's sleep never ends; the test stops the loop there)."""
    import asyncio
    import datetime as dt
    import logging

    from vmguard.api.kinds import POLICY, VCENTER
    from vmguard.controller.kube.kubeapi import KubeAPI
    from vmguard.controller.kube.sweeps import LatestSweeps
    from vmguard.controller.kube.timing import Timing
    from vmguard.controller.vcenter.handlers import _sweep_forever
    from vmguard.metrics import Metrics
    from vmguard.store.clock import ManualClock

    objects.create_vcenter(kube_api, lab_state, namespace, "lab")
    objects.create_policy(kube_api, namespace, "fallback", default=True)
    body = objects.get(kube_api, namespace, VCENTER.plural, "lab")

    async def run() -> int:
        wake, stop = asyncio.Event(), asyncio.Event()
        sweeps = 0

        class Woken(KubeAPI):
            """The real API; a policy "changes" at the chosen point of the first sweep."""

            async def secret_keys(self, *args: Any, **kwargs: Any) -> Any:
                if woken == "reading its credentials" and sweeps == 0:
                    wake.set()
                return await super().secret_keys(*args, **kwargs)

            async def list_objects(self, plural: str, *args: Any, **kwargs: Any) -> Any:
                out = await super().list_objects(plural, *args, **kwargs)
                if woken == "after reading the policies" and plural == POLICY.plural and not sweeps:
                    wake.set()
                return out

        class Asleep(ManualClock):
            """The loop's sleep never ends; asleep with nothing waking it, the test stops it."""

            async def sleep(self, seconds: float) -> None:
                if not wake.is_set():
                    stop.set()
                await asyncio.Event().wait()

        class Stopped:
            def __bool__(self) -> bool:
                return stop.is_set()

            async def wait(self) -> None:
                await stop.wait()

        async def after_sweep(*_: Any) -> list[str]:
            nonlocal sweeps
            sweeps += 1
            return []

        timing = Timing(clock=Asleep(dt.datetime.now(dt.UTC)))
        await _sweep_forever(
            Woken(kube_api), body, wake, Metrics(), LatestSweeps(), after_sweep,
            Stopped(), logging.getLogger(__name__), timing,  # type: ignore[arg-type]
        )  # fmt: skip
        return sweeps

    assert asyncio.run(run()) == (1 if woken == "reading its credentials" else 2)
