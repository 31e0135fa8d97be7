"""Registers vmguard's kopf handlers; the work happens in the per-kind modules.

Handlers stay thin: they read what kopf hands them, call plain functions, and patch
status. Run with ``vmguard operator`` (see :func:`run`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

import kopf

from vmguard.config import ProxySettings
from vmguard.controller import failsafe, restores, vcenter
from vmguard.controller.kubeapi import GROUP, VERSION, KubeAPI
from vmguard.controller.policy_runs import PolicyRunner
from vmguard.controller.sweeps import LatestSweeps, SweepView

SWEEP_DEFAULT_SECONDS = 300.0
SWEEP_RETRY_SECONDS = 30.0


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Shared by every handler (kopf copies the operator memo shallowly per object):
    # (namespace, vCenter name) -> event that wakes that vCenter's sweeper at once.
    memo.wakeups = {}
    # (namespace, policy name) -> event that wakes that policy's scheduler at once.
    memo.policy_wakeups = {}
    # The latest successful sweep of each vCenter, read by the policies' schedulers.
    memo.sweeps = LatestSweeps()
    memo.proxy = ProxySettings.from_env()
    settings.persistence.finalizer = "vmguard.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="vmguard.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="vmguard.io", key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


def _wakeup(memo: Any, namespace: str, vcenter_name: str) -> asyncio.Event:
    wakeups: dict[tuple[str, str], asyncio.Event] = memo.wakeups
    return wakeups.setdefault((namespace, vcenter_name), asyncio.Event())


@kopf.on.create(GROUP, VERSION, "vmprotectionpolicies")
@kopf.on.update(GROUP, VERSION, "vmprotectionpolicies", field="spec")
@kopf.on.delete(GROUP, VERSION, "vmprotectionpolicies", optional=True)
def policy_changed(spec: kopf.Spec, name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    """A policy changed: its vCenter re-matches its VMs now, not at the next interval,
    and the policy's scheduler re-reads its schedule."""
    vc = (spec.get("vcenterRef") or {}).get("name")
    if vc and namespace:
        _wakeup(memo, namespace, vc).set()
    if namespace:
        _policy_wakeup(memo, namespace, name).set()


def _policy_wakeup(memo: Any, namespace: str, name: str) -> asyncio.Event:
    wakeups: dict[tuple[str, str], asyncio.Event] = memo.policy_wakeups
    return wakeups.setdefault((namespace, name), asyncio.Event())


@kopf.daemon(GROUP, VERSION, "vmprotectionpolicies", cancellation_timeout=10.0)
async def policy_scheduler(
    body: kopf.Body,
    name: str,
    namespace: str | None,
    memo: Any,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Create the policy's VMBackups at its scheduled times; keep its status."""
    wake = _policy_wakeup(memo, namespace or "", name)
    await PolicyRunner(KubeAPI(), body, memo.sweeps, wake, stopped, logger).loop()


async def _sleep(stopped: kopf.DaemonStopped, wake: asyncio.Event, seconds: float) -> None:
    waiters = {asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait())}
    _, pending = await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    wake.clear()


@kopf.daemon(GROUP, VERSION, "vcenters", cancellation_timeout=10.0)
async def vcenter_sweeper(
    body: kopf.Body,
    name: str,
    namespace: str | None,
    memo: Any,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Sweep the vCenter every ``sweepInterval`` (and when a policy changes)."""
    api = KubeAPI()
    wake = _wakeup(memo, namespace or "", name)
    announced: set[str] = set()
    while not stopped:
        snapshot = dict(body)  # the live body changes under us; sweep one consistent view
        try:
            interval = vcenter.parse_duration(
                snapshot["spec"].get("sweepInterval"), SWEEP_DEFAULT_SECONDS
            )
        except Exception:
            interval = SWEEP_DEFAULT_SECONDS
        outcome = await vcenter.sweep(api, snapshot, interval)
        meta = snapshot["metadata"]
        await api.patch_status("vcenters", meta["namespace"], meta["name"], outcome.status)
        for policy, count in outcome.matched.items():
            await api.patch_status(
                "vmprotectionpolicies", meta["namespace"], policy, {"matchedVMs": count}
            )
        fresh = [vm for vm in outcome.unprotected if vm.moref not in announced]
        if fresh:
            names = ", ".join(vm.name for vm in fresh[: vcenter.UNPROTECTED_LISTED])
            kopf.warn(
                body,
                reason="UnprotectedVMs",
                message=f"{len(fresh)} VM(s) have no policy: {names}",
            )
        announced = {vm.moref for vm in outcome.unprotected}
        if outcome.result is not None:
            view = SweepView(dt.datetime.now(dt.UTC), interval, outcome.result)
            memo.sweeps.publish(meta["namespace"], meta["name"], view)
            try:
                made = await failsafe.protect(api, meta["namespace"], view, outcome.policies)
            except Exception as exc:  # the sweeper must outlive any fault here
                logger.warning("fail-safe pass failed: %s", exc)
                made = []
            if made:
                logger.info(f"fail-safe: {len(made)} VMBackup(s) for VMs never backed up")
        if not outcome.status.get("reachable"):
            interval = min(interval, SWEEP_RETRY_SECONDS)
            logger.warning("sweep failed; retrying in %.0fs", interval)
        await _sleep(stopped, wake, interval)


@kopf.daemon(GROUP, VERSION, "vmrestores", cancellation_timeout=10.0)
async def restore_driver(
    body: kopf.Body,
    name: str,
    namespace: str | None,
    memo: Any,
    stopped: kopf.DaemonStopped,
    **_: Any,
) -> None:
    """Drive one VMRestore to Completed or Failed (a no-op once it is either)."""

    def announce(reason: str, message: str, warning: bool) -> None:
        (kopf.warn if warning else kopf.info)(body, reason=reason, message=message)

    await restores.drive(KubeAPI(), memo.proxy, namespace or "", name, stopped, announce)


def run(
    namespaces: list[str], clusterwide: bool, liveness: str | None, peering: str | None
) -> None:
    from vmguard.controller.kubeapi import load_config

    load_config()
    asyncio.run(
        kopf.operator(
            clusterwide=clusterwide,
            namespaces=namespaces,
            liveness_endpoint=liveness,
            standalone=peering is None,
            peering_name=peering,
        )
    )
