"""The VMGuardBackup controller: one backup from Pending to Completed or Failed.

:func:`reconcile` looks at the object as it is in the apiserver and takes the next step
of its phase (docs/operator.md):

- **Pending**: resolve the refs (a missing one is a condition and a wait), resolve the
  VM (record its ids and placement — host, datastores, disks per datastore — in status;
  an unknown VM fails the backup). Then it waits in its vCenter's admission queue
  (:mod:`.admission`, docs/admission.md), which alone moves it on to Snapshotting; this
  state machine does nothing for it meanwhile (:func:`queued`);
- **Snapshotting**: open the repository, then :func:`vmguard.vm.cycle.prepare` —
  CBT, parent archive, requested mode, the snapshot named after the UID with the
  policy's guest hooks around it (condition ``HooksRan``; a failing hook with
  onError=fail fails the backup with reason ``HookFailed``);
- **Transferring**: the proxy Job ``<name>-<attempt>`` (proxy RBAC ensured first) does
  the transfer and patches progress and its result; a failed Job is retried with
  backoff while attempts and the deadline allow. While the Job is active its pods and
  events are read too (:mod:`~vmguard.controller.kube.proxypods`): a pod refused at
  admission fails the backup at once, one that cannot pull, schedule or stay up is a
  ``ProxyNotStarting`` condition with the pod's reason and message; every
  ``start_timeout / START_TRIES`` its Job is deleted, the snapshot removed and the backup
  goes back to Snapshotting for a fresh snapshot and a new Job (so the VM never runs on
  one snapshot for the whole timeout), and it fails once ``ProxySettings.start_timeout``
  has passed since the first Job of that streak (``status.proxyStartSince``, cleared
  once a proxy of the streak reports progress). A poll reads the Job alone (the refs
  only for a new attempt); once its proxy has reported progress, the pods are no longer
  read and the polls back off to ``RUNNING_POLL_CAP``, cut short by the proxy's result
  or error (:func:`~vmguard.controller.kube.proxypods.running_poll`);
- **Finalizing**: remove our snapshot (found by UID) and settle the outcome; a completed
  backup's restore point is added to its VM's ProtectedVM first
  (:func:`~vmguard.controller.kube.points.add_point`, created if absent), so a backup
  reads Completed only once its point is listed, and says so in the same patch
  (``PointRecorded=True``; the start's fold passes over such a backup).

A VMGuardBackup labelled ``vmguard.io/synced`` (recreated from its archive by catalog sync,
controller/repository/catalog.py) is never taken through these steps: it is born without status,
which would otherwise read as Pending and start a second backup of the VM.

Restart safety: every step is derived from status and the world, never from memory.
The snapshot is found by its UID name, the Job by its deterministic name, the archive
by its UID label (the proxy reports an existing one instead of writing another), and
waits are computed from recorded times. Blocking calls run in threads.

At ``snapshotted``, ``finalizing``, ``protectedVMCreated`` (only when this backup created its
VM's ProtectedVM) and ``pointRecorded`` the controller awaits its context's
``hooks.backup_step`` (:mod:`vmguard.hooks`; a no-op unless an embedder gave one: the
lab's fault tests park it there).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from vmguard.api import (
    BACKUP_TERMINAL,
    LABEL_VMBACKUP_UID,
    PROXY_FAILED,
    PROXY_REPORTED_NOTHING,
    BackupDisk,
    BackupPhase,
    BackupSnapshot,
    BackupStatus,
    Condition,
    Failure,
    VMIdentity,
    format_time,
    parse_time,
)
from vmguard.api.kinds import BACKUP, POLICY
from vmguard.api.names import is_synced
from vmguard.config import BackupSettings, ProxySettings
from vmguard.controller.backup import builders, steps, verification
from vmguard.controller.backup.transport import TransportChoice, choose_transport, on_nodes
from vmguard.controller.kube import points
from vmguard.controller.kube.access import open_for_backup, repository_secrets, vcenter_endpoint
from vmguard.controller.kube.bodies import backup_spec, backup_status, ref_name
from vmguard.controller.kube.conditions import outcome_conditions, set_condition
from vmguard.controller.kube.jobs import JobAPI, job_state
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.policy_spec import consolidation_allowed
from vmguard.controller.kube.proxyjob import (
    build_proxy_rbac,
    build_reporting_rbac,
    job_name,
    policy_pod,
)
from vmguard.controller.kube.proxypods import job_created, running_poll
from vmguard.controller.kube.timing import REAL_TIME, Timing
from vmguard.errors import (
    ConfigError,
    PermanentError,
    ProxySettingsNotAllowed,
    RepositoryNotFoundError,
    RepositorySpecMismatchError,
    RetryableError,
    VmguardError,
    VMNotFoundError,
)
from vmguard.hooks import NO_HOOKS, Hooks
from vmguard.vm.cycle import Finished
from vmguard.vsphere.guestops import GuestLoginError, HookFailed

log = logging.getLogger(__name__)

PLURAL = BACKUP.plural
WAIT_REFS = 15.0
QUEUED = float("inf")
"""What :func:`reconcile` returns for a resolved Pending backup: its vCenter's admission
loop takes it from here."""
WAIT_PEER = 15.0
WAIT_REPOSITORY = 3.0  # the VMGuardRepository controller creates it within a turn


@dataclass
class BackupContext:
    api: KubeAPI
    jobs: JobAPI
    proxy: ProxySettings
    settings: BackupSettings
    hooks: Hooks = NO_HOOKS
    timing: Timing = REAL_TIME
    """The controller's clock: start, completion, deadline and retry back-off."""
    rbac_done: set[str] = field(default_factory=set)
    reporting_done: set[tuple[str, str]] = field(default_factory=set)
    """(object's namespace, Job namespace) pairs whose reporting Role is in place."""


