"""The VCenter kind's kopf handlers: one sweeper daemon per VCenter.

Every ``sweepInterval`` (and at once when a policy of the vCenter changes:
:func:`~vmguard.controller.kube.handlers.vcenter_wakeup`) the sweeper runs
:func:`.sweeper.sweep`, writes the VCenter's status and each policy's ``matchedVMs``,
warns once about VMs newly left unprotected, publishes a successful sweep to the
policies' schedulers (:class:`~vmguard.controller.kube.sweeps.LatestSweeps`), calls
the after-sweep action ``main`` handed in (the policies' fail-safe), and sweeps our
escaped snapshots (:mod:`.orphans`). A fault in the fail-safe or the orphan sweep is
logged; the sweeper outlives it.

A second daemon per VCenter, ``admission_turns``, is the vCenter's admission loop
(:class:`~vmguard.controller.kube.workqueue.AdmissionLoop`, docs/admission.md) over the
lanes ``main`` put in the memo (backups, restores): it reads each lane's kopf index of
queued work, and two indexes kept here, ``policy_terms`` (each policy's priority, limits
and transport) and ``vcenter_limits`` (each VCenter's ``spec.limits``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import kopf

from vmguard.api import GROUP, VERSION, parse_duration
from vmguard.api.kinds import BACKUP, POLICY, RESTORE, VCENTER
from vmguard.controller.kube.admission import VCenterLimits
from vmguard.controller.kube.handlers import (
    AfterSweep,
    OperatorMemo,
    acts,
    admission_wakeup,
    vcenter_wakeup,
)
from vmguard.controller.kube.jobs import JobAPI
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.sweeps import LatestSweeps, SweepView
from vmguard.controller.kube.timing import REAL_TIME, Timing
from vmguard.controller.kube.workqueue import AdmissionLoop, PolicyTerms, Queued, vcenter_limits
from vmguard.controller.vcenter import orphans, sweeper
from vmguard.metrics import Metrics

SWEEP_DEFAULT_SECONDS = 300.0
SWEEP_RETRY_SECONDS = 30.0


async def _sleep(
    timing: Timing, stopped: kopf.DaemonStopped, wake: asyncio.Event, seconds: float
) -> None:
    await timing.wait(seconds, wake, stopped)
    wake.clear()


@kopf.index(GROUP, VERSION, POLICY.plural)
async def policy_terms(
    spec: kopf.Spec, name: str, namespace: str | None, memo: Any, **_: Any
) -> dict[tuple[str, str], PolicyTerms]:
    """What admission needs of each policy; a change wakes its vCenter's loop."""
    vc_ref = spec.get("vcenterRef") or {}
    if vc_ref.get("name"):
        admission_wakeup(memo, vc_ref.get("namespace") or namespace or "", vc_ref["name"]).set()
    return {(namespace or "", name): PolicyTerms.of(spec)}


@kopf.index(GROUP, VERSION, VCENTER.plural, id="vcenter_limits")
async def limits_of_vcenter(
    spec: kopf.Spec, name: str, namespace: str | None, memo: Any, **_: Any
) -> dict[tuple[str, str], VCenterLimits]:
    """Each VCenter's limits; a change wakes its loop."""
    admission_wakeup(memo, namespace or "", name).set()
    return {(namespace or "", name): vcenter_limits(spec)}


