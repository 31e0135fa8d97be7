"""The VMGuardRestore kind's kopf handlers: one daemon per VMGuardRestore, and its end
counted in the metrics.

The daemon drives the restore (:func:`.reconcile.drive`) to Completed or Failed and is a
no-op once it is either; the steps and their restart safety are :mod:`.reconcile`'s.
"""

from __future__ import annotations

from typing import Any

import kopf

from vmguard.api import GROUP, RESTORE_TERMINAL, VERSION
from vmguard.api.kinds import RESTORE
from vmguard.controller.kube.handlers import OperatorMemo, acts, announcer
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
