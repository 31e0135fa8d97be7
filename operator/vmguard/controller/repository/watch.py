"""The VMGuardRepository controller: can the repository be used, how big is it, and its
scheduled garbage collection and verify.

A kopf daemon per VMGuardRepository (``handlers.py``, controller ``repositories``) runs
:class:`RepositoryWatch`. Every ``interval`` (60 s, ``VMGUARD_REPOSITORY_INTERVAL``) it
opens the repository with the object's Secrets — and creates it when the prefix holds
nothing, applying every spec field the config fixes (chunk size, Object Lock, encryption;
:mod:`~vmguard.controller.kube.repository_spec`). It is the only creator: a backup
waits for it, and nothing is ever created over a prefix that holds objects. It compares the config
with the spec (:func:`~vmguard.controller.kube.repository_spec.spec_mismatches`), counts it with
:func:`vmguard.store.stats.repository_stats` (the function behind ``vmguard repo
stats``; manifests are cached, they never change), writes status
and feeds the metrics. GC (:func:`vmguard.store.gc.collect_garbage`, with
``spec.gc.gracePeriod`` as its chunk grace) and verify (:func:`vmguard.store.verify.
verify`, deep when ``spec.verify.depth`` is ``full``) run at the times of their cron
schedules (:mod:`~vmguard.controller.kube.schedule`); a scheduled time that passed
since the last run finished (``status.lastGC.time`` / ``lastVerify.time``, else the object's
creation) runs once, now, so a restart catches up one run, never one per missed slot.

Conditions (reasons from :func:`classify`, pure):

- ``Reachable``: the bucket answered. False: ``CredentialsRefused``, ``BucketNotFound``,
  ``Unreachable``; Unknown: ``InvalidConfiguration`` (a Secret or key missing: nothing
  was tried).
- ``Ready``: the repository can be used. Unknown (``Checking``) from the moment the
  controller first sees the object until its first turn decides (opening, or creating,
  a repository can take a while: an S3 endpoint slow to answer, the KDF of an encrypted
  one), so kstatus reads it as in progress, not as Current for lack of a status. False
  with the reasons above, or
  ``SpecMismatch`` (its config differs from the spec; the message names the field:
  ``chunkSize``, ``objectLockDays``, ``objectLockMode``, ``gc``), ``PrefixNotEmpty``
  (no config, no retained copy, but objects: never initialised over), ``WrongKey``
  (the key does not open it, is missing, is given for an unencrypted one, or the
  config failed its key check), ``KdfParameterOutOfBounds`` (its config asks for more
  key-derivation memory or work than the bound, format §4.3; refused before any work),
  ``NotInitialized`` (creating it failed), ``RepositoryError`` (its config or a
  manifest cannot be read). True says which format features it lacks (``vmguard repo
  upgrade`` adds them) and when it was opened from a retained config copy.
  ``Stalled``/``Reconciling`` follow ``Ready`` (:func:`..kube.conditions.standing_conditions`),
  so kstatus reads a repository that cannot be used as Failed, not in progress.
- ``Verified``: the last verify. False with ``DamageFound`` naming the count; the chunk
  ids and the archives they damage go into a warning event (bounded). With Object Lock
  every verify is followed by a lock-check (:func:`vmguard.store.lockcheck.lock_check`,
  as ``vmguard repo lock-check``) that extends retentions shorter than an archive
  promises; repairs are a ``LockRepaired`` event, a shortfall it cannot repair makes
  ``Verified`` False with ``LockShortfall``.
- ``GarbageCollected``: the last GC. False with ``GCFailed`` (e.g. an archive it cannot
  read stops it before it deletes anything). Another GC holding the repository's lock
  is a normal outcome: an event says it was skipped.
- ``ScheduleValid``: False with the schedule's reason when a cron line cannot run.

Invariants: blocking work (S3, the KDF of an encrypted repository) runs in threads; GC
and verify run as tasks beside the loop, one of each at a time per repository, on a
repository object of their own, so a day-long deep verify neither blocks the event loop
nor stops the status from being refreshed. The daemon is the only writer of the
repository's conditions: it keeps them in memory and patches the whole list. Status and
events carry our error messages, which never contain a secret value.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vmguard.api import Condition, format_time, parse_duration, parse_time
from vmguard.api.kinds import REPOSITORY
from vmguard.controller.kube.access import (
    create_repository,
    open_repository,
    open_repository_blocking,
    repository_secrets,
)
from vmguard.controller.kube.conditions import (
    get_condition,
    set_condition,
    standing_conditions,
)
from vmguard.controller.kube.handlers import Announce
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.repository_spec import missing_features, spec_mismatches
from vmguard.controller.kube.schedule import Schedule, parse
from vmguard.controller.kube.timing import REAL_TIME, Timing
from vmguard.errors import (
    AuthenticationError,
    BackendUnavailableError,
    BucketNotFoundError,
    ConfigError,
    CredentialsRefusedError,
    GcBusyError,
    KdfLimitError,
    RepositoryError,
    RepositoryExistsError,
    RepositoryNotFoundError,
    ScheduleError,
    VmguardError,
)
from vmguard.metrics import Metrics
from vmguard.store import Repository, names
from vmguard.store.config import FORMAT_VERSION
from vmguard.store.gc import GcReport, collect_garbage
from vmguard.store.lockcheck import LockCheckReport, lock_check
from vmguard.store.stats import RepositoryStats, repository_stats
from vmguard.store.verify import VerifyReport, verify

PLURAL = REPOSITORY.plural
LISTED = 10  # damaged chunks named in an event


@dataclass(frozen=True)
class Verdict:
    """What opening the repository said: ``reachable`` None when nothing was tried."""

    reachable: bool | None
    reason: str
    message: str


def classify(exc: BaseException) -> Verdict:
    """Pure: the conditions' view of an error from opening or counting the repository."""
    message = str(exc)
    if isinstance(exc, CredentialsRefusedError):
        return Verdict(False, "CredentialsRefused", message)
    if isinstance(exc, BucketNotFoundError):
        return Verdict(False, "BucketNotFound", message)
    if isinstance(exc, RepositoryNotFoundError):
        return Verdict(True, "NotInitialized", f"{message}: the VMGuardRepository creates it")
    if isinstance(exc, RepositoryExistsError):
        return Verdict(True, "PrefixNotEmpty", message)
    if isinstance(exc, KdfLimitError):
        return Verdict(True, "KdfParameterOutOfBounds", message)
    if isinstance(exc, AuthenticationError):
        return Verdict(True, "WrongKey", message)
    if isinstance(exc, ConfigError) and "master key" in message:
        return Verdict(True, "WrongKey", message)  # a key for an unencrypted repository
    if isinstance(exc, ConfigError):
        return Verdict(None, "InvalidConfiguration", message)
    if isinstance(exc, BackendUnavailableError):
        return Verdict(False, "Unreachable", message)
    if isinstance(exc, RepositoryError):
        return Verdict(True, "RepositoryError", message)
    return Verdict(None, "Error", f"{type(exc).__name__}: {message}")


