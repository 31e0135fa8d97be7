"""The VMGuardRestore kind's kopf handlers: one daemon per VMGuardRestore, and its end
counted in the metrics. A restore whose Job runs in another namespace
(``status.jobNamespace``, docs/tenancy.md) owns it by labels only: deleting the restore
deletes that Job here (a finalizer), as the ownerReference does in its own namespace.

The daemon drives the restore (:func:`.reconcile.drive`) to Completed or Failed and is a
no-op once it is either; the steps and their restart safety are :mod:`.reconcile`'s.
"""

from __future__ import annotations

from typing import Any

import kopf

from vmguard.api import GROUP, LABEL_OWNER_UID, RESTORE_TERMINAL, VERSION
from vmguard.api.kinds import RESTORE
from vmguard.controller.kube.handlers import OperatorMemo, acts, announcer
from vmguard.controller.kube.jobs import JobAPI
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.restore import reconcile


@kopf.daemon(GROUP, VERSION, RESTORE.plural, cancellation_timeout=10.0)
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
    """A restore finished: count its outcome (and its failure's reason) once."""
    if new in RESTORE_TERMINAL:
        memo.metrics.observe_restore(dict(body))


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
