"""Catalog sync: the VMGuardBackup objects of a namespace agree with the archives in a repository.

The bucket is the record of what was backed up; VMGuardBackup objects are its catalog in the
cluster. For one VMGuardRepository, a pass of :func:`sync`:

- **recreates** a VMGuardBackup for every archive no VMGuardBackup of the namespace names (by
  ``status.archiveId``, or the ``vmguard.io/archive-id`` annotation of a synced one);
  the object is marked ``vmguard.io/synced: "true"`` and arrives Completed, its status
  rebuilt from the manifest (:func:`build_synced_backup`, :func:`synced_status`), and its
  point is added to the VM's ProtectedVM (created if absent);
- **flags** a Completed VMGuardBackup of this repository whose archive is not in it any more:
  ``ArchiveAvailable=False`` (``ArchiveMissing``) and a warning event; the flag is
  cleared (``ArchiveFound``) when the archive reappears. Objects being deleted are
  left alone.

Invariants:

- Cheap on a large repository: one listing of the VMGuardBackups, one listing of
  ``archives/`` (ids only), then a manifest is read only for an archive that needs an
  object (or a synced object whose status never got written); only changed conditions
  are patched.
- A copy of a point (issue 17) that the point's VMGuardBackup records in
  ``status.copies`` gets no object of its own: catalog sync of a copy target in the same
  namespace recreates only what no VMGuardBackup names (in a new cluster, every copy).
- VMGuardBackups are listed *before* the archives: an archive committed in between belongs to
  a backup already listed, whose UID its manifest names (``backup_uid``); such an archive
  is the running backup's, not an orphan, and is skipped.
- Names are deterministic (:func:`synced_name`): the same archive gets the same name in
  every cluster and every pass, so a second replica or a retried pass gets AlreadyExists.
- A synced object is never backed up: the VMGuardBackup controller ignores objects labelled
  ``vmguard.io/synced`` (they are created without status, which it would take for
  Pending). A synced object left without status is completed by the next pass.
- Deleting a VMGuardBackup object keeps its archive, so the next pass brings the object back,
  synced. Only retention deletes archives (with their objects).
- A repository shared across namespaces (its ``spec.allowedNamespaces``, docs/tenancy.md)
  hands each archive to the namespace its manifest names as origin
  (``vmguard.io/namespace``) when the repository admits that namespace, and every other
  archive to the repository's own namespace: never one tenant's archive to another. The
  VMGuardBackups of all those namespaces are listed, so an archive one of them names gets
  no second object anywhere.
- A VMGuardBackup that *expired* (its ``ttlSecondsAfterFinished``, controller/backup/expiry.py)
  is not brought back: its archive is a point of a ProtectedVM whose ``backup`` was cleared
  when it expired, and those archives count as named. The ProtectedVMs are listed after
  the VMGuardBackups, and expiry clears the point before it deletes the object, so a run
  expiring during a pass is named by one of the two listings.
"""

from __future__ import annotations

import asyncio
import logging
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from vmguard.api import (
    ANNOTATION_ARCHIVE_ID,
    ANNOTATION_SYNCED_FROM,
    ANNOTATION_VM_NAME,
    API_VERSION,
    LABEL_POLICY,
    LABEL_REPOSITORY,
    LABEL_SYNCED,
    LABEL_VCENTER,
    LABEL_VM,
    SYNCED,
    BackupPhase,
    VMIdentity,
    format_time,
)
from vmguard.api.kinds import BACKUP, POLICY, VCENTER
from vmguard.api.names import is_synced
from vmguard.controller.kube import access, points
from vmguard.controller.kube.bodies import backup_spec, backup_status, ref_name
from vmguard.controller.kube.conditions import get_condition, lifecycle_conditions, set_condition
from vmguard.controller.kube.copies import copies_of
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.errors import ConfigError, RepositoryNotFoundError, VmguardError
from vmguard.store import ArchiveManifest, Repository, TransferStats
from vmguard.store.lineage import (
    BACKUP_UID_LABEL,
    ORIGIN_NAMESPACE,
    ORIGIN_POLICY,
    ORIGIN_VMBACKUP,
)

