"""One policy's scheduler: at each scheduled time, one VMBackup per VM of the policy.

Runs as a kopf daemon per ``VMProtectionPolicy`` (registered in ``main.py``). Each turn
of the loop: judge the policy (:mod:`.policies`), start a run if one is due, create the
backups whose jittered start has come, refresh the status, then sleep until the next
scheduled time, the next jittered start, or :data:`STATUS_REFRESH` (a change of the
policy's spec wakes it at once).

Rules (docs/resource-model.md, "Schedules"):

- A run at scheduled time ``T`` takes the policy's VMs from the latest successful sweep
  of its vCenter (waiting for the first one after a start) and creates one VMBackup per
  VM at ``T + jitter offset``, named after ``T`` (:mod:`.builders_policy`), so creating
  it twice is harmless: AlreadyExists is counted, not an error.
- A VM whose scheduled backup from an *earlier* run has not started yet (no phase, or
  ``Pending``) is skipped in this run: at most one scheduled backup waits per VM, so a
  stalled backup controller does not pile up one backup per run.
- On start, and whenever the loop wakes after a scheduled time, the catch-up rule of
  :mod:`.schedule` decides whether the latest missed time runs now (once). A restart
  within that window therefore re-issues the run in progress: backups created before
  the restart exist already, backups not yet created (jitter) are created.
- A paused or not-Ready policy advances past its scheduled times without running them,
  and a changed schedule starts from now: neither is caught up later.
- Every pass also applies the policy's retention (:mod:`.retention`), paused or not; a
  completed backup of the policy wakes the loop for it.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from vmguard.api import LABEL_POLICY, BackupPhase, Trigger, format_time, parse_time
from vmguard.controller import policies
from vmguard.controller.builders_policy import build_vmbackup, run_label
from vmguard.controller.history import BackupHistory
from vmguard.controller.kubeapi import KubeAPI
from vmguard.controller.retention import Announce, Retention
from vmguard.controller.schedule import jitter_offset
from vmguard.controller.sweeps import LatestSweeps, SweepView
from vmguard.errors import RetryableError, VmguardError
from vmguard.vsphere.records import VMRecord

STATUS_REFRESH = 30.0
RETRY = 15.0


@dataclass(frozen=True)
class PendingBackup:
    start: dt.datetime
    """When to create it: the scheduled time plus the VM's jitter offset."""
    run: dt.datetime
    vm: VMRecord


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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
    ) -> None:
        self.api, self.body, self.sweeps = api, body, sweeps
        self.wake, self.stopped, self.log = wake, stopped, logger
        self.announce: Announce = announce or (lambda reason, message, warning: None)
        self.retention = Retention()
        self.pending: list[PendingBackup] = []
        self.waiting_run: dt.datetime | None = None
        self.cursor: dt.datetime | None = None  # scheduled times up to here are handled
        self.schedule_key: tuple[str, str] | None = None
        self.last_status: dict[str, Any] | None = None
        status = body.get("status") or {}
        self.last_schedule = parse_time(status.get("lastScheduleTime"))

    async def loop(self) -> None:
        while not self.stopped:
            try:
                delay = await self.turn()
            except VmguardError as exc:
                self.log.warning("policy turn failed, retrying in %.0fs: %s", RETRY, exc)
                delay = RETRY
            except Exception as exc:  # never let one bad turn end the policy's daemon
                self.log.exception("policy turn failed unexpectedly: %s", exc)
                delay = RETRY
            await self.sleep(delay)

    async def turn(self) -> float:
        """One pass; returns how long to sleep."""
        # The live body is replaced under us by kopf: work on one consistent copy.
        policy: dict[str, Any] = copy.deepcopy(dict(self.body))
        meta, spec = policy["metadata"], policy.get("spec") or {}
        namespace = meta["namespace"]
        vcenter = (spec.get("vcenterRef") or {}).get("name", "")
        assessment = await policies.assess(self.api, policy)
        acting = assessment.ready and not spec.get("paused")
        now = utcnow()
        created = parse_time(meta.get("creationTimestamp")) or now
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
        selector = f"{LABEL_POLICY}={meta['name']}"
        backups = await self.api.list_objects("vmbackups", namespace, selector)
        pruned = await self.retention.apply(self.api, policy, backups, self.announce, now)
        backups = [b for b in backups if b["metadata"]["name"] not in pruned]
        await self.refresh_status(policy, assessment, view, now, backups)
        wake_at = [now + dt.timedelta(seconds=STATUS_REFRESH)]
        if self.pending:
            wake_at.append(self.pending[0].start)
        if acting and assessment.schedule is not None:
            nxt = assessment.schedule.next_after(now)
            if nxt is not None:
                wake_at.append(nxt)
        return max(0.0, (min(wake_at) - utcnow()).total_seconds())

    async def start_run(
        self, policy: dict[str, Any], jitter: float, run: dt.datetime, view: SweepView
    ) -> None:
        meta = policy["metadata"]
        selector = f"{LABEL_POLICY}={meta['name']}"
        backups = await self.api.list_objects("vmbackups", meta["namespace"], selector)
        history = BackupHistory.of_policy(backups, meta["name"])
        todo, skipped = plan_run(policy, jitter, run, view.vms_of(meta["name"]), history)
        self.last_schedule = run
        await self.api.patch_status(
            "vmprotectionpolicies",
            meta["namespace"],
            meta["name"],
            {"lastScheduleTime": format_time(run)},
        )
        self.pending = sorted([*self.pending, *todo], key=lambda p: p.start)
        if not todo and not skipped:
            self.log.debug("run %s: the policy has no VMs", run_label(run))
            return
        message = f"run {run_label(run)}: {len(todo)} VM(s)"
        if skipped:
            names = ", ".join(vm.name for vm in skipped[: policies.LISTED])
            message += f"; {len(skipped)} skipped, an earlier backup has not started: {names}"
        self.log.info(message)

    async def create_due(self, policy: dict[str, Any], now: dt.datetime) -> None:
        meta = policy["metadata"]
        due = [p for p in self.pending if p.start <= now]
        if not due:
            return
        created = existed = 0
        keep = [p for p in self.pending if p.start > now]
        for item in due:
            body = build_vmbackup(policy, item.vm, item.run, Trigger.SCHEDULE)
            try:
                if await self.api.create_object("vmbackups", meta["namespace"], body):
                    created += 1
                else:
                    existed += 1
            except RetryableError as exc:
                self.log.warning("creating %s: %s; retrying", body["metadata"]["name"], exc)
                keep.append(item)
            except VmguardError as exc:
                self.log.error("creating %s: %s", body["metadata"]["name"], exc)
        self.pending = sorted(keep, key=lambda p: p.start)
        if created or existed:
            self.log.info(
                "created %d VMBackup(s)%s",
                created,
                f"; {existed} existed already" if existed else "",
            )

    async def refresh_status(
        self,
        policy: dict[str, Any],
        assessment: policies.Assessment,
        view: SweepView | None,
        now: dt.datetime,
        backups: list[dict[str, Any]],
    ) -> None:
        meta = policy["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        history = BackupHistory.of_policy(backups, name)
        others = await self.api.list_objects("vmprotectionpolicies", namespace)
        clashes = policies.conflicts(policy, others, view)
        vms = [vm.instance_uuid for vm in view.vms_of(name)] if view is not None else None
        status = policies.status(policy, assessment, now, self.last_schedule, history, vms, clashes)
        status["conditions"] = self.retention.condition(
            status["conditions"], meta.get("generation")
        )
        status["retention"] = self.retention.status()
        if status != self.last_status:
            await self.api.patch_status("vmprotectionpolicies", namespace, name, status)
            self.last_status = status

    async def sleep(self, seconds: float) -> None:
        spec = self.body.get("spec") or {}
        waiters = [asyncio.ensure_future(self.wake.wait())]
        waiters.append(asyncio.ensure_future(self.stopped.wait()))
        if self.waiting_run is not None:
            vcenter = (spec.get("vcenterRef") or {}).get("name", "")
            namespace = self.body["metadata"]["namespace"]
            waiters.append(asyncio.ensure_future(self.sweeps.next_sweep(namespace, vcenter).wait()))
        _, pending = await asyncio.wait(
            waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        self.wake.clear()
