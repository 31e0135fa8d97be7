"""Retention per policy: prune the VMGuardBackups (and their archives) a policy no longer keeps.

Runs in the policy's scheduler (:mod:`.runs`) on every pass, and a completed
backup wakes that scheduler (``backup/handlers.py``), so pruning follows each completed
backup and nothing is missed after a restart. :func:`plan` is pure: for each VM it takes the
policy's ``Completed`` VMGuardBackups that name an archive (``status.archiveId``), dated by
their snapshot (else their start, else their creation), and chooses what to keep with
:func:`vmguard.store.prune.select_retained` in the schedule's time zone. Failed and
in-flight backups are never counted, either way.

Invariants:

- **Archive first, object second.** A pruned backup's archive is retired
  (:func:`~vmguard.store.prune.retire_archive`: the manifest moves to the trash;
  chunks are freed only by GC), then the VMGuardBackup object is deleted. An archive that is
  gone already counts as retired, so a crash between the two steps is finished by the
  next pass. Deleting a VMGuardBackup by hand keeps its archive: only retention deletes
  archives.
- An archive that a kept VMGuardBackup also names (a catalog-synced duplicate) is never
  retired; the pruned object alone goes.
- **Copies first.** A backup whose copies to the policy's copy targets are not made yet
  (``hold``, :func:`.copying.awaiting_copy`) is not pruned until they are (or have
  failed for good): pruning the primary must not lose a point before its copy exists.
- **ProtectedVMs.** The candidates include the points of the policy's VMs whose backup
  run expired (stand-ins, :func:`~vmguard.controller.kube.points.expired_points`, read
  as they are by :func:`stand_in_candidate`, the same candidate their body gave): their
  archives are retired like any other, and their point is taken out of the VM's
  ProtectedVM (:func:`~vmguard.controller.kube.points.remove_point`) instead of an
  object being deleted. A pruned VMGuardBackup's point goes out with it.
- A policy that keeps nothing prunes nothing (``select_retained`` refuses; the CRD
  refuses it first).
- **Object Lock**: an archive whose lock has not ended keeps its VMGuardBackup. It is
  announced once (a warning event), shown by the ``Retention`` condition
  (``RetentionBlocked``) and ``status.retention.blocked``, and not tried again before
  its lock ends.
- Blocking S3 work runs in threads (``asyncio.to_thread``); a repository fault leaves
  everything as it was (``Retention=False``, ``RetentionFailed``) for the next pass.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from vmguard.api import (
    ANNOTATION_VM_NAME,
    LABEL_VM,
    BackupPhase,
    Condition,
    format_time,
    parse_time,
)
from vmguard.api.kinds import BACKUP, REPOSITORY
from vmguard.controller.kube import points
from vmguard.controller.kube.access import open_repository
from vmguard.controller.kube.bodies import backup_spec, backup_status, ref_name
from vmguard.controller.kube.conditions import set_condition
from vmguard.controller.kube.handlers import Announce
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.refs import RefusedReference, get_referenced
from vmguard.controller.kube.schedule import zone
from vmguard.controller.policy.history import history_fields
from vmguard.errors import ConfigError, VmguardError
from vmguard.store.prune import RetentionPolicy, retire_archive, select_retained

CONDITION = "Retention"
LISTED = 10  # events (and names in a message) per pass


@dataclass(frozen=True, slots=True)
class Candidate:
    """A Completed VMGuardBackup of the policy, as retention sees it."""

    name: str
    uid: str
    vm: str
    vcenter: str
    vm_name: str
    archive_id: str
    repository: str
    time: dt.datetime
    stand_in: bool = False
    """A point of a ProtectedVM whose backup run expired (no VMGuardBackup object)."""


@dataclass
class Plan:
    keep: dict[str, list[str]] = field(default_factory=dict)
    """VMGuardBackup name -> why it is kept."""
    prune: list[Candidate] = field(default_factory=list)
    """Oldest first."""
    shared: set[str] = field(default_factory=set)
    """Archive ids a kept VMGuardBackup names too: never retired."""


def retention_policy(spec: Mapping[str, Any]) -> RetentionPolicy:
    r = spec.get("retention") or {}
    return RetentionPolicy(
        keep_last=int(r.get("keepLast") or 0),
        keep_hourly=int(r.get("keepHourly") or 0),
        keep_daily=int(r.get("keepDaily") or 0),
        keep_weekly=int(r.get("keepWeekly") or 0),
        keep_monthly=int(r.get("keepMonthly") or 0),
        keep_yearly=int(r.get("keepYearly") or 0),
    )


def candidate(obj: Mapping[str, Any], policy: Mapping[str, Any]) -> Candidate | None:
    """The backup as a retention candidate; None unless Completed with an archive."""
    meta, spec, status = obj.get("metadata") or {}, backup_spec(obj), backup_status(obj)
    pmeta, pspec = policy["metadata"], policy.get("spec") or {}
    if ref_name(spec.get("policyRef")) != pmeta["name"]:
        return None
    if status.get("phase") != BackupPhase.COMPLETED or not status.get("archiveId"):
        return None
    vm = (meta.get("labels") or {}).get(LABEL_VM) or (spec.get("vm") or {}).get("instanceUuid")
    when = (
        parse_time((status.get("snapshot") or {}).get("createTime"))
        or parse_time(status.get("startTime"))
        or parse_time(meta.get("creationTimestamp"))
    )
    if not vm or when is None:
        return None
    vm_name = (
        (status.get("vm") or {}).get("name")
        or (meta.get("annotations") or {}).get(ANNOTATION_VM_NAME)
        or (spec.get("vm") or {}).get("name")
        or vm
    )
    repository = status.get("repository") or (pspec.get("repositoryRef") or {}).get("name", "")
    across = status.get("repositoryNamespace") or (
        (pspec.get("repositoryRef") or {}).get("namespace") if not status.get("repository") else ""
    )
    if across and across != meta.get("namespace"):  # a platform namespace's (docs/tenancy.md)
        repository = f"{across}/{repository}"
    return Candidate(
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        vm=vm.lower(),
        vcenter=status.get("vcenter") or (pspec.get("vcenterRef") or {}).get("name", ""),
        vm_name=vm_name,
        archive_id=status["archiveId"],
        repository=repository,
        time=when,
        stand_in=points.is_stand_in(obj),
    )


@dataclass(frozen=True, slots=True)
class _PolicyDefaults:
    """What :func:`candidate` reads of the policy for every stand-in: read once a plan."""

    name: str
    repository: str
    across: str
    vcenter: str

    @classmethod
    def of(cls, policy: Mapping[str, Any]) -> _PolicyDefaults:
        pspec = policy.get("spec") or {}
        ref = pspec.get("repositoryRef") or {}
        return cls(
            policy["metadata"]["name"],
            ref.get("name", ""),
            ref.get("namespace") or "",
            (pspec.get("vcenterRef") or {}).get("name", ""),
        )


def pass_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a VMGuardBackup a policy's pass reads when the policy copies nothing
    and verifies nothing on a schedule (pure): those of
    :func:`~.history.history_fields` (the history, the expired points, a verification
    in flight) and those :func:`candidate` reads besides. A pass over a policy's runs
    keeps this of each page: at 5,000 VMs a run is ≈ 9 KB as a dict, mostly its disks,
    conditions and managed fields, and the default policy's pass held 1,250 of them."""
    out = history_fields(obj)
    meta, spec, status = obj.get("metadata") or {}, backup_spec(obj), backup_status(obj)
    meta_out, spec_out, status_out = out["metadata"], out["spec"], out["status"]
    meta_out["uid"] = meta.get("uid", "")
    annotations = meta.get("annotations") or {}
    for key in (ANNOTATION_VM_NAME, points.STAND_IN):
        if key in annotations:
            meta_out["annotations"][key] = annotations[key]
    if "vm" in spec:
        spec_out["vm"]["name"] = spec["vm"].get("name")
    for key in ("startTime", "repository", "repositoryNamespace", "vcenter"):
        status_out[key] = status.get(key)
    status_out["snapshot"] = {"createTime": (status.get("snapshot") or {}).get("createTime")}
    status_out["vm"] = {"name": (status.get("vm") or {}).get("name")}
    return out


