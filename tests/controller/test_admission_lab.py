"""The admission queue against the real apiserver, a simulated vCenter of 50 VMs and three
node agents (acceptance 2 of the issue "Estate scale"): at every sample no more backups
run per host, per datastore and per vCenter (and per policy) than the limits allow;
backups start in order (priority, then scheduled time); a restarted operator starts
nothing twice.

The test starts its own vSphere simulator (50 VMs on 1 MiB disks over five hosts and one
datastore) next to the lab's, so the lab's shared VMs are left alone, and two node
agents next to the lab's (``Lab.add_node``): every backup runs a real proxy Job, which
reads its VM's disks over NBD and writes them to the lab's MinIO, and the real
scheduler spreads the Jobs' pods over the three nodes. One watch of the backups samples
every state the apiserver holds (each event, in resourceVersion order), so a moment
over a limit cannot slip between two polls.

1. Plugged (an operator parked at ``--stall snapshotted``; the vCenter allows one NFC
   disk): every backup resolves and queues; the first ten positions are the queue's
   order. The operator is SIGKILLed there, its backup holding its snapshot.
2. Limits (per host, per datastore and per policy bind): checked at every sample, by a
   new operator, which goes on with the plugged backup; half-way it is SIGKILLed with
   backups in flight.
3. Order (only the vCenter's NFC disks bind, set while no operator runs, so the third
   operator plans with them from its first turn, counting what the second left
   running): everything started ranks before everything still waiting. Every backup
   completes.
4. Nothing started twice: no admission twice over the three operators' logs; one proxy
   Job and one pod per backup; the pods ran on all three nodes.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from tests.controller import objects
from tests.controller.own_vcsim import own_vcsim

from vmguard.api import BACKUP_ACTIVE, BACKUP_TERMINAL
from vmguard.api.kinds import BACKUP, POLICY, VCENTER
from vmguard.controller.kube.proxyjob import job_name
from vmguard_lab.kube import NODE_NAME
from vmguard_lab.vsim import VSimControl

pytestmark = pytest.mark.operator_controllers("backups,repositories")

PLURAL, KIND = BACKUP.plural, BACKUP.kind
VMS = 50
# Plugged: only the vCenter's single NFC disk binds, so every waiting backup says so.
PLUGGED = {"nfcDisks": 1, "nfcDisksPerHost": 100, "disksPerDatastore": 100}
# Phase A: the hosts' NFC disks, the datastore's disks and the policies' totals bind
# (the vCenter's 5 NFC disks cannot: the datastore holds 4).
LIMITS_A = {"nfcDisks": 5, "nfcDisksPerHost": 1, "disksPerDatastore": 4}
POLICY_A = {"total": 3, "perHost": 2, "perDatastore": 3}
# Phase B: only the vCenter's NFC disks bind (more than the datastore allowed in A, so
# what A left running is within them).
LIMITS_B = {"nfcDisks": 6, "nfcDisksPerHost": 100, "disksPerDatastore": 100}
OPEN_POLICY = {"total": 64, "perHost": 64, "perDatastore": 64}
ADDED_NODES = (f"{NODE_NAME}-2", f"{NODE_NAME}-3")


@pytest.fixture
def big_vcenter(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A simulator of its own with 50 VMs on 1 MiB disks: endpoint, CA and credentials."""
    with own_vcsim(tmp_path, "admission@vsphere.local", VMS, 3, 1 << 20) as info:
        yield info


@pytest.fixture
def three_nodes(lab: Any) -> Iterator[list[str]]:
    """The lab's node and two more node agents, removed (agents stopped, Nodes deleted)
    when the test ends."""
    try:
        for node in ADDED_NODES:
            lab.add_node(node)
        yield [NODE_NAME, *ADDED_NODES]
    finally:
        for node in ADDED_NODES:
            lab.remove_node(node)


