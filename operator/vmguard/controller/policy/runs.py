"""One policy's scheduler: at each scheduled time, one VMGuardBackup per VM of the policy.

Runs as a kopf daemon per ``VMProtectionPolicy`` (registered in ``handlers.py``). Each turn
of the loop: judge the policy (:mod:`.judgement`), start a run if one is due, create the
backups whose jittered start has come, refresh the status (and hand the metrics the
policy's VMs, each one's last success and outcome from its VMGuardBackups, and the
queue), then sleep until the next scheduled time, the next jittered start, or
:data:`STATUS_REFRESH` (a change of the policy's spec wakes it at once).

Rules (docs/resource-model.md, "Schedules"):

- A run at scheduled time ``T`` takes the policy's VMs from the latest successful sweep
  of its vCenter (waiting for the first one after a start) and creates one VMGuardBackup per
  VM at ``T + jitter offset``, named after ``T`` (:mod:`.builders`), so creating
  it twice is harmless: AlreadyExists is counted, not an error.
- A VM whose scheduled backup from an *earlier* run has not started yet (no phase, or
  ``Pending``) is skipped in this run: at most one scheduled backup waits per VM, so a
  stalled backup controller does not pile up one backup per run.
- On start, and whenever the loop wakes after a scheduled time, the catch-up rule of
  :mod:`~vmguard.controller.kube.schedule` decides whether the latest missed time runs
  now (once). A restart within that window therefore re-issues the run in progress: backups created
  before the restart exist already, backups not yet created (jitter) are created.
- A paused or not-Ready policy advances past its scheduled times without running them,
  and a changed schedule starts from now: neither is caught up later.
- A policy with ``spec.dryRun`` runs its schedule but creates nothing: each run logs how
  many VMs it would back up, and the status's ``plan`` says when the next run would
  back up how many (:func:`.judgement.status`); retention still applies.
- Every pass also applies the policy's retention (:mod:`.retention`), paused or not; a
  completed backup of the policy wakes the loop for it.
- What the policy's VMs have is read from its VMGuardBackups *and* its VMs'
  ProtectedVMs: a point whose backup run expired stands in as a Completed backup, so
  the RPO, the last success, the fail-safe and retention see every point. Each VM's RPO
  state is written into its ProtectedVM (``status.rpo``, ``WithinRPO``) when it changes.

- **A pass whose inputs did not change skips its work** (the part that reads the
  policy's runs and its VMs' points, takes a stand-in per point and a history, and
  applies retention, copies, scheduled verifications, status and RPO states): its runs,
  the namespace's ProtectedVMs and policies' specs (counted as kopf's watches see them
  change, ``inputs``), the vCenter's latest sweep, the policy's spec and what the
  judgement found are all as at the last pass that worked, and nothing but time is
  due: not the earliest RPO due time of its VMs, not a scheduled verification, no copy
  Job running, and at most :data:`REBUILD_EVERY` since that pass (retention by age and
  what else only time changes). At 5,000 VMs each pass built ≈ 21,000 stand-ins every
  30 s whether anything changed or not (docs/scale.md). A runner without ``inputs``
  works on every pass.

- **A policy's first pass after the operator starts waits for its vCenter's first
  sweep attempt** (with ``awaits_sweep``: the operator's runners, when this process
  sweeps vCenters): until the sweep is published, or has failed once
  (:meth:`~vmguard.controller.kube.sweeps.LatestSweeps.failed`), or
  :data:`FIRST_SWEEP_WAIT` has passed, a pass writes only what the judgement decides
  (``Ready`` and the other conditions, ``observedGeneration``, ``nextScheduleTime``:
  :func:`.judgement.standing`, only where the stored status differs) and leaves the
  part that reads the policy's runs and points for later. At 5,000 VMs the seven
  policies' passes before the sweep built ≈ 21,000 stand-ins each on the two cores the
  sweep needed, and all of it was done again on the sweep (docs/scale.md). A policy
  whose VCenter does not exist, or lives in another namespace, does not wait (no sweep
  of it comes here). A failed attempt ends the wait because the policy's status must
  not depend on a vCenter answering: its retention, copies and ``lastRun`` go on from
  its runs and points, as they did before the wait existed; the bound is for a sweep
  that neither ends nor fails (a vCenter that holds the connection): the default sweep
  interval, the longest a vCenter is left unswept anyway.

Time (:mod:`~vmguard.controller.kube.timing`): the cron line, the cursor, the runs and
their jittered starts are on the schedule line (``Timing.on_line``; the policy's creation is moved
onto it for the catch-up rule); retention, the RPO count and every wait are on the clock.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from vmguard.api import LABEL_POLICY, BackupPhase, Trigger, format_time, parse_time
from vmguard.api.kinds import BACKUP, POLICY
from vmguard.controller.kube import points, verifications
from vmguard.controller.kube.handlers import Announce
from vmguard.controller.kube.held import ProtectedVMReader
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.schedule import jitter_offset, parse
from vmguard.controller.kube.sweeps import LatestSweeps, SweepView
from vmguard.controller.kube.timing import REAL_TIME, Timing
from vmguard.controller.policy import copying, judgement, verifying
from vmguard.controller.policy.builders import build_vmbackup, run_label
from vmguard.controller.policy.copying import Copier, awaiting_copy
from vmguard.controller.policy.history import BackupHistory
from vmguard.controller.policy.retention import Retention, pass_fields
from vmguard.errors import RetryableError, ScheduleError, VmguardError
from vmguard.metrics import Metrics, PolicyVM
from vmguard.vsphere.records import VMRecord

STATUS_REFRESH = 30.0
REBUILD_EVERY = 600.0
"""Longest a pass whose inputs did not change skips its work (seconds, an interval)."""
RETRY = 15.0
FIRST_SWEEP_WAIT = 300.0
"""Longest a policy's first pass after a start waits for its vCenter's first sweep attempt
(seconds, an interval): the default ``sweepInterval`` (module docstring)."""
CREATES_AT_ONCE = 4
"""Creates of one pass in flight at once: the client's work (Python) and the apiserver's
overlap; more only queue up on a 2-core machine (docs/scale.md)."""


@dataclass(frozen=True)
class PendingBackup:
    start: dt.datetime
    """When to create it: the scheduled time plus the VM's jitter offset (schedule line)."""
    run: dt.datetime
    vm: VMRecord


