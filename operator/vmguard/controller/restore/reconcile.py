"""The VMGuardRestore controller: Pending → Restoring → Finalizing → Completed | Failed.

One kopf daemon per VMGuardRestore calls :func:`drive`, which reads the object afresh and
takes one :func:`step` at a time until the restore is Completed or Failed. Each step is
decided by ``status.phase`` alone, so an operator killed at any point and restarted
resumes where the status says, and every step may run twice without harm:

- **Pending**: the source VMGuardBackup must exist and be Completed with an archive (else
  condition ``SourceNotFound`` / ``SourceNotCompleted``, re-checked; ``SourceFailed``
  fails the restore). The operator opens the repository — the backup's own, or the
  copy target ``spec.source.repositoryRef`` names (``CopyNotFound`` without a completed
  copy there); when the backup's own is unreachable, lost or misses the archive and the
  point has completed copies (``status.copies`` of the backup), the first copy that
  opens, said in the ``SourceReady`` message and ``status.repository`` —, reads the
  manifest, checks and
  prepares the target (:mod:`.targets`: a new VM is created here, found again
  by its marker after a restart), records it in ``status.result`` (and, for an
  overwrite, whether the VM was on, *before* powering it off), makes sure the proxy's
  ServiceAccount exists and creates the Job — named after the VMGuardRestore's UID, so a
  second attempt finds it (AlreadyExists = adopt).
- **Restoring**: the proxy Job writes and reports progress and its result into status;
  the operator watches the Job. Complete → Finalizing; failed → Failed, with the
  proxy's reason when it gave one. A Job that vanished (TTL, deleted) is made again.
- **Finalizing**: power the VM on when asked (or when an overwritten VM was on), then
  Completed.
- **Failed**: a VM this restore created is destroyed (only if it carries our marker);
  disks added to an existing VM stay (named in status); an overwritten VM stays off.

Bad input never crash-loops the operator: a rejected target is a condition and Failed,
a missing reference is a condition and a later re-check, an unexpected fault is a
condition and a retry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from vmguard.api import (
    PROXY_FAILED,
    RESTORE_TERMINAL,
    BackupPhase,
    Condition,
    CopyState,
    Failure,
    RestorePhase,
    RestoreStatus,
)
from vmguard.api.kinds import BACKUP, POLICY, REPOSITORY, RESTORE, VCENTER
from vmguard.config import ProxySettings
from vmguard.controller.kube import access
from vmguard.controller.kube.bodies import (
    backup_spec,
    backup_status,
    ref_name,
    restore_status,
)
from vmguard.controller.kube.conditions import now, outcome_conditions, set_condition
from vmguard.controller.kube.copies import copies_of
from vmguard.controller.kube.handlers import Announce
from vmguard.controller.kube.jobs import JobAPI, job_state
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.proxyjob import build_proxy_rbac
from vmguard.controller.kube.timing import REAL_TIME, Timing
from vmguard.controller.restore import builders, targets
from vmguard.errors import (
    ConfigError,
    ObjectNotFoundError,
    RestoreRejected,
    RetryableError,
    VmguardError,
)

log = logging.getLogger(__name__)

PLURAL = RESTORE.plural
WAIT_SOURCE_SECONDS = 10.0
RETRY_SECONDS = 30.0
POLL_JOB_SECONDS = 2.0


@dataclass
class Step:
    status: RestoreStatus = field(default_factory=RestoreStatus)
    delay: float | None = None
    """Seconds until the next step; None: the restore is over."""


def _conditions(obj: dict[str, Any]) -> list[Condition]:
    return list(restore_status(obj).get("conditions") or [])


def _waiting(obj: dict[str, Any], type_: str, reason: str, message: str, delay: float) -> Step:
    conds = set_condition(_conditions(obj), type_, False, reason, message)
    conds = set_condition(conds, "Ready", False, reason, message)
    return Step({"phase": RestorePhase.PENDING, "conditions": conds}, delay)


def failed(obj: dict[str, Any], type_: str | None, reason: str, message: str) -> Step:
    conds = _conditions(obj)
    if type_:
        conds = set_condition(conds, type_, False, reason, message)
    conds = set_condition(conds, "Ready", False, reason, message)
    status: RestoreStatus = {
        "phase": RestorePhase.FAILED,
        "completionTime": now(),
        "error": {"reason": reason, "message": message[:4096], "retryable": False},
        "conditions": conds,
    }
    return Step(status, None)


def _refs(backup: dict[str, Any], policy: dict[str, Any] | None) -> tuple[str, str]:
    """(vCenter, repository) names the backup was made with."""
    spec, status = backup_spec(backup), backup_status(backup)
    pspec = (policy or {}).get("spec") or {}
    vcenter = (
        status.get("vcenter")
        or ref_name(spec.get("vcenterRef"))
        or (pspec.get("vcenterRef") or {}).get("name", "")
    )
    repository = (
        status.get("repository")
        or ref_name(spec.get("repositoryRef"))
        or (pspec.get("repositoryRef") or {}).get("name", "")
    )
    return vcenter, repository


async def step(api: KubeAPI, settings: ProxySettings, obj: dict[str, Any]) -> Step:
    phase = restore_status(obj).get("phase") or RestorePhase.PENDING
    if phase in RESTORE_TERMINAL:
        return Step()
    if phase == RestorePhase.PENDING:
        return await _start(api, settings, obj)
    if phase == RestorePhase.RESTORING:
        return await _watch(api, settings, obj)
    return await _finalize(api, obj)


async def _start(api: KubeAPI, settings: ProxySettings, obj: dict[str, Any]) -> Step:
    meta, spec = obj["metadata"], obj["spec"]
    ns, status = meta["namespace"], restore_status(obj)
    source = spec["source"]["backupRef"]["name"]
    backup = await api.get_object(BACKUP.plural, ns, source)
    if backup is None:
        msg = f"VMGuardBackup {source} does not exist"
        return _waiting(obj, "SourceReady", "SourceNotFound", msg, WAIT_SOURCE_SECONDS)
    bstatus = backup_status(backup)
    if bstatus.get("phase") == BackupPhase.FAILED:
        msg = f"VMGuardBackup {source} is {bstatus['phase']}: there is nothing to restore"
        return failed(obj, "SourceReady", "SourceFailed", msg)
    archive_id = bstatus.get("archiveId")
    if bstatus.get("phase") != BackupPhase.COMPLETED or not archive_id:
        phase = bstatus.get("phase") or BackupPhase.PENDING
        msg = f"VMGuardBackup {source} is {phase}, not Completed"
        return _waiting(obj, "SourceReady", "SourceNotCompleted", msg, WAIT_SOURCE_SECONDS)
    policy_ref = ref_name(backup_spec(backup).get("policyRef"))
    policy = await api.get_object(POLICY.plural, ns, policy_ref) if policy_ref else None
    vc_name, repo_name = _refs(backup, policy)
    vc_name = (spec.get("vcenterRef") or {}).get("name") or vc_name
    wanted = ref_name(spec["source"].get("repositoryRef"))
    copies = {
        name: str(c.get("archiveId") or "")
        for name, c in copies_of(backup).items()
        if c.get("state") == CopyState.COMPLETED and c.get("archiveId")
    }
    if wanted and wanted != repo_name:
        if wanted not in copies:
            msg = f"repository {wanted} holds no completed copy of VMGuardBackup {source}"
            return failed(obj, "SourceReady", "CopyNotFound", msg)
        repo_name, archive_id, copies = wanted, copies[wanted], {}
    elif wanted:
        copies = {}  # the backup's own repository, named: no fallback
    target = spec["target"]
    vc_obj = None
    if "files" not in target:
        vc_obj = await api.get_object(VCENTER.plural, ns, vc_name) if vc_name else None
        if vc_obj is None:
            msg = f"VCenter {vc_name or '(none named)'} to restore into does not exist"
            return _waiting(obj, "TargetReady", "VCenterNotFound", msg, RETRY_SECONDS)
    read = await _open_source(api, ns, source, repo_name, archive_id, copies)
    if isinstance(read, tuple):
        kind, reason, msg = read
        if kind == "wait":
            return _waiting(obj, "SourceReady", reason, msg, RETRY_SECONDS)
        return failed(obj, "SourceReady", reason, msg)
    repo_obj, manifest = read.repository, read.manifest
    repo_name, archive_id = read.name, read.archive_id
    said = f"archive {archive_id}"
    if read.instead:
        said += f" from copy target {repo_name} ({read.instead})"
    conds = set_condition(_conditions(obj), "SourceReady", True, "SourceCompleted", said)
    recorded: RestoreStatus = {
        "archiveId": archive_id,
        "repository": repo_name,
        "startTime": status.get("startTime") or now(),
        "conditions": conds,
    }
    recorded_power = status.get("powerOnAfter")
    if vc_obj is not None:
        recorded["vcenter"] = vc_name
        endpoint = await access.vcenter_endpoint(api, vc_obj)
        prepared = await asyncio.to_thread(
            _prepare_vsphere, endpoint, manifest, target, meta["uid"], recorded_power
        )
    else:
        prepared = targets.prepare_files(manifest, target["files"], repo_obj["spec"]["s3"])
    recorded["result"] = prepared.result()
    recorded["powerOnAfter"] = prepared.power_on_after
    if prepared.power_off:
        # Recorded before powering off, so a restart still knows the VM was on.
        await api.patch_status(PLURAL, ns, meta["name"], recorded)
        await asyncio.to_thread(_power, endpoint, prepared.power_off, False)
    jobs = JobAPI(api.api)
    await jobs.ensure_rbac(build_proxy_rbac(ns, settings.service_account))
    job = builders.build_restore_job(
        obj,
        settings,
        repository=repo_obj["spec"],
        vcenter=vc_obj["spec"] if vc_obj is not None else None,
    )
    await jobs.create_job(job)
    conds = set_condition(conds, "TargetReady", True, "Prepared", _describe(prepared))
    conds = set_condition(conds, "Ready", False, "Restoring", f"Job {job['metadata']['name']}")
    recorded.update(
        {"phase": RestorePhase.RESTORING, "jobName": job["metadata"]["name"], "conditions": conds}
    )
    return Step(recorded, POLL_JOB_SECONDS)


@dataclass
class SourceRead:
    """Where a restore reads its point: the repository object, its name, the archive."""

    repository: dict[str, Any]
    name: str
    archive_id: str
    manifest: Any
    instead: str = ""
    """Why the backup's own repository was not read (empty: it was)."""