CONDITION = "ArchiveAvailable"
PLURAL = BACKUP.plural

MODE_USED = {"full": "full", "incremental": "incremental", "full-scan": "fullScan"}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_MOREF = re.compile(r"^vm-[0-9]{1,10}$")
_SLUG_MAX = 63 - 1 - 42  # room left beside "-<archive id>" (42 characters)

log = logging.getLogger(__name__)


# -- planning (pure) ----------------------------------------------------------------------


def archive_of(obj: Mapping[str, Any]) -> str:
    """The archive a VMGuardBackup names: its status, or the annotation of a synced one."""
    meta = obj.get("metadata") or {}
    return str(
        backup_status(obj).get("archiveId")
        or (meta.get("annotations") or {}).get(ANNOTATION_ARCHIVE_ID)
        or ""
    )


def repository_namespace_of(obj: Mapping[str, Any]) -> str:
    """The namespace of the VMGuardRepository a VMGuardBackup names (its own by default)."""
    meta, ref = obj.get("metadata") or {}, backup_spec(obj).get("repositoryRef")
    return str(
        backup_status(obj).get("repositoryNamespace")
        or (ref.get("namespace") if ref else None)
        or meta.get("namespace")
        or ""
    )


def repository_of(obj: Mapping[str, Any]) -> str:
    """The VMGuardRepository a VMGuardBackup was made with (status), or asked for (spec)."""
    meta, spec = obj.get("metadata") or {}, backup_spec(obj)
    return str(
        backup_status(obj).get("repository")
        or ref_name(spec.get("repositoryRef"))
        or (meta.get("labels") or {}).get(LABEL_REPOSITORY)
        or ""
    )


@dataclass(frozen=True)
class CatalogPlan:
    create: tuple[str, ...] = ()
    """Archive ids without a VMGuardBackup: read their manifests, create synced objects."""
    complete: tuple[tuple[str, str], ...] = ()
    """(VMGuardBackup name, archive id) of synced objects whose status was never written."""
    flag: tuple[str, ...] = ()
    """Completed VMGuardBackups whose archive is gone and that do not say so yet."""
    clear: tuple[str, ...] = ()
    """VMGuardBackups flagged before whose archive is back."""

    @property
    def empty(self) -> bool:
        return not (self.create or self.complete or self.flag or self.clear)


def plan_catalog(
    repository: str,
    archive_ids: Iterable[str],
    backups: Iterable[Mapping[str, Any]],
    *,
    covered_elsewhere: Iterable[str] = (),
    repository_namespace: str | None = None,
    expired: Iterable[str] = (),
) -> CatalogPlan:
    """What one pass does for ``repository`` (pure); ``backups`` = all of one namespace.

    ``covered_elsewhere``: archives VMGuardBackups of other namespaces name (a shared
    repository); ``repository_namespace``: where the repository is, so that a backup of a
    same-named repository in another namespace is not taken for one of this one;
    ``expired``: the archives of points whose backup run expired (:func:`expired_runs`)."""
    present = set(archive_ids)
    covered: set[str] = set(covered_elsewhere) | set(expired)
    complete, flag, clear = [], [], []
    for obj in backups:
        meta, status = obj.get("metadata") or {}, backup_status(obj)
        archive = archive_of(obj)
        if archive:
            covered.add(archive)  # by any VMGuardBackup, of any repository: never two objects
        # A point's copies in copy targets are that point, not objects of their own.
        covered.update(c.get("archiveId") or "" for c in copies_of(obj).values())
        if not archive or repository_of(obj) != repository or meta.get("deletionTimestamp"):
            continue
        if (
            repository_namespace is not None
            and repository_namespace_of(obj) != repository_namespace
        ):
            continue
        name = str(meta.get("name", ""))
        if is_synced(meta.get("labels")) and not status.get("phase"):
            if archive in present:
                complete.append((name, archive))
            continue
        if status.get("phase") != BackupPhase.COMPLETED:
            continue
        flagged = get_condition(status.get("conditions"), CONDITION).get("status") == "False"
        if archive not in present and not flagged:
            flag.append(name)
        elif archive in present and flagged:
            clear.append(name)
    create = sorted(present - covered)
    return CatalogPlan(tuple(create), tuple(complete), tuple(flag), tuple(clear))


