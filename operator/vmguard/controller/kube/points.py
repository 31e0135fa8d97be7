"""Every write to a ProtectedVM: its restore points, newest first (docs/resource-model.md).

A ProtectedVM is one VM's view of the repository in the cluster: the VM, its policy and
``status.points``, one compact entry per restore point. This module is its only writer,
usable from every kind's package (it imports no kind): the VMGuardBackup controller adds
the point of a backup that completed (:func:`add_point`); copies and verification write
into one point's entry (:func:`update_point`), and so does a backup run that expires
(it clears the point's ``backup``); retention takes out the point whose archive it
pruned (:func:`remove_point`). Readers take a namespace's points with :func:`points_of`.

Invariants:

- **One object per VM and namespace, named from what does not change**: the VM's vCenter
  and instance UUID (:func:`protected_vm_name`), never its name (a renamed VM keeps its
  object). A found object whose ``status.vm.instanceUuid`` is another VM's (a hash
  collision, or an object someone made) is refused with a ConfigError, never written.
- **Idempotent by archive id**: adding a point the list holds already changes nothing,
  so a restarted operator, a second replica or a retried step never adds one twice.
- **Conflict-safe read-modify-write**: every write reads the object, changes the list
  in memory and patches the status with the ``resourceVersion`` it read (the apiserver's
  optimistic concurrency); a write that lost the race is redone from a fresh read, up to
  :data:`ATTEMPTS` times, then a RetryableError. Two writers (a backup completing while a
  copy records its state) therefore never lose each other's change.
- **Newest first, bounded**: the list is sorted by point time (then archive id), newest
  first, and cut to :data:`MAX_POINTS`; a point cut off stays in its repository (only
  retention deletes archives) and is logged.
- Derived fields are recomputed on every write from the list alone: ``pointCount``,
  ``lastGoodPoint`` (the newest point no verification found bad), ``policy`` (the newest
  point's) and the ``Ready``/``Protected`` conditions (:func:`derived`, pure).

The operator runs no kopf handler on ProtectedVMs: they cost it no watch (a watch of
5,000 took kopf a minute more to start, docs/scale.md). What changes them is counted
here instead, per namespace (:func:`writes`): every write of this module in this
process. A policy's pass compares the count with its last pass's; a write by another
process (a CLI, a replica before a hand-over) is seen at the pass's next full rebuild.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import hashlib
import logging
import random
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, TypeVar, cast

from vmguard.api import (
    ANNOTATION_ARCHIVE_ID,
    ANNOTATION_VM_NAME,
    API_VERSION,
    GROUP,
    LABEL_POLICY,
    LABEL_VCENTER,
    LABEL_VM,
    VERIFICATION_BAD,
    Condition,
    ProtectedVMStatus,
    RestorePoint,
    RPOState,
    VerificationResult,
    VMIdentity,
    format_time,
    parse_time,
)
from vmguard.api.kinds import PROTECTEDVM
from vmguard.controller.kube.conditions import set_condition, standing_conditions
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.errors import ConfigError, RetryableError

PLURAL = PROTECTEDVM.plural
_WRITES: dict[str, int] = {}
"""ProtectedVM writes of this process by namespace (:func:`writes`)."""
MAX_POINTS = 1000
"""The CRD's ``status.points`` maxItems (vmguard.crds.protectedvm, kept equal by a test)."""
ATTEMPTS = 8
BAD_VERIFICATIONS = frozenset({*VERIFICATION_BAD, "Damaged"})
_HASH = 16  # hex digits of the instance UUID's hash: 64 bits, no collision at any estate
_NAME_MAX = 63

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProtectedVMKey:
    """What names a ProtectedVM: the namespace, the VM's vCenter and its instance UUID."""

    namespace: str
    vcenter: str
    instance_uuid: str

    @property
    def name(self) -> str:
        return protected_vm_name(self.vcenter, self.instance_uuid)


def protected_vm_name(vcenter: str, instance_uuid: str) -> str:
    """``<vCenter>-<16 hex digits of the SHA-256 of the instance UUID>``, at most 63
    characters: a vCenter name too long for that is cut and followed by 8 hex digits of
    its own hash (as VMGuardBackup names cut a policy's)."""
    digest = hashlib.sha256(instance_uuid.lower().encode()).hexdigest()[:_HASH]
    room = _NAME_MAX - 1 - _HASH
    prefix = vcenter
    if len(prefix) > room:
        prefix = f"{vcenter[: room - 9]}-{hashlib.sha256(vcenter.encode()).hexdigest()[:8]}"
    return f"{prefix}-{digest}"


