"""The VMGuardRestore controller: Pending → Restoring → Finalizing → Completed | Failed.

One kopf daemon per VMGuardRestore calls :func:`drive`, which reads the object afresh and
takes one :func:`step` at a time until the restore is Completed or Failed. Each step is
decided by ``status.phase`` alone, so an operator killed at any point and restarted
resumes where the status says, and every step may run twice without harm:

- **Pending**: the source VMGuardBackup must exist and be Completed with an archive (else
  condition ``SourceNotFound`` / ``SourceNotCompleted``, re-checked; ``SourceFailed``
  fails the restore) — or the source ProtectedVM must exist (``SourceNotFound``) and hold
  the point named by ``archiveId``, or one taken at or before ``at``, the newest such
  (:func:`~vmguard.controller.kube.points.choose_point`; else ``PointNotFound``,
  re-checked): the point's repository, the ProtectedVM's vCenter.
  The operator opens the repository — the point's own, or the copy target
  ``spec.source.repositoryRef`` names (``CopyNotFound`` without a completed copy
  there); when the point's own is unreachable, lost or misses the archive and the
  point has completed copies (``status.copies`` of the backup, ``copies`` of the
  ProtectedVM's point), the first copy that
  opens, said in the ``SourceReady`` message and ``status.repository`` —, reads the
  manifest, checks and
  prepares the target (:mod:`.targets`: a new VM is created here, found again
  by its marker after a restart), records it in ``status.result`` (and, for an
  overwrite, whether the VM was on) and where it writes (``status.placement``). From
  then on the restore waits in its vCenter's admission queue (:mod:`.admission`,
  docs/admission.md), the daemon stops, and the queue's start patch moves it to
  Restoring. A files restore touches no vCenter: it goes on to Restoring at once.
- **Restoring** without a Job (just admitted, or the Job vanished: TTL, deleted): the
  operator powers off what the restore overwrites, makes sure the proxy's
  ServiceAccount exists and creates the Job — named after the VMGuardRestore's UID, so a
  second attempt finds it (AlreadyExists = adopt); writing the same bytes to the same
  prepared target twice is harmless.
- **Restoring**: the proxy Job writes and reports progress and its result into status;
  the operator watches the Job. Complete → Finalizing; failed → Failed, with the
  proxy's reason when it gave one. A Job that vanished (TTL, deleted) is made again.
- **Finalizing**: power the VM on when asked (or when an overwritten VM was on), then
  Completed.
- **Failed**: a VM this restore created is destroyed (only if it carries our marker);
  disks added to an existing VM stay (named in status); an overwritten VM stays off.

Across namespaces (docs/tenancy.md): the source VMGuardBackup is always this namespace's;
its VMGuardRepository and the target VCenter may be in another namespace that admits this
one (:mod:`vmguard.controller.kube.refs`; else ``ReferenceNotAllowed``, waiting). A
repository of another namespace is shared: an archive is restored only when its
manifest's origin (``vmguard.io/namespace``) is this namespace, else
``ArchiveOfAnotherNamespace`` — ``status.archiveId`` of a VMGuardBackup is not trusted to
keep tenants apart. The Job then runs in that namespace, beside the Secrets
(``status.jobNamespace``), so a files restore into a PVC of this namespace is refused
(``PVCAcrossNamespaces``: no pod mounts another namespace's claim), and one to S3 writes
only into the repository's bucket under ``<namespace>/`` (``PrefixOutsideNamespace``:
the credentials are shared).

Bad input never crash-loops the operator: a rejected target is a condition and Failed,
a missing reference is a condition and a later re-check, an unexpected fault is a
condition and a retry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vmguard.api import (
    PROXY_FAILED,
    RESTORE_TERMINAL,
    BackupCopy,
    BackupPhase,
    BackupPlacement,
    Condition,
    CopyState,
    Failure,
    RestorePhase,
    RestoreStatus,
    parse_time,
)
from vmguard.api.kinds import BACKUP, POLICY, REPOSITORY, RESTORE, VCENTER
from vmguard.config import ProxySettings
from vmguard.controller.kube import access, points
from vmguard.controller.kube import refs as references
from vmguard.controller.kube.admission import VCenterLimits, disks_at_once
from vmguard.controller.kube.bodies import (
    backup_spec,
    backup_status,
    ref_name,
    restore_status,
)
from vmguard.controller.kube.conditions import now, outcome_conditions, set_condition
from vmguard.controller.kube.copies import copies_of, point_copies
from vmguard.controller.kube.handlers import Announce
from vmguard.controller.kube.jobs import JobAPI, job_state
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.proxyjob import build_proxy_rbac, build_reporting_rbac
from vmguard.controller.kube.timing import REAL_TIME, Timing
from vmguard.controller.restore import admission, builders, targets
from vmguard.errors import (
    ConfigError,
    ObjectNotFoundError,
    RestoreRejected,
    RetryableError,
    VmguardError,
)
from vmguard.hooks import NO_HOOKS, Hooks
from vmguard.store.lineage import ORIGIN_NAMESPACE

log = logging.getLogger(__name__)

PLURAL = RESTORE.plural
WAIT_SOURCE_SECONDS = 10.0
RETRY_SECONDS = 30.0
POLL_JOB_SECONDS = 2.0
QUEUED = float("inf")
"""A step's delay when the restore waits in the admission queue: the daemon stops."""


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