def expired_runs(protected_vms: Iterable[points.HeldVM | Mapping[str, Any]]) -> set[str]:
    """Archive ids of the points whose VMGuardBackup expired by its TTL (the point has
    no ``backup`` any more): catalog sync brings no object back for those (pure)."""
    out: set[str] = set()
    for obj in protected_vms:
        held = obj if isinstance(obj, points.HeldVM) else points.held_of(obj)
        if held is not None:
            out.update(p.archive_id for p in held.points if p.archive_id and not p.backup)
    return out


@dataclass(frozen=True)
class Placement:
    """The refs a synced VMGuardBackup gets; ``vcenter`` is None when none can be named."""

    vcenter: str | None
    policy: str | None


def place(manifest: ArchiveManifest, vcenters: Sequence[str], policies: Sequence[str]) -> Placement:
    """Which VCenter and policy of the namespace a synced VMGuardBackup refers to (pure).

    The vCenter the manifest records (the VCenter's name where the backup ran) when it is
    a valid name, existing or not: a VCenter applied later makes it whole, and a
    VMGuardRestore can name another one. Else the namespace's only VCenter; else none. The
    policy only when it exists now (a dangling policyRef would keep the backup waiting).
    """
    recorded = manifest.vm.vcenter
    if _DNS_LABEL.match(recorded):
        vcenter: str | None = recorded
    else:
        vcenter = vcenters[0] if len(vcenters) == 1 else None
    policy = manifest.labels.get(ORIGIN_POLICY, "")
    return Placement(vcenter, policy if policy in policies else None)


