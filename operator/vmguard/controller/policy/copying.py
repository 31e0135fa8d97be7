"""The copy controller of one policy: every completed backup copied to each copy target.

Runs in the policy's scheduler (:mod:`.runs`), on every pass, after retention. For each
valid copy target (:mod:`.targets`) and each of the policy's ``Completed`` backups with
an archive, the point's copy entry (:mod:`vmguard.controller.kube.copies`) says where
its copy is:

Only the points the target chooses are looked at (``points``: all, or each VM's first of
each day or week: :func:`chosen`); the others are never copied there.

- none, or ``Failed`` with attempts left, and the target's ``delay`` past the backup's
  completion: it is **queued** — the entry says ``Pending`` — and waits in the backup's
  vCenter's admission queue, as proxy work of a background kind (:mod:`.copyqueue`):
  after every waiting backup and restore, taking no vCenter capacity, bounded by the
  policy's ``concurrency.total``; the queue's "one piece of work per VM" holds per VM
  *and target* — a VM's points are copied to a target one at a time, oldest first
  (its completion time is the work's creation time), which is what lets each copy map
  its chunks through the previous one (format §11);
- ``Running`` (set by the queue's start): its copy Job (:mod:`.copyjob`; attempt ``n``
  is ``vmc-<backup>-<target>-<n>``) is created, or adopted by name, then read;
  succeeded — the copy is looked up in the target (the manifest labelled with the source
  archive, :func:`vmguard.store.copy.copied_archives`) and the entry says ``Completed``
  with the copy's archive id and stored bytes; failed — ``Failed`` with the Job's reason
  (queued again, up to :data:`ATTEMPTS` Jobs); gone before its end was seen — created
  again under the same name (a copy is idempotent: a copy already made is found).

**After a run expired.** A point whose VMGuardBackup expired is seen as its stand-in
(:func:`vmguard.controller.kube.points.stand_in_body`), whose entries are the point's
``copies`` (written there with the run's): a copy made stays made (not copied again, not
lagging, not held by retention), one pruned stays pruned. A run is kept past its TTL
until its copies settle (``backup/expiry.py``, at most a week), so this is rare: a copy
not made by then is not started any more (no object is left to own its Job); it shows
as lagging, and ``vmguard repo copy`` copies it (docs/copies.md); such a copy found in
the target is recorded on its point (:meth:`Copier._adopt`, at the target's retention
pass), which ends the lag.

**Retention per repository.** When nothing waits for or runs to a target (at the first
such pass after a copy to it completed, else every :data:`RETAIN_EVERY`), the target's
own ``retention`` runs over the policy's copies in it (manifests labelled with the
policy and namespace of origin), each dated by its source point, per VM: the copies it
does not keep are retired there (:func:`vmguard.store.prune.retire_archive`; under Object
Lock, not before the lock ends) and their entries say ``Pruned``. The primary's points
are never touched by it, and the primary's retention never touches a copy (it holds a
point until its copies are made: :func:`awaiting_copy`). Each repository's GC is its own.

Invariants: the outcome is read from the target repository, never taken from the Job's
word; a copy Job is created only for an entry the admission queue set Running, and found
again by name, so a restart neither loses nor doubles one. Repository faults leave
everything as it was for the next pass (logged).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vmguard.api import (
    LABEL_VM,
    BackupCopy,
    BackupPhase,
    Condition,
    CopyState,
    format_time,
    parse_time,
)
from vmguard.api.kinds import REPOSITORY
from vmguard.config import ProxySettings
from vmguard.controller.kube.access import open_repository
from vmguard.controller.kube.conditions import set_condition
from vmguard.controller.kube.copies import (
    ATTEMPTS,
    copies_of,
    record_copy,
    record_point_copy,
)
from vmguard.controller.kube.jobs import JobAPI, job_state
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.points import is_stand_in
from vmguard.controller.kube.proxyjob import build_proxy_rbac
from vmguard.controller.kube.schedule import zone
from vmguard.controller.kube.timing import Timing
from vmguard.controller.policy.copyjob import build_copy_job, copy_job_name
from vmguard.controller.policy.copyqueue import QUEUED
from vmguard.controller.policy.retention import retention_policy
from vmguard.controller.policy.targets import CopyTarget
from vmguard.errors import ObjectNotFoundError, VmguardError
from vmguard.store import Repository
from vmguard.store.copy import COPIED_FROM_LABEL, copied_archives
from vmguard.store.lineage import ORIGIN_NAMESPACE, ORIGIN_POLICY
from vmguard.store.names import parse_archive_id
from vmguard.store.prune import RetentionPolicy, retire_archive, select_retained

RUNS, ENDED = "runs", "ended"
LAG_CONDITION = "CopiesCurrent"
RETAIN_EVERY = 600.0
"""Seconds between two runs of a copy target's retention when no copy completed."""