def stats_status(repo: Repository, stats: RepositoryStats) -> dict[str, Any]:
    """Pure: the status fields of a repository that opened and was counted."""
    out: dict[str, Any] = {
        "reachable": True,
        "repositoryId": repo.config.id,
        "formatVersion": FORMAT_VERSION,
        "encrypted": repo.encrypted,
        "formatFeatures": list(repo.config.features),
        "archives": stats.archives,
        "chunks": stats.chunks,
        "storedBytes": stats.stored_bytes,
        "logicalBytes": stats.logical_bytes,
    }
    if stats.dedup_ratio is not None:
        out["dedupRatio"] = round(stats.dedup_ratio, 3)
    return out


def gc_status(report: GcReport, at: dt.datetime) -> dict[str, Any]:
    return {
        "time": format_time(at),
        "chunksDeleted": report.deleted,
        "bytesFreed": report.deleted_bytes,
    }


def verify_status(report: VerifyReport, at: dt.datetime) -> dict[str, Any]:
    return {
        "time": format_time(at),
        "depth": "full" if report.deep else "existence",
        "chunksChecked": report.chunks,
        "errors": len(report.chunk_problems) + len(report.archive_problems),
    }


def damage_message(report: VerifyReport) -> str:
    """Pure: the event text of a verify that found problems, naming at most LISTED."""
    errors = len(report.chunk_problems) + len(report.archive_problems)
    lines = [
        f"{'deep' if report.deep else 'existence'} verify found {errors} error(s) affecting "
        f"{len(report.affected_archives())} archive(s)"
    ]
    for p in report.chunk_problems[:LISTED]:
        shown = ", ".join(p.archives[:LISTED])
        more = f" and {len(p.archives) - LISTED} more" if len(p.archives) > LISTED else ""
        lines.append(f"chunk {p.chunk_id} {p.kind} ({p.detail}): archives {shown}{more}")
    for a in report.archive_problems[: max(0, LISTED - len(report.chunk_problems))]:
        lines.append(f"archive {a.archive_id}: {a.detail}")
    if errors > LISTED:
        lines.append(f"… {errors - LISTED} more: run `vmguard repo verify` for the list")
    return "; ".join(lines)