def queued(status: Any) -> bool:
    """Whether the backup is resolved and waits for admission: its vCenter's admission
    loop, not this state machine, moves it on."""
    status = status or {}
    return (
        (status.get("phase") or BackupPhase.PENDING) == BackupPhase.PENDING
        and bool((status.get("vm") or {}).get("moref"))
        and bool(status.get("vcenter"))
    )


def in_flight(status: Any, labels: Any = None) -> bool:
    """Whether the backup still has work to do. A synced VMGuardBackup (catalog sync) never
    has: it stands for an archive that exists, and its status comes from that archive."""
    if is_synced(labels):
        return False
    return (status or {}).get("phase") not in BACKUP_TERMINAL


def jobs_namespace(obj: dict[str, Any]) -> str:
    """Where the backup's proxy Jobs run: ``status.jobNamespace`` (a cross-namespace
    reference, docs/tenancy.md), else its own namespace."""
    return backup_status(obj).get("jobNamespace") or obj["metadata"]["namespace"]


def _age(obj: dict[str, Any], now: dt.datetime) -> float:
    started = parse_time(backup_status(obj).get("startTime"))
    return (now - started).total_seconds() if started else 0.0


class Patcher:
    """Status patches of one VMGuardBackup, keeping its conditions consistent; a patch
    that would change nothing is not sent."""

    def __init__(self, ctx: BackupContext, obj: dict[str, Any]) -> None:
        self.ctx, self.obj = ctx, obj
        meta = obj["metadata"]
        self.ns, self.name, self.generation = (
            meta["namespace"],
            meta["name"],
            meta.get("generation"),
        )
        self.conditions = list(backup_status(obj).get("conditions") or [])

    def condition(self, type_: str, ok: bool | None, reason: str, message: str) -> None:
        self.conditions = set_condition(
            self.conditions, type_, ok, reason, message, self.generation
        )

    async def start(self, status: BackupStatus) -> bool:
        """The first write of a new backup, sent only onto the status this step read
        (the apiserver's resourceVersion check): whoever wrote a status since — an
        administrator, a restore of the object with its status — keeps it, and the next
        step reads it. False when it was refused."""
        return await self.patch(status, only_onto_read=True)

    async def patch(self, status: BackupStatus, *, only_onto_read: bool = False) -> bool:
        before = backup_status(self.obj)
        phase = status.get("phase") or before.get("phase") or BackupPhase.PENDING
        error = status["error"] if "error" in status else before.get("error")
        self.conditions = backup_conditions(self.conditions, phase, error, self.generation)
        body: BackupStatus = {
            **status,
            "conditions": self.conditions,
            "observedGeneration": self.generation,
        }
        if all(before.get(k) == v for k, v in body.items()):
            return True  # a patch that changes nothing is not sent (a retry loop stays quiet)
        if only_onto_read:
            version = str(self.obj["metadata"].get("resourceVersion") or "")
            if not await self.ctx.api.patch_status_if(PLURAL, self.ns, self.name, body, version):
                return False
        else:
            await self.ctx.api.patch_status(PLURAL, self.ns, self.name, body)
        self.obj.setdefault("status", {}).update(body)
        return True

    async def fail(self, reason: str, message: str, *, snapshot_taken: bool) -> None:
        """Record the error; Finalizing removes the snapshot, else it is over now."""
        error: Failure = {"reason": reason, "message": message[:4096], "retryable": False}
        self.condition("Ready", False, reason, message)
        if snapshot_taken:
            await self.patch({"phase": BackupPhase.FINALIZING, "error": error})
        else:
            await self.patch(
                {"error": error, **_terminal(self.obj, BackupPhase.FAILED, self.ctx.timing)}
            )