class Backups:
    """The namespace's VMGuardBackups as the apiserver holds them after each event of
    one watch (events come in resourceVersion order, so each state it ever held is
    seen); ``check`` runs on every one of them."""

    def __init__(self, kube_api: Any, ns: str) -> None:
        self.api, self.ns = objects.custom(kube_api), ns
        listed = self.api.list_namespaced_custom_object(objects.G, objects.V, ns, PLURAL)
        self.now: dict[str, dict[str, Any]] = {o["metadata"]["name"]: o for o in listed["items"]}
        self.version = listed["metadata"]["resourceVersion"]
        self.samples = 0
        self.check: Callable[[dict[str, dict[str, Any]]], None] = lambda now: None

    def until(self, done: Callable[[dict[str, dict[str, Any]]], bool], what: str) -> None:
        """Follow the events until ``done`` holds (at most 300 s)."""
        deadline = time.monotonic() + 300
        while not done(self.now):
            left = deadline - time.monotonic()
            assert left > 0, f"timed out waiting for {what}"
            w = watch.Watch()
            for event in w.stream(
                self.api.list_namespaced_custom_object,
                objects.G,
                objects.V,
                self.ns,
                PLURAL,
                resource_version=self.version,
                timeout_seconds=max(1, int(left)),
            ):
                obj = event["object"]
                assert event["type"] != "ERROR", obj
                self.version = obj["metadata"]["resourceVersion"]
                if event["type"] == "DELETED":
                    self.now.pop(obj["metadata"]["name"], None)
                else:
                    self.now[obj["metadata"]["name"]] = obj
                self.samples += 1
                self.check(self.now)
                if done(self.now):
                    w.stop()
                    break