def slug(text: str, limit: int = _SLUG_MAX) -> str:
    """A DNS-label fragment of free text: ASCII letters and digits, '-' for the rest."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    out = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return out[:limit].strip("-") or "vm"


def synced_name(vm_name: str, archive_id: str) -> str:
    """``<slug of the VM name>-<archive id, lower case>``: ≤ 63, unique, the same everywhere."""
    return f"{slug(vm_name)}-{archive_id.lower()}"


def _vm_ids(manifest: ArchiveManifest) -> dict[str, str]:
    vm = manifest.vm
    ids = {"name": vm.name[:255]} if vm.name else {}
    if _UUID.match(vm.instance_uuid):
        ids["instanceUuid"] = vm.instance_uuid.lower()
    if _MOREF.match(vm.moref):
        ids["moref"] = vm.moref
    return ids


def build_synced_backup(
    manifest: ArchiveManifest,
    *,
    namespace: str,
    repository: str,
    placement: Placement,
    repository_namespace: str | None = None,
    vcenter_namespace: str | None = None,
) -> dict[str, Any]:
    """The VMGuardBackup object (no status: see :func:`synced_status`) for an archive. Pure.

    ``repository_namespace`` / ``vcenter_namespace``: where the repository and VCenter
    are when not in ``namespace`` (a shared repository handing an archive to the tenant
    namespace that made it): the refs then name them."""
    if placement.vcenter is None:
        raise ValueError("a synced VMGuardBackup needs a vCenter name")
    ids = _vm_ids(manifest) or {"name": manifest.archive_id}
    labels = {LABEL_SYNCED: SYNCED, LABEL_REPOSITORY: repository, LABEL_VCENTER: placement.vcenter}
    if "instanceUuid" in ids:
        labels[LABEL_VM] = ids["instanceUuid"]
    recorded_policy = manifest.labels.get(ORIGIN_POLICY, "")
    if _DNS_LABEL.match(recorded_policy):
        labels[LABEL_POLICY] = recorded_policy
    annotations = {ANNOTATION_ARCHIVE_ID: manifest.archive_id}
    if manifest.vm.name:
        annotations[ANNOTATION_VM_NAME] = manifest.vm.name
    origin = "/".join(
        manifest.labels[k] for k in (ORIGIN_NAMESPACE, ORIGIN_VMBACKUP) if manifest.labels.get(k)
    )
    if origin:
        annotations[ANNOTATION_SYNCED_FROM] = origin[:512]
    spec: dict[str, Any] = {
        "vm": ids,
        "vcenterRef": _ref(placement.vcenter, vcenter_namespace, namespace),
        "repositoryRef": _ref(repository, repository_namespace, namespace),
    }
    if placement.policy:
        spec["policyRef"] = {"name": placement.policy}
    return {
        "apiVersion": API_VERSION,
        "kind": BACKUP.kind,
        "metadata": {
            "name": synced_name(manifest.vm.name, manifest.archive_id),
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": spec,
    }


def _ref(name: str, where: str | None, namespace: str) -> dict[str, str]:
    return {"name": name, "namespace": where} if where and where != namespace else {"name": name}


def synced_status(
    manifest: ArchiveManifest, *, repository: str, vcenter: str, at: str | None = None
) -> dict[str, Any]:
    """``status`` of a synced VMGuardBackup, from its archive's manifest (pure).

    What the proxy and the operator would have written, as far as the archive records
    it: the VM, mode used and why, per-disk and total bytes, times. The snapshot, Job,
    placement and attempts are not recorded in archives and stay absent.
    """
    disks: list[dict[str, Any]] = []
    summable = ("capacityBytes", "bytesRead", "bytesChanged", "bytesUploaded", "chunksNew")
    totals: dict[str, Any] = dict.fromkeys((*summable, "chunksReused"), 0)
    for rec in manifest.disks:
        s = rec.stats
        entry: dict[str, Any] = {
            "capacityBytes": rec.length,
            "mode": MODE_USED.get(manifest.mode, "full"),
            "bytesRead": s.bytes_read,
            "bytesChanged": s.bytes_changed,
            "bytesUploaded": s.bytes_stored,
            "chunksNew": s.chunks_new,
            "chunksReused": s.chunks_reused,
        }
        for k in totals:
            totals[k] += int(entry[k])
        entry["key"] = int(rec.key) if rec.key.isdigit() else len(disks)
        if rec.label:
            entry["label"] = rec.label[:255]
        if rec.cbt is not None:
            entry.update(uuid=rec.cbt.disk_uuid[:64], backing=rec.cbt.backing_file[:2048])
            entry["changeId"] = rec.cbt.change_id[:128]
        disks.append(entry)
    summed = sum((rec.stats for rec in manifest.disks), TransferStats())
    if summed.compressibility is not None:
        totals["compressibility"] = round(summed.compressibility, 4)
    message = f"archive {manifest.archive_id}, synced from repository {repository}"
    conditions = set_condition([], "Ready", True, "Completed", message, 1, at)
    conditions = set_condition(conditions, CONDITION, True, "Synced", message, 1, at)
    conditions = lifecycle_conditions(
        conditions, BackupPhase.COMPLETED, terminal=True, failure=None, generation=1, at=at
    )
    status: dict[str, Any] = {
        "phase": BackupPhase.COMPLETED,
        "archiveId": manifest.archive_id,
        "vm": _vm_ids(manifest),
        "vcenter": vcenter,
        "repository": repository,
        "modeUsed": MODE_USED.get(manifest.mode, "full"),
        "modeReason": manifest.mode_reason[:1024],
        "disks": disks,
        "totals": totals,
        "startTime": format_time(manifest.started),
        "completionTime": format_time(manifest.finished),
        "durationSeconds": max((manifest.finished - manifest.started).total_seconds(), 0.0),
        "conditions": conditions,
        "observedGeneration": 1,
    }
    if manifest.parent:
        status["parentArchiveId"] = manifest.parent
    if "quiesced" in manifest.labels:
        status["quiesced"] = manifest.labels["quiesced"] == "true"
    return status


# -- the pass (I/O) -----------------------------------------------------------------------

Announce = Callable[[Mapping[str, Any], str, str, bool], None]
"""(VMGuardBackup object, reason, message, warning): an event on that object."""


@dataclass
class SyncReport:
    created: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    flagged: list[str] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Archives that got no object, each with why (running backup, unreadable, no vCenter)."""