class PointNotFound(LookupError):
    """:func:`update_point` found no point with that archive id (or no ProtectedVM)."""


def _sort_key(point: Mapping[str, Any]) -> tuple[float, str]:
    at = parse_time(point.get("time"))
    return (at.timestamp() if at else 0.0, str(point.get("archiveId", "")))


def newest_first(points: list[RestorePoint]) -> list[RestorePoint]:
    return sorted(points, key=_sort_key, reverse=True)


def derived(status: ProtectedVMStatus, generation: int | None) -> ProtectedVMStatus:
    """``status`` with ``pointCount``, ``lastGoodPoint``, ``policy`` and the conditions
    recomputed from its points (pure)."""
    points = list(status.get("points") or [])
    out = cast(ProtectedVMStatus, dict(status))
    out["pointCount"] = len(points)
    if points and points[0].get("policy"):
        out["policy"] = points[0]["policy"]
    good = next(
        (p for p in points if (p.get("verification") or {}).get("result") not in BAD_VERIFICATIONS),
        None,
    )
    conditions: list[Condition] = list(status.get("conditions") or [])
    if good is not None:
        out["lastGoodPoint"] = {"archiveId": good["archiveId"], "time": good["time"]}
        text = f"last good point {good['archiveId']} at {good['time']}"
        conditions = set_condition(conditions, "Protected", True, "GoodPoint", text, generation)
        conditions = set_condition(conditions, "Ready", True, "GoodPoint", text, generation)
    else:
        out["lastGoodPoint"] = None  # a merge patch removes a key only when told to
        text = "no restore point" if not points else "no point that verification found good"
        reason = "NoPoint" if not points else "NoGoodPoint"
        conditions = set_condition(conditions, "Protected", False, reason, text, generation)
        conditions = set_condition(conditions, "Ready", False, reason, text, generation)
    out["conditions"] = standing_conditions(conditions, generation)
    out["observedGeneration"] = generation
    return out


def with_point(
    status: ProtectedVMStatus, point: RestorePoint, limit: int = MAX_POINTS
) -> tuple[ProtectedVMStatus, list[RestorePoint]] | None:
    """``status`` with ``point`` in its list, newest first and cut to ``limit``, and the
    points cut off; None when a point with that archive id is there already (pure)."""
    points = list(status.get("points") or [])
    if any(p.get("archiveId") == point["archiveId"] for p in points):
        return None
    ordered = newest_first([*points, point])
    out = cast(ProtectedVMStatus, dict(status))
    out["points"] = ordered[:limit]
    return out, ordered[limit:]


def build_protected_vm(key: ProtectedVMKey, vm_name: str) -> dict[str, Any]:
    """The ProtectedVM object as first created (its status is patched after). Pure.

    No owner: the object outlives the VMGuardBackups that made its points and the policy
    they were made under, as the archives do. Labels only for what never changes (the
    vCenter, the VM's instance UUID): the VM's policy can, and is in status."""
    labels = {LABEL_VCENTER: key.vcenter, LABEL_VM: key.instance_uuid.lower()}
    meta: dict[str, Any] = {"name": key.name, "namespace": key.namespace, "labels": labels}
    if vm_name:
        meta["annotations"] = {ANNOTATION_VM_NAME: vm_name}
    return {"apiVersion": API_VERSION, "kind": PROTECTEDVM.kind, "metadata": meta, "spec": {}}


def _check_owner(obj: Mapping[str, Any], key: ProtectedVMKey) -> None:
    meta = obj.get("metadata") or {}
    uuid = ((obj.get("status") or {}).get("vm") or {}).get("instanceUuid") or (
        meta.get("labels") or {}
    ).get(LABEL_VM)
    if uuid and str(uuid).lower() != key.instance_uuid.lower():
        raise ConfigError(
            f"ProtectedVM {key.namespace}/{key.name} belongs to VM {uuid}, "
            f"not {key.instance_uuid}: its points are left alone"
        )


async def _backoff(attempt: int) -> None:
    # A lost race is redone at once the first time; later ones spread the writers out.
    if attempt:
        await asyncio.sleep(random.uniform(0, 0.05 * 2**attempt))