def _sdk_port(info: dict[str, Any]) -> int:
    return int(info["sdk_url"].split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


def _host(obj: dict[str, Any]) -> str:
    return str(((obj.get("status") or {}).get("placement") or {}).get("host", ""))


def _disks(obj: dict[str, Any]) -> dict[str, int]:
    """The backup's disks per datastore (``status.placement``)."""
    where = (obj.get("status") or {}).get("placement") or {}
    out: Counter[str] = Counter()
    for d in where.get("disks") or ():
        out[str(d["datastore"])] += int(d.get("count") or 1)
    return dict(out)


def _within(taken: dict[str, int], limit: int, where: str) -> None:
    """The disks the running backups take on one resource (``taken``, per backup) are
    within ``limit``, or one backup runs alone there (a VM larger than a limit starts
    when what it exceeds is idle)."""
    on = {name: n for name, n in taken.items() if n}
    assert len(on) <= 1 or sum(on.values()) <= limit, (where, limit, on)


def _check_limits(
    running: list[dict[str, Any]], vc: dict[str, int], policies: dict[str, dict[str, int]]
) -> None:
    """What runs is within the vCenter's limits (NFC disks in all and per host, disks per
    datastore) and each policy's (backups in all, per host and per datastore)."""
    disks = {o["metadata"]["name"]: _disks(o) for o in running}
    hosts = {o["metadata"]["name"]: _host(o) for o in running}
    total = {name: sum(d.values()) for name, d in disks.items()}
    _within(total, vc["nfcDisks"], "the vCenter")
    for host in set(hosts.values()):
        on_host = {name: n for name, n in total.items() if hosts[name] == host}
        _within(on_host, vc["nfcDisksPerHost"], f"host {host}")
    for ds in {ds for d in disks.values() for ds in d}:
        on_ds = {name: d.get(ds, 0) for name, d in disks.items()}
        _within(on_ds, vc["disksPerDatastore"], f"datastore {ds}")
    for policy, lim in policies.items():
        mine = [o for o in running if o["spec"]["policyRef"]["name"] == policy]
        assert len(mine) <= lim["total"]
        for host in {_host(o) for o in mine}:
            assert sum(1 for o in mine if _host(o) == host) <= lim["perHost"]
        for ds in {ds for o in mine for ds in _disks(o)}:
            assert sum(1 for o in mine if ds in _disks(o)) <= lim["perDatastore"]


def _rank(obj: dict[str, Any]) -> tuple[int, str, str]:
    """The queue's order for this test's backups: gold (priority 10) first, then the
    earlier run, then first come (names sort in creation order; the policies take turns
    only within one priority, and the two policies differ in it)."""
    labels = obj["metadata"]["labels"]
    gold = obj["spec"]["policyRef"]["name"] == "gold"
    return (0 if gold else 1, labels["vmguard.io/run"], obj["metadata"]["name"])


def _phase(obj: dict[str, Any]) -> str:
    return str((obj.get("status") or {}).get("phase") or "Pending")


def _running(now: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in now.values() if _phase(o) in BACKUP_ACTIVE]


def _held_by(now: dict[str, dict[str, Any]]) -> set[str]:
    """What the waiting backups say holds them."""
    waiting = (o for o in now.values() if _phase(o) == "Pending")
    return {str(objects.condition(o, "Admitted").get("message")) for o in waiting}


def _set_limits(kube_api: Any, ns: str, plural: str, name: str, field: str, value: Any) -> None:
    api = objects.custom(kube_api)
    patch = {"spec": {field: value}}
    api.patch_namespaced_custom_object(objects.G, objects.V, ns, plural, name, patch)


def test_admission_keeps_limits_and_order_and_a_restart_starts_nothing_twice(
    kube_api: Any,
    namespace: str,
    three_nodes: list[str],
    start_operator: Any,
    lab_repository: str,
    big_vcenter: dict[str, Any],
) -> None:
    ns = namespace
    objects.secret(
        kube_api,
        ns,
        "big-creds",
        {"username": big_vcenter["user"], "password": big_vcenter["password"]},
    )
    # Plugged: one NFC disk for the whole vCenter, so the first backup admitted takes it
    # and every other one queues up until the test opens the limits.
    objects.create(
        kube_api,
        ns,
        VCENTER.plural,
        VCENTER.kind,
        "big",
        {
            "host": "127.0.0.1",
            "port": _sdk_port(big_vcenter),
            "credentialsSecretRef": {"name": "big-creds"},
            "tls": {"caBundle": Path(big_vcenter["tls_cert"]).read_text()},
            "limits": PLUGGED,
        },
    )
    for policy, priority in (("gold", 10), ("bronze", 0)):
        objects.create_policy(
            kube_api,
            ns,
            policy,
            vcenter="big",
            repository=lab_repository,
            priority=priority,
            selector={"names": [f"*-{policy}"]},
            concurrency=POLICY_A,
        )
    vms = [v for v in VSimControl(big_vcenter["control_url"]).vms() if not v.template]
    assert len(vms) == VMS
    # The proxies find the disks through this simulator, not the lab's.
    proxies = {"VMGUARD_PROXY_LOCATOR": f"lab:{big_vcenter['control_url']}"}
    operator = start_operator(stall="snapshotted", extra_env=proxies)
    names = []
    for i, vm in enumerate(sorted(vms, key=lambda v: v.moref)):
        policy = "gold" if i % 3 == 0 else "bronze"
        run = "20261206T0000Z" if i % 2 else "20261206T0100Z"
        names.append(f"b{i:02d}-{policy}")
        objects.create(
            kube_api,
            ns,
            PLURAL,
            KIND,
            names[-1],
            {
                "vm": {"moref": vm.moref, "instanceUuid": vm.instance_uuid},
                "policyRef": {"name": policy},
            },
            labels={"vmguard.io/run": run, "vmguard.io/policy": policy},
        )

    def queued(now: dict[str, dict[str, Any]]) -> int:
        return sum(1 for o in now.values() if (o.get("status") or {}).get("queuePosition"))

    backups = Backups(kube_api, ns)
    backups.until(lambda now: queued(now) == VMS - 1, "every backup resolved and queued")
    plug = _running(backups.now)
    assert len(plug) == 1
    waiting = sorted((o for o in backups.now.values() if o not in plug), key=_rank)
    # Positions are exact up to ten, and they are the queue's order.
    assert [o["status"]["queuePosition"] for o in waiting[:10]] == list(range(1, 11))
    told = [objects.condition(o, "Admitted") for o in waiting]
    assert {(c["status"], c["reason"]) for c in told} == {("False", "ConcurrencyLimit")}
    said = {c["message"] for c in told}
    assert said == {"vCenter big has its 1 NFC disks in use (NBD)"}

    # Phase A: the hosts', the datastore's and the policies' limits bind; a new operator
    # goes on with the plugged backup and is SIGKILLed half-way.
    operator.kill()  # SIGKILL: whatever it was about to do is lost
    _set_limits(kube_api, ns, VCENTER.plural, "big", "limits", LIMITS_A)
    started: set[str] = set()
    held: set[str] = set()

    def check_a(now: dict[str, dict[str, Any]]) -> None:
        running = _running(now)
        _check_limits(running, LIMITS_A, {"gold": POLICY_A, "bronze": POLICY_A})
        started.update(o["metadata"]["name"] for o in running)
        held.update(_held_by(now))

    backups.check = check_a
    operator = start_operator(extra_env=proxies)
    backups.until(lambda now: len(started) >= VMS // 2, "half the backups started")
    operator.kill()
    # Each limit held some backup back at some sample (so each bound). Gold (priority 10)
    # goes first and fills its total of 3; bronze may never reach its own.
    for limit in ("host ", "datastore LocalDS_0 ", "policy gold "):
        assert any(m.startswith(limit) for m in held), (limit, held)

    # Phase B: only the vCenter's capacity binds (limits only loosen): strict order, so
    # at every sample everything started since ranks before everything still waiting.
    # The limits change while no operator runs, so the next one plans with all of them
    # from its first turn (and this is the second restart).
    for policy in ("gold", "bronze"):
        _set_limits(kube_api, ns, POLICY.plural, policy, "concurrency", OPEN_POLICY)
    _set_limits(kube_api, ns, VCENTER.plural, "big", "limits", LIMITS_B)
    vcenter_full = f"vCenter big has its {LIMITS_B['nfcDisks']} NFC disks in use (NBD)"
    judged: set[str] = set()
    settled = False

    def check_b(now: dict[str, dict[str, Any]]) -> None:
        nonlocal settled
        running = _running(now)
        _check_limits(running, LIMITS_B, {"gold": OPEN_POLICY, "bronze": OPEN_POLICY})
        fresh = [o for o in running if o["metadata"]["name"] not in started]
        started.update(o["metadata"]["name"] for o in fresh)
        pending = [o for o in now.values() if _phase(o) == "Pending"]
        # Judged once every waiting backup says the vCenter holds it: the new operator
        # plans with the new limits (what it started before is not judged for order).
        settled = settled or _held_by(now) == {vcenter_full}
        if not settled:
            return
        judged.update(o["metadata"]["name"] for o in fresh)
        if fresh and pending:
            head = min(pending, key=_rank)
            assert max(_rank(o) for o in fresh) < _rank(head), (
                [o["metadata"]["name"] for o in fresh],
                head["metadata"]["name"],
                head["status"],
            )

    backups.check = check_b
    operator = start_operator(extra_env=proxies)
    backups.until(
        lambda now: all(_phase(o) in BACKUP_TERMINAL for o in now.values()), "every backup ended"
    )
    assert {n: _phase(o) for n, o in backups.now.items()} == dict.fromkeys(names, "Completed")
    assert started == set(names)
    assert len(judged) >= VMS // 4, sorted(judged)

    # No backup was admitted twice, over the three operators' logs (a SIGKILL right
    # after an admission may take its log line with it, never a second admission).
    log = operator.log.read_text(errors="replace")
    admitted = Counter(
        line.split(f"{ns}/", 1)[1].split(":", 1)[0]
        for line in log.splitlines()
        if line.endswith(": admitted") and f" {ns}/" in line
    )
    # One start is in flight at a time, so each of the two kills loses at most one line.
    assert set(admitted) <= set(names) and len(admitted) >= len(names) - 2
    assert max(admitted.values()) == 1, admitted.most_common(3)
    # One proxy Job per backup (its first attempt), and one pod per Job, spread over the
    # three nodes by the scheduler.
    jobs = client.BatchV1Api(kube_api).list_namespaced_job(ns).items
    assert sorted(j.metadata.name for j in jobs) == sorted(job_name(n, 1) for n in names)
    pods = client.CoreV1Api(kube_api).list_namespaced_pod(ns).items
    per_job = Counter(p.metadata.labels["batch.kubernetes.io/job-name"] for p in pods)
    assert set(per_job) == {j.metadata.name for j in jobs} and set(per_job.values()) == {1}
    assert {p.status.phase for p in pods} == {"Succeeded"}
    on = Counter(p.spec.node_name for p in pods)
    assert set(on) == set(three_nodes), on
    print(f"{backups.samples} samples; pods per node: {dict(on)}; judged for order: {len(judged)}")