async def sync(api: KubeAPI, repository: Mapping[str, Any], announce: Announce) -> SyncReport:
    """One catalog pass for ``repository`` (a VMGuardRepository object); raises when the
    repository cannot be read (the caller retries at its next interval)."""
    meta = repository["metadata"]
    ns, name = meta["namespace"], meta["name"]
    allowed = list((repository.get("spec") or {}).get("allowedNamespaces") or ())
    report = SyncReport()
    # Before the archives (see the docstring); the admitted namespaces' too when shared.
    lists = {n: await api.list_objects(PLURAL, n) for n in dict.fromkeys([ns, *allowed])}
    # After the VMGuardBackups: a run that expires between the two listings is named by
    # one of them (expiry clears the point's backup before it deletes the object).
    expired: set[str] = set()
    for where in lists:
        # Page by page, keeping only the archive ids: the namespace's points are
        # never all held at once (150,000 at 5,000 VMs; docs/scale.md).
        async for page in api.list_pages(points.PLURAL, where):
            expired |= expired_runs(page)
    try:
        repo = await access.open_repository(api, dict(repository))
    except RepositoryNotFoundError:
        return report  # nothing written there yet; a missing config is not "every archive gone"
    refs = await asyncio.to_thread(repo.list_archives)
    ids = [r.archive_id for r in refs]
    shared = len(lists) > 1
    for where, backups in lists.items():
        elsewhere = {archive_of(b) for n, bs in lists.items() if n != where for b in bs}
        plan = plan_catalog(
            name,
            ids,
            backups,
            covered_elsewhere=elsewhere - {""},
            repository_namespace=ns if shared else None,
            expired=expired,
        )
        log.debug(
            "catalog %s/%s in %s: %d archives, %d without an object",
            ns,
            name,
            where,
            len(ids),
            len(plan.create),
        )
        if where == ns and plan.create:  # every namespace's plan has the same ones
            await _create(api, repo, repository, plan, lists, report)
        if plan.complete:
            await _complete(api, repo, repository, where, plan, backups, report)
        by_name = {b["metadata"]["name"]: b for b in backups}
        for backup_name in plan.flag:
            obj = by_name[backup_name]
            message = f"archive {archive_of(obj)} is not in repository {name} any more"
            await _condition(api, obj, False, "ArchiveMissing", message)
            announce(obj, "ArchiveMissing", message, True)
            report.flagged.append(backup_name)
        for backup_name in plan.clear:
            obj = by_name[backup_name]
            message = f"archive {archive_of(obj)} is in repository {name} again"
            await _condition(api, obj, True, "ArchiveFound", message)
            announce(obj, "ArchiveFound", message, False)
            report.cleared.append(backup_name)
    return report


async def _condition(
    api: KubeAPI, obj: Mapping[str, Any], ok: bool, reason: str, message: str
) -> None:
    meta, status = obj["metadata"], backup_status(obj)
    conditions = set_condition(status.get("conditions"), CONDITION, ok, reason, message)
    await api.patch_status(PLURAL, meta["namespace"], meta["name"], {"conditions": conditions})


def home_of(manifest: ArchiveManifest, namespace: str, allowed: Sequence[str]) -> str:
    """The namespace a synced VMGuardBackup of ``manifest`` goes to (pure): the origin its
    manifest records when the repository (in ``namespace``) admits it, else ``namespace``."""
    origin = manifest.labels.get(ORIGIN_NAMESPACE, "")
    return origin if origin and origin in allowed else namespace