@dataclass(frozen=True)
class Point:
    """A completed backup of the policy, as the copy controller sees it."""

    backup: dict[str, Any]
    name: str
    uid: str
    vm: str
    archive_id: str
    completed: dt.datetime


def points(policy: Mapping[str, Any], backups: Sequence[dict[str, Any]]) -> list[Point]:
    """The policy's completed backups with an archive, oldest first (pure)."""
    name = policy["metadata"]["name"]
    out = []
    for b in backups:
        meta, spec, status = b["metadata"], b.get("spec") or {}, b.get("status") or {}
        if (spec.get("policyRef") or {}).get("name") != name:
            continue
        if status.get("phase") != BackupPhase.COMPLETED or not status.get("archiveId"):
            continue
        when = parse_time(status.get("completionTime")) or parse_time(meta.get("creationTimestamp"))
        vm = (meta.get("labels") or {}).get(LABEL_VM) or (spec.get("vm") or {}).get(
            "instanceUuid", ""
        )
        if when is None:
            continue
        out.append(Point(b, meta["name"], meta.get("uid", ""), vm, status["archiveId"], when))
    out.sort(key=lambda p: (p.completed, p.name))
    return out


def chosen(policy: Mapping[str, Any], target: CopyTarget, all_points: Sequence[Point]) -> set[str]:
    """Names of the points ``target`` copies (pure; ``all_points`` oldest first): all of
    them, or each VM's first point of each day (``Daily``) or week from Monday
    (``Weekly``), days in the policy's ``schedule.timeZone``. The first point of a day
    stays the first as later ones come, so a choice once made holds (retention keeps a
    chosen point until it is copied: :func:`awaiting_copy`)."""
    if target.points not in ("Daily", "Weekly"):
        return {p.name for p in all_points}
    tz = zone(((policy.get("spec") or {}).get("schedule") or {}).get("timeZone") or "UTC")
    seen: set[tuple[str, object]] = set()
    out = set()
    for point in all_points:
        day = point.completed.astimezone(tz).date()
        period: object = day if target.points == "Daily" else day.isocalendar()[:2]
        if (point.vm, period) not in seen:
            seen.add((point.vm, period))
            out.add(point.name)
    return out


def awaiting_copy(
    policy: Mapping[str, Any], targets: Sequence[CopyTarget], backups: Sequence[dict[str, Any]]
) -> set[str]:
    """Names of the policy's completed backups whose copy to some valid target is not
    made yet (nor failed for good, nor pruned there): retention keeps them until it is.
    A point the target does not choose (:func:`chosen`) is not held for it."""
    out = set()
    every = points(policy, backups)
    picks = {t.repository: chosen(policy, t, every) for t in targets}
    for point in every:
        copies = copies_of(point.backup)
        for target in targets:
            if point.name not in picks[target.repository]:
                continue
            entry = copies.get(target.repository) or {}
            state = entry.get("state")
            if state in (CopyState.COMPLETED, CopyState.PRUNED):
                continue
            if state == CopyState.FAILED and int(entry.get("attempts") or 0) >= ATTEMPTS:
                continue
            out.add(point.name)
    return out