Created = Callable[[], Awaitable[None]] | None
"""Awaited after this writer created a ProtectedVM, before its first status is written
(the embedder's test hook, :mod:`vmguard.hooks`; None: nothing)."""


async def _read_or_create(
    api: KubeAPI, key: ProtectedVMKey, vm_name: str, created: Created = None
) -> dict[str, Any]:
    obj = await api.get_object(PLURAL, key.namespace, key.name)
    if obj is None:
        made = await api.create_object(PLURAL, key.namespace, build_protected_vm(key, vm_name))
        if made:
            _wrote(key.namespace)
        if made and created is not None:  # False: another writer created it first, as good
            await created()
        obj = await api.get_object(PLURAL, key.namespace, key.name)
        if obj is None:
            raise RetryableError(f"ProtectedVM {key.namespace}/{key.name} vanished on creation")
    _check_owner(obj, key)
    return obj


T = TypeVar("T")
Change = Callable[[dict[str, Any] | None], tuple[ProtectedVMStatus | None, T]]
"""What one write makes of the ProtectedVM as read (None: it does not exist): the status
to write (None: write nothing) and what the write returns."""


async def _rewrite(
    api: KubeAPI,
    key: ProtectedVMKey,
    change: Change[T],
    read: Callable[[], Awaitable[dict[str, Any] | None]] | None = None,
) -> T:
    """Read, change, write only if the object is still the one read, and again on a lost
    race (at most :data:`ATTEMPTS` times): every write of this module."""
    for attempt in range(ATTEMPTS):
        await _backoff(attempt)
        if read is not None:
            obj = await read()
        else:
            obj = await api.get_object(PLURAL, key.namespace, key.name)
            if obj is not None:
                _check_owner(obj, key)
        status, result = change(obj)
        if status is None:
            return result
        assert obj is not None
        status = derived(status, obj["metadata"].get("generation"))
        if await _patch(api, key, obj, status):
            return result
    raise RetryableError(f"ProtectedVM {key.namespace}/{key.name}: {ATTEMPTS} writes lost a race")


async def add_point(
    api: KubeAPI,
    key: ProtectedVMKey,
    point: RestorePoint,
    *,
    vm: VMIdentity,
    limit: int = MAX_POINTS,
    created: Created = None,
) -> bool:
    """Put ``point`` into the VM's ProtectedVM (created if absent: then ``created`` is
    awaited before the point is written). True when it was added, False when the list
    held it already. RetryableError after :data:`ATTEMPTS` lost races or on an apiserver
    fault; ConfigError when the object is another VM's."""
    return await add_points(api, key, [point], vm=vm, limit=limit, created=created) == 1


async def add_points(
    api: KubeAPI,
    key: ProtectedVMKey,
    new: list[RestorePoint],
    *,
    vm: VMIdentity,
    limit: int = MAX_POINTS,
    created: Created = None,
) -> int:
    """:func:`add_point` for several points of one VM in one write; how many were added."""

    def add(obj: dict[str, Any] | None) -> tuple[ProtectedVMStatus | None, tuple[int, int]]:
        assert obj is not None
        before = cast(ProtectedVMStatus, obj.get("status") or {})
        status, added, cut = before, 0, 0
        for point in new:
            step = with_point(status, point, limit)
            if step is not None:
                status, dropped = step
                cut += len(dropped)
                added += 1
        if not added:
            return None, (0, 0)
        status["vm"] = {**(before.get("vm") or {}), **vm, "instanceUuid": key.instance_uuid}
        status["vcenter"] = key.vcenter
        return status, (added, cut)

    added, cut = await _rewrite(
        api, key, add, read=lambda: _read_or_create(api, key, vm.get("name", ""), created)
    )
    if cut:
        log.warning(
            "ProtectedVM %s/%s holds %d points at most: %d older ones left the "
            "list (their archives stay in the repository)",
            key.namespace,
            key.name,
            limit,
            cut,
        )
    return added


POINT_RECORDED: Final = "PointRecorded"
"""The condition of a Completed VMGuardBackup: True once its point is in its VM's
ProtectedVM (written in the status patch that makes it Completed, by finalize and catalog
sync, and by the start's fold, controller/kube/migration.py, for the backups that do not
say so); False with ``PointNotRecorded`` when it could not be written."""
RECORDED: Final = "Recorded"


