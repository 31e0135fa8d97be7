"""The VMGuardRestore kind's kopf handler: one daemon per VMGuardRestore.

It drives the restore (:func:`.reconcile.drive`) to Completed or Failed and is a no-op
once it is either; the steps and their restart safety are :mod:`.reconcile`'s.
"""

from __future__ import annotations

from typing import Any

import kopf

from vmguard.api import GROUP, VERSION
from vmguard.api.kinds import RESTORE
from vmguard.controller.kube.handlers import acts
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.restore import reconcile


@kopf.daemon(GROUP, VERSION, RESTORE.plural, cancellation_timeout=10.0)
async def restore_driver(
    body: kopf.Body,
    name: str,
    namespace: str | None,
    memo: Any,
    stopped: kopf.DaemonStopped,
    **_: Any,
) -> None:
    """Drive one VMGuardRestore to Completed or Failed (a no-op once it is either)."""
    if not acts(memo, "restores"):
        return

    def announce(reason: str, message: str, warning: bool) -> None:
        (kopf.warn if warning else kopf.info)(body, reason=reason, message=message)

    await reconcile.drive(
        KubeAPI(), memo.proxy, namespace or "", name, stopped, announce, timing=memo.timing
    )
