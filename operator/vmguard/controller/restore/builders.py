"""Pure builder of a VMGuardRestore's proxy Job.

Built from the shared pieces of :mod:`vmguard.controller.kube.proxyjob`; the same rules
hold: plain data in, a manifest out, no API call, clock or randomness, credentials only
as Secret references. The Job is named after the VMGuardRestore's UID
(:func:`restore_job_name`), so a second attempt finds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmguard.api import LABEL_VMRESTORE
from vmguard.api.kinds import RESTORE
from vmguard.config import ProxySettings
from vmguard.controller.kube.proxyjob import (
    bounded_name,
    proxy_job,
    proxy_labels,
    repository_env,
    vcenter_env,
)
from vmguard.proxy.contract import DISKS_AT_ONCE_ENV, RESTORE_TARGET_DIR, restore_args

COMPONENT_RESTORE = "restore"


def restore_job_name(vmrestore: Mapping[str, Any]) -> str:
    """``vmr-<name>-<8 of the UID>``: stable for this object, new for a recreated one."""
    meta = vmrestore["metadata"]
    return bounded_name(f"vmr-{meta['name']}", f"-{meta['uid'].replace('-', '')[:8]}")


def build_restore_job(
    vmrestore: Mapping[str, Any],
    settings: ProxySettings,
    *,
    repository: Mapping[str, Any],
    vcenter: Mapping[str, Any] | None,
    disks_at_once: int | None = None,
    active_deadline: int = 4 * 3600,
    ttl: int = 24 * 3600,
    namespace: str | None = None,
) -> dict[str, Any]:
    """The proxy Job of one VMGuardRestore: ``vmguard proxy restore --namespace NS --name N``.

    ``repository`` and ``vcenter`` are the specs of the objects the restore resolved to;
    ``vcenter`` is None for a files restore (it reads only the repository). A files
    restore into a PVC mounts the claim at :data:`RESTORE_TARGET_DIR`. Writes go over
    NBD, so the pod is restricted. A failed restore is reported, not retried: the
    operator decides (and destroys a half-made VM); a retry would race that cleanup.
    ``disks_at_once``: how many disks the Job may write in parallel (what its vCenter's
    limits grant, :func:`~vmguard.controller.kube.admission.disks_at_once`).
    ``namespace``: where the Job runs when not the restore's own (the namespace of the
    repository and VCenter it references there; the Job is then found by labels).
    """
    meta = vmrestore["metadata"]
    pieces = [repository_env(repository)]
    if vcenter is not None:
        pieces.append(vcenter_env(vcenter))
    if disks_at_once is not None:
        pieces.append(([{"name": DISKS_AT_ONCE_ENV, "value": str(disks_at_once)}], [], []))
    pvc = ((vmrestore["spec"]["target"].get("files") or {}).get("to") or {}).get("pvc")
    if pvc:
        pieces.append(
            (
                [],
                [{"name": "target", "persistentVolumeClaim": {"claimName": pvc["claimName"]}}],
                [{"name": "target", "mountPath": RESTORE_TARGET_DIR}],
            )
        )
    labels = proxy_labels(
        COMPONENT_RESTORE, meta["name"], {LABEL_VMRESTORE: bounded_name(meta["name"])}
    )
    return proxy_job(
        name=restore_job_name(vmrestore),
        namespace=namespace or meta["namespace"],
        owner={**vmrestore, "kind": vmrestore.get("kind", RESTORE.kind)},
        labels=labels,
        settings=settings,
        args=restore_args(meta["namespace"], meta["name"]),
        pieces=pieces,
        transport="nbd",
        active_deadline=active_deadline,
        ttl=ttl,
    )
