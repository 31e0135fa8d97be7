"""The fail-safe: a VM that has never been backed up under its policy gets a backup now.

Right after each successful vCenter sweep, every VM whose effective policy is ``P``
(the default policy included) gets a VMGuardBackup with ``vmguard.io/trigger: failsafe``
when all of these hold:

- ``P`` is Ready (its VCenter and VMGuardRepository exist, its schedule runs) and not
  paused;
- the VM has no ``Completed`` VMGuardBackup under ``P`` — and no point made under ``P`` in
  its ProtectedVM, whose backup run may have expired — and none in progress (any
  trigger, ad-hoc ones included);
- no fail-safe backup of the VM under ``P`` was created within the back-off: one sweep
  interval after the first, doubling with each further fail-safe that did not complete,
  capped at an hour (or the sweep interval, when that is longer).

So a new VM is protected within one sweep, not at the policy's next scheduled run; a
VM whose backups keep failing is retried at a bounded rate rather than on every sweep;
and there is never more than one fail-safe backup of a VM in flight. Names are
deterministic per minute (:mod:`vmguard.controller.policy.builders`), so two replicas
or a restart in the same minute create it once.

Rollout without a snapshot storm (docs/operator.md, "The fail-safe"): of the VMs due,
one sweep creates at most ``spec.failsafe.maxPerSweep``, and never so many that more
than ``spec.failsafe.maxInFlight`` fail-safe backups of the policy are in progress. The
due VMs are taken in a stable order (VM name, then instance UUID), so those left over
are the first of the next sweeps. Both limits are counted from the VMGuardBackups, not
from memory: a restart or a peer hand-over keeps them. The policy's ``status.failsafe``
says how many were created by the last sweep and how many wait.

A policy with ``spec.dryRun`` creates none: its ``status.failsafe`` reports what the
sweep would have created (``planned``, the first VM names) and how many would wait.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vmguard.api import Trigger
from vmguard.api.kinds import BACKUP, POLICY
from vmguard.controller.kube import points
from vmguard.controller.kube.held import ProtectedVMReader
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.sweeps import SweepView
from vmguard.controller.policy import judgement
from vmguard.controller.policy.builders import build_vmbackup
from vmguard.controller.policy.history import BackupHistory, history_fields
from vmguard.errors import VmguardError
from vmguard.vsphere.records import VMRecord

BACKOFF_CAP = 3600.0
MAX_PER_SWEEP = 50
"""Default of ``spec.failsafe.maxPerSweep``: VMware's NBD guidance of about 50 parallel
disks per ESXi host, so one sweep never asks for more snapshots than one host serves."""
MAX_IN_FLIGHT = 100
"""Default of ``spec.failsafe.maxInFlight``: two sweeps' worth."""
PLANNED_LISTED = 10

log = logging.getLogger(__name__)


def due(vm: str, history: BackupHistory, now: dt.datetime, interval: float) -> bool:
    """Whether ``vm`` (instance UUID) needs a fail-safe backup now; pure."""
    if history.has_completed(vm) or history.in_progress(vm):
        return False
    earlier = [r.created for r in history.failsafes(vm) if r.created]
    if not earlier:
        return True
    wait = min(interval * 2.0 ** (len(earlier) - 1), max(interval, BACKOFF_CAP))
    return (now - max(earlier)).total_seconds() >= wait


@dataclass(frozen=True)
class Limits:
    per_sweep: int = MAX_PER_SWEEP
    in_flight: int = MAX_IN_FLIGHT

    @classmethod
    def of(cls, policy: Mapping[str, Any]) -> Limits:
        """The policy's ``spec.failsafe`` (the CRD bounds them; defaults when unset)."""
        spec = (policy.get("spec") or {}).get("failsafe") or {}
        return cls(
            int(spec.get("maxPerSweep", MAX_PER_SWEEP)),
            int(spec.get("maxInFlight", MAX_IN_FLIGHT)),
        )


@dataclass(frozen=True)
class Plan:
    now: list[VMRecord]
    """Fail-safe backups to create in this sweep, in order."""
    waiting: int
    """VMs due but left for later sweeps by the limits."""


def plan(
    vms: Sequence[VMRecord],
    history: BackupHistory,
    now: dt.datetime,
    interval: float,
    limits: Limits = Limits(),
) -> Plan:
    """Pure: which due VMs get a fail-safe backup now, within ``limits``."""
    due_vms = sorted(
        (vm for vm in vms if due(vm.instance_uuid, history, now, interval)),
        key=lambda vm: (vm.name, vm.instance_uuid),
    )
    running = sum(1 for r in history.records if r.trigger == Trigger.FAILSAFE and r.in_progress)
    room = max(0, min(limits.per_sweep, limits.in_flight - running))
    return Plan(due_vms[:room], len(due_vms) - min(room, len(due_vms)))


def failsafe_status(policy: Mapping[str, Any], made: Plan, created: int) -> dict[str, Any]:
    """Pure: the policy's ``status.failsafe`` after one sweep."""
    if (policy.get("spec") or {}).get("dryRun"):
        return {
            "created": 0,
            "planned": len(made.now),
            "plannedVMs": [vm.name for vm in made.now[:PLANNED_LISTED]],
            "waiting": made.waiting,
        }
    return {"created": created, "planned": None, "plannedVMs": None, "waiting": made.waiting}


async def protect(
    api: KubeAPI,
    namespace: str,
    view: SweepView,
    policy_objects: Sequence[Mapping[str, Any]],
    now: dt.datetime,
    protected_vms: ProtectedVMReader | None = None,
) -> list[str]:
    """Create the fail-safe backups this sweep calls for; the names created. ``now`` is
    the controller's clock (controller/kube/timing.py): back-offs and names are counted in it.
    ``protected_vms``: the operator's shared reader (none: read them afresh)."""
    mine = {p["metadata"]["name"]: p for p in policy_objects}
    wanted = {name: view.vms_of(name) for name in mine}
    wanted = {name: vms for name, vms in wanted.items() if vms}
    if not wanted:
        return []
    # Of each page only what a history reads: every backup of the namespace, whole, was
    # ≈ 50 MB at 5,000 (docs/scale.md).
    backups = [
        history_fields(b) async for page in api.list_pages(BACKUP.plural, namespace) for b in page
    ]
    # A VM whose backup runs expired still has its points: it was backed up.
    reader = protected_vms or ProtectedVMReader(0.0)
    held = await reader.read(api, namespace)
    created = []
    for name, vms in sorted(wanted.items()):
        policy = mine[name]
        if (policy.get("spec") or {}).get("paused"):
            continue
        assessment = await judgement.assess(api, policy)
        if not assessment.ready:
            continue
        history = BackupHistory.of_policy(
            backups, name, points.expired_points(held, backups, policy=name, newest=True)
        )
        made = plan(vms, history, now, view.interval, Limits.of(policy))
        mine_now = 0
        for vm in made.now if not (policy.get("spec") or {}).get("dryRun") else []:
            body = build_vmbackup(policy, vm, now, Trigger.FAILSAFE)
            try:
                if await api.create_object(BACKUP.plural, namespace, body):
                    created.append(body["metadata"]["name"])
                    mine_now += 1
            except VmguardError as exc:
                log.warning("fail-safe backup of VM %s under %s: %s", vm.name, name, exc)
        status = failsafe_status(policy, made, mine_now)
        if (policy.get("status") or {}).get("failsafe") != {
            k: v for k, v in status.items() if v is not None
        }:
            await api.patch_status(POLICY.plural, namespace, name, {"failsafe": status})
    return created
