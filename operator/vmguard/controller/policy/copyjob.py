"""Pure builder of a copy Job: one archive of a VMGuardBackup into one copy target.

Built from the shared pieces of :mod:`vmguard.controller.kube.proxyjob`; the same rules
hold: plain data in, a manifest out, no API call, clock or randomness, credentials only
as Secret references (the source's under the ordinary names, the target's under
:data:`~vmguard.proxy.contract.COPY_TARGET`). The Job is owned by the VMGuardBackup
(deleting the backup stops its copies) and named after the backup, the target and the
attempt (:func:`copy_job_name`), so the copy controller finds it again after a restart.
It reads and writes only S3: no vCenter, no devices, so the pod is restricted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmguard.api import LABEL_COPY_TARGET, LABEL_POLICY, LABEL_VMBACKUP
from vmguard.api.kinds import BACKUP
from vmguard.config import ProxySettings
from vmguard.controller.kube.proxyjob import (
    bounded_name,
    proxy_job,
    proxy_labels,
    repository_env,
)
from vmguard.proxy.contract import COPY_BANDWIDTH_ENV, copy_args

COMPONENT_COPY = "copy"


def copy_job_name(backup: str, target: str, attempt: int) -> str:
    """``vmc-<backup>-<target>-<attempt>``, at most 63 characters (hashed when longer)."""
    return bounded_name(f"vmc-{backup}-{target}", f"-{attempt}")


def build_copy_job(
    vmbackup: Mapping[str, Any],
    settings: ProxySettings,
    *,
    archive_id: str,
    source: Mapping[str, Any],
    target_name: str,
    target: Mapping[str, Any],
    attempt: int,
    target_credentials: Mapping[str, Any] | None = None,
    bandwidth: int | None = None,
    active_deadline: int = 4 * 3600,
    ttl: int = 3600,
) -> dict[str, Any]:
    """The Job copying ``archive_id`` of ``vmbackup`` from ``source`` to ``target`` (the
    two VMGuardRepositories' specs): ``vmguard proxy copy --archive ID``. The target is
    written with ``target_credentials`` (a copy target's own ``credentialsSecretRef``,
    which need no delete right) when given, else with the repository's; ``bandwidth``
    (bytes per second) limits what the Job uploads to it."""
    meta = vmbackup["metadata"]
    spec = vmbackup.get("spec") or {}
    labels = proxy_labels(
        COMPONENT_COPY,
        meta["name"],
        {
            LABEL_VMBACKUP: bounded_name(meta["name"]),
            LABEL_POLICY: (spec.get("policyRef") or {}).get("name", ""),
            LABEL_COPY_TARGET: bounded_name(target_name),
        },
    )
    return proxy_job(
        name=copy_job_name(meta["name"], target_name, attempt),
        namespace=meta["namespace"],
        owner={**vmbackup, "kind": vmbackup.get("kind", BACKUP.kind)},
        labels=labels,
        settings=settings,
        args=copy_args(archive_id),
        pieces=[
            repository_env(source),
            repository_env(
                {**target, "credentialsSecretRef": target_credentials}
                if target_credentials
                else target,
                copy_target=True,
            ),
            (
                [{"name": COPY_BANDWIDTH_ENV, "value": str(bandwidth)}] if bandwidth else [],
                [],
                [],
            ),
        ],
        transport="nbd",  # restricted: a copy touches no device
        active_deadline=active_deadline,
        ttl=ttl,
    )


__all__ = ["COMPONENT_COPY", "build_copy_job", "copy_job_name"]
