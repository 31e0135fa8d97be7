"""The policy controller against the lab: real apiserver, the operator as a process, the
vSphere simulator. Scheduled runs create one VMGuardBackup per VM of the policy (and only
once, also across an operator restart), the fail-safe backs up a new VM under the default
policy within one sweep, and paused or broken policies create nothing.

No VMGuardBackup controller runs here (another piece of the operator): the backups stay
without a phase, and the tests look at what the policy controller wrote.

The operator runs :data:`SPEEDUP` times faster (``operator_speedup``; docs/lab.md, "Lab
time"): a cron minute lasts five seconds, a 30 s sweep interval two and a half. Run
labels, backup names and schedule times in status are on the schedule line.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from pyVmomi import vim
from pyVmomi.VmomiSupport import ManagedObject
from tests.controller import objects
from tests.controller.conftest import OperatorProcess, off_line, on_line

from vmguard.controller.policy.builders import backup_name
from vmguard.vsphere.session import Endpoint, wait_for
from vmguard.vsphere.tags import TagClient
from vmguard_lab.procs import eventually

SPEEDUP = 12
# Policies here select most of the lab: they create VMGuardBackups, which nobody runs.
pytestmark = [
    pytest.mark.lab,
    pytest.mark.operator_controllers("vcenters,policies,restores"),
    pytest.mark.operator_speedup(SPEEDUP),
]

PP = "vmprotectionpolicies"
GOLD = {"tags": [{"category": "backup-tier", "name": "gold"}]}


def tagged(lab_state: dict[str, Any], vsim: Any, tag: str) -> dict[str, Any]:
    """instance UUID -> lab VM, for the non-template VMs carrying ``tag``."""
    vs = lab_state["vsphere"]
    with TagClient(Endpoint(vs["sdk_url"], vs["username"], vs["password"], ca_file=vs["ca"])) as t:
        tags = t.vm_tags()
    return {
        vm.instance_uuid.lower(): vm
        for vm in vsim.vms()
        if not vm.template and tag in tags.get(vm.moref, ())
    }


def backups(kube_api: Any, ns: str, **labels: str) -> list[dict[str, Any]]:
    selector = ",".join(f"vmguard.io/{k}={v}" for k, v in labels.items())
    return objects.items(kube_api, ns, "vmguardbackups", selector)


def by_run(items: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for b in items:
        labels = b["metadata"]["labels"]
        out.setdefault(labels["vmguard.io/run"], []).append(labels["vmguard.io/vm"])
    return out


def minute_after(seconds: float) -> dt.datetime:
    """The first whole minute of the schedule line at least ``seconds`` (of the clock)
    from now."""
    at = on_line(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds), SPEEDUP)
    return (at + dt.timedelta(seconds=59)).replace(second=0, microsecond=0)


def test_scheduled_run_backs_up_exactly_the_tagged_vms_once(
    kube_api: Any,
    lab_state: dict[str, Any],
    vsim: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    operator_log: Path,
) -> None:
    gold = tagged(lab_state, vsim, "backup-tier:gold")
    assert 0 < len(gold) < len([v for v in vsim.vms() if not v.template])
    # Every minute from a few (sped-up) minutes ahead: the first sweep, and with it the
    # fail-safe, comes before the first run.
    at = minute_after(15)
    at += dt.timedelta(minutes=1) if at.minute == 59 else dt.timedelta(0)
    cron = f"{at.minute}-59 {at.hour} * * *"
    objects.create_policy(kube_api, namespace, "gold", selector=GOLD, schedule={"cron": cron})
    policy = objects.get(kube_api, namespace, PP, "gold")

    # The fail-safe comes first: none of these VMs has a completed backup.
    failsafes = eventually(
        lambda: (
            (b := backups(kube_api, namespace, trigger="failsafe")) and len(b) == len(gold) and b
        ),
        timeout=90,
        what="fail-safe backups of the gold VMs",
    )
    assert {b["metadata"]["labels"]["vmguard.io/vm"] for b in failsafes} == set(gold)

    first = eventually(
        lambda: (
            (runs := by_run(backups(kube_api, namespace, trigger="schedule")))
            and len(next(iter(runs.values()))) == len(gold)
            and runs
        ),
        timeout=120,
        what="the first scheduled run",
    )
    [(run, vms)] = first.items()
    assert sorted(vms) == sorted(gold), "exactly the tagged VMs, each once"
    when = dt.datetime.strptime(run, "%Y%m%dT%H%MZ").replace(tzinfo=dt.UTC)

    for b in backups(kube_api, namespace, trigger="schedule"):
        meta, spec = b["metadata"], b["spec"]
        uuid = meta["labels"]["vmguard.io/vm"]
        lab_vm = gold[uuid]
        assert meta["name"] == backup_name("gold", uuid, when, "schedule")
        assert meta["labels"]["vmguard.io/policy"] == "gold"
        assert meta["labels"]["vmguard.io/vcenter"] == "lab"
        assert meta["annotations"]["vmguard.io/vm-name"] == lab_vm.name
        assert [(o["kind"], o["name"], o["uid"]) for o in meta["ownerReferences"]] == [
            ("VMProtectionPolicy", "gold", policy["metadata"]["uid"])
        ]
        assert spec["vm"] == {"instanceUuid": uuid, "moref": lab_vm.moref, "name": lab_vm.name}
        assert spec["policyRef"] == {"name": "gold"} and spec["mode"] == "auto"

    def status_of_run() -> dict[str, Any] | None:
        st = objects.get(kube_api, namespace, PP, "gold").get("status", {})
        last = st.get("lastRun") or {}
        return st if last.get("time") == when.strftime("%Y-%m-%dT%H:%M:%SZ") else None

    st = eventually(status_of_run, timeout=60, what="status of the run")
    assert st["lastRun"]["backups"] == len(gold) and st["lastRun"]["running"] == len(gold)
    assert st["lastRun"]["completed"] == 0 and st["lastRun"]["failed"] == 0
    assert st["matchedVMs"] == len(gold)
    assert st["vmsOutsideRPO"] == len(gold), "nothing has completed yet"
    assert st["nextScheduleTime"] > st["lastScheduleTime"]
    ready = objects.condition(objects.get(kube_api, namespace, PP, "gold"), "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Scheduled")

    # The next run starts; the first run's backups have not started (no VMGuardBackup
    # controller here), so each VM is skipped rather than queued twice.
    later = eventually(
        lambda: (
            (st := objects.get(kube_api, namespace, PP, "gold")["status"])
            and st.get("lastScheduleTime", "") > when.strftime("%Y-%m-%dT%H:%M:%SZ")
            and st
        ),
        timeout=120,
        what="the next run",
    )
    runs = by_run(backups(kube_api, namespace, trigger="schedule"))
    assert sorted(runs[run]) == sorted(gold), "still one backup per VM for the first run"
    next_run = later["lastScheduleTime"].replace("-", "").replace(":", "")[:13] + "Z"
    assert runs.get(next_run, []) == []
    # The run's line is logged right after the patch of lastScheduleTime waited for above.
    eventually(
        lambda: "skipped, an earlier backup has not started" in operator_log.read_text(),
        timeout=30,
        what="the run's line naming the skipped VMs",
    )
    assert len(backups(kube_api, namespace, trigger="failsafe")) == len(gold)


def test_restart_at_a_run_time_does_not_duplicate(
    kube_api: Any,
    lab_state: dict[str, Any],
    vsim: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    start_operator: Any,
) -> None:
    gold = tagged(lab_state, vsim, "backup-tier:gold")
    at = minute_after(10)
    # Daily: the catch-up window is twelve hours of the line (an hour of the clock).
    cron = f"{at.minute} {at.hour} * * *"
    operator: OperatorProcess = start_operator()
    objects.create_policy(kube_api, namespace, "daily", selector=GOLD, schedule={"cron": cron})
    created = eventually(
        lambda: (
            (b := backups(kube_api, namespace, trigger="schedule")) and len(b) == len(gold) and b
        ),
        timeout=150,
        what="the scheduled run",
    )
    names = sorted(b["metadata"]["name"] for b in created)
    operator.kill()
    restarted = start_operator()
    # The new operator finds the run in its catch-up window and issues it again: every
    # backup exists already, none is made twice.
    eventually(
        lambda: f"; {len(gold)} existed already" in restarted.text(),
        timeout=90,
        what="the restarted operator re-issuing the run",
    )
    again = backups(kube_api, namespace, trigger="schedule")
    assert sorted(b["metadata"]["name"] for b in again) == names
    runs = {run: sorted(vms) for run, vms in by_run(again).items()}
    assert runs == {at.strftime("%Y%m%dT%H%MZ"): sorted(gold)}


@contextlib.contextmanager
def new_vm(si: Any, name: str) -> Iterator[Any]:
    """A VM created in the simulator (no disks), destroyed afterwards."""
    content = si.RetrieveContent()
    dc = content.rootFolder.childEntity[0]
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.ResourcePool], True)
    pool = view.view[0]
    view.DestroyView()
    spec = vim.vm.ConfigSpec(
        name=name,
        memoryMB=128,
        numCPUs=1,
        guestId="otherGuest64",
        files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"),
    )
    vm: ManagedObject = wait_for(dc.vmFolder.CreateVM_Task(config=spec, pool=pool))
    try:
        yield vm
    finally:
        wait_for(vm.Destroy_Task())


def sweeps_later(kube_api: Any, ns: str, count: int) -> None:
    """Wait until ``count`` more sweeps have written the VCenter's status.

    The sweeper writes status before its fail-safe pass, so two sweeps later the
    fail-safe pass of the first has finished.
    """
    for _ in range(count):
        seen = objects.get(kube_api, ns, "vcenters", "lab")["status"]["lastSweepTime"]
        eventually(
            lambda seen=seen: (
                objects.get(kube_api, ns, "vcenters", "lab")["status"]["lastSweepTime"] > seen
            ),
            timeout=60,
            what="another sweep",
        )


def test_new_vm_unprotected_then_backed_up_by_the_default_policy(
    kube_api: Any,
    vsphere_si: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    operator_log: Path,
) -> None:
    objects.create_policy(kube_api, namespace, "gold", selector=GOLD)
    first, second = (f"new-vm-{secrets.token_hex(3)}" for _ in range(2))
    with new_vm(vsphere_si, first) as vm:
        uuid = vm.config.instanceUuid.lower()

        # No default policy: the VM is named as unprotected, in the condition and an event.
        def named() -> dict[str, Any] | None:
            vc = objects.get(kube_api, namespace, "vcenters", "lab")
            protected = objects.condition(vc, "Protected")
            return protected if first in protected.get("message", "") else None

        protected = eventually(named, timeout=90, what="the new VM named unprotected")
        assert protected["status"] == "False" and protected["reason"] == "UnprotectedVMs"

        def evented() -> bool:
            events = client.CoreV1Api(kube_api).list_namespaced_event(namespace).items
            return any(e.reason == "UnprotectedVMs" and first in e.message for e in events)

        eventually(evented, timeout=30, what="an UnprotectedVMs event naming the VM")
        assert backups(kube_api, namespace, vm=uuid) == []

        # A default policy catches it, and the fail-safe backs it up at once (the
        # policy's own schedule is hours away).
        objects.create_policy(kube_api, namespace, "fail-safe", default=True)
        [made] = eventually(
            lambda: backups(kube_api, namespace, vm=uuid), timeout=60, what="fail-safe backup"
        )
        labels = made["metadata"]["labels"]
        assert labels["vmguard.io/policy"] == "fail-safe"
        assert labels["vmguard.io/trigger"] == "failsafe"
        assert made["spec"]["policyRef"] == {"name": "fail-safe"}
        assert made["spec"]["vm"] == {"instanceUuid": uuid, "moref": vm._moId, "name": first}
        assert re.match(r"^fail-safe-[0-9a-f]{8}-f[0-9]{12}$", made["metadata"]["name"])

        # A VM created while the default policy exists is backed up within one sweep
        # interval (30 s sped up: 2.5 s, plus the sweep itself), with no policy change to
        # wake anyone.
        with new_vm(vsphere_si, second) as other:
            other_uuid = other.config.instanceUuid.lower()
            [made] = eventually(
                lambda: backups(kube_api, namespace, vm=other_uuid),
                timeout=45,
                what="fail-safe backup of a VM created later",
            )
            assert made["metadata"]["labels"]["vmguard.io/policy"] == "fail-safe"

            # Later sweeps add no second backup while the first is in progress.
            sweeps_later(kube_api, namespace, 2)
            assert len(backups(kube_api, namespace, vm=uuid)) == 1
            assert len(backups(kube_api, namespace, vm=other_uuid)) == 1
    default = objects.get(kube_api, namespace, PP, "fail-safe")
    assert objects.condition(default, "Ready")["status"] == "True"


def test_paused_and_broken_policies_create_nothing(
    kube_api: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    operator_log: Path,
) -> None:
    every_minute = {"cron": "* * * * *"}
    objects.create_policy(
        kube_api, namespace, "held", selector=GOLD, schedule=every_minute, paused=True
    )
    objects.create_policy(
        kube_api,
        namespace,
        "lost",
        repository="nope",
        selector={"tags": [{"category": "backup-tier", "name": "silver"}]},
        schedule=every_minute,
    )
    objects.create_policy(
        kube_api,
        namespace,
        "odd",
        selector={"names": ["nothing-*"]},
        schedule={"cron": "0 0 31 2 *"},
    )

    for name in ("fallback-a", "fallback-b"):  # two defaults, both without a repository
        objects.create_policy(
            kube_api, namespace, name, repository="nope", default=True, schedule=every_minute
        )

    def judged(name: str, type_: str) -> dict[str, Any]:
        return eventually(
            lambda: objects.condition(objects.get(kube_api, namespace, PP, name), type_),
            timeout=60,
            what=f"{name} {type_}",
        )

    paused = judged("held", "Paused")
    assert (paused["status"], paused["reason"]) == ("True", "Paused")
    lost = judged("lost", "Ready")
    assert (lost["status"], lost["reason"]) == ("False", "RepositoryNotFound")
    assert "VMGuardRepository 'nope' does not exist" in lost["message"]
    odd = judged("odd", "Ready")
    assert (odd["status"], odd["reason"]) == ("False", "NeverOccurs")
    for name in ("fallback-a", "fallback-b"):
        clash = judged(name, "Consistent")
        assert (clash["status"], clash["reason"]) == ("False", "SeveralDefaults")
    assert "fallback-a (first by name) acts as the default" in clash["message"]

    # Past a scheduled minute and a sweep after it: still nothing, neither scheduled
    # nor fail-safe, although both policies have VMs.
    after = off_line(minute_after(0), SPEEDUP) + dt.timedelta(seconds=2)
    boundary = after.strftime("%Y-%m-%dT%H:%M:%SZ")
    eventually(
        lambda: (
            objects.get(kube_api, namespace, "vcenters", "lab")
            .get("status", {})
            .get("lastSweepTime", "")
            > boundary
        ),
        timeout=120,
        what="a sweep after the scheduled minute",
    )
    held = objects.get(kube_api, namespace, PP, "held")["status"]
    assert held["matchedVMs"] > 0 and "lastScheduleTime" not in held
    assert "nextScheduleTime" not in held, "a paused policy has no next run"
    assert objects.get(kube_api, namespace, PP, "lost")["status"]["matchedVMs"] > 0
    assert objects.get(kube_api, namespace, PP, "fallback-a")["status"]["matchedVMs"] > 0
    assert objects.get(kube_api, namespace, PP, "fallback-b")["status"]["matchedVMs"] == 0
    assert objects.items(kube_api, namespace, "vmguardbackups") == []