async def _open_source(
    api: KubeAPI,
    ns: str,
    source: str,
    repo_name: str,
    archive_id: str,
    copies: dict[str, str],
) -> SourceRead | tuple[str, str, str]:
    """The backup's repository and manifest; when it is unreachable or lost and the
    point has completed copies (``copies``: repository -> archive id), the first copy
    that opens. Else ("wait" | "fail", reason, message), as before copies existed."""
    repo_obj = await api.get_object(REPOSITORY.plural, ns, repo_name) if repo_name else None
    problem: tuple[str, str, str]
    if repo_obj is None:
        named = repo_name or "(none named)"
        problem = (
            "wait",
            "RepositoryNotFound",
            f"VMGuardRepository {named} of VMGuardBackup {source} does not exist",
        )
    else:
        try:
            repo = await access.open_repository(api, repo_obj)
            manifest = await asyncio.to_thread(repo.load_archive, archive_id)
            return SourceRead(repo_obj, repo_name, archive_id, manifest)
        except ObjectNotFoundError:
            problem = (
                "fail",
                "ArchiveNotFound",
                f"archive {archive_id} of VMGuardBackup {source} is not in repository {repo_name}",
            )
        except VmguardError as exc:
            if not copies:
                raise
            problem = ("fail", "RepositoryUnreachable", f"repository {repo_name}: {exc}")
    for name, copy_id in sorted(copies.items()):
        copy_obj = await api.get_object(REPOSITORY.plural, ns, name)
        if copy_obj is None:
            continue
        try:
            repo = await access.open_repository(api, copy_obj)
            manifest = await asyncio.to_thread(repo.load_archive, copy_id)
        except VmguardError as exc:
            log.warning("restore of %s: copy target %s unreadable too: %s", source, name, exc)
            continue
        return SourceRead(copy_obj, name, copy_id, manifest, problem[2])
    return problem