def point_recorded(status: Mapping[str, Any]) -> bool:
    """Whether a VMGuardBackup's status says its point is in its ProtectedVM (pure)."""
    return any(
        c.get("type") == POINT_RECORDED and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )


def recorded(
    conditions: Iterable[Mapping[str, Any]] | None, key: ProtectedVMKey
) -> list[Condition]:
    """``conditions`` with ``PointRecorded=True``, naming the ProtectedVM (pure)."""
    message = f"in ProtectedVM {key.name}"
    return set_condition(conditions, POINT_RECORDED, True, RECORDED, message)


def backup_key(obj: Mapping[str, Any]) -> ProtectedVMKey:
    """Which ProtectedVM a completed VMGuardBackup's point goes into; ConfigError when its
    status names no vCenter or VM instance UUID."""
    status = obj.get("status") or {}
    vcenter, uuid = status.get("vcenter"), (status.get("vm") or {}).get("instanceUuid")
    if not vcenter or not uuid:
        raise ConfigError("the backup's status names no vCenter or VM instance UUID")
    return ProtectedVMKey(str(obj["metadata"]["namespace"]), str(vcenter), str(uuid))


def backup_point(obj: Mapping[str, Any]) -> RestorePoint:
    """A completed VMGuardBackup's entry in its VM's ProtectedVM (pure)."""
    status, spec = obj.get("status") or {}, obj.get("spec") or {}
    meta = obj["metadata"]
    when = (status.get("snapshot") or {}).get("createTime") or status.get("startTime")
    point: RestorePoint = {
        "archiveId": status["archiveId"],
        "repository": status.get("repository") or "",
        "time": when or meta["creationTimestamp"],
        "bytes": int((status.get("totals") or {}).get("bytesUploaded") or 0),
        "backup": meta["name"],
    }
    if status.get("repositoryNamespace"):  # a repository shared from another namespace
        point["repositoryNamespace"] = status["repositoryNamespace"]
    if status.get("modeUsed"):
        point["mode"] = status["modeUsed"]
    policy = (spec.get("policyRef") or {}).get("name")
    if policy:
        point["policy"] = policy
    return point


async def update_point(
    api: KubeAPI,
    key: ProtectedVMKey,
    archive_id: str,
    mutate: Callable[[RestorePoint], RestorePoint | None],
) -> RestorePoint | None:
    """Change the entry of one point: ``mutate`` gets a copy of it and returns the new
    entry (its ``archiveId`` kept), or None to change nothing. It may run more than once
    (once per lost race), so it must be a pure function of the entry it gets. Returns the
    entry as written (None when ``mutate`` changed nothing); PointNotFound when the
    ProtectedVM or the point does not exist."""

    def change(obj: dict[str, Any] | None) -> tuple[ProtectedVMStatus | None, RestorePoint | None]:
        if obj is None:
            raise PointNotFound(f"no ProtectedVM {key.namespace}/{key.name}")
        before = cast(ProtectedVMStatus, obj.get("status") or {})
        points = list(before.get("points") or [])
        index = next((i for i, p in enumerate(points) if p.get("archiveId") == archive_id), None)
        if index is None:
            raise PointNotFound(f"ProtectedVM {key.namespace}/{key.name} has no point {archive_id}")
        entry = mutate(copy.deepcopy(points[index]))
        if entry is None or entry == points[index]:
            return None, None
        entry["archiveId"] = archive_id
        points[index] = entry
        status = cast(ProtectedVMStatus, dict(before))
        status["points"] = newest_first(points)
        return status, entry

    return await _rewrite(api, key, change)


async def remove_point(api: KubeAPI, key: ProtectedVMKey, archive_id: str) -> bool:
    """Take one point out of the list (retention pruned its archive). True when it was
    there; False when it, or the ProtectedVM, was not. The object stays, with no point
    (``Ready=False``, ``NoPoint``) when it was the last."""

    def remove(obj: dict[str, Any] | None) -> tuple[ProtectedVMStatus | None, bool]:
        if obj is None:
            return None, False
        before = cast(ProtectedVMStatus, obj.get("status") or {})
        points = [p for p in before.get("points") or [] if p.get("archiveId") != archive_id]
        if len(points) == len(before.get("points") or []):
            return None, False
        status = cast(ProtectedVMStatus, dict(before))
        status["points"] = points
        return status, True

    return await _rewrite(api, key, remove)