def oldest_uncopied(
    policy: Mapping[str, Any], targets: Sequence[CopyTarget], backups: Sequence[dict[str, Any]]
) -> dict[str, Point | None]:
    """Per target, the oldest completed point not copied there (None: every point is
    there, or was pruned there). A copy that failed for good still counts: it lags."""
    out: dict[str, Point | None] = {t.repository: None for t in targets}
    every = points(policy, backups)  # oldest first
    picks = {t.repository: chosen(policy, t, every) for t in targets}
    for point in every:
        copies = copies_of(point.backup)
        for target in targets:
            if point.name not in picks[target.repository]:
                continue  # never copied there: not lagging
            state = (copies.get(target.repository) or {}).get("state")
            if out[target.repository] is None and state not in (
                CopyState.COMPLETED,
                CopyState.PRUNED,
            ):
                out[target.repository] = point
    return out


def lag_condition(
    previous: list[Condition],
    lagging: Mapping[str, Point | None],
    allowed: Mapping[str, float],
    now: dt.datetime,
    generation: int | None,
) -> list[Condition]:
    """``CopiesCurrent`` (pure): False with ``CopyLagging`` while some target's oldest
    uncopied point waits longer than the policy allows; gone without copy targets."""
    if not lagging:
        return [c for c in previous if c.get("type") != LAG_CONDITION]
    late = []
    for target, point in sorted(lagging.items()):
        if point is None:
            continue
        waited = (now - point.completed).total_seconds()
        if waited > allowed[target]:
            # No running count in the message: the status is patched only when it changes.
            late.append(
                f"copies to {target} lag more than the {int(allowed[target])}s allowed:"
                f" {point.name}, completed {format_time(point.completed)}, is not copied yet"
            )
    if late:
        return set_condition(
            previous, LAG_CONDITION, False, "CopyLagging", "; ".join(late), generation
        )
    names = ", ".join(sorted(lagging))
    return set_condition(
        previous, LAG_CONDITION, True, "Current", f"copies within allowance: {names}", generation
    )