def _describe(prepared: targets.Prepared) -> str:
    if prepared.location:
        return f"files go to {prepared.location}"
    disks = ", ".join(f"{d['sourceKey']}→{d['vm']}:{d['key']}" for d in prepared.disks)
    return f"VM {prepared.vm.get('moref', '')}" + (f", disks {disks}" if disks else "")


def _prepare_vsphere(
    endpoint: Any,
    manifest: Any,
    target: dict[str, Any],
    uid: str,
    recorded_power: bool | None,
) -> targets.Prepared:
    from vmguard.vsphere.session import VSphereSession

    session = VSphereSession(endpoint)
    try:
        if "newVM" in target:
            return targets.prepare_new_vm(session, manifest, target["newVM"], uid)
        if "inPlace" in target:
            return targets.prepare_in_place(session, manifest, recorded_power)
        return targets.prepare_disks(session, manifest, target["disks"], uid, recorded_power)
    finally:
        session.close()


def _power(endpoint: Any, morefs: list[str], on: bool) -> None:
    from vmguard.vsphere import restore as vrestore
    from vmguard.vsphere.session import VSphereSession

    session = VSphereSession(endpoint)
    try:
        for moref in dict.fromkeys(morefs):
            vrestore.power(session, moref, on=on)
    finally:
        session.close()