def stand_in_candidate(
    stand_in: points.StandIn, policy: Mapping[str, Any] | _PolicyDefaults
) -> Candidate | None:
    """What :func:`candidate` makes of the stand-in's body
    (:func:`~vmguard.controller.kube.points.stand_in_body`), read from the point itself:
    no body is built, the time is parsed once (``StandIn.at``)."""
    key, point = stand_in.key, stand_in.point
    of = policy if isinstance(policy, _PolicyDefaults) else _PolicyDefaults.of(policy)
    # The body names the point's policy only when it has one; its archive is never "".
    if not point.policy or point.policy != of.name or not point.archive_id:
        return None
    if stand_in.at is None:
        return None
    repository = point.repository or of.repository
    # The body carries no repositoryNamespace (candidate() reads the policy's then).
    across = of.across if not point.repository else ""
    if across and across != key.namespace:
        repository = f"{across}/{repository}"
    return Candidate(
        name=stand_in.name,
        uid="",
        vm=stand_in.vm,
        vcenter=key.vcenter or of.vcenter,
        vm_name=stand_in.vm,  # the body names the VM by its instance UUID alone
        archive_id=point.archive_id,
        repository=repository,
        time=stand_in.at,
        stand_in=True,
    )


def plan(
    policy: Mapping[str, Any],
    backups: Iterable[Mapping[str, Any]],
    expired: Iterable[points.StandIn] = (),
) -> Plan:
    """Pure: what the policy keeps and prunes of ``backups`` and of the expired runs'
    points ``expired`` (as their stand-in bodies would be). ConfigError when it keeps
    nothing or its time zone is unknown (then nothing is pruned)."""
    spec = policy.get("spec") or {}
    rules = retention_policy(spec)
    tz: ZoneInfo = zone((spec.get("schedule") or {}).get("timeZone") or "UTC")
    by_vm: dict[str, list[Candidate]] = defaultdict(list)
    for obj in backups:
        c = candidate(obj, policy)
        if c is not None:
            by_vm[c.vm].append(c)
    defaults = _PolicyDefaults.of(policy)
    for stand_in in expired:
        c = stand_in_candidate(stand_in, defaults)
        if c is not None:
            by_vm[c.vm].append(c)
    out = Plan()
    for group in by_vm.values():
        kept = select_retained(((c.name, c.time) for c in group), rules, tz)
        out.keep.update(kept)
        out.prune.extend(c for c in group if c.name not in kept)
    out.prune.sort(key=lambda c: (c.time, c.name))
    kept_archives = {c.archive_id for g in by_vm.values() for c in g if c.name in out.keep}
    out.shared = {c.archive_id for c in out.prune} & kept_archives
    return out


