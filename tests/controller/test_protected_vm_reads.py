"""How the policies' passes read a namespace's ProtectedVMs (``controller/kube/held.py``).

At 5,000 VMs with 30 points each a namespace's ProtectedVMs are ≈ 29 MB of JSON; every
policy's scheduler pass read all of them every 30 s and built a dict per point
(docs/scale.md). Unit tests: the compact view of an object gives the same stand-ins as
the object itself, and a pass takes only its own policy's points. Lab test: the
namespace's policies share one LIST through the operator's reader, and a pass that
wrote a ProtectedVM makes the next one read again — counted as LIST requests to the
real apiserver.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

import pytest
from tests.controller import objects

from vmguard.api import format_time
from vmguard.api.kinds import PROTECTEDVM
from vmguard.controller.kube import points
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.timing import Timing
from vmguard.controller.policy.runs import STATUS_REFRESH
from vmguard.store.clock import ManualClock

UUID = "4201aaaa-bbbb-cccc-dddd-eeeeffff0001"


def protected_vm(*pts: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": "lab-x"},
        "status": {"vm": {"instanceUuid": UUID}, "vcenter": "lab", "points": list(pts)},
    }


def pt(archive: str, day: int, policy: str = "gold", **more: Any) -> dict[str, Any]:
    time = f"2026-01-{day:02d}T00:00:00Z"
    return {"archiveId": archive, "repository": "repo", "time": time, "policy": policy, **more}


@pytest.mark.unit
def test_the_compact_view_of_a_protected_vm_gives_the_same_stand_ins() -> None:
    obj = protected_vm(
        pt("a3", 3, backup="run-3"), pt("a2", 2), pt("a1", 1, policy="silver"), pt("a0", 0)
    )
    held = points.held_of(obj)
    assert held is not None and held.key == points.ProtectedVMKey("ns", "lab", UUID)
    assert [p.archive_id for p in held.points] == ["a3", "a2", "a1", "a0"]
    assert held.points[0].backup == "run-3" and held.points[2].policy == "silver"
    named = [{"metadata": {"name": "x"}, "status": {"archiveId": "a0"}}]
    assert points.stand_ins([held], named) == points.stand_ins([obj], named)
    # The run named by a3 exists; a0's archive is named by a backup: a2 and a1 stand in.
    names = [b["metadata"]["name"] for b in points.stand_ins([held], named)]
    assert names == ["point-a2", "point-a1"]
    assert points.held_of({"metadata": {"namespace": "ns"}, "status": {}}) is None


@pytest.mark.unit
def test_a_pass_takes_stand_ins_of_its_own_policys_points_or_only_the_newest() -> None:
    held = [points.held_of(protected_vm(pt("a3", 3), pt("a2", 2, policy="silver"), pt("a1", 1)))]
    gold = points.stand_ins(held, [], policy="gold")
    assert [b["status"]["archiveId"] for b in gold] == ["a3", "a1"]
    assert {b["spec"]["policyRef"]["name"] for b in gold} == {"gold"}
    newest = points.stand_ins(held, [], newest=True)
    assert [b["status"]["archiveId"] for b in newest] == ["a3", "a2"]  # one per policy
    assert [b["status"]["archiveId"] for b in points.stand_ins(held, [], "silver")] == ["a2"]


@pytest.mark.unit
def test_a_policys_status_written_does_not_make_the_other_passes_work() -> None:
    """``policy_seen`` (controller/policy/handlers.py) counts what the policies' passes
    read of each other: a policy appearing, going, or its spec changing (its
    ``generation``), not a status written. At a start every pass's own status write made
    every other policy's next pass work again (docs/scale.md). The events are the
    bodies kopf hands the handler."""
    from types import SimpleNamespace

    from vmguard.controller.kube.handlers import Changes
    from vmguard.controller.policy.handlers import policy_seen

    memo = SimpleNamespace(changes=Changes())

    def seen(generation: int, status: dict[str, Any], type_: str | None) -> int:
        meta = {"namespace": "ns", "name": "gold", "generation": generation}
        body = {"metadata": meta, "spec": {"default": False}, "status": status}
        asyncio.run(policy_seen(body=body, memo=memo, type=type_))  # type: ignore[arg-type]
        return memo.changes.of(("policies", "ns"))[0]

    assert seen(1, {}, None) == 1  # listed at the start: new to the reader
    assert seen(1, {"matchedVMs": 3}, "MODIFIED") == 1  # the sweep's count
    assert seen(1, {"matchedVMs": 3, "lastRun": {}}, "MODIFIED") == 1  # a pass's status
    assert seen(2, {"matchedVMs": 3}, "MODIFIED") == 2  # its spec changed
    assert seen(2, {}, "DELETED") == 3
    assert seen(1, {}, "ADDED") == 4  # made again


class CountingAPI(KubeAPI):
    """The real API; it counts the LIST requests of ProtectedVMs it sends."""

    def __init__(self, api_client: Any) -> None:
        super().__init__(api_client)
        self.protected_vm_lists = 0
        real = self.custom.list_namespaced_custom_object

        def counted(*args: Any, **kwargs: Any) -> Any:
            if args[3] == PROTECTEDVM.plural:
                self.protected_vm_lists += 1
            return real(*args, **kwargs)

        self.custom.list_namespaced_custom_object = counted  # type: ignore[method-assign]


@pytest.mark.lab
def test_a_namespaces_policies_share_one_read_of_its_protected_vms(
    kube_api: Any, namespace: str, lab_vcenter: str, lab_repository: str
) -> None:
    """Three policies' scheduler passes (controller/policy/runs.py) in this process,
    against the real apiserver, with the operator's one reader: a pass that wrote a VM's
    RPO state makes the next pass read again; once nothing changes, one LIST serves them
    all and no runner keeps what it read after its pass; a pass after the reader's age
    reads again; runners without the shared reader
    read on every pass (what every pass did before)."""
    from vmguard.controller.kube.held import SHARED_FOR, ProtectedVMReader
    from vmguard.controller.kube.sweeps import LatestSweeps, SweepView
    from vmguard.controller.policy.runs import PolicyRunner
    from vmguard.vsphere.matching import PolicyRef, assign
    from vmguard.vsphere.records import VMRecord

    names = {"gold": "g-*", "silver": "s-*", "bronze": "b-*"}
    for name, glob in names.items():
        rpo = {"rpo": "2h"} if name == "gold" else {}
        objects.create_policy(
            kube_api, namespace, name, selector={"names": [glob]}, paused=True, **rpo
        )
    policies = [objects.get(kube_api, namespace, "vmprotectionpolicies", n) for n in names]
    vms = [
        VMRecord(moref="vm-1", name="g-1", instance_uuid="4201aaaa-0000-4000-8000-000000000001"),
        VMRecord(moref="vm-2", name="s-1", instance_uuid="4201aaaa-0000-4000-8000-000000000002"),
    ]
    now = dt.datetime.now(dt.UTC)
    api = CountingAPI(kube_api)

    async def setup() -> None:
        for vm, policy in zip(vms, ("gold", "silver"), strict=True):
            key = points.ProtectedVMKey(namespace, lab_vcenter, vm.instance_uuid)
            new = {"archiveId": f"a-{vm.name}", "repository": "repo", "policy": policy}
            new["time"] = format_time(now - dt.timedelta(hours=1))
            await points.add_point(api, key, new, vm={"name": vm.name})  # type: ignore[arg-type]

    asyncio.run(setup())
    sweeps = LatestSweeps()
    refs = [PolicyRef.from_object(p) for p in policies]
    sweeps.publish(namespace, lab_vcenter, SweepView(now, 30.0, assign(vms, refs, lab_vcenter)))
    clock = ManualClock(now)
    reader = ProtectedVMReader(SHARED_FOR, Timing(clock=clock))
    log = logging.getLogger(__name__)
    gold, silver, bronze = (
        PolicyRunner(api, p, sweeps, asyncio.Event(), None, log, protected_vms=reader)
        for p in policies
    )

    async def turns(*runners: PolicyRunner) -> None:
        for runner in runners:
            await runner.turn()

    api.protected_vm_lists = 0
    asyncio.run(turns(gold))
    assert api.protected_vm_lists == 1
    rpo = objects.get(kube_api, namespace, PROTECTEDVM.plural, points.protected_vm_name(
        lab_vcenter, vms[0].instance_uuid))["status"]["rpo"]  # fmt: skip
    assert rpo["state"] == "Within"
    # gold wrote an RPO state: silver reads again, and writes its VM's (every policy has
    # an RPO, its schedule's by default): bronze reads again.
    asyncio.run(turns(silver, bronze))
    assert api.protected_vm_lists == 3
    # Nothing left to write: every pass shares the one read.
    asyncio.run(turns(gold, silver, bronze, gold))
    assert api.protected_vm_lists == 3
    # The runners let go of what their passes read (each used to keep its own
    # generation between passes: ≈ 40 MB each at 5,000 VMs); the reader holds the one.
    assert (gold.held, silver.held, bronze.held) == ([], [], [])
    shared = asyncio.run(reader.read(api, namespace))
    assert api.protected_vm_lists == 3
    assert {h.key.instance_uuid for h in shared} == {vm.instance_uuid for vm in vms}
    clock.advance(SHARED_FOR)
    asyncio.run(turns(silver, bronze))
    assert api.protected_vm_lists == 4
    alone = [PolicyRunner(api, p, sweeps, asyncio.Event(), None, log) for p in policies]
    asyncio.run(turns(*alone))
    assert api.protected_vm_lists == 7


class ListCountingAPI(KubeAPI):
    """The real API; it counts the LISTs it sends, by plural."""

    def __init__(self, api_client: Any) -> None:
        super().__init__(api_client)
        self.lists: dict[str, int] = {}
        real = self.custom.list_namespaced_custom_object

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.lists[args[3]] = self.lists.get(args[3], 0) + 1
            return real(*args, **kwargs)

        self.custom.list_namespaced_custom_object = counted  # type: ignore[method-assign]


@pytest.mark.lab
def test_a_pass_whose_inputs_did_not_change_skips_its_work(
    kube_api: Any, namespace: str, lab_vcenter: str, lab_repository: str
) -> None:
    """A policy's scheduler pass (controller/policy/runs.py) against the real apiserver,
    its inputs counted as the operator counts them (its runs as kopf's watch would:
    ``Changes``, bumped here by hand; the ProtectedVMs' writes by ``points.writes``): a
    pass works when its runs, the ProtectedVMs or the policies changed, when a
    VM falls out of its RPO, or ``REBUILD_EVERY`` after the last pass that worked; else
    it skips, and reads neither the policy's runs nor the ProtectedVMs (at 5,000 VMs
    every pass built ≈ 21,000 stand-ins every 30 s, docs/scale.md); and once the shared
    read is stale, a pass that skips drops it from the reader."""
    from vmguard.controller.kube.handlers import Changes
    from vmguard.controller.kube.held import SHARED_FOR, ProtectedVMReader
    from vmguard.controller.kube.sweeps import LatestSweeps, SweepView
    from vmguard.controller.policy.runs import REBUILD_EVERY, PolicyRunner
    from vmguard.vsphere.matching import PolicyRef, assign
    from vmguard.vsphere.records import VMRecord

    objects.create_policy(
        kube_api, namespace, "gold", selector={"names": ["g-*"]}, paused=True, rpo="2h"
    )
    policy = objects.get(kube_api, namespace, "vmprotectionpolicies", "gold")
    vm = VMRecord(moref="vm-1", name="g-1", instance_uuid="4201aaaa-0000-4000-8000-00000000000a")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    api = ListCountingAPI(kube_api)
    key = points.ProtectedVMKey(namespace, lab_vcenter, vm.instance_uuid)
    new = {"archiveId": "a-g-1", "repository": "repo", "policy": "gold"}
    new["time"] = format_time(now - dt.timedelta(hours=1))
    asyncio.run(points.add_point(api, key, new, vm={"name": vm.name}))  # type: ignore[arg-type]
    sweeps = LatestSweeps()
    refs = [PolicyRef.from_object(policy)]
    sweeps.publish(namespace, lab_vcenter, SweepView(now, 30.0, assign([vm], refs, lab_vcenter)))
    clock = ManualClock(now)
    timing = Timing(clock=clock)
    changes = Changes()
    reader = ProtectedVMReader(SHARED_FOR, timing)
    runner = PolicyRunner(
        api, policy, sweeps, asyncio.Event(), None, logging.getLogger(__name__),
        timing=timing, protected_vms=reader,
        inputs=lambda: (*changes.of(("runs", namespace, "gold")), points.writes(namespace)),
    )  # fmt: skip

    def turn() -> tuple[int, int, int, int]:
        before = dict(api.lists)
        asyncio.run(runner.turn())
        read = {k: v - before.get(k, 0) for k, v in api.lists.items()}
        return (
            runner.passes_worked,
            runner.passes_skipped,
            read.get("vmguardbackups", 0),
            read.get(PROTECTEDVM.plural, 0),
        )

    assert turn() == (1, 0, 1, 1)  # the first pass works (and writes the RPO state)
    assert turn()[:2] == (2, 0)  # a ProtectedVM was written since (counted by points.py)
    assert turn() == (2, 1, 0, 0)  # nothing changed: no LIST, no stand-in
    assert reader.holds(namespace) == 1  # the shared read, fresh, is kept for others
    clock.advance(STATUS_REFRESH)
    assert turn() == (2, 2, 0, 0)
    # Stale, it serves no one: a pass that skips lets go of it (≈ 43 MB at 5,000 VMs,
    # held until the next pass that worked before).
    assert reader.holds(namespace) == 0
    changes.bump("runs", namespace, "gold")  # one of its backups changed
    assert turn()[:3] == (3, 2, 1)
    assert turn()[:2] == (3, 3)
    # Time alone: the VM's point becomes older than its RPO (1 h from now).
    clock.advance(3600 - STATUS_REFRESH + 1)
    assert turn()[:2] == (4, 3)
    name = points.protected_vm_name(lab_vcenter, vm.instance_uuid)
    rpo = objects.get(kube_api, namespace, PROTECTEDVM.plural, name)["status"]["rpo"]
    assert rpo["state"] == "Outside"
    assert turn()[:2] == (5, 3)  # that pass wrote the RPO state
    assert turn()[:2] == (5, 4)
    clock.advance(REBUILD_EVERY)
    assert turn()[:2] == (6, 4)  # at most REBUILD_EVERY without working


class StatusCountingAPI(ListCountingAPI):
    """The real API; it also counts the policies' status PATCHes it sends."""

    def __init__(self, api_client: Any) -> None:
        super().__init__(api_client)
        self.policy_patches = 0

    async def patch_status(self, plural: str, namespace: str, name: str, status: Any) -> None:
        if plural == "vmprotectionpolicies":
            self.policy_patches += 1
        await super().patch_status(plural, namespace, name, status)


