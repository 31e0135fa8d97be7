"""The VMGuardRepository kind's kopf handlers: two daemons per VMGuardRepository.

- ``repository_watch`` (controller ``repositories``): :class:`.watch.RepositoryWatch` —
  reachability and stats of the repository, its creation from the spec, scheduled GC and
  verify; the metrics of a repository no longer watched here are dropped.
- ``catalog_sync`` (controller ``catalog``): :func:`.catalog.sync` at start, then every
  ``VMGUARD_CATALOG_INTERVAL`` seconds: the namespace's VMGuardBackups agree with the
  repository's archives. A failed pass is logged and tried again next time.
"""

from __future__ import annotations

from typing import Any

import kopf

from vmguard.api import GROUP, VERSION
from vmguard.api.kinds import REPOSITORY
from vmguard.config import RepositorySettings
from vmguard.controller.kube.handlers import OperatorMemo, acts, announcer
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.repository import catalog
from vmguard.controller.repository.watch import RepositoryWatch


@kopf.daemon(GROUP, VERSION, REPOSITORY.plural, cancellation_timeout=10.0)
async def repository_watch(
    body: kopf.Body,
    name: str,
    namespace: str | None,
    memo: OperatorMemo,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Reachability and stats of the repository; its scheduled GC and verify."""
    if not acts(memo, "repositories"):
        return
    metrics, timing = memo.metrics, memo.timing
    interval = timing.interval(RepositorySettings.from_env().interval)
    watch = RepositoryWatch(
        KubeAPI(), body, metrics, announcer(body), logger, interval, timing=timing
    )
    try:
        await watch.loop(stopped)
    finally:
        # Deleted, or paused in favour of a peer: a standby reports nothing stale.
        metrics.forget_repository(namespace or "", name)


@kopf.daemon(GROUP, VERSION, REPOSITORY.plural, id="catalog_sync", cancellation_timeout=10.0)
async def catalog_sync(
    body: kopf.Body,
    memo: OperatorMemo,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Keep the namespace's VMGuardBackups in step with the repository's archives
    (controller/repository/catalog.py): at start, then every
    ``VMGUARD_CATALOG_INTERVAL`` seconds."""
    if not acts(memo, "catalog"):
        return

    def announce(obj: Any, reason: str, message: str, warning: bool) -> None:
        (kopf.warn if warning else kopf.info)(obj, reason=reason, message=message)

    api = KubeAPI()
    timing = memo.timing
    interval = timing.interval(memo.catalog_interval)
    told: set[str] = set()  # say each skipped archive once, not every pass
    while not stopped:
        try:
            report = await catalog.sync(api, dict(body), announce)
        except Exception as exc:  # the repository or the apiserver is away: next time
            logger.warning("catalog sync failed: %s", exc)
        else:
            if report.created or report.completed:
                made = ", ".join(report.created + report.completed)
                logger.info(f"catalog sync: VMGuardBackups recreated from archives: {made}")
            for note in sorted(set(report.skipped) - told):
                logger.warning(f"catalog sync: no VMGuardBackup for archive {note}")
            told = set(report.skipped)
        await timing.wait(interval, stopped)