def backup_conditions(
    conditions: Iterable[Condition] | None,
    phase: str,
    error: Failure | None,
    generation: int | None,
) -> list[Condition]:
    """The kstatus conditions of a VMGuardBackup in ``phase``
    (see :mod:`~vmguard.controller.kube.conditions`)."""
    return outcome_conditions(
        conditions,
        phase,
        terminal=BACKUP_TERMINAL,
        failed=BackupPhase.FAILED,
        error=error,
        what="backup",
        generation=generation,
    )


def _terminal(obj: dict[str, Any], phase: BackupPhase, timing: Timing) -> BackupStatus:
    started = parse_time(backup_status(obj).get("startTime"))
    done = timing.now()
    out: BackupStatus = {"phase": phase, "completionTime": format_time(done)}
    if started:
        out["durationSeconds"] = round((done - started).total_seconds(), 1)
    return out


async def reconcile(ctx: BackupContext, obj: dict[str, Any]) -> float | None:
    """One step; seconds until the next, or None when the backup has ended."""
    status = backup_status(obj)
    phase = status.get("phase") or BackupPhase.PENDING
    p = Patcher(ctx, obj)
    if phase in BACKUP_TERMINAL or not in_flight(status, obj["metadata"].get("labels")):
        return None
    if not status.get("startTime"):
        start: BackupStatus = {
            "phase": BackupPhase.PENDING,
            "startTime": format_time(ctx.timing.now()),
        }
        if not await p.start(start):
            return 0.0  # its status changed since it was read: read it again
    if phase != BackupPhase.FINALIZING and _age(obj, ctx.timing.now()) > ctx.settings.deadline:
        message = f"the backup did not finish within {ctx.settings.deadline:.0f}s"
        await ctx.jobs.delete_jobs(
            jobs_namespace(obj), f"{LABEL_VMBACKUP_UID}={obj['metadata']['uid']}"
        )
        await p.fail("DeadlineExceeded", message, snapshot_taken=phase != BackupPhase.PENDING)
        return 0.0
    handler = {
        BackupPhase.PENDING: _pending,
        BackupPhase.SNAPSHOTTING: _snapshotting,
        BackupPhase.TRANSFERRING: _transferring,
        BackupPhase.FINALIZING: _finalizing,
    }[phase]
    return await handler(ctx, obj, p)


async def _refs(ctx: BackupContext, obj: dict[str, Any], p: Patcher) -> steps.Refs | None:
    try:
        refs = await steps.resolve_refs(ctx.api, p.ns, backup_spec(obj))
    except steps.MissingRef as exc:
        p.condition("RefsResolved", False, exc.reason, str(exc))
        p.condition("Ready", False, exc.reason, str(exc))
        await p.patch({})
        return None
    return refs


async def _pending(ctx: BackupContext, obj: dict[str, Any], p: Patcher) -> float | None:
    refs = await _refs(ctx, obj, p)
    if refs is None:
        return WAIT_REFS
    try:  # before any snapshot: a policy may not place its proxies where the chart forbids
        policy_pod(ctx.proxy, refs.policy_spec.get("proxy"))
    except ProxySettingsNotAllowed as exc:
        await p.fail(type(exc).__name__, str(exc), snapshot_taken=False)
        return None
    # Before the VM is resolved into the status: from that patch on, its vCenter's
    # admission loop may start it (snapshot first), so a refusal must come before it.
    choice = await _transport(ctx, p, refs)
    if choice.refused:  # before any snapshot: nothing to clean up, nothing left waiting
        await p.fail(choice.refused, choice.reason, snapshot_taken=False)
        return None
    status = backup_status(obj)
    if not (status.get("vm") or {}).get("moref"):
        try:
            ep = await vcenter_endpoint(ctx.api, refs.vcenter)
            vm = await asyncio.to_thread(steps.resolve_vm_blocking, ep, backup_spec(obj)["vm"])
        except VMNotFoundError as exc:
            await p.fail("VMNotFound", str(exc), snapshot_taken=False)
            return None
        except VmguardError as exc:
            reason = "VCenterUnreachable" if exc.retryable else "VCenterInvalid"
            p.condition("Ready", False, reason, str(exc))
            await p.patch({})
            return WAIT_PEER
        p.condition("RefsResolved", True, "Resolved", f"VM {vm.name} is {vm.moref}")
        ids: VMIdentity = {"instanceUuid": vm.instance_uuid, "moref": vm.moref, "name": vm.name}
        per_datastore = Counter(d.datastore for d in vm.disks if d.datastore)
        await p.patch(
            {
                "vm": cast(VMIdentity, {k: v for k, v in ids.items() if v}),
                "vcenter": refs.vcenter_name,
                "repository": refs.repository_name,
                **refs.across(p.ns),
                "placement": {
                    "host": vm.host,
                    "datastores": list(vm.datastores),
                    "disks": [{"datastore": ds, "count": n} for ds, n in per_datastore.items()],
                },
            }
        )
    # Resolved: from here its vCenter's admission loop (kube/workqueue.py, with
    # backup/admission.py's lane) moves it on; it leaves the index of backups to drive,
    # and its task is stopped (kube/supervisor.py).
    return QUEUED


