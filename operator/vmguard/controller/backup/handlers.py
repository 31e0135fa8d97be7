"""The VMGuardBackup kind's kopf handlers, and the operator's tasks of the kind.

The kind has **no kopf daemon**: kopf keeps the latest body of every object of a kind
with any daemon (``live_fresh_body``, before any filter): 17-20 KB per finished run,
≈ 90 MB for one night's 5,000 (docs/scale.md). What daemons did is done by the
operator's own tasks over kopf indexes (:mod:`~vmguard.controller.kube.supervisor`,
started by ``main``, gated by ``memo.presence`` like the expiry loop):

- ``backups_running``: the kopf index of backups in flight (not finished, not synced),
  not waiting for admission and not being deleted; ``memo.backup_tasks`` runs
  :func:`drive_backup` for each, which drives it through its phases
  (:func:`.reconcile.reconcile`), resumed by any operator that (re)starts; a fault is
  logged and the step retried after 30 s. It was the ``vmbackup_runner`` daemon.
- ``backup_queue``: the kopf index of resolved backups in flight, the backups' lane
  of the admission queue (:mod:`.admission`, docs/admission.md); the loop that starts
  them is the VCenter's (``vcenter.handlers.admission_turns``).
- ``vmbackup_phase``: a backup finished: its outcome is counted once, and a completed
  one wakes its policy's scheduler (retention runs now:
  :func:`~vmguard.controller.kube.handlers.policy_wakeup`). An event handler, not a
  field handler: a field handler makes kopf keep a diff-base annotation on every
  backup and PATCH it at each phase change, one request per backup and phase for
  nothing we read (docs/scale.md); ``main`` keeps no diff-base for backups at all.
  Every event of a backup also touches both supervisors: its task starts or stops.
- ``vmbackup_deleted``: deleted mid-flight: its task ends, the proxy stops and the
  snapshot goes before the finalizer is released; ``backup_gone`` wakes its vCenter's
  admission loop once the object is gone (its slot is free only then).
- ``verify_queue``: the kopf index of requested verifications of completed backups, the
  verifications' lane (:mod:`.verification`); ``verifications_running``: the index of
  admitted ones, for each of which ``memo.verify_tasks`` runs :func:`verify_backup`
  (it was the ``verifier`` daemon): its Job, and its result on the point; one that
  ended is counted and wakes its vCenter's loop, seen by ``vmbackup_phase``.
- ``vmbackup_phase`` also keeps each Completed backup that does not say its point was
  recorded (``PointRecorded=True``: an older operator's, the upgrade to ProtectedVMs)
  and wakes ``fold_loop``, one per operator (started by ``main``), which folds their
  points into their ProtectedVMs and marks them (:mod:`~vmguard.controller.kube.migration`):
  a start whose backups all say so reads no ProtectedVM for them.
- ``finished_runs``: the kopf index of finished (not synced) VMGuardBackups;
  ``expiry_loop``, one per operator (started by ``main``), deletes each
  ``ttlSecondsAfterFinished`` after it finished, its point kept in the VM's ProtectedVM
  and its archive untouched (:mod:`.expiry`). It was a daemon per finished run: ≈ 20 KB
  each, ≈ 100 MB for one night's 5,000 (docs/scale.md).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any, Protocol

import kopf

from vmguard.api import (
    BACKUP_TERMINAL,
    GROUP,
    LABEL_POLICY,
    VERSION,
    BackupPhase,
    VerificationPhase,
)
from vmguard.api.kinds import BACKUP, POLICY
from vmguard.api.names import is_synced
from vmguard.controller.backup import admission, expiry, reconcile, verification
from vmguard.controller.backup.steps import MissingRef
from vmguard.controller.kube import migration
from vmguard.controller.kube.handlers import OperatorMemo, acts, admission_wakeup, policy_wakeup
from vmguard.controller.kube.proxypods import UntilReport
from vmguard.controller.kube.supervisor import Member, Stopper, Supervisor, member_of
from vmguard.controller.kube.workqueue import Queued

log = logging.getLogger(__name__)


class BackupMemo(OperatorMemo, Protocol):
    """The operator memo as the VMGuardBackup handlers read it: the shared view, plus the
    one backup context of the operator (its admission lock is what makes admission atomic
    within it, so every object's handlers must see the same one)."""

    backups: reconcile.BackupContext
    finished_backups: set[str]
    """UIDs of the finished backups ``vmbackup_phase`` has seen (this process only)."""
    finished_verifications: set[tuple[str, str]]
    """(UID, run) of the ended verifications it has seen (this process only)."""
    expiry_wakeup: asyncio.Event
    """Set when the finished runs' index changes: the expiry loop looks again."""
    backup_tasks: Supervisor
    """A task per backup in flight and not queued (:func:`drive_backup`)."""
    unrecorded: dict[str, migration.Unrecorded]
    """Completed backups by UID that do not say their point was recorded, for
    :func:`fold_loop` (taken by it)."""
    fold_seen: set[str]
    """UIDs handed to the fold in this process: each is folded once per start."""
    fold_wakeup: asyncio.Event
    """Set when :attr:`unrecorded` gains a backup."""
    verify_tasks: Supervisor
    """A task per running verification (:func:`verify_backup`)."""


ObjectLog = logging.Logger | logging.LoggerAdapter[Any]


def _backup_in_flight(status: kopf.Status, labels: kopf.Labels, **_: Any) -> bool:
    return reconcile.in_flight(status, labels)


def _backup_runs(status: kopf.Status, labels: kopf.Labels, **_: Any) -> bool:
    """In flight and not waiting in the admission queue (the queue moves those on)."""
    return reconcile.in_flight(status, labels) and not reconcile.queued(status)


def _in_queue(body: kopf.Body, labels: kopf.Labels, **_: Any) -> bool:
    """Resolved and in flight: waiting for admission or running. kopf drops an object
    from the index when this stops holding (a None from the index function would
    leave its last record in place)."""
    return not is_synced(labels) and admission.queued_of(body) is not None


@kopf.index(GROUP, VERSION, BACKUP.plural, when=_in_queue)
async def backup_queue(
    body: kopf.Body, memo: Any, **_: Any
) -> dict[tuple[str, str], Queued] | None:
    """Resolved backups in flight by (the VCenter's namespace, vCenter): the admission
    loops' state, kept by the watch. A change wakes that vCenter's loop. A backup whose
    VCenter is in another namespace (``status.vcenterNamespace``, docs/tenancy.md) is
    queued under that VCenter's loop, with the other namespaces' backups of the vCenter."""
    return _under_its_vcenter(body, memo, admission.queued_of(body))


def _verification_queued(body: kopf.Body, labels: kopf.Labels, **_: Any) -> bool:
    return not is_synced(labels) and verification.queued_of(body) is not None


@kopf.index(GROUP, VERSION, BACKUP.plural, when=_verification_queued)
async def verify_queue(
    body: kopf.Body, memo: Any, **_: Any
) -> dict[tuple[str, str], Queued] | None:
    """Requested verifications of completed backups by (the VCenter's namespace, vCenter):
    the verifications' lane of that vCenter's admission loop (woken by a change)."""
    return _under_its_vcenter(body, memo, verification.queued_of(body))


def _under_its_vcenter(
    body: kopf.Body, memo: Any, record: Queued | None
) -> dict[tuple[str, str], Queued] | None:
    """An index entry keyed by (the VCenter's namespace, vCenter), whose change wakes that
    vCenter's admission loop."""
    if record is None:
        return None
    vc_ns = _vcenter_namespace(body) or record.namespace
    admission_wakeup(memo, vc_ns, record.vcenter).set()
    return {(vc_ns, record.vcenter): record}


def _verifies(status: kopf.Status, labels: kopf.Labels, meta: kopf.Meta, **_: Any) -> bool:
    """A verification runs and the backup is not being deleted (kopf stopped a daemon of
    an object being deleted, and started none)."""
    return not is_synced(labels) and verification.running(status) and not _deleting(meta)


@kopf.index(GROUP, VERSION, BACKUP.plural, when=_verifies)
async def verifications_running(body: kopf.Body, **_: Any) -> dict[str, Member]:
    """The backups whose verification runs, by UID: ``memo.verify_tasks`` runs
    :func:`verify_backup` for each (it was the ``verifier`` daemon)."""
    return member_of(body)


async def verify_backup(
    memo: BackupMemo, member: Member, stopped: Stopper, logger: ObjectLog
) -> None:
    """Run one admitted verification: its Job, then its result on the point and the
    backup (:func:`.verification.step`); resumed by any operator that (re)starts. A task
    of ``memo.verify_tasks`` (:mod:`~vmguard.controller.kube.supervisor`)."""
    name, namespace, uid = member.name, member.namespace, member.uid
    if not acts(memo, "backups"):
        return
    ctx = memo.backups
    while not stopped:
        # Cleared before the read: news that comes after it cuts the next wait short.
        stopped.nudged.clear()
        try:
            obj = await ctx.api.get_object(reconcile.PLURAL, namespace or "", name)
            if obj is None or obj["metadata"]["uid"] != uid:
                return
            delay = (
                await verification.step(ctx, obj)
                if verification.running(obj.get("status") or {})
                else None
            )
        except Exception as exc:  # a fault of ours or a peer's: report, wait, go on
            logger.exception("verification step failed: %s", exc)
            delay = 30.0
        if delay is None:
            # Ended: the task is stopped when the index sees it. (A return would be
            # "done with the object" until it leaves the index; waiting is what the
            # daemon did, so that kopf started it again for the backup's next run.)
            await stopped.wait()
            return
        if isinstance(delay, UntilReport):
            # Its checks run: the proxy's result in status ends the wait now.
            await ctx.timing.wait(delay, stopped, stopped.nudged)
        else:
            await ctx.timing.wait(delay, stopped)


def _vcenter_namespace(body: Any) -> str | None:
    return (body.get("status") or {}).get("vcenterNamespace") or (body.get("metadata") or {}).get(
        "namespace"
    )


def _wake_admission(memo: Any, body: Any) -> None:
    """A backup left the queue (ended, or deleted while running): its vCenter's loop
    plans now rather than at its next idle turn."""
    vc = (body.get("status") or {}).get("vcenter")
    ns = _vcenter_namespace(body)
    if vc and ns and getattr(memo, "admission_wakeups", None) is not None:
        admission_wakeup(memo, ns, vc).set()


def _gone(event: kopf.RawEvent, **_: Any) -> bool:
    return event.get("type") == "DELETED"


@kopf.on.event(GROUP, VERSION, BACKUP.plural, when=_gone)
async def backup_gone(body: kopf.Body, memo: Any, **_: Any) -> None:
    """A backup is gone (its finalizer released): kopf has dropped it from the index
    before this runs, so its vCenter's loop now sees the slot it held free. (Waking it
    from the deletion handler is too early: the backup still holds its slot then.)"""
    _wake_admission(memo, body)


def _deleting(meta: Any) -> bool:
    return bool((meta or {}).get("deletionTimestamp"))


def _drives(status: kopf.Status, labels: kopf.Labels, meta: kopf.Meta, **_: Any) -> bool:
    """In flight, not waiting in the admission queue (the queue moves those on), and not
    being deleted (kopf stopped a daemon of an object being deleted, and started none)."""
    return _backup_runs(status, labels) and not _deleting(meta)


@kopf.index(GROUP, VERSION, BACKUP.plural, when=_drives)
async def backups_running(body: kopf.Body, **_: Any) -> dict[str, Member]:
    """The backups in flight and not queued, by UID: ``memo.backup_tasks`` runs
    :func:`drive_backup` for each (it was the ``vmbackup_runner`` daemon). kopf drops an
    object from the index when the filter stops holding, and at its deletion."""
    return member_of(body)


async def drive_backup(
    memo: BackupMemo, member: Member, stopped: Stopper, logger: ObjectLog
) -> None:
    """Drive one VMGuardBackup through its phases; resumed by any operator that
    (re)starts. A task of ``memo.backup_tasks`` (:mod:`~vmguard.controller.kube.supervisor`)."""
    name, namespace, uid = member.name, member.namespace, member.uid
    if not acts(memo, "backups"):
        return
    ctx = memo.backups
    while not stopped:
        # Cleared before the read: news that comes after it cuts the next wait short.
        stopped.nudged.clear()
        try:
            obj = await ctx.api.get_object(reconcile.PLURAL, namespace or "", name)
            if obj is None or obj["metadata"]["uid"] != uid:
                return
            if obj["metadata"].get("deletionTimestamp"):
                return
            delay = await reconcile.reconcile(ctx, obj)
        except Exception as exc:  # a fault of ours or a peer's: report, wait, go on
            logger.exception("backup step failed: %s", exc)
            delay = 30.0
        if delay is None:
            return
        if delay == reconcile.QUEUED:
            # Resolved: the task is stopped when the index sees it (a return would be
            # "done with the object" until it leaves the index; waiting is what the
            # daemon did, so that kopf started it again once the backup was admitted).
            await stopped.wait()
            return
        if isinstance(delay, UntilReport):
            # A running proxy's long wait: its result or error in status ends it now.
            await ctx.timing.wait(delay, stopped, stopped.nudged)
        elif delay > 0:
            await ctx.timing.wait(delay, stopped)


def _proxy_reported(body: kopf.Body) -> bool:
    """A transferring backup whose status holds its proxy's result or error: its task
    reads its Job now (the Job ends). Progress alone wakes nothing."""
    status = body.get("status") or {}
    return status.get("phase") == BackupPhase.TRANSFERRING and bool(
        status.get("archiveId") or status.get("error")
    )


def _verification_reported(body: kopf.Body) -> bool:
    """A running verification whose proxy wrote its result: its task reads its Job now
    (the Job ends) and records the result."""
    status = body.get("status") or {}
    return verification.running(status) and bool((status.get("verification") or {}).get("result"))


def object_logger(settings: kopf.OperatorSettings) -> Callable[[Member], ObjectLog]:
    """A task's logger: kopf's object logger, as a daemon's was (its records carry a
    reference to the backup; kopf posts none as an Event: ``settings.posting.loggers``
    is off)."""

    def of(member: Member) -> ObjectLog:
        ref: kopf.RawBody = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": BACKUP.kind,
            "metadata": {"namespace": member.namespace, "name": member.name, "uid": member.uid},
        }
        return kopf.ObjectLogger(body=kopf.Body(ref), settings=settings)

    return of