def rpo_of(last: dt.datetime | None, objective: dt.timedelta, now: dt.datetime) -> RPOState:
    """A VM's ``status.rpo`` (pure): ``Within`` until its last good point is ``objective``
    old, then ``Outside``; ``Unknown`` without a point. ``due`` is when it falls out."""
    out: RPOState = {"objectiveSeconds": int(objective.total_seconds())}
    if last is None:
        out["state"] = "Unknown"
        return out
    due = last + objective
    out["due"] = format_time(due)
    out["state"] = "Within" if now < due else "Outside"
    return out


def rpo_condition(
    conditions: Iterable[Mapping[str, Any]] | None, rpo: RPOState, generation: int | None
) -> list[Condition]:
    """``WithinRPO`` from ``rpo`` (its transition time moves only when the state does)."""
    state = rpo.get("state")
    if state == "Within":
        text = f"a good point is due by {rpo.get('due')}"
        return set_condition(conditions, "WithinRPO", True, "Within", text, generation)
    if state == "Outside":
        text = (
            f"the last good point is older than {rpo.get('objectiveSeconds')}s "
            f"(one was due by {rpo.get('due')})"
        )
        return set_condition(conditions, "WithinRPO", False, "Outside", text, generation)
    return set_condition(conditions, "WithinRPO", None, "NoPoint", "no good point", generation)


async def set_rpo(api: KubeAPI, key: ProtectedVMKey, rpo: RPOState) -> bool:
    """Write ``status.rpo`` and ``WithinRPO`` (the policy controller, when they change).
    False when the ProtectedVM does not exist or already says so."""

    def write(obj: dict[str, Any] | None) -> tuple[ProtectedVMStatus | None, bool]:
        if obj is None:
            return None, False
        before = cast(ProtectedVMStatus, obj.get("status") or {})
        if before.get("rpo") == rpo:
            return None, False
        status = cast(ProtectedVMStatus, dict(before))
        status["rpo"] = rpo
        generation = obj["metadata"].get("generation")
        status["conditions"] = rpo_condition(before.get("conditions"), rpo, generation)
        return status, True

    return await _rewrite(api, key, write)


def key_of(obj: Mapping[str, Any]) -> ProtectedVMKey | None:
    """The key of a ProtectedVM read back (None when its status names no VM yet)."""
    status = obj.get("status") or {}
    uuid = (status.get("vm") or {}).get("instanceUuid")
    vcenter = status.get("vcenter")
    namespace = (obj.get("metadata") or {}).get("namespace")
    if not uuid or not vcenter or not namespace:
        return None
    return ProtectedVMKey(str(namespace), str(vcenter), str(uuid))


def points_of(objs: Iterable[Mapping[str, Any]]) -> Iterator[tuple[ProtectedVMKey, RestorePoint]]:
    """Every point of the ProtectedVMs ``objs`` (one LIST of the namespace), with its key."""
    for obj in objs:
        key = key_of(obj)
        if key is None:
            continue
        for point in (obj.get("status") or {}).get("points") or []:
            yield key, point


def choose_point(
    status: Mapping[str, Any],
    archive_id: str | None,
    at: dt.datetime | None,
    latest_clean: bool = False,
) -> RestorePoint | None:
    """The point a restore names (pure): the one with ``archive_id``, the newest taken
    at or before ``at``, or (``latest_clean``) the newest whose verification passed;
    None when there is none."""
    candidates = list(status.get("points") or [])
    if latest_clean:
        clean = [
            p
            for p in candidates
            if (p.get("verification") or {}).get("result") == VerificationResult.PASSED
        ]
        return newest_first(clean)[0] if clean else None
    if archive_id is not None:
        return next((p for p in candidates if p.get("archiveId") == archive_id), None)
    if at is None:
        return None
    timed = [(parse_time(p.get("time")), p) for p in candidates]
    before = [(t, p) for t, p in timed if t is not None and t <= at]
    return max(before, key=lambda tp: (tp[0], str(tp[1].get("archiveId"))), default=(None, None))[1]