async def _create(
    api: KubeAPI,
    repo: Repository,
    repository: Mapping[str, Any],
    plan: CatalogPlan,
    lists: Mapping[str, Sequence[Mapping[str, Any]]],
    report: SyncReport,
) -> None:
    ns, name = repository["metadata"]["namespace"], repository["metadata"]["name"]
    allowed = list((repository.get("spec") or {}).get("allowedNamespaces") or ())
    vcenters = sorted(v["metadata"]["name"] for v in await api.list_objects(VCENTER.plural, ns))
    policies: dict[str, list[str]] = {}
    uids = {b["metadata"].get("uid") for backups in lists.values() for b in backups}
    for archive_id in plan.create:
        manifest = await _manifest(repo, archive_id, report)
        if manifest is None:
            continue
        if manifest.labels.get(BACKUP_UID_LABEL) in uids:
            report.skipped.append(f"{archive_id}: its backup is still running")
            continue
        home = home_of(manifest, ns, allowed)
        if home not in policies:
            found = await api.list_objects(POLICY.plural, home)
            policies[home] = sorted(p["metadata"]["name"] for p in found)
        placement = place(manifest, vcenters, policies[home])
        if placement.vcenter is None:
            report.skipped.append(f"{archive_id}: no VCenter to name (create one)")
            continue
        # In another namespace the refs name the repository's (and its VCenter's) here.
        across = ns if home != ns else None
        vc_across = across if placement.vcenter in vcenters else None
        body = build_synced_backup(
            manifest,
            namespace=home,
            repository=name,
            placement=placement,
            repository_namespace=across,
            vcenter_namespace=vc_across,
        )
        try:
            created = await api.create_object(PLURAL, home, body)
        except VmguardError as exc:
            report.skipped.append(f"{archive_id}: {exc}")
            continue
        if not created:  # made by an earlier pass or a peer; a status-less one is completed
            continue
        status = synced_status(manifest, repository=name, vcenter=placement.vcenter)
        if across:
            status["repositoryNamespace"] = across
        if vc_across:
            status["vcenterNamespace"] = vc_across
        # The point first, so that the status patch that completes it says so.
        await _point(api, {**body, "status": status}, report)
        await api.patch_status(PLURAL, home, body["metadata"]["name"], status)
        report.created.append(body["metadata"]["name"])


async def _complete(
    api: KubeAPI,
    repo: Repository,
    repository: Mapping[str, Any],
    where: str,
    plan: CatalogPlan,
    backups: Sequence[Mapping[str, Any]],
    report: SyncReport,
) -> None:
    ns, name = repository["metadata"]["namespace"], repository["metadata"]["name"]
    by_name = {b["metadata"]["name"]: b for b in backups}
    for backup_name, archive_id in plan.complete:
        manifest = await _manifest(repo, archive_id, report)
        if manifest is None:
            continue
        spec = backup_spec(by_name[backup_name])
        vcenter = ref_name(spec.get("vcenterRef")) or ""
        status = synced_status(manifest, repository=name, vcenter=vcenter)
        if where != ns:
            status["repositoryNamespace"] = ns
        vc_ref = spec.get("vcenterRef")
        vc_ns = vc_ref.get("namespace") if vc_ref else None
        if vc_ns and vc_ns != where:
            status["vcenterNamespace"] = vc_ns
        await _point(api, {**by_name[backup_name], "status": status}, report)
        await api.patch_status(PLURAL, where, backup_name, status)
        report.completed.append(backup_name)


async def _point(api: KubeAPI, synced: dict[str, Any], report: SyncReport) -> None:
    """The synced backup's point in its VM's ProtectedVM (created if absent), so that a
    cluster pointed at an old bucket restores by point too; once it is in, the status
    about to be patched says ``PointRecorded=True`` (the start's fold passes over it). A
    VM the manifest does not identify by instance UUID has no ProtectedVM; after a fault
    the backup does not say so, and the fold (controller/kube/migration.py) adds it."""
    try:
        key = points.backup_key(synced)
    except ConfigError:
        return
    status = synced["status"]
    try:
        vm = cast(VMIdentity, status.get("vm") or {})
        await points.add_point(api, key, points.backup_point(synced), vm=vm)
    except VmguardError as exc:
        report.skipped.append(f"point of {synced['metadata']['name']}: {exc}")
        return
    status["conditions"] = points.recorded(status.get("conditions"), key)


async def _manifest(
    repo: Repository, archive_id: str, report: SyncReport
) -> ArchiveManifest | None:
    try:
        manifest: ArchiveManifest = await asyncio.to_thread(repo.load_archive, archive_id)
        return manifest
    except VmguardError as exc:  # corrupt or pruned meanwhile: this archive waits, not all
        report.skipped.append(f"{archive_id}: {exc}")
        return None