TRANSPORT_REASONS = {"nbd": "NBD", "hotadd": "HotAdd", "auto": "HotAddOrNBD"}


async def _transport(
    ctx: BackupContext, p: Patcher, refs: steps.Refs, on_capable_nodes: str = ""
) -> TransportChoice:
    """What the proxy Job may do here, from the namespace's labels and, with
    ``on_capable_nodes`` (the VM's moref), the nodes that can hot-add it; as a condition."""
    labels = await ctx.api.namespace_labels(refs.job_namespace)
    choice = choose_transport(refs.policy_spec.get("transport", "auto"), refs.job_namespace, labels)
    if on_capable_nodes and choice.transport != "nbd" and not choice.refused:
        nodes = await ctx.api.node_uuids()
        ep = await vcenter_endpoint(ctx.api, refs.vcenter)
        able, why_not = await asyncio.to_thread(
            steps.hotadd_nodes_blocking, ep, on_capable_nodes, nodes
        )
        choice = on_nodes(choice, able, why_not)
    if not choice.refused:
        p.condition("Transport", True, TRANSPORT_REASONS[choice.transport], choice.reason)
    return choice


async def _repository(ctx: BackupContext, refs: steps.Refs) -> Any:
    ns = refs.repository["metadata"]["namespace"]  # its Secrets are beside it
    creds, key = await repository_secrets(ctx.api, ns, refs.repository["spec"])
    return await asyncio.to_thread(open_for_backup, refs.repository["spec"], creds, key)


