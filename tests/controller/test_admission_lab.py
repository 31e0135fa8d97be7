"""The admission queue against the real apiserver and a simulated vCenter of 60 VMs
(acceptance 2 of the issue "Estate scale"): at every sample no more backups run per
host, per vCenter (NFC disks) and per policy than the limits allow; backups start in
order (priority, then scheduled time); a restarted operator starts nothing twice.

The test starts its own vSphere simulator (60 VMs, 1 MiB disks) next to the lab's, so
the lab's shared VMs are left alone. The operator runs with ``--stall snapshotted``: an
admitted backup takes its snapshot and then keeps its slot, and the test frees slots by
deleting the running backups (the operator removes their snapshots), round by round,
sampling what runs. No proxy Job runs, so one node agent is enough.

1. Plugged (the vCenter allows one NFC disk): every backup resolves and queues; the
   first ten positions are the queue's order.
2. Limits (host and policy limits bind): checked at every sample; the operator is
   SIGKILLed and restarted half-way.
3. Order (only the vCenter's capacity binds, set while no operator runs, so the next one
   plans with it from its first turn): everything started ranks before everything
   still waiting.
4. No backup was admitted twice, counted over the three operators' logs.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.controller import objects

from vmguard.api import BACKUP_ACTIVE
from vmguard.api.kinds import BACKUP, POLICY, VCENTER
from vmguard_lab import build
from vmguard_lab.paths import LabPaths
from vmguard_lab.procs import eventually, free_port
from vmguard_lab.vsim import PASSWORD_ENV, USERNAME_ENV, VSimControl, vsim_command

pytestmark = pytest.mark.operator_controllers("backups,repositories")

PLURAL, KIND = BACKUP.plural, BACKUP.kind
VMS = 60
# Phase A: the hosts' and the policies' limits bind.
LIMITS_A = {"nfcDisks": 5, "nfcDisksPerHost": 2, "disksPerDatastore": 100}
GOLD_A = {"total": 3, "perHost": 1, "perDatastore": 3}
BRONZE_A = {"total": 3, "perHost": 1, "perDatastore": 3}
# Phase B: only the vCenter's NFC capacity binds.
LIMITS_B = {"nfcDisks": 5, "nfcDisksPerHost": 100, "disksPerDatastore": 100}
OPEN_POLICY = {"total": 64, "perHost": 64, "perDatastore": 64}


@pytest.fixture
def big_vcenter(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A simulator of its own with 60 VMs on 1 MiB disks: endpoint, CA and credentials."""
    binary = build.ensure_built(LabPaths.default(), only=("vsphere",))["vmguard-vcsim"]
    user, password = "admission@vsphere.local", secrets.token_urlsafe(12)
    state = tmp_path / "vcsim"
    state.mkdir()
    env = dict(os.environ, **{USERNAME_ENV: user, PASSWORD_ENV: password})
    argv = vsim_command(binary, state, free_port(), free_port(), VMS, 3, 1 << 20)
    with open(state / "vcsim.log", "wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        ready = state / "ready.json"
        eventually(lambda: ready.exists() or None, timeout=60, what="the simulator")
        info = json.loads(ready.read_text())
        info.update(user=user, password=password)
        yield info
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _sdk_port(info: dict[str, Any]) -> int:
    return int(info["sdk_url"].split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


def _placement(obj: dict[str, Any]) -> tuple[str, int]:
    where = (obj.get("status") or {}).get("placement") or {}
    disks = sum(int(d.get("count") or 1) for d in where.get("disks") or ()) or 1
    return str(where.get("host", "")), disks


def _check_limits(
    running: list[dict[str, Any]], vc: dict[str, int], policies: dict[str, dict[str, int]]
) -> None:
    """What runs is within the vCenter's NFC limits and each policy's (a VM larger than
    a limit runs alone on what it exceeds)."""
    if len(running) > 1:
        assert sum(_placement(o)[1] for o in running) <= vc["nfcDisks"]
    for host in {_placement(o)[0] for o in running}:
        on = [o for o in running if _placement(o)[0] == host]
        assert len(on) == 1 or sum(_placement(o)[1] for o in on) <= vc["nfcDisksPerHost"]
    for policy, lim in policies.items():
        mine = [o for o in running if o["spec"]["policyRef"]["name"] == policy]
        assert len(mine) <= lim["total"]
        for host in {_placement(o)[0] for o in mine}:
            assert sum(1 for o in mine if _placement(o)[0] == host) <= lim["perHost"]


def _rank(obj: dict[str, Any]) -> tuple[int, str, str]:
    """The queue's order for this test's backups: gold (priority 10) first, then the
    earlier run, then first come (names sort in creation order; the policies take turns
    only within one priority, and the two policies differ in it)."""
    labels = obj["metadata"]["labels"]
    gold = obj["spec"]["policyRef"]["name"] == "gold"
    return (0 if gold else 1, labels["vmguard.io/run"], obj["metadata"]["name"])


def _phase(obj: dict[str, Any]) -> str:
    return str((obj.get("status") or {}).get("phase") or "Pending")


def _set_limits(kube_api: Any, ns: str, plural: str, name: str, field: str, value: Any) -> None:
    api = objects.custom(kube_api)
    patch = {"spec": {field: value}}
    api.patch_namespaced_custom_object(objects.G, objects.V, ns, plural, name, patch)


def _release(kube_api: Any, ns: str, running: list[dict[str, Any]]) -> None:
    """Delete the running backups (their snapshots are removed) and wait until gone."""
    api = objects.custom(kube_api)
    names = {o["metadata"]["name"] for o in running}
    for name in names:
        api.delete_namespaced_custom_object(objects.G, objects.V, ns, PLURAL, name)

    def gone() -> bool | None:
        left = {o["metadata"]["name"] for o in objects.items(kube_api, ns, PLURAL)}
        return None if left & names else True

    eventually(gone, timeout=120, what=f"{sorted(names)} deleted")


def test_admission_keeps_limits_and_order_and_a_restart_starts_nothing_twice(
    kube_api: Any,
    namespace: str,
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
    # Plugged: one NFC disk for the whole vCenter, so the first backup resolved takes it
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
            "limits": {**LIMITS_A, "nfcDisks": 1},
        },
    )
    for policy, priority, limits in (("gold", 10, GOLD_A), ("bronze", 0, BRONZE_A)):
        objects.create_policy(
            kube_api,
            ns,
            policy,
            vcenter="big",
            repository=lab_repository,
            priority=priority,
            selector={"names": [f"*-{policy}"]},
            concurrency=limits,
        )
    vms = [v for v in VSimControl(big_vcenter["control_url"]).vms() if not v.template]
    vms = sorted(vms, key=lambda v: v.moref)[:VMS]
    assert len(vms) >= 50
    operator = start_operator(stall="snapshotted")
    names = []
    for i, vm in enumerate(vms):
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

    def all_queued() -> list[dict[str, Any]] | None:
        got = objects.items(kube_api, ns, PLURAL)
        waiting = [o for o in got if (o.get("status") or {}).get("queuePosition")]
        return got if len(waiting) == len(vms) - 1 else None

    got = eventually(all_queued, timeout=300, what="every backup resolved and queued")
    plug = [o for o in got if _phase(o) in BACKUP_ACTIVE]
    assert len(plug) == 1
    waiting = sorted((o for o in got if o not in plug), key=_rank)
    # Positions are exact up to ten, and they are the queue's order.
    assert [o["status"]["queuePosition"] for o in waiting[:10]] == list(range(1, 11))
    told = [objects.condition(o, "Admitted") for o in waiting]
    assert {(c["status"], c["reason"]) for c in told} == {("False", "ConcurrencyLimit")}
    said = {c["message"] for c in told}
    assert "vCenter big has its 1 NFC disks in use (NBD)" in said
    assert all(m.startswith(("vCenter big ", "policy ", "host ")) for m in said), said

    # Phase A: host and policy limits bind; the operator is killed half-way.
    _set_limits(kube_api, ns, VCENTER.plural, "big", "limits", LIMITS_A)
    started: set[str] = set()
    samples = 0
    restarted = False
    while len(started) < VMS // 2:
        got = objects.items(kube_api, ns, PLURAL)
        running = [o for o in got if _phase(o) in BACKUP_ACTIVE]
        _check_limits(running, LIMITS_A, {"gold": GOLD_A, "bronze": BRONZE_A})
        samples += 1
        started |= {o["metadata"]["name"] for o in running}
        if len(started) >= VMS // 4 and not restarted:
            operator.kill()  # SIGKILL: whatever it was about to do is lost
            operator = start_operator(stall="snapshotted")
            restarted = True
        if running:
            _release(kube_api, ns, running)

    # Phase B: only the vCenter's capacity binds (limits only loosen): strict order, so
    # at every sample everything started since ranks before everything still waiting.
    # The limits change while no operator runs, so the next one plans with all of them
    # from its first turn (and this is the second restart).
    operator.kill()
    for policy in ("gold", "bronze"):
        _set_limits(kube_api, ns, POLICY.plural, policy, "concurrency", OPEN_POLICY)
    _set_limits(kube_api, ns, VCENTER.plural, "big", "limits", LIMITS_B)
    operator = start_operator(stall="snapshotted")
    held = f"vCenter big has its {LIMITS_B['nfcDisks']} NFC disks in use (NBD)"

    def settled() -> list[dict[str, Any]] | None:
        """Every waiting backup says the vCenter holds it: the new operator plans with
        the new limits (what it started before this is not judged for order)."""
        got = objects.items(kube_api, ns, PLURAL)
        said = {
            objects.condition(o, "Admitted").get("message") for o in got if _phase(o) == "Pending"
        }
        return got if said == {held} else None

    got = eventually(settled, timeout=120, what="the restarted operator's waiting statuses")
    started |= {o["metadata"]["name"] for o in got if _phase(o) in BACKUP_ACTIVE}
    phase_b: set[str] = set()
    while True:
        got = objects.items(kube_api, ns, PLURAL)
        if not got:
            break
        running = [o for o in got if _phase(o) in BACKUP_ACTIVE]
        _check_limits(running, LIMITS_B, {"gold": OPEN_POLICY, "bronze": OPEN_POLICY})
        samples += 1
        fresh = [o for o in running if o["metadata"]["name"] not in started]
        phase_b |= {o["metadata"]["name"] for o in fresh}
        started |= phase_b
        pending = [o for o in got if _phase(o) == "Pending"]
        if fresh and pending:
            head = min(pending, key=_rank)
            assert max(_rank(o) for o in fresh) < _rank(head), (
                [o["metadata"]["name"] for o in fresh],
                head["metadata"]["name"],
                head["status"],
            )
        if running:
            _release(kube_api, ns, running)

    assert started == set(names)
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
    assert samples >= 10
