"""The VMGuardRestore kind's kopf handlers: one daemon per VMGuardRestore, the restores'
index of the admission queue, and a restore's end counted in the metrics.

The daemon drives the restore (:func:`.reconcile.drive`) to Completed or Failed and is a
no-op once it is either; it does not run while the restore waits in its vCenter's
admission queue (the queue's start patch brings it back). The steps and their restart
safety are :mod:`.reconcile`'s; the restores' lane is :mod:`.admission`, whose records
``restore_queue`` keeps by (namespace, vCenter).
"""

from __future__ import annotations

from typing import Any

import kopf

from vmguard.api import GROUP, RESTORE_TERMINAL, VERSION
from vmguard.api.kinds import RESTORE
from vmguard.controller.kube.handlers import OperatorMemo, acts, admission_wakeup, announcer
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.workqueue import Queued
from vmguard.controller.restore import admission, reconcile


def _in_queue(body: kopf.Body, **_: Any) -> bool:
    """Resolved and waiting for admission or writing (kopf drops the index value when
    this stops holding)."""
    return admission.queued_of(body) is not None


@kopf.index(GROUP, VERSION, RESTORE.plural, when=_in_queue)
def restore_queue(body: kopf.Body, memo: Any, **_: Any) -> dict[tuple[str, str], Queued] | None:
    """Resolved restores in flight by (namespace, vCenter); a change wakes that loop."""
    record = admission.queued_of(body)
    if record is None:
        return None
    admission_wakeup(memo, record.namespace, record.vcenter).set()
    return {(record.namespace, record.vcenter): record}


def _gone(event: kopf.RawEvent, **_: Any) -> bool:
    return event.get("type") == "DELETED"


@kopf.on.event(GROUP, VERSION, RESTORE.plural, when=_gone)
def restore_gone(body: kopf.Body, memo: Any, **_: Any) -> None:
    """A restore is gone: kopf dropped it from the index first, so its vCenter's loop
    now sees the slot it held free."""
    vc = (body.get("status") or {}).get("vcenter")
    ns = (body.get("metadata") or {}).get("namespace")
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
        KubeAPI(), memo.proxy, namespace or "", name, stopped, announcer(body), timing=memo.timing
    )


@kopf.on.field(GROUP, VERSION, RESTORE.plural, field="status.phase")
async def vmrestore_phase(body: kopf.Body, new: Any, memo: OperatorMemo, **_: Any) -> None:
    """A restore finished: count its outcome (and its failure's reason) once; its
    vCenter's admission loop plans now (a slot is free)."""
    if new in RESTORE_TERMINAL:
        memo.metrics.observe_restore(dict(body))
    vc = (body.get("status") or {}).get("vcenter")
    ns = (body.get("metadata") or {}).get("namespace")
    if vc and ns and new not in (None, "Pending", "Restoring"):
        admission_wakeup(memo, ns, vc).set()