async def _snapshotting(ctx: BackupContext, obj: dict[str, Any], p: Patcher) -> float | None:
    refs = await _refs(ctx, obj, p)
    if refs is None:
        return WAIT_REFS
    status, spec, uid = backup_status(obj), backup_spec(obj), obj["metadata"]["uid"]
    pspec = refs.policy_spec
    mode = pspec.get("mode") or {}
    quiesce = pspec.get("quiesce") or {}
    try:
        hooks = await steps.hook_plan(ctx.api, p.ns, pspec)
    except steps.MissingRef as exc:
        p.condition("HooksRan", False, exc.reason, str(exc))
        p.condition("Ready", False, exc.reason, str(exc))
        await p.patch({})
        return WAIT_REFS
    try:
        ep = await vcenter_endpoint(ctx.api, refs.vcenter)
        repo = await _repository(ctx, refs)
        prepared = await asyncio.to_thread(
            steps.prepare_blocking,
            ep,
            repo,
            status["vm"]["moref"],
            uid,
            vcenter=refs.vcenter_name,
            requested="full" if "full" in (spec.get("mode"), mode.get("type")) else "auto",
            full_every=int(mode.get("fullEvery") or 0),
            quiesce=bool(quiesce.get("enabled")),
            crash_consistent_fallback=quiesce.get("fallbackToCrashConsistent", True),
            allow_consolidate=consolidation_allowed(pspec),
            hooks=hooks,
        )
    except RetryableError as exc:
        p.condition("Ready", False, "SnapshotRetrying", str(exc))
        await p.patch({})
        return WAIT_PEER
    except RepositoryNotFoundError as exc:  # the VMGuardRepository controller creates it
        message = f"{exc}: waiting for VMGuardRepository {refs.repository_name} to create it"
        p.condition("Ready", False, "RepositoryNotReady", message)
        await p.patch({})
        return WAIT_REPOSITORY
    except RepositorySpecMismatchError as exc:
        await p.fail("RepositoryMismatch", str(exc), snapshot_taken=True)
        return 0.0
    except VMNotFoundError as exc:
        await p.fail("VMNotFound", str(exc), snapshot_taken=True)
        return 0.0
    except HookFailed as exc:
        p.condition("HooksRan", False, "HookFailed", str(exc))
        await p.fail("HookFailed", str(exc), snapshot_taken=True)
        return 0.0
    except GuestLoginError as exc:
        p.condition("HooksRan", False, "GuestLoginFailed", str(exc))
        await p.fail("GuestLoginFailed", str(exc), snapshot_taken=True)
        return 0.0
    except PermanentError as exc:
        await p.fail("SnapshotFailed", str(exc), snapshot_taken=True)
        return 0.0
    await ctx.hooks.backup_step("snapshotted")
    taken, decision = prepared.snapshot, prepared.decision
    live = {d.key: d for d in prepared.vm.disks}
    disks: list[BackupDisk] = [
        {
            "key": d.key,
            "label": d.label,
            "uuid": d.disk_uuid,
            "backing": live[d.key].backing_file if d.key in live else d.file_name,
            "datastore": live[d.key].datastore if d.key in live else "",
            "capacityBytes": d.capacity,
            "changeId": d.change_id,
        }
        for d in taken.disks
    ]
    p.condition("Snapshotted", True, "SnapshotTaken", f"snapshot {taken.name} ({taken.moref})")
    if taken.fallback_reason:
        p.condition("Quiesced", False, "CrashConsistentFallback", taken.fallback_reason)
    if prepared.hooks:
        p.condition("HooksRan", *steps.hooks_condition(prepared.hooks))
    patch: BackupStatus = {
        "phase": BackupPhase.TRANSFERRING,
        "snapshot": {
            "moref": taken.moref,
            "name": taken.name,
            "createTime": format_time(ctx.timing.now()),
            "removed": False,
        },
        "quiesced": taken.quiesced,
        "modeRequested": decision.mode,
        "modeReason": decision.reason,
        "disks": disks,
        # Counts on after a retry on a fresh snapshot, so the next Job has a new name.
        "attempts": int(status.get("attempts") or 0),
    }
    if decision.parent:
        patch["parentArchiveId"] = decision.parent
    await p.patch(patch)
    return 0.0


async def _start_attempt(
    ctx: BackupContext, obj: dict[str, Any], p: Patcher, refs: steps.Refs, attempt: int
) -> None:
    where = refs.job_namespace
    if where not in ctx.rbac_done:
        await ctx.jobs.ensure_rbac(build_proxy_rbac(where, ctx.proxy.service_account))
        ctx.rbac_done.add(where)
    if where != p.ns and (p.ns, where) not in ctx.reporting_done:
        rbac = build_reporting_rbac(p.ns, where, ctx.proxy.service_account)
        await ctx.jobs.ensure_rbac(rbac)
        ctx.reporting_done.add((p.ns, where))
    remaining = ctx.settings.deadline - _age(obj, ctx.timing.now())
    # Again at each attempt: the namespace's labels may have changed since Pending. A
    # privileged proxy only on a node that can hot-add this VM (asked of vCenter now).
    choice = await _transport(ctx, p, refs, on_capable_nodes=obj["status"]["vm"]["moref"])
    if choice.refused:
        await p.fail(choice.refused, choice.reason, snapshot_taken=True)
        return
    try:
        job = builders.build_backup_job(
            obj,
            ctx.proxy,
            vcenter=refs.vcenter["spec"],
            repository=refs.repository["spec"],
            attempt=attempt,
            transport=choice.transport,
            nodes=choice.nodes,
            active_deadline=int(min(ctx.settings.job_deadline, max(remaining, 1))),
            ttl=ctx.settings.job_ttl,
            policy_proxy=refs.policy_spec.get("proxy"),
            namespace=where,
        )
    except ProxySettingsNotAllowed as exc:  # the policy changed since Pending checked it
        await p.fail(type(exc).__name__, str(exc), snapshot_taken=True)
        return
    created = await ctx.jobs.create_job(job)
    log.info(
        "%s/%s: Job %s %s",
        p.ns,
        p.name,
        job["metadata"]["name"],
        "created" if created else "adopted",
    )
    p.condition(
        "Transferring", True, "ProxyRunning", f"attempt {attempt}: Job {job['metadata']['name']}"
    )
    started: BackupStatus = {"attempts": attempt, "jobName": job["metadata"]["name"], "error": None}
    if where != jobs_namespace(obj):  # the polls read this attempt's Job without the refs
        started["jobNamespace"] = where
    await p.patch(started)


