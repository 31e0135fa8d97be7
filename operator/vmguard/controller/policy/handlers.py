"""The VMProtectionPolicy kind's kopf handlers: a change wakes its loops; a scheduler each.

A created, updated or deleted policy wakes its vCenter's sweeper (the VMs are matched
again now, not at the next interval) and its own scheduler. The scheduler daemon
(:class:`.runs.PolicyRunner`) creates the policy's VMGuardBackups at its scheduled times,
applies its retention, copies its completed backups to its copy targets
(:class:`.copying.Copier`) and keeps its status.
"""

from __future__ import annotations

from typing import Any

import kopf

from vmguard.api import GROUP, VERSION
from vmguard.api.kinds import POLICY
from vmguard.config import BackupSettings
from vmguard.controller.kube.handlers import (
    OperatorMemo,
    acts,
    announcer,
    policy_wakeup,
    vcenter_wakeup,
)
from vmguard.controller.kube.jobs import JobAPI
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.policy.copying import Copier
from vmguard.controller.policy.runs import PolicyRunner


@kopf.on.create(GROUP, VERSION, POLICY.plural)
@kopf.on.update(GROUP, VERSION, POLICY.plural, field="spec")
@kopf.on.delete(GROUP, VERSION, POLICY.plural, optional=True)
def policy_changed(
    spec: kopf.Spec, name: str, namespace: str | None, memo: OperatorMemo, **_: Any
) -> None:
    """A policy changed: its vCenter re-matches its VMs now, not at the next interval,
    and the policy's scheduler re-reads its schedule."""
    vc = (spec.get("vcenterRef") or {}).get("name")
    if vc and namespace:
        vcenter_wakeup(memo, namespace, vc).set()
    if namespace:
        policy_wakeup(memo, namespace, name).set()


@kopf.daemon(GROUP, VERSION, POLICY.plural, cancellation_timeout=10.0)
async def policy_scheduler(
    body: kopf.Body,
    name: str,
    namespace: str | None,
    memo: OperatorMemo,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Create the policy's VMGuardBackups at its scheduled times, apply its retention; keep
    its status."""
    if not acts(memo, "policies"):
        return
    wake = policy_wakeup(memo, namespace or "", name)
    announce = announcer(body)
    metrics = memo.metrics
    api = KubeAPI()
    # Copy Jobs are looked at as often as backup Jobs (VMGUARD_BACKUP_POLL).
    poll = BackupSettings.from_env().poll
    copier = Copier(api, JobAPI(), memo.proxy, memo.timing, logger, poll)
    runner = PolicyRunner(
        api,
        body,
        memo.sweeps,
        wake,
        stopped,
        logger,
        announce,
        memo.timing,
        metrics,
        copier,
        memo.protected_vms,
    )
    try:
        await runner.loop()
    finally:
        # Deleted, or paused in favour of a peer: a standby reports nothing stale.
        metrics.forget_policy(namespace or "", name)
