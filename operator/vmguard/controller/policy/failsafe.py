"""The fail-safe: a VM that has never been backed up under its policy gets a backup now.

Right after each successful vCenter sweep, every VM whose effective policy is ``P``
(the default policy included) gets a VMGuardBackup with ``vmguard.io/trigger: failsafe``
when all of these hold:

- ``P`` is Ready (its VCenter and VMGuardRepository exist, its schedule runs) and not
  paused;
- the VM has no ``Completed`` VMGuardBackup under ``P`` and none in progress (any trigger,
  ad-hoc ones included);
- no fail-safe backup of the VM under ``P`` was created within the back-off: one sweep
  interval after the first, doubling with each further fail-safe that did not complete,
  capped at an hour (or the sweep interval, when that is longer).

So a new VM is protected within one sweep, not at the policy's next scheduled run; a
VM whose backups keep failing is retried at a bounded rate rather than on every sweep;
and there is never more than one fail-safe backup of a VM in flight. Names are
deterministic per minute (:mod:`vmguard.controller.policy.builders`), so two replicas
or a restart in the same minute create it once.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from vmguard.api import Trigger
from vmguard.api.kinds import BACKUP
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.sweeps import SweepView
from vmguard.controller.policy import judgement
from vmguard.controller.policy.builders import build_vmbackup
from vmguard.controller.policy.history import BackupHistory
from vmguard.errors import VmguardError
from vmguard.vsphere.records import VMRecord

BACKOFF_CAP = 3600.0

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


def plan(
    vms: Sequence[VMRecord], history: BackupHistory, now: dt.datetime, interval: float
) -> list[VMRecord]:
    return [vm for vm in vms if due(vm.instance_uuid, history, now, interval)]


async def protect(
    api: KubeAPI,
    namespace: str,
    view: SweepView,
    policy_objects: Sequence[Mapping[str, Any]],
    now: dt.datetime,
) -> list[str]:
    """Create the fail-safe backups this sweep calls for; the names created. ``now`` is
    the controller's clock (controller/kube/timing.py): back-offs and names are counted in it."""
    mine = {p["metadata"]["name"]: p for p in policy_objects}
    wanted = {name: view.vms_of(name) for name in mine}
    wanted = {name: vms for name, vms in wanted.items() if vms}
    if not wanted:
        return []
    backups = await api.list_objects(BACKUP.plural, namespace)
    created = []
    for name, vms in sorted(wanted.items()):
        policy = mine[name]
        if (policy.get("spec") or {}).get("paused"):
            continue
        assessment = await judgement.assess(api, policy)
        if not assessment.ready:
            continue
        history = BackupHistory.of_policy(backups, name)
        for vm in plan(vms, history, now, view.interval):
            body = build_vmbackup(policy, vm, now, Trigger.FAILSAFE)
            try:
                if await api.create_object(BACKUP.plural, namespace, body):
                    created.append(body["metadata"]["name"])
            except VmguardError as exc:
                log.warning("fail-safe backup of VM %s under %s: %s", vm.name, name, exc)
    return created