async def _transferring(ctx: BackupContext, obj: dict[str, Any], p: Patcher) -> float | None:
    status = backup_status(obj)
    attempt = int(status.get("attempts") or 0)
    if attempt == 0 or not status.get("jobName"):  # first, or on a fresh snapshot
        refs = await _refs(ctx, obj, p)
        if refs is None:
            return WAIT_REFS
        await _start_attempt(ctx, obj, p, refs, attempt + 1)
        return ctx.settings.poll
    # The refs are resolved only where they are used (a new attempt, a retry, the
    # snapshot's removal): a poll of a running Job reads the Job alone, its namespace from status
    # (``jobNamespace``, written with each attempt).
    name = job_name(p.name, attempt)
    where = jobs_namespace(obj)
    job = await ctx.jobs.read_job(where, name)
    if job is None:  # the Job was deleted under us: a lost attempt
        reason, message, finished = "JobLost", f"Job {name} disappeared", None
    else:
        st = job_state(job)
        if st.active:
            return await _watch_proxy_start(ctx, obj, p, job, where)
        if st.succeeded:
            if status.get("archiveId"):
                p.condition("Transferring", False, "Transferred", f"archive {status['archiveId']}")
                await p.patch({"phase": BackupPhase.FINALIZING})
            else:
                await p.fail(
                    PROXY_REPORTED_NOTHING,
                    f"Job {name} succeeded without a result",
                    snapshot_taken=True,
                )
            return 0.0
        reason, message, finished = st.reason, st.message, st.finished_at
    if status.get("archiveId"):  # committed, then died before exiting: the result stands
        await p.patch({"phase": BackupPhase.FINALIZING})
        return 0.0
    error: Failure = status.get("error") or {}
    why = error.get("reason") or PROXY_FAILED
    text = error.get("message") or f"Job {name} failed: {reason} {message}".strip()
    retryable = bool(error.get("retryable", True))
    time_left = ctx.settings.deadline - _age(obj, ctx.timing.now())
    if retryable and attempt < ctx.settings.max_attempts and time_left > 0:
        backoff = ctx.settings.retry_backoff * 2.0 ** (attempt - 1)
        since = (ctx.timing.now() - finished).total_seconds() if finished else backoff
        if since < backoff:
            p.condition(
                "Transferring",
                False,
                "RetryBackoff",
                f"attempt {attempt} failed ({why}: {text}); retrying in {backoff - since:.0f}s",
            )
            await p.patch({})
            return min(backoff - since, ctx.settings.poll * 5)
        refs = await _refs(ctx, obj, p)
        if refs is None:
            return WAIT_REFS
        await _start_attempt(ctx, obj, p, refs, attempt + 1)
        return ctx.settings.poll
    if retryable:
        text = f"{text} (gave up after {attempt} attempt(s))"
    p.condition("Transferring", False, why, text)
    p.condition("Ready", False, why, text)
    await p.patch(
        {
            "phase": BackupPhase.FINALIZING,
            "error": {"reason": why, "message": text[:4096], "retryable": False},
        }
    )
    return 0.0


START_TRIES = 3
"""Proxy starts (each on a fresh snapshot) spread over the proxy-start timeout."""