class Copier:
    """One policy's copy controller (module doc); :meth:`apply` is one pass."""

    def __init__(
        self,
        api: KubeAPI,
        jobs: JobAPI,
        proxy: ProxySettings,
        timing: Timing,
        log: logging.Logger | logging.LoggerAdapter[Any],
        poll: float = 2.0,
    ) -> None:
        self.api, self.jobs, self.proxy, self.timing, self.log = api, jobs, proxy, timing, log
        self.poll = poll
        """Seconds between looks while a copy Job runs (the backup Jobs' poll)."""
        self.rbac_done: set[str] = set()
        self.manifests: dict[str, dict[str, CopiedPoint | None]] = {}
        """Per target: what each archive's manifest said (copy of which point, or not
        this policy's), so retention reads each manifest once."""
        self.retained_at: dict[str, dt.datetime] = {}
        self.copied_since: set[str] = set()
        """Targets a copy completed to since their retention last ran: it runs again at
        the next pass with nothing in flight, else every :data:`RETAIN_EVERY` seconds
        (opening a repository derives its key: not on every pass)."""
        self.running = 0
        """Copy Jobs running after the last pass: the scheduler then wakes every
        :attr:`poll` seconds, so a copy's end is recorded soon, not at the next refresh."""

    async def apply(
        self,
        policy: Mapping[str, Any],
        targets: Sequence[CopyTarget],
        backups: Sequence[dict[str, Any]],
    ) -> None:
        if not targets:
            return
        namespace = policy["metadata"]["namespace"]
        spec = policy.get("spec") or {}
        primary = await self.api.get_object(
            REPOSITORY.plural, namespace, (spec.get("repositoryRef") or {}).get("name", "")
        )
        if primary is None:
            return
        now = self.timing.now()
        self.running = 0
        for target in targets:
            repo_obj = await self.api.get_object(REPOSITORY.plural, namespace, target.repository)
            if repo_obj is None:
                continue
            try:
                await self._target(policy, primary, target, repo_obj, backups, now)
            except VmguardError as exc:
                self.log.warning("copies to %s: %s; trying again later", target.repository, exc)

    async def _target(
        self,
        policy: Mapping[str, Any],
        primary: Mapping[str, Any],
        target: CopyTarget,
        repo_obj: dict[str, Any],
        backups: Sequence[dict[str, Any]],
        now: dt.datetime,
    ) -> None:
        waiting = running = 0
        orphans: list[Point] = []
        opened: list[Repository] = []
        delay = dt.timedelta(seconds=self.timing.interval(target.delay)) if target.delay else None
        every = points(policy, backups)
        picked = chosen(policy, target, every)
        for point in every:
            if point.name not in picked:
                continue  # the target copies only its daily or weekly points
            entry = copies_of(point.backup).get(target.repository)
            state = (entry or {}).get("state")
            if state in (CopyState.COMPLETED, CopyState.PRUNED):
                continue
            if is_stand_in(point.backup):
                # The run expired: no object owns a copy Job any more (docs/copies.md);
                # a copy made by `vmguard repo copy` is recorded on its point below.
                orphans.append(point)
                continue
            if state == CopyState.RUNNING and entry is not None:
                outcome = await self._settle(point, target, primary, repo_obj, entry, opened)
                running += outcome == RUNS
                continue
            if state == CopyState.PENDING:
                waiting += 1  # in its vCenter's admission queue (copyqueue.py)
                continue
            if state == CopyState.FAILED and int((entry or {}).get("attempts") or 0) >= ATTEMPTS:
                continue
            if delay is not None and point.completed + delay > now:
                continue
            if not (point.backup.get("status") or {}).get("vcenter"):
                continue  # no vCenter's queue can admit it (a run always names one)
            await self._queue(point, target, entry)
            waiting += 1
        self.running += running
        last = self.retained_at.get(target.repository)
        due = (
            target.repository in self.copied_since
            or last is None
            or (now - last).total_seconds() >= self.timing.interval(RETAIN_EVERY)
        )
        if not waiting and not running and due:
            # Nothing in flight to this target: its own retention may prune (a copy in
            # flight maps its chunks through the VM's previous copy, kept till then).
            self.copied_since.discard(target.repository)
            self.retained_at[target.repository] = now
            if not opened:
                opened.append(await open_repository(self.api, repo_obj))
            await self._retain(policy, target, opened[0], backups)
            if orphans:
                await self._adopt(policy, target, opened[0], orphans)

    async def _adopt(
        self,
        policy: Mapping[str, Any],
        target: CopyTarget,
        repo: Repository,
        orphans: Sequence[Point],
    ) -> None:
        """Record on their points the copies of expired runs' points found in the target
        (made outside the operator, by ``vmguard repo copy``): they are then neither
        lagging nor copied again. The entry's time is the copy's, so writing it again
        changes nothing."""
        meta = policy["metadata"]
        known = self.manifests.setdefault(target.repository, {})
        found = await asyncio.to_thread(_copies_in, repo, meta["namespace"], meta["name"], known)
        for point, copy_id in adoptable(orphans, found):
            finished, stored = await asyncio.to_thread(_made, repo, copy_id)
            entry: BackupCopy = {
                "repository": target.repository,
                "state": CopyState.COMPLETED,
                "time": format_time(finished),
                "bytes": stored,
                "archiveId": copy_id,
            }
            await record_point_copy(self.api, point.backup, entry)
            self.log.info(
                "copy %s of expired run's point %s found in %s: recorded",
                copy_id,
                point.archive_id,
                target.repository,
            )

    async def _settle(
        self,
        point: Point,
        target: CopyTarget,
        primary: Mapping[str, Any],
        repo_obj: dict[str, Any],
        entry: BackupCopy,
        opened: list[Repository],
    ) -> str:
        """Look at a Running copy's Job: :data:`RUNS` (created now, or still running) or
        :data:`ENDED` (Completed or Failed recorded)."""
        attempt = int(entry.get("attempts") or 1)
        namespace = point.backup["metadata"]["namespace"]
        job = await self.jobs.read_job(
            namespace, copy_job_name(point.name, target.repository, attempt)
        )
        if job is None:
            # Admitted and not created yet, or gone before its end was seen (removed by
            # hand, or by its TTL while no operator ran): created under the same name.
            await self._create_job(point, target, primary, repo_obj, attempt)
            return RUNS
        state = job_state(job)
        if state.active:
            return RUNS
        if state.failed:
            message = state.message or state.reason or "the copy Job failed"
            await record_copy(
                self.api,
                point.backup,
                {
                    **entry,
                    "state": CopyState.FAILED,
                    "time": format_time(self.timing.now()),
                    "message": message,
                },
            )
            self.log.warning("copy of %s to %s failed: %s", point.name, target.repository, message)
            return ENDED
        if not opened:
            opened.append(await open_repository(self.api, repo_obj))
        copy_id, stored = await asyncio.to_thread(_find_copy, opened[0], point.archive_id)
        if copy_id is None:
            await record_copy(
                self.api,
                point.backup,
                {
                    **entry,
                    "state": CopyState.FAILED,
                    "time": format_time(self.timing.now()),
                    "message": "the copy Job succeeded but the target holds no copy",
                },
            )
            return ENDED
        done: BackupCopy = {
            "repository": target.repository,
            "state": CopyState.COMPLETED,
            "time": format_time(state.finished_at or self.timing.now()),
            "bytes": stored,
            "archiveId": copy_id,
            "attempts": attempt,
        }
        await record_copy(self.api, point.backup, done)
        self.copied_since.add(target.repository)
        self.log.info(
            "copied %s to %s as %s (%d bytes)", point.name, target.repository, copy_id, stored
        )
        return ENDED

    async def _retain(
        self,
        policy: Mapping[str, Any],
        target: CopyTarget,
        repo: Repository,
        backups: Sequence[dict[str, Any]],
    ) -> None:
        """The target's own retention over the policy's copies in it: retire the copies it
        does not keep (the primary's points are not touched), and mark their entries
        Pruned. A copy under Object Lock stays until its lock ends."""
        meta, spec = policy["metadata"], policy.get("spec") or {}
        rules = retention_policy({"retention": target.retention})
        tz = zone((spec.get("schedule") or {}).get("timeZone") or "UTC")
        known = self.manifests.setdefault(target.repository, {})
        copies = await asyncio.to_thread(_copies_in, repo, meta["namespace"], meta["name"], known)
        by_source = {p.archive_id: p for p in points(policy, backups)}
        for c in plan_copy_retention(copies, rules, tz):
            until = await asyncio.to_thread(retire_archive, repo, c.archive_id)
            if until is not None:
                continue  # Object Lock: tried again at a later pass
            known.pop(c.archive_id, None)
            self.log.info(
                "pruned the copy %s of %s from %s", c.archive_id, c.source, target.repository
            )
            point = by_source.get(c.source)
            entry = copies_of(point.backup).get(target.repository) if point else None
            if point is not None and entry is not None:
                pruned: BackupCopy = {
                    **entry,
                    "state": CopyState.PRUNED,
                    "time": format_time(self.timing.now()),
                }
                await record_copy(self.api, point.backup, pruned)

    async def _queue(self, point: Point, target: CopyTarget, entry: BackupCopy | None) -> None:
        """Queue the point's copy to ``target``: its entry says Pending, which puts it in
        its vCenter's admission queue (:mod:`.copyqueue`)."""
        pending: BackupCopy = {
            "repository": target.repository,
            "state": CopyState.PENDING,
            "time": format_time(self.timing.now()),
            "message": QUEUED,
        }
        if entry and entry.get("attempts"):
            pending["attempts"] = int(entry["attempts"])
        await record_copy(self.api, point.backup, pending)
        self.log.info("copy of %s to %s: queued", point.name, target.repository)

    async def _create_job(
        self,
        point: Point,
        target: CopyTarget,
        primary: Mapping[str, Any],
        repo_obj: Mapping[str, Any],
        attempt: int,
    ) -> None:
        namespace = point.backup["metadata"]["namespace"]
        if namespace not in self.rbac_done:
            await self.jobs.ensure_rbac(build_proxy_rbac(namespace, self.proxy.service_account))
            self.rbac_done.add(namespace)
        job = build_copy_job(
            point.backup,
            self.proxy,
            archive_id=point.archive_id,
            source=primary["spec"],
            target_name=target.repository,
            target=repo_obj["spec"],
            target_credentials=target.credentials,
            bandwidth=target.bandwidth,
            attempt=attempt,
            active_deadline=copy_deadline(point.backup, target.bandwidth),
        )
        created = await self.jobs.create_job(job)
        self.log.info(
            "Job %s %s: copying %s to %s",
            job["metadata"]["name"],
            "created" if created else "adopted",
            point.name,
            target.repository,
        )