def supervisors(
    memo: BackupMemo,
    settings: kopf.OperatorSettings,
    running: kopf.Index[str, Member],
    verifying: kopf.Index[str, Member],
) -> tuple[Supervisor, Supervisor]:
    """The tasks of backups in flight and of running verifications (``main`` runs them
    when this operator runs the backups controller), gated by ``memo.presence``."""
    logger_of = object_logger(settings)
    return (
        Supervisor(
            "backup",
            functools.partial(drive_backup, memo),
            running,
            memo.timing,
            gate=memo.presence,
            logger_of=logger_of,
        ),
        Supervisor(
            "verification",
            functools.partial(verify_backup, memo),
            verifying,
            memo.timing,
            gate=memo.presence,
            logger_of=logger_of,
        ),
    )


@kopf.on.event(GROUP, VERSION, BACKUP.plural)
async def vmbackup_phase(body: kopf.Body, event: kopf.RawEvent, memo: BackupMemo, **_: Any) -> None:
    """A backup finished: count it (outcome, duration, bytes, last success) once (the
    metrics count each UID once, and none that finished before this operator started).
    The first event of each finished backup wakes its vCenter's admission loop and, if
    it completed, its policy's scheduler, which applies retention (async: on the event
    loop, where that scheduler's asyncio.Event lives). Which finished backups were seen
    is kept in memory (``memo.finished_backups``), not in the objects. Every event of a
    policy's backup is counted for that policy's passes (``memo.changes``)."""
    uid = str(body.get("metadata", {}).get("uid") or "")
    if acts(memo, "backups"):
        # kopf's indexes are current for this object (kopf updates them before any
        # handler): its task starts or stops (kube/supervisor.py).
        memo.backup_tasks.touch(uid)
        memo.verify_tasks.touch(uid)
        if _proxy_reported(body):
            memo.backup_tasks.nudge(uid)
        if _verification_reported(body):
            memo.verify_tasks.nudge(uid)
    # Its policy's next pass works on it (policy/runs.py: a pass skips when nothing changed).
    run_of = (body.get("metadata", {}).get("labels") or {}).get(LABEL_POLICY)
    run_of = run_of or ((body.get("spec") or {}).get("policyRef") or {}).get("name")
    if run_of:
        memo.changes.bump("runs", body.get("metadata", {}).get("namespace") or "", run_of)
    if event.get("type") == "DELETED":
        memo.fold_seen.discard(uid)
        memo.unrecorded.pop(uid, None)
        memo.finished_backups.discard(uid)
        memo.finished_verifications -= {k for k in memo.finished_verifications if k[0] == uid}
        return
    _verification_ended(body, uid, memo)
    if acts(memo, "backups") and uid not in memo.fold_seen:
        unrecorded = migration.unrecorded(body)
        if unrecorded is not None:
            memo.fold_seen.add(uid)
            memo.unrecorded[uid] = unrecorded
            memo.fold_wakeup.set()
    new = (body.get("status") or {}).get("phase")
    if new not in BACKUP_TERMINAL or uid in memo.finished_backups:
        return
    memo.finished_backups.add(uid)
    _wake_admission(memo, body)
    memo.metrics.observe_backup(dict(body))
    policy = (body.get("metadata", {}).get("labels") or {}).get(LABEL_POLICY)
    policy = policy or ((body.get("spec") or {}).get("policyRef") or {}).get("name")
    if new == BackupPhase.COMPLETED and policy and body.get("metadata", {}).get("namespace"):
        # Its policy's retention runs now rather than at the scheduler's next pass.
        policy_wakeup(memo, body["metadata"]["namespace"], policy).set()


