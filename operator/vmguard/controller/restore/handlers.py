"""The VMGuardRestore kind's kopf handlers: one daemon per VMGuardRestore, the restores'
index of the admission queue, and a restore's end counted in the metrics. A restore
whose Job runs in another namespace (``status.jobNamespace``, docs/tenancy.md) owns it
by labels only: deleting the restore deletes that Job here (a finalizer), as the
ownerReference does in its own namespace.

The daemon drives the restore (:func:`.reconcile.drive`) to Completed or Failed and is a
no-op once it is either; it does not run while the restore waits in its vCenter's
admission queue (the queue's start patch brings it back). The steps and their restart
safety are :mod:`.reconcile`'s; the restores' lane is :mod:`.admission`, whose records
``restore_queue`` keeps by (namespace, vCenter).
"""

from __future__ import annotations

from typing import Any

import kopf

from vmguard.api import GROUP, LABEL_OWNER_UID, RESTORE_TERMINAL, VERSION
from vmguard.api.kinds import RESTORE
from vmguard.controller.kube.handlers import OperatorMemo, acts, admission_wakeup, announcer
from vmguard.controller.kube.jobs import JobAPI
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.workqueue import Queued
from vmguard.controller.restore import admission, reconcile


def _in_queue(body: kopf.Body, **_: Any) -> bool:
    """Resolved and waiting for admission or writing (kopf drops the index value when
    this stops holding)."""
    return admission.queued_of(body) is not None


@kopf.index(GROUP, VERSION, RESTORE.plural, when=_in_queue)
async def restore_queue(
    body: kopf.Body, memo: Any, **_: Any
) -> dict[tuple[str, str], Queued] | None:
    """Resolved restores in flight by (the VCenter's namespace, vCenter); a change wakes
    that loop."""
    record = admission.queued_of(body)
    if record is None:
        return None
    vc_ns = _vcenter_namespace(body) or record.namespace
    admission_wakeup(memo, vc_ns, record.vcenter).set()
    return {(vc_ns, record.vcenter): record}


def _vcenter_namespace(body: Any) -> str | None:
    """The namespace of the restore's VCenter: its loop queues it (docs/tenancy.md)."""
    status, meta = body.get("status") or {}, body.get("metadata") or {}
    return status.get("vcenterNamespace") or meta.get("namespace")


def _gone(event: kopf.RawEvent, **_: Any) -> bool:
    return event.get("type") == "DELETED"


@kopf.on.event(GROUP, VERSION, RESTORE.plural, when=_gone)
async def restore_gone(body: kopf.Body, memo: Any, **_: Any) -> None:
    """A restore is gone: kopf dropped it from the index first, so its vCenter's loop
    now sees the slot it held free."""
    vc = (body.get("status") or {}).get("vcenter")
    ns = _vcenter_namespace(body)
    if vc and ns:
        admission_wakeup(memo, ns, vc).set()


def _not_waiting(status: kopf.Status, **_: Any) -> bool:
    return not admission.waiting(status)


@kopf.daemon(GROUP, VERSION, RESTORE.plural, when=_not_waiting, cancellation_timeout=10.0)
async def restore_driver(
    body: kopf.Body,
    name: str,
    namespace: str | None,
    memo: OperatorMemo,
    stopped: kopf.DaemonStopped,
    **_: Any,
) -> None:
    """Drive one VMGuardRestore to Completed or Failed (a no-op once it is either)."""
    if not acts(memo, "restores"):
        return
    await reconcile.drive(
        KubeAPI(),
        memo.proxy,
        namespace or "",
        name,
        stopped,
        announcer(body),
        timing=memo.timing,
        hooks=memo.hooks,
    )


@kopf.on.field(GROUP, VERSION, RESTORE.plural, field="status.phase")
async def vmrestore_phase(body: kopf.Body, new: Any, memo: OperatorMemo, **_: Any) -> None:
    """A restore finished: count its outcome (and its failure's reason) once; its
    vCenter's admission loop plans now (a slot is free)."""
    if new in RESTORE_TERMINAL:
        memo.metrics.observe_restore(dict(body))
    vc = (body.get("status") or {}).get("vcenter")
    ns = _vcenter_namespace(body)
    if vc and ns and new not in (None, "Pending", "Restoring"):
        admission_wakeup(memo, ns, vc).set()


def _job_elsewhere(status: kopf.Status, **_: Any) -> bool:
    return bool(status.get("jobNamespace"))


@kopf.on.delete(GROUP, VERSION, RESTORE.plural, when=_job_elsewhere)
async def vmrestore_deleted(body: kopf.Body, memo: OperatorMemo, **_: Any) -> None:
    """Deleted: its Job in the other namespace goes too (no ownerReference can say so)."""
    if not acts(memo, "restores"):
        return
    uid = body["metadata"]["uid"]
    try:
        await JobAPI().delete_jobs(body["status"]["jobNamespace"], f"{LABEL_OWNER_UID}={uid}")
    except Exception as exc:
        raise kopf.TemporaryError(f"deleting the restore Job failed: {exc}", delay=15) from exc