class PointRecord(NamedTuple):
    """One point as the policies' passes read it: what their history, fail-safe and
    retention need of it ("" where the point has none)."""

    archive_id: str
    time: str
    policy: str
    repository: str
    backup: str
    copies: tuple[Mapping[str, Any], ...] = ()
    """The point's ``copies`` (kube/copies.py)."""
    verification: Mapping[str, Any] | None = None
    """The point's ``verification`` once it ended (it has a ``time``)."""


@dataclass(frozen=True, slots=True)
class HeldVM:
    """A ProtectedVM read compactly (:func:`held_of`): its key, its RPO state and its
    points as :class:`PointRecord` tuples. A namespace of 5,000 VMs with 30 points each
    holds ≈ 29 MB of JSON in ProtectedVMs; as dicts that is several times more in
    memory, as these ≈ 40 MB (docs/scale.md)."""

    key: ProtectedVMKey
    rpo: Mapping[str, Any] | None
    points: tuple[PointRecord, ...]


def held_of(obj: Mapping[str, Any]) -> HeldVM | None:
    """The compact view of a ProtectedVM read back (None when its status names no VM).
    Policy and repository names repeat across thousands of points: interned."""
    key = key_of(obj)
    if key is None:
        return None
    status = obj.get("status") or {}
    records = tuple(
        PointRecord(
            str(p.get("archiveId") or ""),
            str(p.get("time") or ""),
            sys.intern(str(p.get("policy") or "")),
            sys.intern(str(p.get("repository") or "")),
            str(p.get("backup") or ""),
            tuple(dict(c) for c in p.get("copies") or ()),
            dict(p["verification"]) if (p.get("verification") or {}).get("time") else None,
        )
        for p in status.get("points") or []
    )
    rpo = status.get("rpo")
    key = ProtectedVMKey(sys.intern(key.namespace), sys.intern(key.vcenter), key.instance_uuid)
    return HeldVM(key, dict(rpo) if rpo else None, records)


STAND_IN: Final = f"{GROUP}/point-stand-in"
"""Annotation of a :func:`stand_ins` body: no such object exists in the apiserver."""
_STAND_IN_ANNOTATIONS: Final = {STAND_IN: "true"}


class StandIn(NamedTuple):
    """A point whose backup run expired, as a policy's pass reads it (:func:`expired_points`):
    its VM's key, its record in the shared read (:mod:`.held`) and its time, parsed once.
    What :func:`stand_in_body` makes a whole VMGuardBackup body of, for the readers that
    need one (copies, scheduled verifications); history and retention read it as it is
    (``BackupRecord.from_stand_in``, ``retention.stand_in_candidate``). At 5,000 VMs a
    pass had ≈ 21,000 of them, as bodies ≈ 1 KB each and each time parsed again by every
    reader (docs/scale.md, "The policies' first passes")."""

    key: ProtectedVMKey
    point: PointRecord
    at: dt.datetime | None
    """``parse_time(point.time)``: the stand-in's creation, snapshot and completion."""
    name: str
    """The stand-in body's name: ``point-<archive id>`` (no VMGuardBackup has one)."""
    vm: str
    """The VM's instance UUID in lower case (one string for all of the VM's stand-ins)."""


