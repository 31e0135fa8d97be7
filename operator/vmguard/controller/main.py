"""Wires the operator: each kind's kopf handlers, the shared memo, and :func:`run`.

Importing this module registers the handlers every kind's package exposes in its
``handlers.py`` (``vcenter``, ``policy``, ``backup``, ``restore``, ``repository``);
:class:`Memo` is kopf's operator memo: what they share (the clock, the latest sweeps, the
wake-up events of :mod:`.kube.handlers`, the backup context, and the policies' fail-safe as
the vCenter sweeper's after-sweep action); :func:`run` creates it and :func:`configure`
completes it at start-up, before any handler runs. It implements the view each kind's
handlers declare (``OperatorMemo``, ``BackupMemo``), so mypy checks that it holds what
they read. Handlers stay thin:
they read what kopf hands them, call plain functions, and patch status. Run with
``vmguard operator`` (see :func:`run`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from vmguard.api import ANNOTATION_PREFIX, FINALIZER
from vmguard.api.kinds import BACKUP
from vmguard.config import BackupSettings, ProxySettings, catalog_interval
from vmguard.controller.backup import handlers as backup_handlers
from vmguard.controller.backup.admission import BackupLane
from vmguard.controller.backup.reconcile import BackupContext
from vmguard.controller.backup.verification import VerifyLane
from vmguard.controller.kube import crdcheck, migration, peering, readiness, trim
from vmguard.controller.kube.handlers import CONTROLLERS, AfterSweep, Changes, Presence, acts
from vmguard.controller.kube.held import SHARED_FOR, ProtectedVMReader
from vmguard.controller.kube.jobs import JobAPI
from vmguard.controller.kube.kubeapi import PAGE as LIST_PAGE
from vmguard.controller.kube.kubeapi import KubeAPI, load_config
from vmguard.controller.kube.supervisor import Supervisor
from vmguard.controller.kube.sweeps import LatestSweeps
from vmguard.controller.kube.timing import REAL_TIME, Timing
from vmguard.controller.kube.workqueue import Lane
from vmguard.controller.policy import failsafe
from vmguard.controller.policy import handlers as policy_handlers
from vmguard.controller.policy.copyqueue import CopyLane
from vmguard.controller.repository import handlers as repository_handlers
from vmguard.controller.restore import handlers as restore_handlers
from vmguard.controller.restore.admission import RestoreLane
from vmguard.controller.vcenter import handlers as vcenter_handlers
from vmguard.errors import ConfigError
from vmguard.hooks import NO_HOOKS, Hooks
from vmguard.metrics import Metrics

# Imported for what importing them does: their decorators register the kinds' handlers.
KINDS = (vcenter_handlers, policy_handlers, backup_handlers, restore_handlers, repository_handlers)
logger = logging.getLogger(__name__)


WORKER_IDLE = 0.5
"""Seconds a kopf worker of an object outlives its last event (kopf's default: 5)."""

EVENT_HANDLERS = ("backup_gone", "vmbackup_phase", "policy_seen", "restore_gone")
"""The ids of our ``@kopf.on.event`` handlers (tests/controller/test_kopf_log.py holds
this to kopf's registry)."""


class QuietEventHandlers(logging.Filter):
    """Drops kopf's ``Handler 'x' succeeded.`` for the handlers of raw watch events
    (:data:`EVENT_HANDLERS`). kopf logs it at INFO for every event of every object: each
    status change of each backup, and each of 5,000 backups and policies at every start
    (docs/scale.md), while such a handler only counts a change or wakes a loop. Their
    failures, and every other handler's lines, are logged as before."""

    def __init__(self, ids: tuple[str, ...] = EVENT_HANDLERS) -> None:
        super().__init__()
        self.lines = frozenset(f"Handler {i!r} succeeded." for i in ids)

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and record.getMessage() in self.lines)


def quiet_event_handlers() -> None:
    """Put :class:`QuietEventHandlers` on kopf's per-object logger (once)."""
    objects = logging.getLogger("kopf.objects")
    if not any(isinstance(f, QuietEventHandlers) for f in objects.filters):
        objects.addFilter(QuietEventHandlers())