def _copies_in(
    target: Repository, namespace: str, policy: str, known: dict[str, CopiedPoint | None]
) -> list[CopiedPoint]:
    """The policy's points copied into ``target`` (``known``: a cache of what each
    manifest said, by archive id — manifests never change)."""
    out = []
    for ref in target.list_archives():
        if ref.archive_id not in known:
            try:
                labels = target.load_archive(ref.archive_id).labels
            except ObjectNotFoundError:
                continue  # retired meanwhile
            origin = labels.get(COPIED_FROM_LABEL)
            known[ref.archive_id] = (
                CopiedPoint(ref.archive_id, ref.vm_tag, origin, parse_archive_id(origin).started)
                if origin
                and labels.get(ORIGIN_POLICY) == policy
                and labels.get(ORIGIN_NAMESPACE) == namespace
                else None
            )
        found = known[ref.archive_id]
        if found is not None:
            out.append(found)
    return out


@dataclass(frozen=True)
class CopiedPoint:
    """A copy in a target, dated by its source point (not by when it was copied)."""

    archive_id: str
    vm_tag: str
    source: str
    time: dt.datetime


def plan_copy_retention(
    copies: Sequence[CopiedPoint], rules: RetentionPolicy, tz: dt.tzinfo
) -> list[CopiedPoint]:
    """The copies the target's retention does not keep, per VM, oldest first (pure)."""
    by_vm: dict[str, list[CopiedPoint]] = {}
    for c in copies:
        by_vm.setdefault(c.vm_tag, []).append(c)
    out: list[CopiedPoint] = []
    for group in by_vm.values():
        kept = select_retained(((c.archive_id, c.time) for c in group), rules, tz)
        out.extend(c for c in group if c.archive_id not in kept)
    return sorted(out, key=lambda c: (c.time, c.archive_id))


