"""Registers vmguard's kopf handlers; the work happens in the per-kind modules.

Handlers stay thin: they read what kopf hands them, call plain functions, and patch
status. Run with ``vmguard operator`` (see :func:`run`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import kopf

from vmguard.api import (
    ANNOTATION_PREFIX,
    BACKUP_TERMINAL,
    FINALIZER,
    GROUP,
    LABEL_POLICY,
    VERSION,
    BackupPhase,
    parse_duration,
)
from vmguard.config import BackupSettings, ProxySettings, RepositorySettings, catalog_interval
from vmguard.controller import backups, catalog, failsafe, orphans, peering, restores, vcenter
from vmguard.controller.backupsteps import MissingRef
from vmguard.controller.jobs import JobAPI
from vmguard.controller.kubeapi import KubeAPI
from vmguard.controller.policy_runs import PolicyRunner
from vmguard.controller.repositories import RepositoryWatch
from vmguard.controller.sweeps import LatestSweeps, SweepView
from vmguard.controller.timing import REAL_TIME, Timing
from vmguard.errors import ConfigError
from vmguard.hooks import NO_HOOKS, Hooks
from vmguard.metrics import Metrics

CONTROLLERS = frozenset({"vcenters", "policies", "backups", "restores", "repositories", "catalog"})
SWEEP_DEFAULT_SECONDS = 300.0
SWEEP_RETRY_SECONDS = 30.0
logger = logging.getLogger(__name__)


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
    # The one clock of every handler and loop (controller/timing.py).
    memo.timing = getattr(memo, "timing", REAL_TIME)
    memo.backups = backups.BackupContext(
        KubeAPI(),
        JobAPI(),
        memo.proxy,
        BackupSettings.from_env(),
        hooks=getattr(memo, "hooks", NO_HOOKS),
        timing=memo.timing,
    )
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
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
    """Create the policy's VMBackups at its scheduled times, apply its retention; keep
    its status."""
    if not _acts(memo, "policies"):
        return
    wake = _policy_wakeup(memo, namespace or "", name)
    announce = _announcer(body)
    runner = PolicyRunner(
        KubeAPI(), body, memo.sweeps, wake, stopped, logger, announce, timing=memo.timing
    )
    await runner.loop()


def _announcer(body: kopf.Body) -> Any:
    def announce(reason: str, message: str, warning: bool) -> None:
        (kopf.warn if warning else kopf.info)(body, reason=reason, message=message)

    return announce


@kopf.daemon(GROUP, VERSION, "backuprepositories", cancellation_timeout=10.0)
async def repository_watch(
    body: kopf.Body,
    name: str,
    namespace: str | None,
    memo: Any,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Reachability and stats of the repository; its scheduled GC and verify."""
    if not _acts(memo, "repositories"):
        return
    metrics: Metrics | None = getattr(memo, "metrics", None)
    timing: Timing = memo.timing
    interval = timing.interval(RepositorySettings.from_env().interval)
    watch = RepositoryWatch(
        KubeAPI(), body, metrics, _announcer(body), logger, interval, timing=timing
    )
    try:
        await watch.loop(stopped)
    finally:
        # Deleted, or paused in favour of a peer: a standby reports nothing stale.
        if metrics is not None:
            metrics.forget_repository(namespace or "", name)


async def _sleep(
    timing: Timing, stopped: kopf.DaemonStopped, wake: asyncio.Event, seconds: float
) -> None:
    await timing.wait(seconds, wake, stopped)
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
    if not _acts(memo, "vcenters"):
        return
    api = KubeAPI()
    wake = _wakeup(memo, namespace or "", name)
    metrics: Metrics = memo.metrics
    try:
        await _sweep_forever(api, body, wake, metrics, memo.sweeps, stopped, logger, memo.timing)
    finally:
        # Deleted, or paused in favour of a peer: a standby reports nothing stale.
        metrics.forget_vcenter(namespace or "", name)


async def _sweep_forever(
    api: KubeAPI,
    body: kopf.Body,
    wake: asyncio.Event,
    metrics: Metrics,
    sweeps: LatestSweeps,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    timing: Timing = REAL_TIME,
) -> None:
    announced: set[str] = set()
    while not stopped:
        snapshot = dict(body)  # the live body changes under us; sweep one consistent view
        try:
            interval = parse_duration(snapshot["spec"].get("sweepInterval"), SWEEP_DEFAULT_SECONDS)
        except Exception:
            interval = SWEEP_DEFAULT_SECONDS
        interval = timing.interval(interval)
        outcome = await vcenter.sweep(api, snapshot, interval, timing.clock)
        meta = snapshot["metadata"]
        await api.patch_status("vcenters", meta["namespace"], meta["name"], outcome.status)
        metrics.observe_sweep(meta["namespace"], meta["name"], outcome.status)
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
            now = timing.now()
            view = SweepView(now, interval, outcome.result)
            sweeps.publish(meta["namespace"], meta["name"], view)
            try:
                made = await failsafe.protect(
                    api, meta["namespace"], view, outcome.policies, now=now
                )
            except Exception as exc:  # the sweeper must outlive any fault here
                logger.warning("fail-safe pass failed: %s", exc)
                made = []
            if made:
                logger.info(f"fail-safe: {len(made)} VMBackup(s) for VMs never backed up")
            await _sweep_orphans(api, meta, outcome, metrics, logger, now)
        if not outcome.status.get("reachable"):
            interval = min(interval, timing.interval(SWEEP_RETRY_SECONDS))
            logger.warning("sweep failed; retrying in %.0fs", interval)
        await _sleep(timing, stopped, wake, interval)