@dataclass
class Memo(backup_handlers.BackupMemo):
    """kopf's operator memo (``memo=`` of every handler), shared by all of them: kopf copies
    it shallowly per object, so the copies share these values. Its fields are documented
    on the views it implements (:class:`~vmguard.controller.kube.handlers.OperatorMemo`)."""

    metrics: Metrics
    controllers: frozenset[str]
    catalog_interval: float
    hooks: Hooks
    timing: Timing
    presence: Presence
    # Filled by configure() at start-up, before any handler runs.
    proxy: ProxySettings = field(init=False)
    backups: BackupContext = field(init=False)
    wakeups: dict[tuple[str, str], asyncio.Event] = field(init=False)
    policy_wakeups: dict[tuple[str, str], asyncio.Event] = field(init=False)
    admission_wakeups: dict[tuple[str, str], asyncio.Event] = field(init=False)
    lanes: tuple[Lane, ...] = field(init=False)
    sweeps: LatestSweeps = field(init=False)
    after_sweep: AfterSweep = field(init=False)
    protected_vms: ProtectedVMReader = field(init=False)
    finished_backups: set[str] = field(init=False)
    finished_verifications: set[tuple[str, str]] = field(init=False)
    expiry_wakeup: asyncio.Event = field(init=False)
    changes: Changes = field(init=False)
    unrecorded: dict[str, migration.Unrecorded] = field(init=False)
    fold_seen: set[str] = field(init=False)
    fold_wakeup: asyncio.Event = field(init=False)
    backup_tasks: Supervisor = field(init=False)
    verify_tasks: Supervisor = field(init=False)
    loops: list[asyncio.Task[Any]] = field(init=False)


