"""The VMProtectionPolicy kind's kopf handlers: a change wakes its loops; a scheduler each.

A created, updated or deleted policy wakes its vCenter's sweeper (the VMs are matched
again now, not at the next interval) and its own scheduler. The scheduler daemon
(:class:`.runs.PolicyRunner`) creates the policy's VMGuardBackups at its scheduled times,
applies its retention, copies its completed backups to its copy targets
(:class:`.copying.Copier`) and keeps its status.

``copy_queue`` is the kopf index of the backups whose copy waits for admission or runs,
the copies' lane of the vCenter's admission queue (:mod:`.copyqueue`); a change wakes
that vCenter's loop, and a copy the loop admitted wakes the policy's scheduler, which
creates its Job.

``policy_seen`` counts the changes of the namespace's policies' specs (``memo.changes``; the
backups' ``vmbackup_phase`` counts those of each policy's runs): a policy's pass whose
inputs did not change skips its work (:class:`.runs.PolicyRunner`).
"""

from __future__ import annotations

from typing import Any

import kopf

from vmguard.api import GROUP, VERSION
from vmguard.api.kinds import BACKUP, POLICY
from vmguard.config import BackupSettings
from vmguard.controller.kube import points
from vmguard.controller.kube.handlers import (
    OperatorMemo,
    acts,
    admission_wakeup,
    announcer,
    policy_wakeup,
    vcenter_wakeup,
)
from vmguard.controller.kube.jobs import JobAPI
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.workqueue import Queued
from vmguard.controller.policy import copyqueue
from vmguard.controller.policy.copying import Copier
from vmguard.controller.policy.runs import PolicyRunner


@kopf.on.create(GROUP, VERSION, POLICY.plural)
@kopf.on.update(GROUP, VERSION, POLICY.plural, field="spec")
@kopf.on.delete(GROUP, VERSION, POLICY.plural, optional=True)
async def policy_changed(
    spec: kopf.Spec, name: str, namespace: str | None, memo: OperatorMemo, **_: Any
) -> None:
    """A policy changed: its vCenter re-matches its VMs now, not at the next interval,
    and the policy's scheduler re-reads its schedule."""
    vc = (spec.get("vcenterRef") or {}).get("name")
    if vc and namespace:
        vcenter_wakeup(memo, namespace, vc).set()
    if namespace:
        policy_wakeup(memo, namespace, name).set()


def _copy_queued(body: kopf.Body, **_: Any) -> bool:
    """A copy waits or runs. kopf drops the object from the index when this stops
    holding (a None from the index function would leave its last record in place)."""
    return copyqueue.queued_of(body) is not None


@kopf.index(GROUP, VERSION, BACKUP.plural, when=_copy_queued)
async def copy_queue(body: kopf.Body, memo: Any, **_: Any) -> dict[tuple[str, str], Queued] | None:
    """Backups whose copy waits for admission or runs, by (the VCenter's namespace,
    vCenter): the copies' lane of that vCenter's admission loop. A change wakes the
    loop; an admitted copy (Running) wakes its policy's scheduler, which starts its Job."""
    record = copyqueue.queued_of(body)
    if record is None:
        return None
    status = body.get("status") or {}
    vc_ns = status.get("vcenterNamespace") or record.namespace
    admission_wakeup(memo, vc_ns, record.vcenter).set()
    if not record.waiting and record.policy:
        policy_wakeup(memo, record.namespace, record.policy).set()
    return {(vc_ns, record.vcenter): record}


@kopf.on.event(GROUP, VERSION, POLICY.plural)
async def policy_seen(
    body: kopf.Body, memo: OperatorMemo, type: str | None = None, **_: Any
) -> None:
    """A policy appeared, went, or its spec changed (its ``generation``): the
    namespace's policies' next passes work (a pass reads the other policies' specs for
    its conflicts). A status written (each pass's own, the sweep's ``matchedVMs``, the
    fail-safe's) is not counted: no pass reads another policy's status, and at a start
    the passes' own status writes made every other policy's next pass work again
    (docs/scale.md)."""
    meta = body.get("metadata") or {}
    namespace = meta.get("namespace") or ""
    version = None if type == "DELETED" else meta.get("generation")
    memo.changes.bump_on_change(
        ("policies", namespace), (namespace, meta.get("name") or ""), version
    )


def pass_inputs(memo: OperatorMemo, namespace: str, name: str) -> tuple[int, ...]:
    """What a policy's pass reads, counted where it changes (runs.PolicyRunner): its
    runs and the namespace's policies as kopf's watches see them (the runs by the
    backups' ``vmbackup_phase``, the policies by ``policy_seen``), the ProtectedVMs as
    this process writes them (:func:`~vmguard.controller.kube.points.writes`)."""
    return (
        *memo.changes.of(("runs", namespace, name), ("policies", namespace)),
        points.writes(namespace),
    )


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
        inputs=lambda: pass_inputs(memo, namespace or "", name),
        # Its first pass waits for the vCenter's first sweep attempt, if one comes here.
        awaits_sweep=acts(memo, "vcenters"),
    )
    try:
        await runner.loop()
    finally:
        # Deleted, or paused in favour of a peer: a standby reports nothing stale.
        metrics.forget_policy(namespace or "", name)