async def _watch(api: KubeAPI, settings: ProxySettings, obj: dict[str, Any]) -> Step:
    meta, status = obj["metadata"], restore_status(obj)
    ns = meta["namespace"]
    job_name = status.get("jobName") or builders.restore_job_name(obj)
    job = await JobAPI(api.api).read_job(ns, job_name)
    if job is None:
        # Gone before we saw it end (TTL, deleted by hand): run it again; writing the
        # same bytes to the same prepared target twice is harmless.
        log.warning("restore Job %s/%s vanished; starting it again", ns, job_name)
        return Step({"phase": RestorePhase.PENDING}, 0.0)
    state = job_state(job)
    message = state.message or state.reason
    if state.succeeded:
        conds = set_condition(_conditions(obj), "Ready", False, "Finalizing", "data written")
        return Step({"phase": RestorePhase.FINALIZING, "conditions": conds}, 0.0)
    if state.failed:
        error: Failure = status.get("error") or {}
        reason = error.get("reason") or PROXY_FAILED
        text = error.get("message") or f"restore Job {job_name} failed: {message}"
        return await _fail_and_clean(api, obj, reason, text)
    return await _watch_proxy_start(api, settings, obj, job)


async def _watch_proxy_start(
    api: KubeAPI, settings: ProxySettings, obj: dict[str, Any], job: dict[str, Any]
) -> Step:
    """An active restore Job whose pod cannot start
    (:mod:`~vmguard.controller.kube.proxypods`), as for backups: refused at admission fails
    at once, image pull / scheduling / crash loop is a ``ProxyNotStarting`` condition until
    the Job is ``settings.start_timeout`` old."""
    ns, name = obj["metadata"]["namespace"], job["metadata"]["name"]
    jobs = JobAPI(api.api)
    trouble = await jobs.proxy_trouble(ns, name)
    said = next((dict(c) for c in _conditions(obj) if c.get("type") == "ProxyStarted"), {})
    if trouble is None:
        if said.get("status") == "False":  # it recovered: say so
            conds = set_condition(_conditions(obj), "ProxyStarted", True, "Running", f"Job {name}")
            conds = set_condition(conds, "Ready", False, "Restoring", f"Job {name}")
            return Step({"conditions": conds}, POLL_JOB_SECONDS)
        return Step({}, POLL_JOB_SECONDS)
    text = trouble.gives_up(job, REAL_TIME.now(), settings.start_timeout)
    if text is not None:
        await jobs.delete_job(ns, name)
        return await _fail_and_clean(api, obj, trouble.reason, text)
    text = trouble.waiting(settings.start_timeout)
    if said.get("reason") == trouble.reason and said.get("message") == text:
        return Step({}, POLL_JOB_SECONDS * 5)
    conds = set_condition(_conditions(obj), "ProxyStarted", False, trouble.reason, text)
    conds = set_condition(conds, "Ready", False, trouble.reason, text)
    return Step({"conditions": conds}, POLL_JOB_SECONDS * 5)


async def _vcenter_endpoint(api: KubeAPI, obj: dict[str, Any]) -> Any:
    ns, name = obj["metadata"]["namespace"], restore_status(obj).get("vcenter")
    vc = await api.get_object(VCENTER.plural, ns, name) if name else None
    if vc is None:
        raise RetryableError(f"VCenter {name} is gone; cannot finish the restore")
    return await access.vcenter_endpoint(api, vc)