@dataclass
class Retention:
    """One policy's retention across passes (kept by its scheduler)."""

    blocked_until: dict[str, dt.datetime] = field(default_factory=dict)
    """VMGuardBackup name -> end of the Object Lock that keeps its archive."""
    announced: set[str] = field(default_factory=set)
    problem: tuple[str, str] | None = None
    kept: int = 0
    last_prune: tuple[dt.datetime, int] | None = None

    async def apply(
        self,
        api: KubeAPI,
        policy: Mapping[str, Any],
        backups: list[dict[str, Any]],
        announce: Announce,
        now: dt.datetime,
        hold: Collection[str] = (),
        expired: Iterable[points.StandIn] = (),
    ) -> set[str]:
        """One pass over ``backups`` and the expired runs' points ``expired``; returns the
        names of the VMGuardBackups (and stand-ins) deleted. ``hold``: backups not pruned
        yet although retention would (their copies are not made yet)."""
        try:
            chosen = plan(policy, backups, expired)
        except ConfigError as exc:
            self.problem = ("RetentionInvalid", f"{exc}; pruning nothing")
            return set()
        self.kept = len(chosen.keep)
        names = {c.name for c in chosen.prune}
        self.blocked_until = {n: t for n, t in self.blocked_until.items() if n in names}
        due = [
            c
            for c in chosen.prune
            if self.blocked_until.get(c.name, now) <= now and c.name not in hold
        ]
        self.problem = None
        deleted: set[str] = set()
        by_repo: dict[str, list[Candidate]] = defaultdict(list)
        for c in due:
            by_repo[c.repository].append(c)
        namespace = policy["metadata"]["namespace"]
        for repo_name, group in by_repo.items():
            try:
                deleted |= await self._prune(api, namespace, repo_name, group, chosen, announce)
            except VmguardError as exc:
                self.problem = ("RetentionFailed", f"repository {repo_name}: {exc}")
        if len(deleted) > LISTED:
            announce("Pruned", f"pruned {len(deleted)} backups in all", False)
        if deleted:
            self.last_prune = (now, len(deleted))
        return deleted

    async def _prune(
        self,
        api: KubeAPI,
        namespace: str,
        repo_name: str,
        group: list[Candidate],
        chosen: Plan,
        announce: Announce,
    ) -> set[str]:
        where, _, name = repo_name.rpartition("/")  # "<namespace>/<name>" across namespaces
        ref = {"name": name, "namespace": where or namespace}
        try:
            repo_obj = await get_referenced(api, REPOSITORY, namespace, ref)
        except RefusedReference as exc:
            raise ConfigError(str(exc)) from None
        if repo_obj is None:
            raise ConfigError(f"VMGuardRepository {repo_name!r} does not exist")
        repo = await open_repository(api, repo_obj)
        deleted: set[str] = set()
        for c in group:
            until = None
            try:
                if c.archive_id not in chosen.shared:
                    until = await asyncio.to_thread(retire_archive, repo, c.archive_id)
            except ConfigError as exc:  # e.g. not an archive id: this backup only
                self.problem = ("RetentionFailed", f"backup {c.name}: {exc}")
                continue
            if until is not None:
                self.blocked_until[c.name] = until
                if c.name not in self.announced:
                    self.announced.add(c.name)
                    announce(
                        "RetentionBlocked",
                        f"vm {c.vm_name} backup {c.name}: retention would prune it, but "
                        f"Object Lock keeps archive {c.archive_id} until {format_time(until)}",
                        True,
                    )
                continue
            if not c.stand_in:  # an expired run's point has no object to delete
                await api.delete_object(BACKUP.plural, namespace, c.name, c.uid)
            if c.archive_id not in chosen.shared:
                await points.remove_point(api, self._key(namespace, c), c.archive_id)
            deleted.add(c.name)
            self.announced.discard(c.name)
            if len(deleted) <= LISTED:
                announce("Pruned", f"Pruned vm {c.vm_name} backup {c.name}", False)
        return deleted

    @staticmethod
    def _key(namespace: str, c: Candidate) -> points.ProtectedVMKey:
        return points.ProtectedVMKey(namespace, c.vcenter, c.vm)

    def condition(
        self, previous: Iterable[Mapping[str, Any]] | None, generation: int | None
    ) -> list[Condition]:
        if self.problem is not None:
            reason, message = self.problem
            return set_condition(previous, CONDITION, False, reason, message, generation)
        if self.blocked_until:
            blocked = sorted(self.blocked_until)
            shown = ", ".join(blocked[:LISTED])
            more = f" and {len(blocked) - LISTED} more" if len(blocked) > LISTED else ""
            until = format_time(max(self.blocked_until.values()))
            message = (
                f"{len(blocked)} backup(s) kept past retention while Object Lock protects "
                f"their archives (until {until} at the latest): {shown}{more}"
            )
            return set_condition(
                previous, CONDITION, False, "RetentionBlocked", message, generation
            )
        message = f"{self.kept} backup(s) kept"
        if self.last_prune is not None:
            at, count = self.last_prune
            message += f"; last pruned {count} at {format_time(at)}"
        return set_condition(previous, CONDITION, True, "Applied", message, generation)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"blocked": len(self.blocked_until)}
        if self.last_prune is not None:
            out["lastPruneTime"] = format_time(self.last_prune[0])
            out["lastPruned"] = self.last_prune[1]
        return out