async def _watch_proxy_start(
    ctx: BackupContext, obj: dict[str, Any], p: Patcher, job: dict[str, Any], where: str
) -> float | None:
    """An active Job whose pod cannot start: say why now, fail when it cannot get better.

    Refused at admission: fail at once. Image pull, scheduling, crash loop: a condition
    naming the pod's reason now, failure once the Job is ``ProxySettings.start_timeout`` old.
    Either failure goes through Finalizing, which removes the snapshot.
    """
    name = job["metadata"]["name"]
    said: dict[str, Any] = next(
        (dict(c) for c in p.conditions if c.get("type") == "Transferring"), {}
    )
    running = _proxy_runs(ctx, obj, job, said)
    if running is not None:
        return running
    trouble = await ctx.jobs.proxy_trouble(where, name)
    if trouble is None:
        status = backup_status(obj)
        streak = parse_time(status.get("proxyStartSince"))
        reported = parse_time((status.get("progress") or {}).get("updateTime"))
        # The streak ends when this proxy has reported progress, not merely when its pod
        # shows no trouble for a moment (ContainerCreating between two back-offs).
        ended = streak is not None and reported is not None and reported >= streak
        if said.get("reason") == "ProxyNotStarting":  # it recovered: say so
            p.condition("Transferring", True, "ProxyRunning", f"Job {name}")
            p.condition("Ready", False, BackupPhase.TRANSFERRING, f"Job {name} running")
        if said.get("reason") == "ProxyNotStarting" or ended:
            await p.patch({"proxyStartSince": None} if ended else {})
        return ctx.settings.poll
    now = ctx.timing.now()
    timeout = ctx.proxy.start_timeout
    since = parse_time(backup_status(obj).get("proxyStartSince"))
    text = trouble.gives_up(job, now, timeout, since)
    if text is not None:
        await ctx.jobs.delete_job(where, name)
        p.condition("Transferring", False, trouble.reason, text)
        p.condition("Ready", False, trouble.reason, text)
        await p.patch(
            {
                "phase": BackupPhase.FINALIZING,
                "error": {"reason": trouble.reason, "message": text[:4096], "retryable": False},
            }
        )
        return 0.0
    created = job_created(job) or now
    retry_in = timeout / START_TRIES - (now - created).total_seconds()
    if retry_in <= 0:
        return await _fresh_snapshot(ctx, obj, p, job, trouble.text(), since or created)
    text = trouble.waiting(timeout)
    if said.get("reason") != "ProxyNotStarting" or said.get("message") != text:
        p.condition("Transferring", False, "ProxyNotStarting", text)
        p.condition("Ready", False, trouble.reason, text)
        await p.patch({})
    return min(ctx.settings.poll * 5, max(retry_in, ctx.settings.poll))


def _proxy_runs(
    ctx: BackupContext, obj: dict[str, Any], job: dict[str, Any], said: dict[str, Any]
) -> float | None:
    """The delay until the next read of an active Job whose proxy is known to run — it
    has reported progress since its Job was created, and no start trouble is said or
    pending (``proxyStartSince``) — else None: the pod checks go on at ``poll``.

    The delay backs off from ``poll`` to :data:`RUNNING_POLL_CAP` as the Job ages (a
    quarter of its age), so a transfer's reads grow with the log of its length up to
    the cap; once the proxy has reported its result or error, its Job ends any moment
    and is read at ``poll`` again."""
    status = backup_status(obj)
    if said.get("reason") == "ProxyNotStarting" or status.get("proxyStartSince"):
        return None
    created = job_created(job)
    reported = parse_time((status.get("progress") or {}).get("updateTime"))
    if created is None or reported is None or reported < created:
        return None  # not (yet) this Job's proxy: an earlier attempt's progress, or none
    if status.get("archiveId") or status.get("error"):
        return ctx.settings.poll
    return running_poll(ctx.timing, created, ctx.settings.poll)


async def _fresh_snapshot(
    ctx: BackupContext,
    obj: dict[str, Any],
    p: Patcher,
    job: dict[str, Any],
    why: str,
    since: dt.datetime,
) -> float | None:
    """The proxy has not started for a while: delete its Job, remove the snapshot and go
    back to Snapshotting, so the next try runs on a fresh snapshot and the VM is not
    left on one snapshot (its delta growing) for the whole proxy-start timeout. The
    attempts count on (Job names stay unique); ``proxyStartSince`` keeps the streak's
    start for the timeout."""
    status = backup_status(obj)
    refs = await _refs(ctx, obj, p)
    if refs is None:
        return WAIT_REFS
    await ctx.jobs.delete_job(refs.job_namespace, job["metadata"]["name"])
    if await _remove_snapshot(ctx, obj, p, refs) is None:
        return WAIT_PEER
    text = f"{why} (retrying on a fresh snapshot)"[:4096]
    p.condition("Transferring", False, "ProxyNotStarting", text)
    p.condition("Ready", False, "ProxyNotStarting", text)
    log.info("%s/%s: proxy did not start; retrying on a fresh snapshot", p.ns, p.name)
    await p.patch(
        {
            "phase": BackupPhase.SNAPSHOTTING,
            "snapshot": {**(status.get("snapshot") or {}), "removed": True},
            "jobName": None,
            "proxyStartSince": format_time(since),
        }
    )
    return 0.0