async def _fail_and_clean(api: KubeAPI, obj: dict[str, Any], reason: str, text: str) -> Step:
    status = restore_status(obj)
    moref = ((status.get("result") or {}).get("vm") or {}).get("moref")
    if "newVM" in obj["spec"]["target"] and moref:
        endpoint = await _vcenter_endpoint(api, obj)

        def destroy() -> bool:
            from vmguard.vsphere import adoption
            from vmguard.vsphere.session import VSphereSession

            session = VSphereSession(endpoint)
            try:
                uid = obj["metadata"]["uid"]
                return adoption.destroy_marked(session, moref, targets.VM_MARKER, uid)
            finally:
                session.close()

        if await asyncio.to_thread(destroy):
            text += f"; the half-restored VM {moref} was destroyed"
    return failed(obj, None, reason, text)


async def _finalize(api: KubeAPI, obj: dict[str, Any]) -> Step:
    status = restore_status(obj)
    moref = ((status.get("result") or {}).get("vm") or {}).get("moref")
    if status.get("powerOnAfter") and moref:
        endpoint = await _vcenter_endpoint(api, obj)
        await asyncio.to_thread(_power, endpoint, [moref], True)
    conds = set_condition(_conditions(obj), "Ready", True, "Completed", "restore completed")
    return Step(
        {"phase": RestorePhase.COMPLETED, "completionTime": now(), "conditions": conds}, None
    )


async def drive(
    api: KubeAPI,
    settings: ProxySettings,
    namespace: str,
    name: str,
    stopped: Any,
    announce: Announce,
    timing: Timing = REAL_TIME,
) -> None:
    """Step one VMGuardRestore until it is over (or the operator stops), waiting between
    steps on ``timing``'s clock."""
    while not stopped:
        obj = await api.get_object(PLURAL, namespace, name)
        if obj is None or "metadata" not in obj:
            return
        try:
            result = await step(api, settings, obj)
        except RestoreRejected as exc:
            result = failed(obj, "TargetReady", exc.reason, str(exc))
        except RetryableError as exc:
            result = _retry(obj, "Unreachable", str(exc))
        except (ConfigError, VmguardError) as exc:
            result = _retry(obj, "InvalidConfiguration", str(exc))
        except Exception as exc:  # an unexpected fault must not stop this restore for good
            log.exception("VMGuardRestore %s/%s: step failed", namespace, name)
            result = _retry(obj, "ReconcileError", f"{type(exc).__name__}: {exc}")
        status = with_lifecycle(obj, result.status)
        if status:
            await api.patch_status(PLURAL, namespace, name, status)
            _announce(obj, status, announce)
        if result.delay is None:
            return
        await timing.wait(result.delay, stopped)


def restore_conditions(
    conditions: Iterable[Condition] | None,
    phase: str,
    error: Failure | None,
    generation: int | None,
) -> list[Condition]:
    """The kstatus conditions of a VMGuardRestore in ``phase``
    (see :mod:`~vmguard.controller.kube.conditions`)."""
    return outcome_conditions(
        conditions,
        phase,
        terminal=RESTORE_TERMINAL,
        failed=RestorePhase.FAILED,
        error=error,
        what="restore",
        generation=generation,
    )


def with_lifecycle(obj: dict[str, Any], patch: RestoreStatus) -> RestoreStatus:
    """``patch`` plus the conditions and ``observedGeneration`` the resulting status
    must carry; empty when the object already carries them and ``patch`` is empty (a
    step that changed nothing writes nothing). Also brings a restore finished by an
    older operator up to date."""
    before = restore_status(obj)
    generation = obj["metadata"].get("generation")
    phase = patch.get("phase") or before.get("phase") or RestorePhase.PENDING
    error = patch["error"] if "error" in patch else before.get("error")
    current = patch.get("conditions") or _conditions(obj)
    conditions = restore_conditions(current, phase, error, generation)
    if not patch and conditions == current and before.get("observedGeneration") == generation:
        return patch
    return {**patch, "conditions": conditions, "observedGeneration": generation}


def _retry(obj: dict[str, Any], reason: str, message: str) -> Step:
    conds = set_condition(_conditions(obj), "Ready", False, reason, message)
    return Step({"conditions": conds}, RETRY_SECONDS)


def _announce(obj: dict[str, Any], status: RestoreStatus, announce: Announce) -> None:
    before = restore_status(obj).get("phase")
    phase = status.get("phase")
    if phase == before or phase is None:
        return
    if phase == RestorePhase.FAILED:
        error: Failure = status.get("error") or {}
        announce(error.get("reason", "Failed"), error.get("message", ""), True)
    elif phase in (RestorePhase.RESTORING, RestorePhase.COMPLETED):
        announce(phase, f"restore {phase.lower()}", False)