def _verification_ended(body: kopf.Body, uid: str, memo: BackupMemo) -> None:
    """A verification ended (first event of each run): count it, and free its slot in
    its vCenter's queue now. An event handler like the phase's, not a field handler:
    kopf keeps nothing in a backup (docs/vmbackup-controller.md)."""
    v = (body.get("status") or {}).get("verification") or {}
    if v.get("phase") != VerificationPhase.COMPLETED:
        return
    key = (uid, str(v.get("run") or 1))
    if key in memo.finished_verifications:
        return
    memo.finished_verifications.add(key)
    _wake_admission(memo, body)
    memo.metrics.observe_verification(dict(body))


def _expires(status: kopf.Status, labels: kopf.Labels, **_: Any) -> bool:
    return expiry.expires(status, labels)


@kopf.index(GROUP, VERSION, POLICY.plural)
async def policy_ttls(
    spec: kopf.Spec, name: str, namespace: str | None, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    """Each policy's ``ttlSecondsAfterFinished`` and its copy targets' names and delays
    (the parts of its spec a backup's expiry reads: a run waits for its copies), so that
    waiting runs never GET their policy."""
    known: dict[str, Any] = {}
    ttl = spec.get("ttlSecondsAfterFinished")
    if ttl is not None:
        known["ttlSecondsAfterFinished"] = ttl
    targets = [
        {"repositoryRef": dict(t.get("repositoryRef") or {}), "delay": t.get("delay")}
        for t in spec.get("copies") or ()
    ]
    if targets:
        known["copies"] = targets
    return {(namespace or "", name): known}


@kopf.index(GROUP, VERSION, BACKUP.plural, when=_expires)
async def finished_runs(body: kopf.Body, memo: Any, **_: Any) -> dict[str, dict[str, Any]]:
    """Each finished (not synced) run's :func:`.expiry.record` by namespace: what the
    expiry loop waits on (a change wakes it). kopf drops a run from the index when it
    is deleted or stops being finished. Async so that kopf calls it on the event loop,
    where the wake-up event lives (a sync one runs in kopf's thread pool, and an
    ``asyncio.Event`` set from there need not wake its waiter)."""
    wake = getattr(memo, "expiry_wakeup", None)
    if wake is not None:
        wake.set()
    return {str(body.get("metadata", {}).get("namespace") or ""): expiry.record(body)}


async def expiry_loop(
    memo: BackupMemo,
    runs: kopf.Index[str, dict[str, Any]],
    policy_ttls: kopf.Index[tuple[str, str], dict[str, Any]],
) -> None:
    """The operator's one expiry loop (started by ``main`` at start-up): deletes each
    finished run ``ttlSecondsAfterFinished`` after it finished, its point kept in the
    VM's ProtectedVM and its archive untouched (:mod:`.expiry`). The runs and the
    policies' TTLs come from kopf's indexes: waiting reads nothing from the apiserver.
    It acts only while kopf lets this replica act (``memo.presence``)."""
    if not acts(memo, "backups"):
        return

    def policy_spec(namespace: str, name: str) -> dict[str, Any] | None:
        return next(iter(policy_ttls.get((namespace, name), [])), None)

    def every_run() -> list[dict[str, Any]]:
        return [r for store in list(runs.values()) for r in store]

    def expired(namespace: str) -> None:
        # Its point no longer names the run: the policies' next passes read that.
        memo.protected_vms.forget(namespace)

    await expiry.loop(
        memo.backups.api,
        memo.backups.timing,
        every_run,
        Forever(),
        policy_spec,
        wake=memo.expiry_wakeup,
        acting=memo.presence,
        expired=expired,
    )


async def fold_loop(memo: BackupMemo) -> None:
    """The operator's one fold loop (started by ``main`` at start-up): folds the points of
    the Completed backups ``vmbackup_phase`` found not saying ``PointRecorded=True`` into
    their ProtectedVMs and marks them (:func:`~vmguard.controller.kube.migration.fold_points`).
    It waits for a burst (kopf's first listing of an older operator's runs) to settle,
    so that one fold takes them all, and acts only while this replica acts."""
    if not acts(memo, "backups"):
        return
    timing = memo.backups.timing
    while True:
        await memo.fold_wakeup.wait()
        await memo.presence.wait()
        seen = -1
        while seen != len(memo.unrecorded):
            seen = len(memo.unrecorded)
            await timing.wait(expiry.SETTLE, Forever())
        memo.fold_wakeup.clear()
        batch = list(memo.unrecorded.values())
        memo.unrecorded.clear()
        try:
            await migration.fold_points(memo.backups.api, batch)
        except Exception as exc:  # a fault of ours or a peer's: logged, never fatal
            log.exception("folding backups into ProtectedVMs: %s", exc)


class Forever:
    """The expiry loop's ``stopped``: it ends when its task is cancelled (at cleanup)."""

    def __bool__(self) -> bool:
        return False

    async def wait(self) -> None:
        await asyncio.Event().wait()


def _deletion_guarded(status: kopf.Status, labels: kopf.Labels, **_: Any) -> bool:
    """In flight, verifying, or finished and not yet expired: kopf keeps the finalizer on
    these (the daemons kept it on backups in flight and verifying, a finished run's expiry
    daemon on finished ones: without a handler that matches, kopf would PATCH it away
    from each, and back on when it matched again)."""
    return (
        reconcile.in_flight(status, labels)
        or (not is_synced(labels) and verification.in_flight(status or {}))
        or expiry.expires(status, labels)
    )


@kopf.on.delete(GROUP, VERSION, BACKUP.plural, when=_deletion_guarded)
async def vmbackup_deleted(
    body: kopf.Body, memo: BackupMemo, logger: kopf.Logger, **_: Any
) -> None:
    """Deleted mid-flight: its task ends first (kopf stopped a daemon of an object being
    deleted before its deletion handler ran), then the proxy stops and the snapshot goes
    before letting go. A finished run has nothing to clean up (its finalizer goes at once);
    a verification's Job is the backup's (garbage-collected with it)."""
    if not acts(memo, "backups"):
        return
    uid = str(body.get("metadata", {}).get("uid") or "")
    await asyncio.gather(memo.backup_tasks.stop(uid), memo.verify_tasks.stop(uid))
    if not reconcile.in_flight(body.get("status"), body.get("metadata", {}).get("labels")):
        return
    _wake_admission(memo, body)
    try:
        await reconcile.cleanup(memo.backups, dict(body))
    except MissingRef as exc:
        logger.warning("cannot remove the snapshot (%s); the orphan sweep will", exc)
    except Exception as exc:
        raise kopf.TemporaryError(f"cleanup failed: {exc}", delay=15) from exc