@pytest.mark.lab
def test_a_first_pass_waits_for_the_first_sweep_attempt_and_judges_at_once(
    kube_api: Any, namespace: str, lab_vcenter: str, lab_repository: str
) -> None:
    """A policy's first pass after a start (controller/policy/runs.py, ``awaits_sweep``
    as the operator's runners have it), against the real apiserver: before its vCenter's
    first sweep it writes the judgement's part of the status at once (a new policy reads
    Ready, not nothing) and reads neither its runs nor the ProtectedVMs; the sweep, or a
    failed first sweep, or ``FIRST_SWEEP_WAIT`` ends the wait, and a policy whose VCenter
    does not exist does not wait (no sweep of it comes). At 5,000 VMs the seven first
    passes before the sweep built ≈ 21,000 stand-ins each, all made again on the sweep
    (docs/scale.md)."""
    from vmguard.controller.kube.held import SHARED_FOR, ProtectedVMReader
    from vmguard.controller.kube.sweeps import LatestSweeps, SweepView
    from vmguard.controller.policy.runs import FIRST_SWEEP_WAIT, PolicyRunner
    from vmguard.vsphere.matching import PolicyRef, assign
    from vmguard.vsphere.records import VMRecord

    objects.create_policy(kube_api, namespace, "gold", selector={"names": ["g-*"]}, rpo="2h")
    objects.create_policy(kube_api, namespace, "lost", vcenter="nope", selector={"names": ["l-*"]})
    gold = objects.get(kube_api, namespace, "vmprotectionpolicies", "gold")
    lost = objects.get(kube_api, namespace, "vmprotectionpolicies", "lost")
    vm = VMRecord(moref="vm-1", name="g-1", instance_uuid="4201aaaa-0000-4000-8000-00000000000b")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    api = StatusCountingAPI(kube_api)
    key = points.ProtectedVMKey(namespace, lab_vcenter, vm.instance_uuid)
    new = {"archiveId": "a-g-1", "repository": "repo", "policy": "gold"}
    new["time"] = format_time(now - dt.timedelta(hours=1))
    asyncio.run(points.add_point(api, key, new, vm={"name": vm.name}))  # type: ignore[arg-type]
    clock = ManualClock(now)
    timing = Timing(clock=clock)
    log = logging.getLogger(__name__)

    def runner(body: dict[str, Any], sweeps: LatestSweeps) -> PolicyRunner:
        return PolicyRunner(
            api, body, sweeps, asyncio.Event(), None, log, timing=timing,
            protected_vms=ProtectedVMReader(SHARED_FOR, timing), awaits_sweep=True,
        )  # fmt: skip

    def turn(r: PolicyRunner) -> tuple[int, int, int, int, int]:
        """(passes deferred, worked; backups, ProtectedVMs LISTed; status PATCHes)."""
        lists, patches = dict(api.lists), api.policy_patches
        delay = asyncio.run(r.turn())
        assert delay <= STATUS_REFRESH
        read = {k: v - lists.get(k, 0) for k, v in api.lists.items()}
        return (
            r.passes_deferred,
            r.passes_worked,
            read.get("vmguardbackups", 0),
            read.get(PROTECTEDVM.plural, 0),
            api.policy_patches - patches,
        )

    sweeps = LatestSweeps()
    first = runner(gold, sweeps)
    # No sweep yet: judged and written at once (it had no status), nothing else read.
    assert turn(first) == (1, 0, 0, 0, 1)
    judged = objects.get(kube_api, namespace, "vmprotectionpolicies", "gold")
    ready = objects.condition(judged, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Scheduled")
    assert judged["status"]["observedGeneration"] == judged["metadata"]["generation"]
    assert "vmsOutsideRPO" not in judged["status"] and "retention" not in judged["status"]
    # Still no sweep, and the status stands: nothing written again.
    first.body = judged
    clock.advance(STATUS_REFRESH)
    assert turn(first) == (2, 0, 0, 0, 0)
    # The sweep: the pass works, once.
    sweeps.publish(namespace, lab_vcenter, SweepView(clock.now(), 30.0, assign(
        [vm], [PolicyRef.from_object(gold)], lab_vcenter)))  # fmt: skip
    assert turn(first)[:4] == (2, 1, 1, 1)
    swept = objects.get(kube_api, namespace, "vmprotectionpolicies", "gold")["status"]
    assert swept["vmsOutsideRPO"] == 0 and swept["retention"]["blocked"] == 0

    # A first sweep that failed ends the wait: the pass works on the runs and points.
    failing = LatestSweeps()
    second = runner(gold, failing)
    assert turn(second)[:2] == (1, 0)
    failing.failed(namespace, lab_vcenter)
    assert turn(second)[:4] == (1, 1, 1, 1)
    # A vCenter that neither answers nor fails: the wait ends after FIRST_SWEEP_WAIT.
    third = runner(gold, LatestSweeps())
    assert turn(third)[:2] == (1, 0)
    clock.advance(FIRST_SWEEP_WAIT - STATUS_REFRESH)
    assert turn(third)[:2] == (2, 0)
    clock.advance(STATUS_REFRESH)
    assert turn(third)[:4] == (2, 1, 1, 1)
    # No such VCenter: nothing to wait for.
    assert turn(runner(lost, LatestSweeps()))[:2] == (0, 1)