def expired_points(
    protected_vms: Iterable[HeldVM | Mapping[str, Any]],
    backups: Iterable[Mapping[str, Any]],
    policy: str | None = None,
    newest: bool = False,
) -> list[StandIn]:
    """Each point whose backup run expired (no ``backup`` left) and whose archive no
    VMGuardBackup of ``backups`` names, in the order of the ProtectedVMs and their points
    (pure). With ``policy``, only the points made under it; with ``newest``, only the
    newest such point of each VM (per policy). :func:`stand_ins` says why."""
    named = {
        str((b.get("status") or {}).get("archiveId") or "")
        or str(((b.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_ARCHIVE_ID, ""))
        for b in backups
    }
    out = []
    for held in protected_vms:
        record = held if isinstance(held, HeldVM) else held_of(held)
        if record is None:
            continue
        seen: set[str] = set()
        vm = ""
        for point in record.points:
            if policy is not None and point.policy != policy:
                continue
            if not point.archive_id or point.archive_id in named or point.backup:
                continue
            if newest:
                if point.policy in seen:
                    continue
                seen.add(point.policy)
            vm = vm or record.key.instance_uuid.lower()
            name = f"point-{point.archive_id.lower()}"
            out.append(StandIn(record.key, point, parse_time(point.time), name, vm))
    return out


def stand_in_body(
    stand_in: StandIn, shared: tuple[dict[str, Any], dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The Completed VMGuardBackup body of one :class:`StandIn` (:func:`stand_ins`, pure).
    ``shared``: the ``(labels, spec)`` its VM's other stand-ins of the policy share."""
    key, point = stand_in.key, stand_in.point
    if shared is None:
        shared = _shared_parts(key, point.policy)
    labels, spec = shared
    vm = spec["vm"]
    return {
        "metadata": {
            "name": stand_in.name,
            "namespace": key.namespace,
            "uid": "",
            "labels": labels,
            "annotations": _STAND_IN_ANNOTATIONS,
            "creationTimestamp": point.time or None,
        },
        "spec": spec,
        "status": {
            "phase": "Completed",
            "archiveId": point.archive_id,
            "repository": point.repository,
            "vcenter": key.vcenter,
            "vm": vm,
            "snapshot": {"createTime": point.time or None},
            "completionTime": point.time or None,
            # What the run's status.copies said (kube/copies.py writes both).
            "copies": [dict(c) for c in point.copies],
            # What metrics read of an expired run: its point's verification.
            **(
                {"verification": {"phase": "Completed", **point.verification}}
                if point.verification
                else {}
            ),
        },
    }


def _shared_parts(key: ProtectedVMKey, policy: str) -> tuple[dict[str, Any], dict[str, Any]]:
    labels = {LABEL_VM: key.instance_uuid.lower(), LABEL_VCENTER: key.vcenter}
    spec: dict[str, Any] = {"vm": {"instanceUuid": key.instance_uuid}}
    if policy:
        labels[LABEL_POLICY] = policy
        spec["policyRef"] = {"name": policy}
    return labels, spec


def stand_ins(
    protected_vms: Iterable[HeldVM | Mapping[str, Any]],
    backups: Iterable[Mapping[str, Any]],
    policy: str | None = None,
    newest: bool = False,
) -> list[dict[str, Any]]:
    """A Completed VMGuardBackup body, never created, for each point whose backup run
    expired (no ``backup`` left) and whose archive no VMGuardBackup of ``backups`` names:
    what a policy's history, fail-safe, retention and copy controller read, so that a VM
    whose backup runs expired still counts as backed up, its old points are still pruned,
    and its copies stay known (``status.copies`` from the point's ``copies``) (pure). A point
    whose run a person deleted gets none: catalog sync brings that object back, as it
    always did. Annotated :data:`STAND_IN`; named ``point-<archive id>`` (no
    VMGuardBackup has such a name). With ``policy``, only the points made under that
    policy: a pass builds stand-ins for its own points, not the namespace's. With
    ``newest``, only the newest such point of each VM (per policy; the list is newest
    first): enough for whether and when a VM was last backed up (the fail-safe), not for
    retention.

    The bodies of :func:`expired_points`, one :func:`stand_in_body` each. They are read,
    never changed: the parts that are the same for every point of a VM (labels, spec,
    ``status.vm``) are one object shared by its stand-ins."""
    out = []
    shared: dict[tuple[ProtectedVMKey, str], tuple[dict[str, Any], dict[str, Any]]] = {}
    for stand_in in expired_points(protected_vms, backups, policy, newest):
        which = (stand_in.key, stand_in.point.policy)
        if which not in shared:
            shared[which] = _shared_parts(*which)
        out.append(stand_in_body(stand_in, shared[which]))
    return out


def is_stand_in(obj: Mapping[str, Any]) -> bool:
    return STAND_IN in ((obj.get("metadata") or {}).get("annotations") or {})


def writes(namespace: str) -> int:
    """How many times this process wrote (or created) a ProtectedVM of ``namespace``; a
    count never goes back, so an equal count means no write of ours since."""
    return _WRITES.get(namespace, 0)


def _wrote(namespace: str) -> None:
    _WRITES[namespace] = _WRITES.get(namespace, 0) + 1


async def _patch(
    api: KubeAPI, key: ProtectedVMKey, obj: Mapping[str, Any], status: ProtectedVMStatus
) -> bool:
    """The status, only if the object is still the one read (False: read again)."""
    done = await api.patch_status_if(
        PLURAL,
        key.namespace,
        key.name,
        cast(dict[str, Any], status),
        obj["metadata"]["resourceVersion"],
    )
    if done:
        _wrote(key.namespace)
    return done