def _refs(
    backup: dict[str, Any], policy: dict[str, Any] | None
) -> tuple[dict[str, str], dict[str, str]]:
    """(vCenter, repository) the backup was made with, as references from its namespace
    (``{name}``, or ``{name, namespace}`` across; ``{}`` when it names none): its
    status, else its spec, else its policy's."""
    spec, status = backup_spec(backup), backup_status(backup)
    pspec = (policy or {}).get("spec") or {}

    def ref(name: str | None, namespace: str | None, *given: Any) -> dict[str, str]:
        if name:
            return {"name": name, "namespace": namespace} if namespace else {"name": name}
        found = next((dict(g) for g in given if g), {})
        return {k: str(v) for k, v in found.items() if k in ("name", "namespace")}

    vcenter = ref(
        status.get("vcenter"),
        status.get("vcenterNamespace"),
        spec.get("vcenterRef"),
        pspec.get("vcenterRef"),
    )
    repository = ref(
        status.get("repository"),
        status.get("repositoryNamespace"),
        spec.get("repositoryRef"),
        pspec.get("repositoryRef"),
    )
    return vcenter, repository


async def step(
    api: KubeAPI, settings: ProxySettings, obj: dict[str, Any], hooks: Hooks = NO_HOOKS
) -> Step:
    phase = restore_status(obj).get("phase") or RestorePhase.PENDING
    if phase in RESTORE_TERMINAL:
        return Step()
    if phase == RestorePhase.PENDING:
        if admission.waiting(restore_status(obj)):
            return Step({}, QUEUED)
        return await _start(api, settings, obj)
    if phase == RestorePhase.RESTORING:
        return await _watch(api, settings, obj)
    await hooks.restore_step("finalizing")
    return await _finalize(api, obj)


async def _from_point(
    api: KubeAPI, obj: dict[str, Any], source: dict[str, Any]
) -> tuple[tuple[str, dict[str, str], dict[str, str], str], dict[str, BackupCopy]] | Step:
    """A point of a ProtectedVM, by archive id or by time: ((archive id, vCenter ref,
    repository ref, what it is for messages), the point's copies). A ProtectedVM or point
    that does not exist is a condition, checked again (catalog sync or a backup may add
    it)."""
    ns, name = obj["metadata"]["namespace"], str(source["protectedVM"])
    held = await api.get_object(points.PLURAL, ns, name)
    if held is None:
        msg = f"ProtectedVM {name} does not exist"
        return _waiting(obj, "SourceReady", "SourceNotFound", msg, WAIT_SOURCE_SECONDS)
    at = parse_time(source.get("at"))
    latest_clean = bool(source.get("latestClean"))
    chosen = points.choose_point(
        held.get("status") or {}, source.get("archiveId"), at, latest_clean
    )
    if chosen is None:
        wanted = (
            f"point {source['archiveId']}"
            if source.get("archiveId")
            else "point whose verification passed"
            if latest_clean
            else f"point taken at or before {source.get('at')}"
        )
        msg = f"ProtectedVM {name} has no {wanted}"
        return _waiting(obj, "SourceReady", "PointNotFound", msg, WAIT_SOURCE_SECONDS)
    vcenter = str((held.get("status") or {}).get("vcenter") or "")
    repo_ref = {"name": chosen["repository"]}
    if chosen.get("repositoryNamespace"):
        repo_ref["namespace"] = chosen["repositoryNamespace"]
    vc_ref = {"name": vcenter} if vcenter else {}
    return (chosen["archiveId"], vc_ref, repo_ref, f"ProtectedVM {name}"), point_copies(chosen)