@kopf.daemon(GROUP, VERSION, VCENTER.plural, id="admission", cancellation_timeout=10.0)
async def admission_turns(
    name: str,
    namespace: str | None,
    memo: OperatorMemo,
    stopped: kopf.DaemonStopped,
    **kwargs: Any,
) -> None:
    """Start this vCenter's waiting proxy work of every lane in order, within its limits
    (docs/admission.md). The indexes come from kopf as keyword arguments named after their
    handlers; kopf fills them from its first LIST before any handler runs, and keeps them
    current."""
    lanes = {lane.kind: lane for lane in memo.lanes if acts(memo, lane.controller)}
    if not lanes:
        return
    queues: list[kopf.Index[tuple[str, str], Queued]] = [
        kwargs[lane.index] for lane in memo.lanes if lane.index in kwargs
    ]
    policies: kopf.Index[tuple[str, str], PolicyTerms] = kwargs["policy_terms"]
    vcenters: kopf.Index[tuple[str, str], VCenterLimits] = kwargs["vcenter_limits"]
    ns = namespace or ""
    key = (ns, name)

    def terms() -> dict[str, PolicyTerms]:
        return {p: t for (pns, p), store in policies.items() if pns == ns for t in store}

    def limits() -> VCenterLimits:
        return next(iter(vcenters.get(key, [])), VCenterLimits())

    loop = AdmissionLoop(
        KubeAPI(),
        ns,
        name,
        lanes,
        records=lambda: [q for index in queues for q in index.get(key, [])],
        terms=terms,
        limits=limits,
        timing=memo.timing,
    )
    # While it runs, kopf lets this replica act: the backups' expiry loop acts then too.
    with memo.presence.entered():
        await loop.run(admission_wakeup(memo, ns, name), stopped)