def schedule_of(spec: Mapping[str, Any], job: str) -> Schedule | None:
    """The cron schedule of ``spec.gc`` or ``spec.verify``; None when not set.
    ScheduleError when it cannot run."""
    part = spec.get(job) or {}
    if not part.get("schedule"):
        return None
    return parse(part["schedule"], part.get("timeZone") or "UTC")


class RepositoryWatch:
    """One VMGuardRepository's loop; see the module docstring."""

    def __init__(
        self,
        api: KubeAPI,
        body: Any,
        metrics: Metrics | None,
        announce: Announce,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        interval: float,
        timing: Timing = REAL_TIME,
    ) -> None:
        self.api, self.body, self.metrics = api, body, metrics
        self.announce, self.log, self.interval = announce, logger, interval
        self.timing = timing
        status = body.get("status") or {}
        self.conditions: list[Condition] = list(status.get("conditions") or [])
        # Where each schedule was last handled: the clock's times (controller/kube/timing.py).
        created = parse_time(body["metadata"].get("creationTimestamp")) or timing.now()
        self.cursors = {
            "gc": parse_time((status.get("lastGC") or {}).get("time")) or created,
            "verify": parse_time((status.get("lastVerify") or {}).get("time")) or created,
        }
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.logical_cache: dict[str, int] = {}
        self.meta = body["metadata"]

    async def loop(self, stopped: Any) -> None:
        try:
            while not stopped:
                try:
                    await self.checking()
                    delay = await self.turn()
                except Exception as exc:  # never let one bad turn end the daemon
                    self.log.exception("repository turn failed: %s", exc)
                    delay = self.interval
                await self.timing.wait(max(1.0, delay), stopped)  # at most one turn a second
        finally:
            for task in self.tasks.values():
                task.cancel()  # the thread finishes on its own; GC is crash-safe

    async def checking(self) -> None:
        """Before the first turn of a repository whose ``Ready`` was never decided: say
        that it is being checked (``Ready=Unknown``, ``Reconciling=True``). A no-op after."""
        if get_condition(self.conditions, "Ready"):
            return
        generation = self.meta.get("generation")
        text = "opening (or creating) the repository for the first time"
        self.set("Ready", None, "Checking", text, generation)
        try:
            await self.patch({"observedGeneration": generation, "conditions": self.conditions})
        except Exception as exc:  # the turn's own status follows; it must not be held up
            self.log.warning("could not say the repository is being checked: %s", exc)

    async def turn(self) -> float:
        snapshot: dict[str, Any] = copy.deepcopy(dict(self.body))
        spec, generation = snapshot.get("spec") or {}, snapshot["metadata"].get("generation")
        status: dict[str, Any] = {"observedGeneration": generation}
        opened = await self.observe(snapshot, status)
        if self.metrics is not None:
            reason = get_condition(self.conditions, "Ready").get("reason") or "Unknown"
            self.metrics.count_repository_check(
                self.meta["namespace"], self.meta["name"], str(reason)
            )
        now = self.timing.now()
        line_now = self.timing.on_line(now)
        wake = [now + dt.timedelta(seconds=self.interval)]
        problems = []
        for job in ("gc", "verify"):
            try:
                schedule = schedule_of(spec, job)
            except ScheduleError as exc:
                problems.append((exc.reason, f"spec.{job}.schedule: {exc}"))
                continue
            if schedule is None:
                continue
            following = schedule.next_after(self.timing.on_line(self.cursors[job]))
            due = following is not None and following <= line_now
            if due and opened and job not in self.tasks:
                self.start(job, snapshot)
            nxt = schedule.next_after(line_now)
            if nxt is not None:
                wake.append(self.timing.off_line(nxt))
        if problems:
            message = "; ".join(m for _, m in problems)
            self.set("ScheduleValid", False, problems[0][0], message, generation)
        else:
            self.set("ScheduleValid", True, "Valid", "the GC and verify schedules run", generation)
        status["conditions"] = self.conditions
        await self.patch(status)
        return (min(wake) - self.timing.now()).total_seconds()

    async def open_or_create(self, snapshot: dict[str, Any]) -> Repository:
        """The repository; created from the spec when its prefix holds nothing."""
        namespace, spec = snapshot["metadata"]["namespace"], snapshot.get("spec") or {}
        creds, key = await repository_secrets(self.api, namespace, spec)
        try:
            return await asyncio.to_thread(open_repository_blocking, spec, creds, key)
        except RepositoryNotFoundError:
            pass
        try:
            repo = await asyncio.to_thread(create_repository, spec, creds, key)
        except RepositoryExistsError as exc:
            try:  # another operator created it meanwhile; else objects but no config
                return await asyncio.to_thread(open_repository_blocking, spec, creds, key)
            except RepositoryNotFoundError:
                raise exc from None
        lock = repo.config.object_lock
        self.announce(
            "RepositoryCreated",
            f"created repository {repo.config.id}: chunk size {repo.config.chunk_size},"
            f" {'encrypted' if repo.encrypted else 'unencrypted'}, "
            + (f"Object Lock {lock.mode} {lock.days} days" if lock else "no Object Lock"),
            False,
        )
        return repo

    async def observe(self, snapshot: dict[str, Any], status: dict[str, Any]) -> bool:
        """Open (or create) and count the repository into ``status``; True when it opened
        and its config matches the spec."""
        generation = snapshot["metadata"].get("generation")
        try:
            repo = await self.open_or_create(snapshot)
            mismatches = spec_mismatches(snapshot.get("spec") or {}, repo.config)
            if not mismatches:
                stats = await asyncio.to_thread(repository_stats, repo, self.logical_cache)
        except VmguardError as exc:
            verdict = classify(exc)
            if verdict.reachable is not None:
                status["reachable"] = verdict.reachable
            if verdict.reachable:
                self.set("Reachable", True, "Reachable", "the bucket answers", generation)
            else:
                self.set(
                    "Reachable", verdict.reachable, verdict.reason, verdict.message, generation
                )
            self.set("Ready", False, verdict.reason, verdict.message, generation)
            return False
        self.set("Reachable", True, "Reachable", "the bucket answers", generation)
        if mismatches:
            status.update(reachable=True, repositoryId=repo.config.id, encrypted=repo.encrypted)
            text = "; ".join(f"{field}: {message}" for field, message in mismatches)
            self.set("Ready", False, "SpecMismatch", text, generation)
            return False
        status.update(stats_status(repo, stats))
        text = f"{stats.archives} archive(s), {stats.chunks} chunk(s)"
        missing = missing_features(repo.config)
        if missing:
            text += f"; format features not yet used: {', '.join(missing)} (vmguard repo upgrade)"
        if repo.source != names.CONFIG:
            text += f"; its config object is missing, opened from the retained copy {repo.source}"
        self.set("Ready", True, "Ready", text, generation)
        return True

    def set(
        self, type_: str, value: bool | None, reason: str, message: str, generation: Any
    ) -> None:
        self.conditions = set_condition(self.conditions, type_, value, reason, message, generation)
        if type_ == "Ready":  # Reconciling/Stalled follow Ready (controller/conditions.py)
            self.conditions = standing_conditions(self.conditions, generation)

    async def patch(self, status: dict[str, Any]) -> None:
        namespace, name = self.meta["namespace"], self.meta["name"]
        await self.api.patch_status(PLURAL, namespace, name, status)
        if self.metrics is not None and ("reachable" in status or "lastVerify" in status):
            # The last verify survives restarts in the status: report it from the start.
            seen = {"lastVerify": (self.body.get("status") or {}).get("lastVerify"), **status}
            self.metrics.observe_repository(namespace, name, seen)

    # -- GC and verify ------------------------------------------------------------------

    def start(self, job: str, snapshot: dict[str, Any]) -> None:
        run = self.run_gc if job == "gc" else self.run_verify
        task = asyncio.create_task(run(snapshot))
        self.tasks[job] = task
        task.add_done_callback(lambda _: self.tasks.pop(job, None))

    async def run_gc(self, snapshot: dict[str, Any]) -> None:
        spec = snapshot.get("spec") or {}
        generation = snapshot["metadata"].get("generation")
        try:
            grace = parse_duration((spec.get("gc") or {}).get("gracePeriod"), 0.0) or None
            repo = await open_repository(self.api, snapshot)
            report = await asyncio.to_thread(collect_garbage, repo, chunk_grace_seconds=grace)
        except GcBusyError as exc:
            self.cursors["gc"] = self.timing.now()
            self.announce("GCSkipped", f"garbage collection skipped: {exc}", False)
            return
        except Exception as exc:
            self.cursors["gc"] = self.timing.now()
            message = f"garbage collection failed: {classify(exc).message}"
            self.set("GarbageCollected", False, "GCFailed", message, generation)
            self.announce("GCFailed", message, True)
            await self.patch({"conditions": self.conditions})
            return
        at = self.timing.now()
        self.cursors["gc"] = at
        text = f"deleted {report.deleted} chunk(s), {report.deleted_bytes} bytes freed"
        if report.waiting_for:
            text += f"; a collection waits for {len(report.waiting_for)} running backup(s)"
        self.set("GarbageCollected", True, "Collected", text, generation)
        self.announce("GarbageCollected", text, False)
        await self.patch({"lastGC": gc_status(report, at), "conditions": self.conditions})

    async def run_verify(self, snapshot: dict[str, Any]) -> None:
        spec = snapshot.get("spec") or {}
        generation = snapshot["metadata"].get("generation")
        deep = (spec.get("verify") or {}).get("depth") == "full"
        locks: LockCheckReport | None = None
        try:
            repo = await open_repository(self.api, snapshot)
            report = await asyncio.to_thread(verify, repo, deep=deep)
            if repo.config.object_lock is not None:
                locks = await asyncio.to_thread(lock_check, repo)
        except Exception as exc:
            self.cursors["verify"] = self.timing.now()
            message = f"verify could not run: {classify(exc).message}"
            self.set("Verified", None, "VerifyFailed", message, generation)
            self.announce("VerifyFailed", message, True)
            await self.patch({"conditions": self.conditions})
            return
        at = self.timing.now()
        self.cursors["verify"] = at
        result = verify_status(report, at)
        depth = result["depth"]
        if report.ok:
            checked = f"{report.chunks} chunk(s) of {report.archives} archive(s)"
            text = f"{depth} verify: {checked}, no errors"
            self.set("Verified", True, "NoDamage", text, generation)
            self.announce("Verified", text, False)
        else:
            errors = result["errors"]
            text = (
                f"{depth} verify found {errors} error(s) in "
                f"{len(report.affected_archives())} archive(s); see the events for chunk ids"
            )
            self.set("Verified", False, "DamageFound", text, generation)
            self.announce("DamageFound", damage_message(report), True)
        if locks is not None:
            self.judge_locks(locks, generation)
        await self.patch({"lastVerify": result, "conditions": self.conditions})

    def judge_locks(self, locks: LockCheckReport, generation: Any) -> None:
        """Events and, for what could not be repaired, the Verified condition."""
        if locks.repaired:
            self.announce(
                "LockRepaired",
                f"lock-check extended {locks.repaired} Object Lock retention(s) that were"
                f" shorter than {locks.archives} archive(s) promise",
                True,
            )
        if not locks.ok:
            left = [s.name for s in locks.shortfalls if not s.repaired][:LISTED]
            text = (
                f"lock-check: {len(locks.shortfalls) - locks.repaired} object(s) cannot be"
                f" locked as promised ({', '.join(left)}); {len(locks.problems)} archive(s)"
                " unreadable: run `vmguard repo lock-check` for the list"
            )
            self.set("Verified", False, "LockShortfall", text, generation)
            self.announce("LockShortfall", text, True)
