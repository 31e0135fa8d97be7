"""Objects of the kinds renamed in v1alpha1, moved once to their new names at start.

Three kinds collided with names Velero and KubeVirt install (docs/resource-model.md,
"Names"): ``BackupRepository``, ``VMBackup`` and ``VMRestore`` became
``VMGuardRepository``, ``VMGuardBackup`` and ``VMGuardRestore``. A cluster that ran an
older operator still holds objects of the old kinds; :func:`migrate` runs before the
operator starts watching (so no handler sees a half-copied object) and, per object:

1. creates the object of the new kind with the same name, namespace, labels,
   annotations, spec and finalizers, and the annotation :data:`ANNOTATION_MIGRATED_FROM`
   (``<old kind>/<old uid>``); owner references to a migrated object are pointed at
   its copy (repositories go first, then backups, then restores);
2. writes the old status onto it. Work that was under way cannot continue — its proxy
   Job belongs to the old object — so a backup or restore that was not finished ends
   ``Failed`` with reason :data:`MIGRATED` (the policy's next run backs the VM up
   again; the snapshot it left is removed by the orphan sweep, which reads the old UID
   from the annotation);
3. once every kind is copied, removes the old object's finalizers and deletes it,
   dependents before their owners (restores, backups, then repositories: an old
   repository deleted first would have the garbage collector mark its backups deleted
   before they were copied). Nothing of ours handles the old kinds any more, so no
   deletion handler runs: an archive is never deleted by a migration. The proxy Job of
   an unfinished one is garbage-collected with it.

An old object already being deleted (by a person, or with its namespace) is not
copied: its finalizers are removed so that the deletion completes (no handler of the
old kind is left to do it); a backup it stopped leaves its snapshot to the orphan
sweep's one-day limit for unknown snapshots.

Idempotent and safe with several replicas: an object that exists under the new kind
with this annotation counts as copied; one of the same name that is not a copy is left
alone, and the old one kept, with an error in the log. A cluster without the old CRDs
costs one 404 per kind. The old CRDs are left for the administrator to delete
(docs/upgrading.md).

**The fold** (:func:`fold_points`) is the upgrade to ProtectedVMs (docs/upgrading.md):
the point of every Completed VMGuardBackup (synced ones included) ends up in its VM's
ProtectedVM. Decision (issue #13): a backup says when its point was recorded — the
condition ``PointRecorded=True``, written in the same status patch that makes it
Completed (finalize, ``backup/reconcile.py``; catalog sync, ``repository/catalog.py``;
an expiring run is deleted once its point is in) — and only a Completed backup that does
not say so is folded (:func:`unrecorded`): an older operator's, one copied from a
renamed kind, one whose point could not be written (``PointRecorded=False``). No LIST of
its own: the backups' event handler (``backup/handlers.py``, ``vmbackup_phase``) sees
every backup as kopf's first listing passes it and at every change, keeps the
unrecorded ones (a check of two status fields; not a kopf index, whose ``when=`` filter
would make kopf build its keyword arguments once more per object and event) and wakes
the operator's fold loop (run by an operator with the backups controller), which reads
only their
ProtectedVMs (a GET each, or a paged LIST when many), writes the missing points, and
marks each backup. A start after the upgrade therefore reads no ProtectedVM and lists
nothing for the fold (it used to LIST every backup and every ProtectedVM before kopf
started: ≈ 4 s and ≈ 150 MiB at 5,000 VMs, docs/scale.md), and a backup an older
replica completes during a rolling upgrade is folded when it is seen, not at the next
start. Idempotent (points are unique by archive id; the marking is patched onto the
status it read) and safe with several replicas (only the acting one folds; two would
add nothing twice). A fault is logged, never fatal; the backup stays unmarked and is
folded at the next start, or by its expiry. A backup that says ``PointRecorded=True``
is not looked at again: a ProtectedVM deleted by hand is not rebuilt from its runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatch
from typing import Any, cast

from kubernetes import client

from vmguard.api import (
    API_VERSION,
    BACKUP_TERMINAL,
    GROUP,
    RESTORE_TERMINAL,
    VERSION,
    BackupPhase,
    RestorePoint,
    VMIdentity,
    format_time,
)
from vmguard.api.kinds import BACKUP, LEGACY, PROTECTEDVM, REPOSITORY, RESTORE, KindNames
from vmguard.controller.kube import points
from vmguard.controller.kube.conditions import lifecycle_conditions, set_condition
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.errors import ConfigError, RetryableError, VmguardError

ANNOTATION_MIGRATED_FROM = f"{GROUP}/migrated-from"
"""``<old kind>/<old uid>`` on an object copied from a renamed kind."""
MIGRATED = "Migrated"
ORDER = (REPOSITORY, BACKUP, RESTORE)
TERMINAL = {BACKUP: BACKUP_TERMINAL, RESTORE: RESTORE_TERMINAL}

logger = logging.getLogger(__name__)


@dataclass
class Migration:
    """What :func:`migrate` did: ``<new plural>/<namespace>/<name>`` per outcome."""

    copied: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    """Copies of unfinished backups and restores, now Failed with reason Migrated."""
    refused: list[str] = field(default_factory=list)
    """Old objects left in place: a different object holds the new name."""
    released: list[str] = field(default_factory=list)
    """Old objects that were being deleted: their finalizers removed, nothing copied."""


def migrated_uid(obj: dict[str, Any]) -> str | None:
    """The UID of the old object ``obj`` was copied from, if it was."""
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_MIGRATED_FROM)
    return value.rsplit("/", 1)[-1] if value else None


def migrate(api_client: client.ApiClient, namespaces: list[str] | None, now: datetime) -> Migration:
    """Move every object of a renamed kind in ``namespaces`` (None: the whole cluster);
    ``now`` (the operator's clock) stamps what it stops."""
    custom = client.CustomObjectsApi(api_client)
    done = Migration()
    uids: dict[str, tuple[KindNames, str]] = {}  # old uid -> (new kind, new uid)
    # Old objects are deleted once every kind is copied, dependents first: an old
    # repository deleted before its backups were listed would have them marked deleted
    # by the garbage collector, and a backup being deleted is released, not copied.
    copied: list[tuple[KindNames, str, str, str]] = []
    for new in ORDER:
        old = LEGACY[new]
        for obj in _list(custom, old, namespaces):
            try:
                _migrate_one(custom, new, old, obj, uids, done, format_time(now), copied)
            except Exception as exc:  # one object must not keep the operator from starting
                meta = obj.get("metadata") or {}
                logger.error(
                    "migrating %s %s/%s failed (%s); retried at the next start",
                    old.kind, meta.get("namespace"), meta.get("name"), exc,
                )  # fmt: skip
    for old, ns, name, uid in reversed(copied):
        _remove(custom, old, ns, name, uid)
    for what, items in (
        ("copied", done.copied),
        ("stopped", done.stopped),
        ("released (were being deleted)", done.released),
    ):
        if items:
            logger.info("migration from the renamed kinds: %s %s", what, ", ".join(items))
    return done


def _list(
    custom: client.CustomObjectsApi, old: KindNames, namespaces: list[str] | None
) -> list[dict[str, Any]]:
    try:
        if namespaces is None or any(_is_pattern(ns) for ns in namespaces):
            found = custom.list_cluster_custom_object(GROUP, VERSION, old.plural)
            items = list(found.get("items", []))
            if namespaces is None:
                return items
            return [o for o in items if _watched(o["metadata"]["namespace"], namespaces)]
        out: list[dict[str, Any]] = []
        for ns in namespaces:
            found = custom.list_namespaced_custom_object(GROUP, VERSION, ns, old.plural)
            out.extend(found.get("items", []))
        return out
    except client.ApiException as exc:
        if exc.status == 404:  # the old CRD is not installed: nothing to migrate
            return []
        logger.warning(
            "cannot list %s.%s to migrate them (%s %s); objects of the old kind %s stay "
            "unmigrated until the operator may read them",
            old.plural,
            GROUP,
            exc.status,
            exc.reason,
            old.kind,
        )
        return []


LIST_ABOVE = 100
"""ProtectedVMs one fold reads by a GET each; above, the namespaces' paged LIST (a page
of 500 costs about what a hundred GETs cost the apiserver, docs/scale.md)."""
ATTEMPTS = 4
"""Reads of a backup whose marking lost a race to another writer of its status."""


@dataclass(frozen=True)
class Unrecorded:
    """A Completed VMGuardBackup that does not say ``PointRecorded=True``: what the fold
    keeps of it (its point, and what its marking is patched onto)."""

    namespace: str
    name: str
    uid: str
    key: points.ProtectedVMKey
    vm: VMIdentity
    point: RestorePoint


def unrecorded(body: Mapping[str, Any]) -> Unrecorded | None:
    """The backup as the fold keeps it, if it is Completed, names its archive and VM, and
    does not say its point was recorded (pure: run on every event of every backup)."""
    status = body.get("status") or {}
    if status.get("phase") != BackupPhase.COMPLETED or not status.get("archiveId"):
        return None
    if points.point_recorded(status):
        return None
    try:
        key = points.backup_key(body)
    except ConfigError:  # no VM to name: no ProtectedVM (finalize said PointRecorded=False)
        return None
    meta = body.get("metadata") or {}
    return Unrecorded(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        key=key,
        vm=cast(VMIdentity, dict(status.get("vm") or {})),
        point=points.backup_point(body),
    )


async def fold_points(api: KubeAPI, found: Iterable[Unrecorded]) -> int:
    """Put the point of each of ``found`` into its VM's ProtectedVM where it is not yet,
    then mark each backup ``PointRecorded=True``: the upgrade to ProtectedVMs
    (docs/upgrading.md). Reads only those backups' ProtectedVMs: a GET each, or the
    paged LIST of their namespaces when more than :data:`LIST_ABOVE`; one write per
    ProtectedVM that lacks points. Returns the points added. A fault is logged and its
    backups are left unmarked (the next start, or the run's expiry, folds them)."""
    by_key: dict[points.ProtectedVMKey, list[Unrecorded]] = {}
    for backup in found:
        by_key.setdefault(backup.key, []).append(backup)
    if not by_key:
        return 0
    known: set[tuple[points.ProtectedVMKey, str]] = set()
    if len(by_key) > LIST_ABOVE:
        wanted = {(k, b.point["archiveId"]) for k, group in by_key.items() for b in group}
        try:
            for ns in sorted({k.namespace for k in by_key}):
                # Only the points the backups name are kept of each page: an estate's
                # ProtectedVMs are tens of MB of JSON, 150,000 points (docs/scale.md).
                async for page in api.list_pages(PROTECTEDVM.plural, ns):
                    for k, p in points.points_of(page):
                        if (k, str(p.get("archiveId") or "")) in wanted:
                            known.add((k, str(p["archiveId"])))
        except (VmguardError, client.ApiException) as exc:
            logger.warning("folding backups into ProtectedVMs: listing them failed (%s)", exc)
            known.clear()  # each is read by its GET instead
    added = written = 0
    for key, group in by_key.items():
        new = [b.point for b in group if (key, b.point["archiveId"]) not in known]
        try:
            if new:
                now = await points.add_points(api, key, new, vm=group[-1].vm)
                added += now
                written += now > 0
            for backup in group:
                await _mark(api, backup)
        except (VmguardError, client.ApiException) as exc:  # never keeps the operator down
            logger.error("folding backups into ProtectedVM %s/%s: %s", key.namespace, key.name, exc)
    if added:
        logger.info("folded %d completed backup(s) into %d ProtectedVM(s)", added, written)
    return added


async def _mark(api: KubeAPI, backup: Unrecorded) -> None:
    """``PointRecorded=True`` on the backup, onto the status it was read with (its
    conditions are one list: a merge patch replaces it whole, so another writer's
    condition is never dropped); nothing when it is gone or another object."""
    for _ in range(ATTEMPTS):
        obj = await api.get_object(BACKUP.plural, backup.namespace, backup.name)
        if obj is None or obj["metadata"]["uid"] != backup.uid:
            return
        status = obj.get("status") or {}
        if points.point_recorded(status):
            return
        conditions = points.recorded(status.get("conditions"), backup.key)
        version = str(obj["metadata"]["resourceVersion"])
        body = {"conditions": conditions}
        if await api.patch_status_if(BACKUP.plural, backup.namespace, backup.name, body, version):
            return
    raise RetryableError(f"VMGuardBackup {backup.namespace}/{backup.name}: marking lost races")


def _is_pattern(namespace: str) -> bool:
    """kopf's ``--namespace`` takes globs such as ``team-*`` and exclusions ``!team-x``."""
    return any(ch in namespace for ch in "*?[!")


def _watched(namespace: str, patterns: list[str]) -> bool:
    include = [p for p in patterns if not p.startswith("!")]
    exclude = [p[1:] for p in patterns if p.startswith("!")]
    return (not include or any(fnmatch(namespace, p) for p in include)) and not any(
        fnmatch(namespace, p) for p in exclude
    )


def _migrate_one(
    custom: client.CustomObjectsApi,
    new: KindNames,
    old: KindNames,
    obj: dict[str, Any],
    uids: dict[str, tuple[KindNames, str]],
    done: Migration,
    at: str,
    copied: list[tuple[KindNames, str, str, str]],
) -> None:
    meta = obj["metadata"]
    ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
    where = f"{new.plural}/{ns}/{name}"
    if meta.get("deletionTimestamp"):
        # Being deleted (by a person, or with its namespace): nothing to keep. Only our
        # finalizer holds it, and no handler of the old kind will ever remove it.
        _remove(custom, old, ns, name, uid)
        done.released.append(f"{old.plural}/{ns}/{name}")
        return
    marker = f"{old.kind}/{uid}"
    body = {
        "apiVersion": API_VERSION,
        "kind": new.kind,
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": dict(meta.get("labels") or {}),
            "annotations": {**(meta.get("annotations") or {}), ANNOTATION_MIGRATED_FROM: marker},
            "finalizers": list(meta.get("finalizers") or []),
            "ownerReferences": [_owner(ref, uids) for ref in meta.get("ownerReferences") or []],
        },
        "spec": obj.get("spec") or {},
    }
    try:
        copy = custom.create_namespaced_custom_object(GROUP, VERSION, ns, new.plural, body)
    except client.ApiException as exc:
        if exc.status != 409:
            logger.error("migrating %s %s/%s: %s %s", old.kind, ns, name, exc.status, exc.reason)
            return
        copy = custom.get_namespaced_custom_object(GROUP, VERSION, ns, new.plural, name)
        if migrated_uid(copy) != uid:
            logger.error(
                "%s %s/%s exists and is not a copy of %s %s/%s: the old object is kept; "
                "rename one of them and restart the operator",
                new.kind, ns, name, old.kind, ns, name,
            )  # fmt: skip
            done.refused.append(where)
            return
    status, stopped = _status(new, obj, at)
    # Also on a copy made by an earlier start that stopped before writing its status.
    if status and not copy.get("status"):
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, ns, new.plural, name, {"status": status}
        )
    (done.stopped if stopped else done.copied).append(where)
    uids[uid] = (new, copy["metadata"]["uid"])
    copied.append((old, ns, name, uid))  # removed by migrate() once every kind is copied