COPY_DEADLINE = 4 * 3600
"""A copy Job's ``activeDeadlineSeconds`` without a bandwidth limit."""


def copy_deadline(backup: Mapping[str, Any], bandwidth: int | None) -> int:
    """A copy Job's deadline: :data:`COPY_DEADLINE`, or with a bandwidth limit twice the
    time the disks' whole capacity takes at that rate when that is longer (a full copy
    reads every allocated chunk; the capacity bounds them) (pure)."""
    if not bandwidth:
        return COPY_DEADLINE
    totals = (backup.get("status") or {}).get("totals") or {}
    capacity = int(totals.get("capacityBytes") or 0) or sum(
        int(d.get("capacityBytes") or 0) for d in (backup.get("status") or {}).get("disks") or ()
    )
    return max(COPY_DEADLINE, 2 * capacity // bandwidth)


def adoptable(orphans: Sequence[Point], copies: Sequence[CopiedPoint]) -> list[tuple[Point, str]]:
    """(point, its copy's archive id) for each expired run's point whose copy is in the
    target (pure)."""
    by_source = {c.source: c.archive_id for c in copies}
    return [(p, by_source[p.archive_id]) for p in orphans if p.archive_id in by_source]


def _made(target: Repository, copy_id: str) -> tuple[dt.datetime, int]:
    """When a copy in ``target`` was committed, and the bytes it stored."""
    manifest = target.load_archive(copy_id)
    stored = manifest.stats.bytes_stored or sum(d.stats.bytes_stored for d in manifest.disks)
    return manifest.finished, int(stored)


def _find_copy(target: Repository, source_archive: str) -> tuple[str | None, int]:
    """(the copy's archive id in ``target``, its stored bytes), or (None, 0)."""
    copy_id = copied_archives(target).get(source_archive)
    if copy_id is None:
        return None, 0
    manifest = target.load_archive(copy_id)
    stored = manifest.stats.bytes_stored or sum(d.stats.bytes_stored for d in manifest.disks)
    return copy_id, int(stored)


__all__ = [
    "ATTEMPTS",
    "CopiedPoint",
    "Copier",
    "Point",
    "adoptable",
    "awaiting_copy",
    "chosen",
    "copy_deadline",
    "lag_condition",
    "oldest_uncopied",
    "plan_copy_retention",
    "points",
]