async def _remove_snapshot(
    ctx: BackupContext, obj: dict[str, Any], p: Patcher, refs: steps.Refs
) -> Finished | None:
    """Remove this backup's snapshot (found by UID); None when vCenter failed, said in
    ``SnapshotRemoved`` (the caller retries later)."""
    try:
        ep = await vcenter_endpoint(ctx.api, refs.vcenter)
        return await asyncio.to_thread(
            steps.finish_blocking,
            ep,
            backup_status(obj)["vm"]["moref"],
            obj["metadata"]["uid"],
            allow_consolidate=consolidation_allowed(refs.policy_spec),
        )
    except VmguardError as exc:
        p.condition("SnapshotRemoved", False, "RemovalRetrying", str(exc))
        await p.patch({})
        return None


async def _finalizing(ctx: BackupContext, obj: dict[str, Any], p: Patcher) -> float | None:
    await ctx.hooks.backup_step("finalizing")
    status = backup_status(obj)
    snapshot: BackupSnapshot = status.get("snapshot") or {}
    if not snapshot.get("removed"):
        refs = await _refs(ctx, obj, p)
        if refs is None:
            return WAIT_REFS
        done = await _remove_snapshot(ctx, obj, p, refs)
        if done is None:
            return WAIT_PEER
        note = "removed " + ", ".join(done.removed) if done.removed else "none was left"
        if done.consolidation and done.consolidation.consolidated:
            note += "; disks consolidated"
        elif done.consolidation and done.consolidation.error:
            note += f"; consolidation: {done.consolidation.error}"
        p.condition("SnapshotRemoved", True, "Removed", note)
        await p.patch({"snapshot": {**snapshot, "removed": True}})
    error = status.get("error")
    if status.get("archiveId") and not error:
        # The point goes into the VM's ProtectedVM before the backup reads Completed: a
        # restart in between adds it again, which changes nothing (idempotent by archive).
        try:
            key = points.backup_key(obj)
            await points.add_point(
                ctx.api,
                key,
                points.backup_point(obj),
                vm=status["vm"],
                created=lambda: ctx.hooks.backup_step("protectedVMCreated"),
            )
        except RetryableError as exc:
            log.warning("%s/%s: recording its restore point: %s", p.ns, p.name, exc)
            return WAIT_PEER
        except ConfigError as exc:  # the archive stands; only the cluster's view lacks it
            p.condition(points.POINT_RECORDED, False, "PointNotRecorded", str(exc))
        else:
            # Said in the patch that makes it Completed: the start's fold passes over a
            # backup that says so (controller/kube/migration.py).
            p.condition(points.POINT_RECORDED, True, points.RECORDED, f"in ProtectedVM {key.name}")
        await ctx.hooks.backup_step("pointRecorded")
        p.condition("Ready", True, "Completed", f"archive {status['archiveId']}")
        completed = _terminal(obj, BackupPhase.COMPLETED, ctx.timing)
        # Its verification is asked for in the same patch: a backup completes once.
        asked = verification.request(await _policy_spec(ctx, obj), ctx.timing.now())
        if asked is not None:
            completed["verification"] = asked
        await p.patch(completed)
    else:
        reason = (error or {}).get("reason", "Failed")
        p.condition("Ready", False, reason, (error or {}).get("message", "backup failed"))
        await p.patch(_terminal(obj, BackupPhase.FAILED, ctx.timing))
    return None


async def _policy_spec(ctx: BackupContext, obj: dict[str, Any]) -> dict[str, Any]:
    """The spec of the backup's policy ({} for an ad-hoc backup, or a policy gone)."""
    name = ref_name(backup_spec(obj).get("policyRef"))
    if not name:
        return {}
    policy = await ctx.api.get_object(POLICY.plural, obj["metadata"]["namespace"], name)
    return dict((policy or {}).get("spec") or {})


async def cleanup(ctx: BackupContext, obj: dict[str, Any]) -> None:
    """A VMGuardBackup deleted in flight: stop its Job, remove its snapshot (raises to retry)."""
    meta, status = obj["metadata"], backup_status(obj)
    await ctx.jobs.delete_jobs(jobs_namespace(obj), f"{LABEL_VMBACKUP_UID}={meta['uid']}")
    moref = (status.get("vm") or {}).get("moref")
    if not moref or (status.get("snapshot") or {}).get("removed"):
        return
    refs = await steps.resolve_refs(ctx.api, meta["namespace"], backup_spec(obj))
    ep = await vcenter_endpoint(ctx.api, refs.vcenter)
    allow = consolidation_allowed(refs.policy_spec)
    await asyncio.to_thread(steps.finish_blocking, ep, moref, meta["uid"], allow_consolidate=allow)