def _owner(ref: dict[str, Any], uids: dict[str, tuple[KindNames, str]]) -> dict[str, Any]:
    """An owner reference, pointed at the copy when its owner was migrated (so that
    deleting the old owner does not garbage-collect the copy)."""
    if ref.get("uid") not in uids:
        return dict(ref)
    new, new_uid = uids[ref["uid"]]
    return {**ref, "apiVersion": API_VERSION, "kind": new.kind, "uid": new_uid}


def _status(new: KindNames, obj: dict[str, Any], at: str) -> tuple[dict[str, Any], bool]:
    """The copy's status, and whether it stopped work that was under way."""
    status = dict(obj.get("status") or {})
    terminal = TERMINAL.get(new)
    if terminal is None or status.get("phase") in terminal:
        return status, False
    message = (
        f"was {status.get('phase') or 'Pending'} when the operator was upgraded and the "
        f"kind renamed; its proxy Job went with the old object. Create a new one "
        f"(a policy's next run does so for backups)."
    )
    generation = (obj.get("metadata") or {}).get("generation")
    failure = {"reason": MIGRATED, "message": message, "retryable": False}
    conditions = set_condition(
        status.get("conditions"), "Ready", False, MIGRATED, message, generation, at
    )
    status.update(
        phase="Failed",
        error=failure,
        completionTime=at,
        conditions=lifecycle_conditions(
            conditions, "Failed", terminal=True, failure=failure, generation=generation, at=at
        ),
    )
    return status, True


def _remove(custom: client.CustomObjectsApi, old: KindNames, ns: str, name: str, uid: str) -> None:
    """Delete the old object without running any deletion logic: finalizers first."""
    try:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, old.plural, name, {"metadata": {"finalizers": None}}
        )
        custom.delete_namespaced_custom_object(
            GROUP, VERSION, ns, old.plural, name, body={"preconditions": {"uid": uid}}
        )
    except client.ApiException as exc:
        if exc.status not in (404, 409):  # gone, or a new object of that name
            logger.error("removing %s %s/%s after copying it: %s", old.kind, ns, name, exc.status)
