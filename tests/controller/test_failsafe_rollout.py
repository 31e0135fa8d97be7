"""Rollout without a snapshot storm (issue 13, acceptance 3), against the lab: a policy over
200 VMs never backed up gets its fail-safe backups spread by ``spec.failsafe``, never
more in flight than the limit, in the order of the VMs' names; a dry run of the same
policy creates no VMGuardBackup and reports the plan.

The 200 VMs are created in the simulator by the test (no disks: nothing is read from
them) and destroyed afterwards, so the shared lab keeps its size. No VMGuardBackup
controller runs: the test completes each batch itself by writing ``phase: Completed``
(as that controller would), which is what lets the fail-safe take the next one. A watch
samples every VMGuardBackup event, so a moment with too many in flight cannot slip
between two polls.

The operator runs :data:`SPEEDUP` times faster (docs/lab.md, "Lab time"): the 30 s sweep
interval lasts one second.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client, watch
from pyVmomi import vim
from tests.controller import objects
from tests.controller.test_policies import sweeps_later

from vmguard.vsphere.session import wait_for
from vmguard_lab.procs import eventually

SPEEDUP = 30
ESTATE = 200
PER_SWEEP, IN_FLIGHT = 25, 100
pytestmark = [
    pytest.mark.lab,
    pytest.mark.operator_controllers("vcenters,policies"),
    pytest.mark.operator_speedup(SPEEDUP),
]

PP = "vmprotectionpolicies"
VGB = "vmguardbackups"


@contextlib.contextmanager
def estate(si: Any, prefix: str, count: int) -> Iterator[list[str]]:
    """``count`` disk-less VMs named ``prefix-NNN`` in the simulator, destroyed afterwards."""
    content = si.RetrieveContent()
    dc = content.rootFolder.childEntity[0]
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.ResourcePool], True)
    pool = view.view[0]
    view.DestroyView()
    made: list[Any] = []
    try:
        for i in range(count):
            spec = vim.vm.ConfigSpec(
                name=f"{prefix}-{i:03}",
                memoryMB=128,
                numCPUs=1,
                guestId="otherGuest64",
                files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"),
            )
            made.append(wait_for(dc.vmFolder.CreateVM_Task(config=spec, pool=pool)))
        yield [vm.name for vm in made]
    finally:
        for vm in made:
            wait_for(vm.Destroy_Task())


class Sampler:
    """Every event of the policy and of its VMGuardBackups, from two watches: the largest
    number of backups in flight (not ``Completed``/``Failed``) at any moment, every name
    ever seen, and the largest number one sweep created (the policy's
    ``status.failsafe.created``, rewritten whenever it changes)."""

    def __init__(self, kube_api: Any, ns: str, policy: str) -> None:
        self.kube_api, self.ns, self.policy = kube_api, ns, policy
        self.phases: dict[str, str] = {}
        self.most_in_flight = 0
        self.most_per_sweep = 0
        self.events = 0
        self._watches = [watch.Watch(), watch.Watch()]
        self._threads = [
            threading.Thread(target=self._run, args=(w, *a), daemon=True)
            for w, a in zip(
                self._watches,
                [
                    (VGB, {"label_selector": f"vmguard.io/policy={policy}"}, self._backup),
                    (PP, {"field_selector": f"metadata.name={policy}"}, self._policy),
                ],
                strict=True,
            )
        ]
        self._stopping = False
        self.error: Exception | None = None

    def _run(
        self, w: watch.Watch, plural: str, select: dict[str, str], on: Callable[..., None]
    ) -> None:
        api = client.CustomObjectsApi(self.kube_api)
        stream = w.stream(
            api.list_namespaced_custom_object,
            objects.G,
            objects.V,
            self.ns,
            plural,
            timeout_seconds=600,
            **select,
        )
        try:
            for event in stream:
                on(event["type"], event["object"])
        except Exception as exc:  # the watch ends when the test's namespace goes away
            if not self._stopping:
                self.error = exc

    def _backup(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.phases.pop(name, None)
        else:
            self.phases[name] = (obj.get("status") or {}).get("phase") or ""
        self.events += 1
        flying = sum(1 for p in self.phases.values() if p not in ("Completed", "Failed"))
        self.most_in_flight = max(self.most_in_flight, flying)

    def _policy(self, kind: str, obj: dict[str, Any]) -> None:
        created = ((obj.get("status") or {}).get("failsafe") or {}).get("created") or 0
        self.most_per_sweep = max(self.most_per_sweep, created)

    def __enter__(self) -> Sampler:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stopping = True
        for w in self._watches:
            w.stop()


def failsafes(kube_api: Any, ns: str, policy: str) -> list[dict[str, Any]]:
    return objects.items(kube_api, ns, VGB, f"vmguard.io/policy={policy}")


def test_rollout_over_200_vms_is_spread_and_a_dry_run_creates_nothing(
    kube_api: Any,
    vsphere_si: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    start_operator: Any,
) -> None:
    prefix = f"rollout-{secrets.token_hex(3)}"
    with estate(vsphere_si, prefix, ESTATE) as names, Sampler(kube_api, namespace, "roll") as s:
        start_operator()
        objects.create_policy(
            kube_api,
            namespace,
            "roll",
            selector={"names": [f"{prefix}-*"]},
            failsafe={"maxPerSweep": PER_SWEEP, "maxInFlight": IN_FLIGHT},
            dryRun=True,
        )

        # Dry run: the plan of the first sweep, nothing created.
        def planned() -> dict[str, Any] | None:
            st = objects.get(kube_api, namespace, PP, "roll").get("status", {})
            return st if st.get("failsafe") and st.get("plan") else None

        st = eventually(planned, timeout=90, what="the dry run's plan in the policy's status")
        assert st["failsafe"] == {
            "created": 0,
            "planned": PER_SWEEP,
            "plannedVMs": names[:10],
            "waiting": ESTATE - PER_SWEEP,
        }
        assert st["plan"]["vms"] == ESTATE and st["plan"]["nextRunTime"]
        dry = objects.condition(objects.get(kube_api, namespace, PP, "roll"), "DryRun")
        assert dry["status"] == "True" and dry["reason"] == "DryRun"
        sweeps_later(kube_api, namespace, 2)
        assert failsafes(kube_api, namespace, "roll") == []
        assert s.events == 0, "the dry run created no VMGuardBackup, not even for a moment"

        # For real: batches of at most IN_FLIGHT, by name, as the previous ones complete.
        objects.custom(kube_api).patch_namespaced_custom_object(
            objects.G, objects.V, namespace, PP, "roll", {"spec": {"dryRun": False}}
        )
        done: list[str] = []
        for batch in range(ESTATE // IN_FLIGHT):
            flying = eventually(
                lambda: (
                    (
                        b := [
                            x for x in failsafes(kube_api, namespace, "roll") if not x.get("status")
                        ]
                    )
                    and len(b) == IN_FLIGHT
                    and b
                ),
                timeout=90,
                what=f"batch {batch}: {IN_FLIGHT} fail-safe backups in flight",
            )
            # Two more sweeps add none while the limit is reached.
            sweeps_later(kube_api, namespace, 2)
            assert len(failsafes(kube_api, namespace, "roll")) == len(done) + IN_FLIGHT
            vms = sorted(x["metadata"]["annotations"]["vmguard.io/vm-name"] for x in flying)
            assert vms == names[len(done) : len(done) + IN_FLIGHT], "the next VMs by name"
            waiting = objects.get(kube_api, namespace, PP, "roll")["status"]["failsafe"]
            assert waiting["waiting"] == ESTATE - len(done) - IN_FLIGHT
            for x in flying:
                objects.patch_status(
                    kube_api,
                    namespace,
                    VGB,
                    x["metadata"]["name"],
                    {"phase": "Completed", "completionTime": "2026-01-01T00:00:00Z"},
                )
            done += vms
        assert done == names
        assert s.error is None, f"the watch failed: {s.error}"
        assert 0 < s.most_in_flight <= IN_FLIGHT
        assert 0 < s.most_per_sweep <= PER_SWEEP
        assert len(s.phases) == ESTATE