@kopf.daemon(GROUP, VERSION, VCENTER.plural, cancellation_timeout=10.0)
async def vcenter_sweeper(
    body: kopf.Body,
    name: str,
    namespace: str | None,
    memo: OperatorMemo,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Sweep the vCenter every ``sweepInterval`` (and when a policy changes)."""
    if not acts(memo, "vcenters"):
        return
    api = KubeAPI()
    wake = vcenter_wakeup(memo, namespace or "", name)
    metrics = memo.metrics
    try:
        await _sweep_forever(
            api, body, wake, metrics, memo.sweeps, memo.after_sweep, stopped, logger, memo.timing
        )
    finally:
        # Deleted, or paused in favour of a peer: a standby reports nothing stale.
        metrics.forget_vcenter(namespace or "", name)


async def _sweep_forever(
    api: KubeAPI,
    body: kopf.Body,
    wake: asyncio.Event,
    metrics: Metrics,
    sweeps: LatestSweeps,
    after_sweep: AfterSweep,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    timing: Timing = REAL_TIME,
) -> None:
    announced: set[str] = set()
    first = sweeper.first_sweep_status(dict(body))
    if first is not None:  # in progress, not Current for lack of a status (sweeper.py)
        meta = body["metadata"]
        try:
            await api.patch_status(VCENTER.plural, meta["namespace"], meta["name"], first)
        except Exception as exc:  # the sweep's own status follows; it must not be held up
            logger.warning("could not say the first sweep is under way: %s", exc)
    while not stopped:
        snapshot = dict(body)  # the live body changes under us; sweep one consistent view
        try:
            interval = parse_duration(snapshot["spec"].get("sweepInterval"), SWEEP_DEFAULT_SECONDS)
        except Exception:
            interval = SWEEP_DEFAULT_SECONDS
        interval = timing.interval(interval)
        outcome = await sweeper.sweep(api, snapshot, interval, timing.clock, wake)
        meta = snapshot["metadata"]
        await api.patch_status(VCENTER.plural, meta["namespace"], meta["name"], outcome.status)
        metrics.observe_sweep(meta["namespace"], meta["name"], outcome.status)
        for policy, count in outcome.matched.items():
            await api.patch_status(POLICY.plural, meta["namespace"], policy, {"matchedVMs": count})
        fresh = [vm for vm in outcome.unprotected if vm.moref not in announced]
        if fresh:
            names = ", ".join(vm.name for vm in fresh[: sweeper.UNPROTECTED_LISTED])
            kopf.warn(
                body,
                reason="UnprotectedVMs",
                message=f"{len(fresh)} VM(s) have no policy: {names}",
            )
        announced = {vm.moref for vm in outcome.unprotected}
        if outcome.result is not None:
            now = timing.now()
            view = SweepView(now, interval, outcome.result)
            sweeps.publish(meta["namespace"], meta["name"], view)
            try:
                made = await after_sweep(api, meta["namespace"], view, outcome.policies, now)
            except Exception as exc:  # the sweeper must outlive any fault here
                logger.warning("fail-safe pass failed: %s", exc)
                made = []
            if made:
                logger.info(f"fail-safe: {len(made)} VMGuardBackup(s) for VMs never backed up")
            allowed = list(snapshot["spec"].get("allowedNamespaces") or ())
            await _sweep_orphans(api, meta, outcome, metrics, logger, now, allowed)
            await _sweep_foreign_jobs(api, meta["namespace"], logger)
        if not outcome.status.get("reachable"):
            # The policies' first passes wait for the first sweep attempt (policy.runs).
            sweeps.failed(meta["namespace"], meta["name"])
            interval = min(interval, timing.interval(SWEEP_RETRY_SECONDS))
            logger.warning("sweep failed; retrying in %.0fs", interval)
        await _sleep(timing, stopped, wake, interval)


async def _sweep_foreign_jobs(api: KubeAPI, namespace: str, logger: kopf.Logger) -> None:
    """Proxy Jobs run here for another namespace's VMGuardBackup or VMGuardRestore
    (cross-namespace references, docs/tenancy.md) go when that object is gone: no
    ownerReference crosses namespaces, and a deletion the operator missed leaves them."""

    async def live_uids(owner_namespace: str) -> set[str]:
        objs = [
            *await api.list_objects(BACKUP.plural, owner_namespace),
            *await api.list_objects(RESTORE.plural, owner_namespace),
        ]
        return {o["metadata"]["uid"] for o in objs}

    try:
        gone = await JobAPI(api.api).sweep_foreign(namespace, live_uids)
    except Exception as exc:  # the sweeper must outlive any fault here
        logger.warning("sweep of other namespaces' proxy Jobs failed: %s", exc)
        return
    if gone:
        logger.info(f"removed {len(gone)} proxy Job(s) whose object is gone: {', '.join(gone)}")


async def _sweep_orphans(
    api: KubeAPI,
    meta: dict[str, Any],
    outcome: sweeper.SweepOutcome,
    metrics: Metrics,
    logger: kopf.Logger,
    now: dt.datetime,
    allowed: list[str] | None = None,
) -> None:
    """Escaped snapshots of ours go (controller/vcenter/orphans.py); the rest feed the metrics.
    ``now`` is the time of the sweep, on the controller's clock."""
    namespace, name = meta["namespace"], meta["name"]
    metrics.observe_snapshots(namespace, name, orphans.snapshot_ages(outcome.records, now))
    if outcome.endpoint is None:
        return
    try:
        allow = orphans.consolidation_policy(outcome.result, outcome.policies)
        swept = await orphans.sweep(
            api,
            outcome.endpoint,
            namespace,
            outcome.records,
            allow,
            now=now,
            also=allowed or (),
        )
    except Exception as exc:  # the sweeper must outlive any fault here
        logger.warning("orphan snapshot sweep failed: %s", exc)
        return
    try:
        booted = await orphans.sweep_boot_vms(
            api, outcome.endpoint, namespace, outcome.records, allowed or ()
        )
    except Exception as exc:  # the sweeper must outlive any fault here
        logger.warning("boot test VM sweep failed: %s", exc)
        booted = []
    for vm_name in booted:
        logger.info(f"boot test VM {vm_name}: its test is over; destroyed")
    for s in swept.swept:
        state = "removed" if s.removed else f"could not be removed ({s.error})"
        logger.info(f"snapshot {s.snapshot_moref} of {s.vm_name}: {s.reason}; {state}")
    for vm_name, report in swept.consolidations.items():
        if report.consolidated:
            logger.info(f"disks of {vm_name} consolidated")
        else:
            logger.warning(f"{vm_name} needs consolidation: {report.error}")