class DiffBaseExceptBackups(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff-base (the last handled essence, in an annotation), kept for every kind
    but VMGuardBackups. No handler of backups compares an old state with a new one
    (they have indexes, event handlers and a deletion handler), yet kopf
    stores the essence of every object it first sees that has a changing handler: one
    PATCH of each new backup, 5,000 in a night, for nothing (docs/scale.md). A backup
    without one is a "creation" to kopf at every event, with no creation handler to
    run: nothing is written. Existing annotations are left in place and not read.

    Nor is a backup's essence built: kopf builds one at every event of every object, a
    deep copy of the whole body (status included, then dropped), to compare with the
    diff-base; for backups nothing compares it. At a start with 5,000 finished runs those
    copies were about a fifth of kopf's work on them (docs/scale.md)."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        if body.get("kind") == BACKUP.kind:
            return cast(kopf.BodyEssence, {})
        return super().build(body=body, extra_fields=extra_fields)

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        if body.get("kind") == BACKUP.kind:
            return None
        return super().fetch(body=body)

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        if body.get("kind") == BACKUP.kind:
            return
        super().store(body=body, patch=patch, essence=essence)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: Memo, **_: Any) -> None:
    # Shared by every handler (kopf copies the operator memo shallowly per object):
    # (namespace, vCenter name) -> event that wakes that vCenter's sweeper at once.
    memo.wakeups = {}
    # (namespace, policy name) -> event that wakes that policy's scheduler at once.
    memo.policy_wakeups = {}
    # (namespace, vCenter name) -> event that wakes that vCenter's admission loop.
    memo.admission_wakeups = {}
    # The latest successful sweep of each vCenter, read by the policies' schedulers.
    memo.sweeps = LatestSweeps()
    # One compact read of a namespace's ProtectedVMs, shared by its policies' passes and
    # the fail-safe (controller/kube/held.py).
    memo.protected_vms = ProtectedVMReader(SHARED_FOR, memo.timing)
    memo.finished_backups = set()
    memo.finished_verifications = set()
    memo.expiry_wakeup = asyncio.Event()
    # The Completed backups that do not say their point was recorded (the fold's).
    memo.unrecorded = {}
    memo.fold_seen = set()
    memo.fold_wakeup = asyncio.Event()
    # What the watches saw change, counted: a policy's pass skips its work without.
    memo.changes = Changes()
    # What the vCenter sweeper does after each successful sweep: the policies' fail-safe.
    memo.after_sweep = functools.partial(failsafe.protect, protected_vms=memo.protected_vms)
    memo.proxy = ProxySettings.from_env()
    memo.backups = BackupContext(
        KubeAPI(),
        JobAPI(),
        memo.proxy,
        BackupSettings.from_env(),
        hooks=memo.hooks,
        # The one clock of every handler and loop (controller/kube/timing.py).
        timing=memo.timing,
    )
    # The kinds of proxy work the admission loops start, each over its kind's index.
    memo.lanes = (
        BackupLane(deadline=memo.backups.settings.deadline),
        RestoreLane(),
        VerifyLane(),
        CopyLane(),
    )
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = DiffBaseExceptBackups(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # kopf's first LIST of each kind in pages, not the whole kind in one response: 5,000
    # backups were one ≈ 11 MB body decoded at once, on top of the objects kopf keeps.
    settings.watching.chunk_size = LIST_PAGE
    # kopf keeps a worker per object (its queue, events, task and last event) until it
    # has been idle this long: at a start every listed object's worker is released at
    # once when the indexes are filled, and with kopf's 5 s the 5,000 backups' workers
    # outlived their work by seconds, beside the first sweep (peak RSS 307-325 MiB in 3
    # of 5 starts at 5,000 VMs, 286-290 in 4 of 4 with this; docs/scale.md). A later
    # event of the object starts a new worker.
    settings.queueing.idle_timeout = WORKER_IDLE


@kopf.on.startup()
async def start_loops(memo: Memo, settings: kopf.OperatorSettings, **kwargs: Any) -> None:
    """The operator's own loops (after ``configure``): the backups' expiry loop, one per
    operator over kopf's indexes (controller/backup/expiry.py; kopf fills them as its
    watches start, and the loop acts only while kopf lets this replica act), the fold of
    unrecorded completed backups' points (controller/kube/migration.py), the tasks of
    backups in flight and of running verifications (controller/kube/supervisor.py, over
    kopf's indexes, gated the same way: the kind has no kopf daemon, so kopf keeps no
    body per backup), and the heap's trim after work (controller/kube/trim.py)."""
    memo.backup_tasks, memo.verify_tasks = backup_handlers.supervisors(
        memo, settings, kwargs["backups_running"], kwargs["verifications_running"]
    )
    memo.loops = [
        asyncio.create_task(
            backup_handlers.expiry_loop(memo, kwargs["finished_runs"], kwargs["policy_ttls"]),
            name="backup expiry loop",
        ),
        asyncio.create_task(backup_handlers.fold_loop(memo), name="points fold loop"),
        # glibc keeps the start's transient (≈ 150 MB at 5,000 VMs) unless told.
        asyncio.create_task(trim.trim_after_work(memo.timing, Never()), name="heap trim"),
    ]
    if acts(memo, "backups"):
        memo.loops += [
            asyncio.create_task(memo.backup_tasks.run(Never()), name="backup tasks"),
            asyncio.create_task(memo.verify_tasks.run(Never()), name="verification tasks"),
        ]


class Never:
    """A loop's ``stopped`` for one that ends when its task is cancelled (at cleanup)."""

    def __bool__(self) -> bool:
        return False

    async def wait(self) -> None:
        await asyncio.Event().wait()


@kopf.on.cleanup()
async def stop_loops(memo: Memo, **_: Any) -> None:
    """Cancel the operator's loops; the supervisors stop their tasks as they end (each
    task is stopped, cancelled and given its cancellation timeout, as kopf's daemons
    were at exit)."""
    for task in memo.loops:
        task.cancel()
    await asyncio.gather(*memo.loops, return_exceptions=True)


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


def run(options: OperatorOptions) -> None:
    from kubernetes import client

    unknown = options.controllers - CONTROLLERS
    if unknown:
        known = ", ".join(sorted(CONTROLLERS))
        raise ConfigError(f"unknown controller(s) {', '.join(sorted(unknown))}: use {known}")

    try:
        interval = catalog_interval()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    # Before the first large response and the first thread: big blocks get mappings of
    # their own, threads share one arena (kube/trim.py).
    trim.tune()
    quiet_event_handlers()
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
    # One client for the calls before kopf starts, closed once they are made: its
    # connections are not kept open beside kopf's for the operator's life.
    before_kopf = client.ApiClient()
    # Before kopf starts: an operator ahead of its CRDs says so, in its log, /metrics and
    # an Event, whatever else it goes on to do.
    crdcheck.check_crds(before_kopf, metrics.observe_crd, timing.now())
    settings = kopf.OperatorSettings()
    # Events say which replica posted them (kopf's default instance is "dev").
    settings.posting.reporting_instance = peering.replica_name()
    priority = None
    if options.peering is not None:
        priority = peering.draw_priority(options.priority)
        # Read by kopf's keep-alive loop from the start: set before the operator runs.
        settings.peering.lifetime = options.peering_lifetime
        created = peering.ensure_peering(
            before_kopf, options.peering, options.namespaces, options.clusterwide
        )
        if created:
            logger.info("created peering object %r in %s", options.peering, ", ".join(created))
        logger.info("peering %r with priority %d", options.peering, priority)
    # Before any watch starts, so no handler sees a half-copied object.
    watched = None if options.clusterwide else options.namespaces
    migration.migrate(before_kopf, watched, timing.now())
    before_kopf.close()
    # The fold of completed backups into ProtectedVMs is not done here: it reads no more
    # than the backups kopf's first listing finds unrecorded (backup.handlers.fold_loop).
    # kopf's wait for its indexes, linear in the objects (5,000 backups: minutes before).
    readiness.install()
    asyncio.run(
        kopf.operator(
            clusterwide=options.clusterwide,
            namespaces=options.namespaces,
            liveness_endpoint=options.liveness,
            standalone=options.peering is None,
            peering_name=options.peering,
            priority=priority,
            settings=settings,
            memo=Memo(
                metrics=metrics,
                controllers=options.controllers,
                catalog_interval=interval,
                hooks=options.hooks,
                timing=timing,
                # Without peering kopf never pauses: the loops kopf does not run act always.
                presence=Presence(always=options.peering is None),
            ),
        )
    )