async def _sweep_orphans(
    api: KubeAPI,
    meta: dict[str, Any],
    outcome: vcenter.SweepOutcome,
    metrics: Metrics,
    logger: kopf.Logger,
    now: dt.datetime,
) -> None:
    """Escaped snapshots of ours go (controller/orphans.py); the rest feed the metrics.
    ``now`` is the time of the sweep, on the controller's clock."""
    namespace, name = meta["namespace"], meta["name"]
    metrics.observe_snapshots(namespace, name, orphans.snapshot_ages(outcome.records, now))
    if outcome.endpoint is None:
        return
    try:
        allow = orphans.consolidation_policy(outcome.result, outcome.policies)
        swept = await orphans.sweep(
            api, outcome.endpoint, namespace, outcome.records, allow, now=now
        )
    except Exception as exc:  # the sweeper must outlive any fault here
        logger.warning("orphan snapshot sweep failed: %s", exc)
        return
    for s in swept.swept:
        state = "removed" if s.removed else f"could not be removed ({s.error})"
        logger.info(f"snapshot {s.snapshot_moref} of {s.vm_name}: {s.reason}; {state}")
    for vm_name, report in swept.consolidations.items():
        if report.consolidated:
            logger.info(f"disks of {vm_name} consolidated")
        else:
            logger.warning(f"{vm_name} needs consolidation: {report.error}")


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
    if not _acts(memo, "restores"):
        return

    def announce(reason: str, message: str, warning: bool) -> None:
        (kopf.warn if warning else kopf.info)(body, reason=reason, message=message)

    await restores.drive(
        KubeAPI(), memo.proxy, namespace or "", name, stopped, announce, timing=memo.timing
    )


def _backup_in_flight(status: kopf.Status, labels: kopf.Labels, **_: Any) -> bool:
    return backups.in_flight(status, labels)