async def _start(api: KubeAPI, settings: ProxySettings, obj: dict[str, Any]) -> Step:
    meta, spec = obj["metadata"], obj["spec"]
    ns = meta["namespace"]
    if spec["source"].get("protectedVM"):
        found = await _from_point(api, obj, spec["source"])
        if isinstance(found, Step):
            return found
        return await _read_from(api, settings, obj, *found)
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
    vc_ref, repo_ref = _refs(backup, policy)
    resolved = (archive_id, vc_ref, repo_ref, f"VMGuardBackup {source}")
    return await _read_from(api, settings, obj, resolved, copies_of(backup))


async def _read_from(
    api: KubeAPI,
    settings: ProxySettings,
    obj: dict[str, Any],
    resolved: tuple[str, dict[str, str], dict[str, str], str],
    recorded: Mapping[str, BackupCopy],
) -> Step:
    """The repository a restore reads: the one ``spec.source.repositoryRef`` names (the
    point's own, or a copy target holding a completed copy of it), else the point's own
    with its completed copies (``recorded``, a run's or a point's) to fall back on."""
    archive_id, vc_ref, repo_ref, source = resolved
    wanted = ref_name(obj["spec"]["source"].get("repositoryRef"))
    copies = {
        name: str(c.get("archiveId") or "")
        for name, c in recorded.items()
        if c.get("state") == CopyState.COMPLETED and c.get("archiveId")
    }
    if wanted and wanted != repo_ref.get("name", ""):
        if wanted not in copies:
            msg = f"repository {wanted} holds no completed copy of {source}"
            return failed(obj, "SourceReady", "CopyNotFound", msg)
        # A copy target is named in the policy's namespace (docs/copies.md).
        repo_ref, archive_id, copies = {"name": wanted}, copies[wanted], {}
    elif wanted:
        copies = {}  # the point's own repository, named: no fallback
    return await _start_from(api, settings, obj, (archive_id, vc_ref, repo_ref, source), copies)


async def _start_from(
    api: KubeAPI,
    settings: ProxySettings,
    obj: dict[str, Any],
    resolved: tuple[str, dict[str, str], dict[str, str], str] | Step,
    copies: dict[str, str] | None = None,
) -> Step:
    """Pending, once the source is resolved (a VMGuardBackup's archive, or a point's):
    the repository, the target, and the admission queue."""
    if isinstance(resolved, Step):
        return resolved
    meta, spec = obj["metadata"], obj["spec"]
    ns, status = meta["namespace"], restore_status(obj)
    archive_id, source_vc, repo_ref, source = resolved
    vc_ref = dict(spec.get("vcenterRef") or {}) or source_vc
    repo_name, vc_name = repo_ref.get("name", ""), vc_ref.get("name", "")
    copies = copies or {}
    try:
        repo_obj = await references.get_referenced(api, REPOSITORY, ns, repo_ref)
    except references.RefusedReference as exc:
        return _waiting(obj, "SourceReady", exc.reason, str(exc), RETRY_SECONDS)
    target = spec["target"]
    vc_obj = None
    if "files" not in target:
        try:
            vc_obj = await references.get_referenced(api, VCENTER, ns, vc_ref)
        except references.RefusedReference as exc:
            return _waiting(obj, "TargetReady", exc.reason, str(exc), RETRY_SECONDS)
        if vc_obj is None:
            msg = f"VCenter {references.shown(vc_ref, ns)} to restore into does not exist"
            return _waiting(obj, "TargetReady", "VCenterNotFound", msg, RETRY_SECONDS)
    read = await _open_source(api, ns, source, repo_ref, repo_obj, archive_id, copies)
    if isinstance(read, tuple):
        kind, reason, msg = read
        if kind == "wait":
            return _waiting(obj, "SourceReady", reason, msg, RETRY_SECONDS)
        return failed(obj, "SourceReady", reason, msg)
    repo_obj, manifest = read.repository, read.manifest
    repo_name, archive_id = read.name, read.archive_id
    try:
        job_ns = references.job_namespace(ns, repo_obj, vc_obj)
    except references.RefusedReference as exc:
        return failed(obj, "TargetReady", exc.reason, str(exc))
    origin = manifest.labels.get(ORIGIN_NAMESPACE, "")
    if references.namespace_of(repo_obj) != ns and origin != ns:
        msg = (
            f"archive {archive_id} was made in namespace {origin or '(none recorded)'}, "
            f"not {ns}: from a repository shared across namespaces a restore reads only "
            "its own namespace's archives"
        )
        return failed(obj, "SourceReady", "ArchiveOfAnotherNamespace", msg)
    if job_ns != ns and "files" in target:
        refused = _files_across(target["files"]["to"], ns, job_ns, repo_obj["spec"]["s3"])
        if refused is not None:
            return failed(obj, "TargetReady", *refused)
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
    if references.namespace_of(repo_obj) != ns:
        recorded["repositoryNamespace"] = references.namespace_of(repo_obj)
    if vc_obj is not None and references.namespace_of(vc_obj) != ns:
        recorded["vcenterNamespace"] = references.namespace_of(vc_obj)
    if job_ns != ns:
        recorded["jobNamespace"] = job_ns
    recorded_power = status.get("powerOnAfter")
    if vc_obj is not None:
        recorded["vcenter"] = vc_name
        endpoint = await access.vcenter_endpoint(api, vc_obj)
        prepared, placement = await asyncio.to_thread(
            _prepare_vsphere, endpoint, manifest, target, meta["uid"], recorded_power
        )
    else:
        prepared = targets.prepare_files(manifest, target["files"], repo_obj["spec"]["s3"])
        placement = None
    recorded["result"] = prepared.result()
    recorded["powerOnAfter"] = prepared.power_on_after
    recorded["conditions"] = set_condition(
        conds, "TargetReady", True, "Prepared", _describe(prepared)
    )
    if placement is not None:
        # Into its vCenter's queue: the admission loop moves it on to Restoring.
        recorded["placement"] = placement
        recorded["phase"] = RestorePhase.PENDING
        recorded["conditions"] = set_condition(
            recorded["conditions"], "Ready", False, "Queued", "waiting for admission"
        )
        return Step(recorded, QUEUED)
    return await _launch(api, settings, {**obj, "status": {**status, **recorded}}, recorded)