def plan_run(
    policy: dict[str, Any],
    jitter: float,
    run: dt.datetime,
    vms: list[VMRecord],
    history: BackupHistory,
) -> tuple[list[PendingBackup], list[VMRecord]]:
    """Pure: (backups to create for run ``run``, VMs skipped because one still waits)."""
    uid = policy["metadata"]["uid"]
    label = run_label(run)
    todo, skipped = [], []
    for vm in vms:
        waiting = [
            r
            for r in history.of(vm.instance_uuid)
            if r.trigger == Trigger.SCHEDULE
            and r.run
            and r.run < label
            and r.phase == BackupPhase.PENDING
        ]
        if waiting:
            skipped.append(vm)
            continue
        offset = jitter_offset(jitter, uid, vm.instance_uuid.lower())
        todo.append(PendingBackup(run + dt.timedelta(seconds=offset), run, vm))
    return sorted(todo, key=lambda p: p.start), skipped


def vm_state(vm: VMRecord, history: BackupHistory) -> PolicyVM:
    """Pure: what the policy's VMGuardBackups say of one VM, for the metrics."""
    last = history.last_finished(vm.instance_uuid)
    success = history.last_completed(vm.instance_uuid)
    verified = history.last_verified(vm.instance_uuid)
    first = history.first_completed(vm.instance_uuid)
    passed = history.last_passed(vm.instance_uuid)
    return PolicyVM(
        {"instanceUuid": vm.instance_uuid, "moref": vm.moref, "name": vm.name},
        last_success=success.timestamp() if success else None,
        first_success=first.timestamp() if first else None,
        last_passed=passed.timestamp() if passed else None,
        last_finish=last.completed.timestamp() if last and last.completed else None,
        last_failed=last is not None and last.phase == BackupPhase.FAILED,
        last_verification=(verified.verified.timestamp(), verified.verification)
        if verified and verified.verified
        else None,
    )