@kopf.daemon(GROUP, VERSION, "vmbackups", when=_backup_in_flight, cancellation_timeout=5.0)
async def vmbackup_runner(
    name: str,
    namespace: str | None,
    uid: str | None,
    memo: Any,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Drive one VMBackup through its phases; resumed by any operator that (re)starts."""
    if not _acts(memo, "backups"):
        return
    ctx: backups.BackupContext = memo.backups
    while not stopped:
        try:
            obj = await ctx.api.get_object(backups.PLURAL, namespace or "", name)
            if obj is None or obj["metadata"]["uid"] != uid:
                return
            if obj["metadata"].get("deletionTimestamp"):
                return
            delay = await backups.reconcile(ctx, obj)
        except Exception as exc:  # a fault of ours or a peer's: report, wait, go on
            logger.exception("backup step failed: %s", exc)
            delay = 30.0
        if delay is None:
            return
        if delay > 0:
            await ctx.timing.wait(delay, stopped)


@kopf.on.field(GROUP, VERSION, "vmbackups", field="status.phase")
async def vmbackup_phase(body: kopf.Body, new: Any, memo: Any, **_: Any) -> None:
    """A backup finished: count it (outcome, duration, bytes, last success) once. Seen as
    it happens; backups that finished while no operator ran are not counted again. A
    completed one wakes its policy's scheduler, which applies retention (async: on the
    event loop, where that scheduler's asyncio.Event lives)."""
    if new in BACKUP_TERMINAL and getattr(memo, "metrics", None) is not None:
        memo.metrics.observe_backup(dict(body))
    policy = (body.get("metadata", {}).get("labels") or {}).get(LABEL_POLICY)
    policy = policy or ((body.get("spec") or {}).get("policyRef") or {}).get("name")
    if new == BackupPhase.COMPLETED and policy and body.get("metadata", {}).get("namespace"):
        # Its policy's retention runs now rather than at the scheduler's next pass.
        _policy_wakeup(memo, body["metadata"]["namespace"], policy).set()


@kopf.on.delete(GROUP, VERSION, "vmbackups", when=_backup_in_flight)
async def vmbackup_deleted(body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """Deleted mid-flight: stop the proxy and remove the snapshot before letting go."""
    if not _acts(memo, "backups"):
        return
    try:
        await backups.cleanup(memo.backups, dict(body))
    except MissingRef as exc:
        logger.warning("cannot remove the snapshot (%s); the orphan sweep will", exc)
    except Exception as exc:
        raise kopf.TemporaryError(f"cleanup failed: {exc}", delay=15) from exc


@kopf.daemon(GROUP, VERSION, "backuprepositories", id="catalog_sync", cancellation_timeout=10.0)
async def catalog_sync(
    body: kopf.Body,
    memo: Any,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Keep the namespace's VMBackups in step with the repository's archives
    (controller/catalog.py): at start, then every ``VMGUARD_CATALOG_INTERVAL`` seconds."""
    if not _acts(memo, "catalog"):
        return

    def announce(obj: Any, reason: str, message: str, warning: bool) -> None:
        (kopf.warn if warning else kopf.info)(obj, reason=reason, message=message)

    api = KubeAPI()
    timing: Timing = memo.timing
    interval = timing.interval(float(getattr(memo, "catalog_interval", None) or catalog_interval()))
    told: set[str] = set()  # say each skipped archive once, not every pass
    while not stopped:
        try:
            report = await catalog.sync(api, dict(body), announce)
        except Exception as exc:  # the repository or the apiserver is away: next time
            logger.warning("catalog sync failed: %s", exc)
        else:
            if report.created or report.completed:
                made = ", ".join(report.created + report.completed)
                logger.info(f"catalog sync: VMBackups recreated from archives: {made}")
            for note in sorted(set(report.skipped) - told):
                logger.warning(f"catalog sync: no VMBackup for archive {note}")
            told = set(report.skipped)
        await timing.wait(interval, stopped)


@dataclass(frozen=True)
class OperatorOptions:
    """How ``vmguard operator`` runs: what it watches, peering, probe and metrics."""

    namespaces: list[str]
    clusterwide: bool = False
    liveness: str | None = None
    peering: str | None = None
    priority: int | None = None
    peering_lifetime: int = 60
    metrics_port: int | None = 8080
    metrics_address: str = "0.0.0.0"
    controllers: frozenset[str] = CONTROLLERS
    hooks: Hooks = NO_HOOKS
    """Injection points an embedder gave :func:`vmguard.cli.main` (the lab's fault tests)."""
    timing: Timing = REAL_TIME
    """The clock and pace an embedder gave :func:`vmguard.cli.main` (the lab's speed-up)."""


def _acts(memo: Any, controller: str) -> bool:
    """Whether this operator runs ``controller`` (``--controllers``; all by default)."""
    return controller in getattr(memo, "controllers", CONTROLLERS)


def run(options: OperatorOptions) -> None:
    from kubernetes import client

    unknown = options.controllers - CONTROLLERS
    if unknown:
        known = ", ".join(sorted(CONTROLLERS))
        raise ConfigError(f"unknown controller(s) {', '.join(sorted(unknown))}: use {known}")

    from vmguard.controller.kubeapi import load_config

    try:
        interval = catalog_interval()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    load_config()
    timing = options.timing
    metrics = Metrics(clock=lambda: timing.now().timestamp())
    if options.metrics_port is not None:
        try:
            metrics.serve(options.metrics_port, options.metrics_address)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {options.metrics_address}:{options.metrics_port}: "
                f"{exc.strerror or exc} (--metrics-port, --metrics-address)"
            ) from None
        logger.info(
            "metrics on http://%s:%d/metrics", options.metrics_address, options.metrics_port
        )
    settings = kopf.OperatorSettings()
    # Events say which replica posted them (kopf's default instance is "dev").
    settings.posting.reporting_instance = peering.replica_name()
    priority = None
    if options.peering is not None:
        priority = peering.draw_priority(options.priority)
        # Read by kopf's keep-alive loop from the start: set before the operator runs.
        settings.peering.lifetime = options.peering_lifetime
        created = peering.ensure_peering(
            client.ApiClient(), options.peering, options.namespaces, options.clusterwide
        )
        if created:
            logger.info("created peering object %r in %s", options.peering, ", ".join(created))
        logger.info("peering %r with priority %d", options.peering, priority)
    asyncio.run(
        kopf.operator(
            clusterwide=options.clusterwide,
            namespaces=options.namespaces,
            liveness_endpoint=options.liveness,
            standalone=options.peering is None,
            peering_name=options.peering,
            priority=priority,
            settings=settings,
            memo=kopf.Memo(
                metrics=metrics,
                controllers=options.controllers,
                catalog_interval=interval,
                hooks=options.hooks,
                timing=timing,
            ),
        )
    )