async def _launch(
    api: KubeAPI, settings: ProxySettings, obj: dict[str, Any], recorded: RestoreStatus
) -> Step:
    """Admitted (or a files restore): power off what the restore overwrites, create the
    Job. ``recorded`` is the status patch so far (empty when the status holds it all)."""
    meta, spec, status = obj["metadata"], obj["spec"], restore_status(obj)
    ns = meta["namespace"]
    # Where _start found them: another namespace's only when it admitted this one then.
    job_ns = status.get("jobNamespace") or ns
    repo_name = status.get("repository", "")
    repo_ns = status.get("repositoryNamespace") or ns
    repo_obj = await api.get_object(REPOSITORY.plural, repo_ns, repo_name) if repo_name else None
    if repo_obj is None:
        raise RetryableError(f"VMGuardRepository {repo_name} is gone; cannot start the restore")
    vc_obj = None
    if "files" not in spec["target"]:
        vc_name = status.get("vcenter", "")
        vc_ns = status.get("vcenterNamespace") or ns
        vc_obj = await api.get_object(VCENTER.plural, vc_ns, vc_name) if vc_name else None
        if vc_obj is None:
            raise RetryableError(f"VCenter {vc_name} is gone; cannot start the restore")
        power_off = targets.powered_off_for(spec["target"], status.get("result") or {})
        if power_off:
            endpoint = await access.vcenter_endpoint(api, vc_obj)
            await asyncio.to_thread(_power, endpoint, power_off, False)
    jobs = JobAPI(api.api)
    await jobs.ensure_rbac(build_proxy_rbac(job_ns, settings.service_account))
    if job_ns != ns:  # the proxy over there reports to this restore, here
        await jobs.ensure_rbac(build_reporting_rbac(ns, job_ns, settings.service_account))
    at_once = None
    if vc_obj is not None:
        # Restores write over NBD, so the NFC limits apply as well as the datastore's.
        at_once = disks_at_once(
            len((status.get("result") or {}).get("disks") or []),
            VCenterLimits.of(vc_obj["spec"]),
            nfc=True,
            wanted=settings.restore_disks_at_once,
        )
    job = builders.build_restore_job(
        obj,
        settings,
        repository=repo_obj["spec"],
        vcenter=vc_obj["spec"] if vc_obj is not None else None,
        disks_at_once=at_once,
        namespace=job_ns,
    )
    await jobs.create_job(job)
    conds = recorded.get("conditions") or _conditions(obj)
    conds = set_condition(conds, "Ready", False, "Restoring", f"Job {job['metadata']['name']}")
    launched: RestoreStatus = {
        **recorded,
        "phase": RestorePhase.RESTORING,
        "jobName": job["metadata"]["name"],
        "conditions": conds,
    }
    return Step(launched, POLL_JOB_SECONDS)