class PolicyRunner:
    def __init__(
        self,
        api: KubeAPI,
        body: Any,
        sweeps: LatestSweeps,
        wake: asyncio.Event,
        stopped: Any,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        announce: Announce | None = None,
        timing: Timing = REAL_TIME,
        metrics: Metrics | None = None,
        copier: Copier | None = None,
        protected_vms: ProtectedVMReader | None = None,
        inputs: Callable[[], Hashable] | None = None,
        awaits_sweep: bool = False,
    ) -> None:
        self.api, self.body, self.sweeps, self.timing = api, body, sweeps, timing
        self.copier = copier
        # The operator's one reader, shared by every policy of the namespace; alone, a
        # runner reads the ProtectedVMs afresh on every pass.
        self.protected_vms = protected_vms or ProtectedVMReader(0.0, timing)
        self.held: list[points.HeldVM] = []
        """The namespace's ProtectedVMs as this pass read them (:meth:`history_objects`)."""
        self.metrics = metrics
        self.wake, self.stopped, self.log = wake, stopped, logger
        self.announce: Announce = announce or (lambda reason, message, warning: None)
        self.retention = Retention()
        self.pending: list[PendingBackup] = []
        self.waiting_run: dt.datetime | None = None
        # Scheduled times up to here are handled (schedule line).
        self.cursor: dt.datetime | None = None
        self.schedule_key: tuple[str, str] | None = None
        self.last_status: dict[str, Any] | None = None
        status = body.get("status") or {}
        self.last_schedule = parse_time(status.get("lastScheduleTime"))
        self.inputs = inputs
        """What the watches saw change of the pass's inputs (None: every pass works)."""
        self.worked_on: Hashable | None = None
        """The inputs of the last pass that worked."""
        self.work_by: dt.datetime | None = None
        """When time alone makes the next pass work (clock)."""
        self.passes_worked = 0
        self.passes_skipped = 0
        self.awaits_sweep = awaits_sweep
        """Whether the first pass still waits for the vCenter's first sweep attempt."""
        self.passes_deferred = 0
        """Passes that wrote only the judgement's part of the status, waiting for it."""
        self.since = timing.monotonic()
        self.rpo_due: dt.datetime | None = None
        """The earliest time one of the policy's VMs falls out of its RPO (last pass)."""

    async def loop(self) -> None:
        while not self.stopped:
            try:
                delay = await self.turn()
            except VmguardError as exc:
                delay = self.timing.interval(RETRY)
                self.log.warning("policy turn failed, retrying in %.0fs: %s", delay, exc)
            except Exception as exc:  # never let one bad turn end the policy's daemon
                self.log.exception("policy turn failed unexpectedly: %s", exc)
                delay = self.timing.interval(RETRY)
            await self.sleep(delay)

    async def turn(self) -> float:
        """One pass; returns how long to sleep."""
        # The live body is replaced under us by kopf: work on one consistent copy.
        policy: dict[str, Any] = copy.deepcopy(dict(self.body))
        meta, spec = policy["metadata"], policy.get("spec") or {}
        namespace = meta["namespace"]
        vcenter = (spec.get("vcenterRef") or {}).get("name", "")
        assessment = await judgement.assess(self.api, policy)
        acting = assessment.ready and not spec.get("paused")
        real_now = self.timing.now()
        now = self.timing.on_line(real_now)
        created = parse_time(meta.get("creationTimestamp"))
        created = self.timing.on_line(created) if created else now
        sched = spec.get("schedule") or {}
        key = (str(sched.get("cron")), str(sched.get("timeZone") or "UTC"))
        if self.cursor is not None and key != self.schedule_key:
            self.cursor, self.pending, self.waiting_run = now, [], None
        self.schedule_key = key
        if not acting:
            self.pending, self.waiting_run = [], None
        elif assessment.schedule is not None:
            following = (
                assessment.schedule.next_after(self.cursor) if self.cursor is not None else now
            )
            if following is not None and following <= now:
                missed = assessment.schedule.catch_up(now, created)
                if missed is not None:
                    self.waiting_run = missed
                elif self.cursor is not None:
                    self.log.info("scheduled run at %s missed by too much; skipped", following)
        self.cursor = now
        view = self.sweeps.get(namespace, vcenter)
        if self.waiting_run is not None and view is not None:
            await self.start_run(policy, assessment.jitter, self.waiting_run, view)
            self.waiting_run = None
        await self.create_due(policy, now)
        inputs = self.pass_inputs(policy, assessment, view)
        verify_at: dt.datetime | None = None
        wake_at = [real_now + dt.timedelta(seconds=self.timing.interval(STATUS_REFRESH))]
        waits = self.first_sweep_wait(policy, assessment, view)
        if waits is not None:
            await self.refresh_standing(policy, assessment, view, now)
            self.passes_deferred += 1
            wake_at.append(real_now + dt.timedelta(seconds=waits))
        elif self.skips(inputs, real_now):
            self.passes_skipped += 1
            # The shared read of the ProtectedVMs, once stale, is held for no one
            # (≈ 43 MB at 5,000 VMs; held.py).
            self.protected_vms.drop_stale(namespace)
        else:
            # One policy's pass at a time per namespace holds its history (a stand-in
            # per point of its VMs): seven policies starting at once held seven
            # (docs/scale.md).
            async with self.protected_vms.one_pass(namespace):
                try:
                    verify_at = await self.pass_on_points(policy, assessment, view, now, real_now)
                finally:
                    # The namespace's ProtectedVMs as this pass read them: let go, or
                    # each policy's runner keeps its own generation of them between
                    # passes (≈ 40 MB each at 5,000 VMs; docs/scale.md).
                    self.held = []
            self.passes_worked += 1
            self.worked_on = inputs
            by = [real_now + dt.timedelta(seconds=self.timing.interval(REBUILD_EVERY))]
            if self.rpo_due is not None:
                by.append(self.rpo_due)
            if verify_at is not None:
                by.append(self.timing.off_line(verify_at))
            self.work_by = min(by)
        if self.pending:
            wake_at.append(self.timing.off_line(self.pending[0].start))
        if self.copier is not None and self.copier.running:
            wake_at.append(real_now + dt.timedelta(seconds=self.copier.poll))
        if acting and assessment.schedule is not None:
            nxt = assessment.schedule.next_after(now)
            if nxt is not None:
                wake_at.append(self.timing.off_line(nxt))
        if verify_at is not None:
            wake_at.append(self.timing.off_line(verify_at))
        return max(0.0, (min(wake_at) - self.timing.now()).total_seconds())

    def first_sweep_wait(
        self, policy: dict[str, Any], assessment: judgement.Assessment, view: SweepView | None
    ) -> float | None:
        """Seconds this pass's heavy part still waits for the vCenter's first sweep
        attempt; None: it works now (module docstring). Once over, the wait never
        comes back."""
        if not self.awaits_sweep:
            return None
        meta, spec = policy["metadata"], policy.get("spec") or {}
        ref = spec.get("vcenterRef") or {}
        left = self.timing.interval(FIRST_SWEEP_WAIT) - (self.timing.monotonic() - self.since)
        if (
            view is not None
            or self.sweeps.attempted(meta["namespace"], ref.get("name", ""))
            or ref.get("namespace", meta["namespace"]) != meta["namespace"]
            or any(reason == "VCenterNotFound" for reason, _ in assessment.problems)
            or left <= 0
        ):
            self.awaits_sweep = False
            return None
        return left

    async def refresh_standing(
        self,
        policy: dict[str, Any],
        assessment: judgement.Assessment,
        view: SweepView | None,
        now: dt.datetime,
    ) -> None:
        """While the first pass waits for the sweep: the part of the status the
        judgement alone decides, written where the stored status differs (a restart
        finds it written; a new policy is judged at once)."""
        meta = policy["metadata"]
        others = await self.api.list_objects(POLICY.plural, meta["namespace"])
        clashes = judgement.conflicts(policy, others, view)
        standing = judgement.standing(policy, assessment, now, clashes)
        stored = policy.get("status") or {}
        if any(stored.get(key) != value for key, value in standing.items()):
            await self.api.patch_status(POLICY.plural, meta["namespace"], meta["name"], standing)

    def pass_inputs(
        self,
        policy: dict[str, Any],
        assessment: judgement.Assessment,
        view: SweepView | None,
    ) -> Hashable | None:
        """What the pass's work depends on besides time, comparable with the last
        pass's; None when there is no way to tell (no ``inputs``: work every time)."""
        if self.inputs is None:
            return None
        meta = policy["metadata"]
        judged = repr(
            (
                assessment.problems,
                assessment.schedule_problem,
                assessment.jitter,
                assessment.rpo,
                assessment.copies,
                assessment.verification,
            )
        )
        return (
            self.inputs(),
            None if view is None else (view.time, id(view)),
            meta.get("generation"),
            repr(policy.get("spec")),
            repr(meta.get("labels")),
            judged,
            self.last_schedule,
        )

    def skips(self, inputs: Hashable | None, real_now: dt.datetime) -> bool:
        """Whether this pass may skip its work (module docstring)."""
        if inputs is None or inputs != self.worked_on or self.work_by is None:
            return False
        if self.copier is not None and self.copier.running:
            return False
        return real_now < self.work_by

    async def pass_on_points(
        self,
        policy: dict[str, Any],
        assessment: judgement.Assessment,
        view: SweepView | None,
        now: dt.datetime,
        real_now: dt.datetime,
    ) -> dt.datetime | None:
        """The part of a pass that holds the policy's history (its runs and a stand-in
        per point): retention, copies, verifications on schedule, status and RPO
        states. Run under the namespace's one-pass lock; returns when the next
        scheduled verification is due (:meth:`verify_on_schedule`)."""
        meta = policy["metadata"]
        # Copies and scheduled verifications read whole bodies, the stand-ins' too (their
        # copies, their verifications); history and retention read a few fields of a run
        # and the points as they are: a policy that copies and verifies nothing keeps
        # only those of its runs and builds no body per point.
        whole = assessment.copies is not None or assessment.verification is not None
        runs, expired = await self.history_objects(meta["namespace"], meta["name"], whole)
        # A stand-in (an expired run's point) carries its point's copies, but no copy
        # is started for it any more (copying.py): only runs are held for their copies.
        hold = (
            awaiting_copy(policy, assessment.copies.targets, runs)
            if assessment.copies is not None
            else set()
        )
        # A point being verified is kept until its verification ends (it reads it).
        hold |= {
            b["metadata"]["name"] for b in runs if verifications.in_flight(b.get("status") or {})
        }
        pruned = await self.retention.apply(
            self.api, policy, runs, self.announce, real_now, hold, expired
        )
        if pruned:  # their points left the ProtectedVMs
            self.protected_vms.forget(meta["namespace"])
            runs = [b for b in runs if b["metadata"]["name"] not in pruned]
            expired = [s for s in expired if s.name not in pruned]
        backups = runs
        if whole:
            backups = runs + [points.stand_in_body(s) for s in expired]
        if self.copier is not None and assessment.copies is not None:
            await self.copier.apply(policy, assessment.copies.targets, backups)
        verify_at = await self.verify_on_schedule(policy, assessment, backups, now)
        history = BackupHistory.of_policy(runs, meta["name"], expired)
        del expired  # the history holds what it needs of them
        await self.refresh_status(policy, assessment, view, now, real_now, backups, history)
        return verify_at

    async def verify_on_schedule(
        self,
        policy: dict[str, Any],
        assessment: judgement.Assessment,
        backups: list[dict[str, Any]],
        now: dt.datetime,
    ) -> dt.datetime | None:
        """With ``verification.every`` a cron line whose rules are fine: ask for the
        verifications due at its latest time (:mod:`.verifying`); its next time (on the
        schedule line), or None."""
        spec = policy.get("spec") or {}
        line = verifications.every(spec)
        ready = assessment.verification is not None and assessment.verification[0]
        if line is None or line == verifications.EACH_BACKUP or not ready:
            return None
        try:
            sched = parse(line, (spec.get("schedule") or {}).get("timeZone") or "UTC")
        except ScheduleError:  # VerificationReady says why
            return None
        tick = sched.previous(now)
        if tick is not None:
            await verifying.request_due(
                self.api, policy, backups, self.timing.off_line(tick), self.timing.now()
            )
        return sched.next_after(now)

    async def history_objects(
        self, namespace: str, name: str, whole: bool = True
    ) -> tuple[list[dict[str, Any]], list[points.StandIn]]:
        """The policy's VMGuardBackups (whole, or only what history and retention read of
        them: :func:`.retention.pass_fields`, page by page), and each point made under the
        policy whose backup run expired
        (:func:`~vmguard.controller.kube.points.expired_points`, standing in for a
        Completed backup; the ProtectedVMs from the operator's shared reader,
        :mod:`~vmguard.controller.kube.held`)."""
        selector = f"{LABEL_POLICY}={name}"
        if whole:
            backups = await self.api.list_objects(BACKUP.plural, namespace, selector)
        else:
            backups = [
                pass_fields(b)
                async for page in self.api.list_pages(BACKUP.plural, namespace, selector)
                for b in page
            ]
        held = await self.protected_vms.read(self.api, namespace)
        self.held = held
        return backups, points.expired_points(held, backups, policy=name)

    async def start_run(
        self, policy: dict[str, Any], jitter: float, run: dt.datetime, view: SweepView
    ) -> None:
        meta = policy["metadata"]
        runs, expired = await self.history_objects(meta["namespace"], meta["name"], False)
        history = BackupHistory.of_policy(runs, meta["name"], expired)
        del runs, expired
        todo, skipped = plan_run(policy, jitter, run, view.vms_of(meta["name"]), history)
        self.last_schedule = run
        await self.api.patch_status(
            POLICY.plural,
            meta["namespace"],
            meta["name"],
            {"lastScheduleTime": format_time(run)},
        )
        if (policy.get("spec") or {}).get("dryRun"):
            self.log.info(f"dry run {run_label(run)}: would back up {len(todo)} VM(s)")
            return
        self.pending = sorted([*self.pending, *todo], key=lambda p: p.start)
        if not todo and not skipped:
            self.log.debug("run %s: the policy has no VMs", run_label(run))
            return
        message = f"run {run_label(run)}: {len(todo)} VM(s)"
        if skipped:
            names = ", ".join(vm.name for vm in skipped[: judgement.LISTED])
            message += f"; {len(skipped)} skipped, an earlier backup has not started: {names}"
        self.log.info(message)

    async def create_due(self, policy: dict[str, Any], now: dt.datetime) -> None:
        """Create the backups whose start has come, :data:`CREATES_AT_ONCE` requests in
        flight, in the order of their starts (a night of 5,000 in one pass)."""
        meta = policy["metadata"]
        due = [p for p in self.pending if p.start <= now]
        if not due:
            return
        keep = [p for p in self.pending if p.start > now]
        slots = asyncio.Semaphore(CREATES_AT_ONCE)

        async def create(item: PendingBackup) -> bool | None:
            """True: created; False: it existed; None: not created (retried if retryable)."""
            async with slots:
                body = build_vmbackup(policy, item.vm, item.run, Trigger.SCHEDULE)
                try:
                    return await self.api.create_object(BACKUP.plural, meta["namespace"], body)
                except RetryableError as exc:
                    self.log.warning("creating %s: %s; retrying", body["metadata"]["name"], exc)
                    keep.append(item)
                except VmguardError as exc:
                    self.log.error("creating %s: %s", body["metadata"]["name"], exc)
                return None

        outcomes = await asyncio.gather(*(create(item) for item in due))
        created = sum(1 for o in outcomes if o is True)
        existed = sum(1 for o in outcomes if o is False)
        self.pending = sorted(keep, key=lambda p: p.start)
        if created or existed:
            self.log.info(
                "created %d VMGuardBackup(s)%s",
                created,
                f"; {existed} existed already" if existed else "",
            )

    async def refresh_status(
        self,
        policy: dict[str, Any],
        assessment: judgement.Assessment,
        view: SweepView | None,
        now: dt.datetime,
        real_now: dt.datetime,
        backups: list[dict[str, Any]],
        history: BackupHistory,
    ) -> None:
        """``now`` on the schedule line, ``real_now`` the clock's (module docstring).
        ``history``: the policy's, of its runs and expired points; ``backups``: the
        bodies the copy lag reads (with the stand-ins' when the policy copies)."""
        meta = policy["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        self.rpo_due = None
        others = await self.api.list_objects(POLICY.plural, namespace)
        clashes = judgement.conflicts(policy, others, view)
        vms = [vm.instance_uuid for vm in view.vms_of(name)] if view is not None else None
        # On the schedule line, like the RPO before the line below takes it off it.
        allowance = verifying.allowance(
            policy.get("spec") or {}, assessment.rpo, assessment.schedule
        )
        if assessment.rpo is not None:  # judged against the schedule, applied to completions
            rpo = dt.timedelta(seconds=self.timing.interval(assessment.rpo.total_seconds()))
            assessment = dataclasses.replace(assessment, rpo=rpo)
        status = judgement.status(
            policy, assessment, now, self.last_schedule, history, vms, clashes, real_now
        )
        status["conditions"] = self.retention.condition(
            status["conditions"], meta.get("generation")
        )
        status["retention"] = self.retention.status()
        lagging: dict[str, copying.Point | None] = {}
        allowed: dict[str, float] = {}
        if assessment.copies is not None:
            lagging = copying.oldest_uncopied(policy, assessment.copies.targets, backups)
            rpo_seconds = assessment.rpo.total_seconds() if assessment.rpo else 0.0
            allowed = {
                t.repository: rpo_seconds + self.timing.interval(t.delay)
                for t in assessment.copies.targets
            }
        status["conditions"] = copying.lag_condition(
            status["conditions"], lagging, allowed, real_now, meta.get("generation")
        )
        if status != self.last_status:
            await self.api.patch_status(POLICY.plural, namespace, name, status)
            self.last_status = status
        if assessment.rpo is not None and view is not None:
            await self.write_rpo(namespace, view.vms_of(name), history, assessment.rpo, real_now)
        if self.metrics is not None:
            spec = policy.get("spec") or {}
            self.metrics.observe_policy(
                namespace,
                (spec.get("vcenterRef") or {}).get("name", ""),
                name,
                repository=(spec.get("repositoryRef") or {}).get("name", ""),
                rpo_seconds=assessment.rpo.total_seconds() if assessment.rpo else None,
                vms=[vm_state(vm, history) for vm in view.vms_of(name)] if view else None,
                in_progress=history.in_progress_by_phase(),
                copies={
                    target: (point.completed.timestamp() if point else None, allowed[target])
                    for target, point in lagging.items()
                },
                verification_allowance_seconds=self.timing.interval(allowance.total_seconds())
                if allowance is not None
                else None,
            )

    async def write_rpo(
        self,
        namespace: str,
        vms: list[VMRecord],
        history: BackupHistory,
        objective: dt.timedelta,
        now: dt.datetime,
    ) -> None:
        """Each of the policy's VMs' RPO state into its ProtectedVM (``status.rpo``,
        ``WithinRPO``), only where it changed: a pass writes nothing for a VM whose state
        and due time stand."""
        mine = {vm.instance_uuid.lower() for vm in vms}
        wrote = False
        # When the first of them falls out of its RPO: the pass works then, even if
        # nothing else changed.
        dues = [
            last + objective
            for vm in vms
            if (last := history.last_completed(vm.instance_uuid)) is not None
            and last + objective > now
        ]
        self.rpo_due = min(dues, default=None)
        for held in self.held:
            key = held.key
            if key.instance_uuid.lower() not in mine:
                continue
            rpo = points.rpo_of(history.last_completed(key.instance_uuid), objective, now)
            if held.rpo == rpo:
                continue
            try:
                wrote |= await points.set_rpo(self.api, key, rpo)
            except VmguardError as exc:  # the next pass tries again
                self.log.warning("RPO of ProtectedVM %s: %s", key.name, exc)
                self.rpo_due = now
        if wrote:
            self.protected_vms.forget(namespace)

    async def sleep(self, seconds: float) -> None:
        spec = self.body.get("spec") or {}
        until: list[Any] = [self.wake, self.stopped]
        # A new sweep is an input of the pass (and what a waiting run waits for): the
        # pass works on it at once, not at its next refresh — after a restart the
        # operator is steady one pass after the first sweep, not up to 30 s later.
        vcenter = (spec.get("vcenterRef") or {}).get("name", "")
        namespace = self.body["metadata"]["namespace"]
        until.append(self.sweeps.next_sweep(namespace, vcenter))
        await self.timing.wait(seconds, *until)
        self.wake.clear()