def _files_across(
    to: dict[str, Any], ns: str, job_ns: str, repo_s3: dict[str, Any]
) -> tuple[str, str] | None:
    """Why a files restore whose Job runs in ``job_ns`` (another namespace's repository)
    cannot write where ``to`` says, as (reason, message); None when it can. The Job cannot
    mount a PVC of ``ns``; it writes to S3 with the shared repository's credentials, so
    only into that bucket, under ``<ns>/``: never over another tenant's restored files."""
    pvc = to.get("pvc")
    if pvc:
        return "PVCAcrossNamespaces", (
            f"the restore Job runs in namespace {job_ns}, beside the repository's "
            f"credentials, and a pod mounts only claims of its own namespace: PVC "
            f"{pvc['claimName']} of {ns} cannot be written (restore the files to S3)"
        )
    s3 = to["s3"]
    bucket, prefix = s3.get("bucket") or repo_s3["bucket"], s3["prefix"].strip("/")
    if bucket != repo_s3["bucket"] or not (prefix + "/").startswith(f"{ns}/"):
        return "PrefixOutsideNamespace", (
            f"files from a repository of namespace {job_ns} are written with its "
            f"credentials: only to its bucket {repo_s3['bucket']}, under prefix {ns}/ "
            f"(not s3://{bucket}/{prefix})"
        )
    return None


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
    repo_ref: Mapping[str, Any],
    repo_obj: dict[str, Any] | None,
    archive_id: str,
    copies: dict[str, str],
) -> SourceRead | tuple[str, str, str]:
    """The backup's repository (``repo_obj``, resolved from ``repo_ref``; None: it does
    not exist) and manifest; when it is missing, unreachable or lost and the point has
    completed copies (``copies``: repository in ``ns`` -> archive id), the first copy
    that opens. Else ("wait" | "fail", reason, message), as before copies existed."""
    repo_name = str(repo_ref.get("name") or "")
    problem: tuple[str, str, str]
    if repo_obj is None:
        named = references.shown(repo_ref, ns)
        problem = (
            "wait",
            "RepositoryNotFound",
            f"VMGuardRepository {named} of {source} does not exist",
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
                f"archive {archive_id} of {source} is not in repository {repo_name}",
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
) -> tuple[targets.Prepared, BackupPlacement]:
    """The prepared target and where the restore will write (for admission)."""
    from vmguard.vsphere.session import VSphereSession

    session = VSphereSession(endpoint)
    try:
        if "newVM" in target:
            prepared = targets.prepare_new_vm(session, manifest, target["newVM"], uid)
        elif "inPlace" in target:
            prepared = targets.prepare_in_place(session, manifest, recorded_power)
        else:
            prepared = targets.prepare_disks(
                session, manifest, target["disks"], uid, recorded_power
            )
        return prepared, targets.placement(session, prepared)
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
    job = await JobAPI(api.api).read_job(jobs_namespace(obj), job_name)
    if job is None:
        # Just admitted, or gone before we saw it end (TTL, deleted by hand): run it
        # (again); writing the same bytes to the same prepared target twice is harmless.
        if status.get("jobName"):
            log.warning("restore Job %s/%s vanished; starting it again", ns, job_name)
        return await _launch(api, settings, obj, {})
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
    ns, name = jobs_namespace(obj), job["metadata"]["name"]
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


def jobs_namespace(obj: dict[str, Any]) -> str:
    """Where the restore's Job runs: ``status.jobNamespace``, else its own namespace."""
    return restore_status(obj).get("jobNamespace") or obj["metadata"]["namespace"]


async def _vcenter_endpoint(api: KubeAPI, obj: dict[str, Any]) -> Any:
    status = restore_status(obj)
    ns = status.get("vcenterNamespace") or obj["metadata"]["namespace"]
    name = status.get("vcenter")
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
    hooks: Hooks = NO_HOOKS,
) -> None:
    """Step one VMGuardRestore until it is over (or the operator stops), waiting between
    steps on ``timing``'s clock; ``hooks.restore_step("finalizing")`` is awaited before the
    Finalizing step (:mod:`vmguard.hooks`: a no-op unless an embedder gave one)."""
    while not stopped:
        obj = await api.get_object(PLURAL, namespace, name)
        if obj is None or "metadata" not in obj:
            return
        try:
            result = await step(api, settings, obj, hooks)
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
        if result.delay == QUEUED:
            # Waiting for admission: kopf stops this daemon when its filter sees the
            # placement, and starts a new one once the queue moves the restore on
            # (returning would keep kopf from starting it again).
            await stopped.wait()
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
