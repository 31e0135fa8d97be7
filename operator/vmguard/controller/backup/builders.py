"""Pure builder of a VMGuardBackup's proxy Job (one per transfer attempt).

Built from the shared pieces of :mod:`vmguard.controller.kube.proxyjob`; the same rules
hold: plain data in, a manifest out, no API call, clock or randomness, credentials only
as Secret references. The Job's name is ``<vmbackup>-<attempt>``, so an operator that
restarts finds the attempt's Job again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vmguard.api import LABEL_ATTEMPT, LABEL_POLICY, LABEL_VM, LABEL_VMBACKUP, LABEL_VMBACKUP_UID
from vmguard.api.kinds import BACKUP
from vmguard.config import ProxySettings
from vmguard.controller.kube.proxyjob import (
    Pieces,
    bounded_name,
    job_name,
    policy_pod,
    proxy_job,
    proxy_labels,
    repository_env,
    vcenter_env,
)
from vmguard.proxy.contract import TRANSPORT_ENV, VERIFY_RULES_DIR, backup_args, verify_args

COMPONENT_BACKUP = "backup"
COMPONENT_VERIFY = "verify"


def verify_job_name(backup: str, run: int = 1) -> str:
    """``vmv-<backup>-<run>``, at most 63 characters (hashed when longer): one per
    verification run of the backup, so an operator that restarts finds it again."""
    return bounded_name(f"vmv-{backup}", f"-{run}")


def build_verify_job(
    vmbackup: Mapping[str, Any],
    settings: ProxySettings,
    *,
    repository: Mapping[str, Any],
    fsck: bool,
    rules_config_map: str | None,
    namespace: str | None = None,
    run: int = 1,
    active_deadline: int = 4 * 3600,
    ttl: int = 3600,
    fsck_refused: str = "",
) -> dict[str, Any]:
    """The Job verifying ``vmbackup``'s archive: ``vmguard proxy verify``. It reads the
    repository only (no vCenter); the YARA rules are the ConfigMap ``rules_config_map``,
    mounted read-only at the contract's directory. With ``fsck`` the pod is privileged:
    the file-system checks mount each volume with FUSE (docs/verification.md, "Where
    file systems are checked"); the caller asks for it only where the namespace allows
    privileged proxies, and otherwise passes ``fsck_refused`` (why), which the proxy
    reports beside the scan's result. Without ``fsck`` the pod is restricted."""
    meta = vmbackup["metadata"]
    spec = vmbackup.get("spec") or {}
    labels = proxy_labels(
        COMPONENT_VERIFY,
        meta["name"],
        {
            LABEL_VMBACKUP: bounded_name(meta["name"]),
            LABEL_VMBACKUP_UID: meta["uid"],
            LABEL_POLICY: (spec.get("policyRef") or {}).get("name", ""),
        },
    )
    rules: Pieces = ([], [], [])
    if rules_config_map:
        rules = (
            [],
            [{"name": "verify-rules", "configMap": {"name": rules_config_map}}],
            [{"name": "verify-rules", "mountPath": VERIFY_RULES_DIR, "readOnly": True}],
        )
    return proxy_job(
        name=verify_job_name(meta["name"], run),
        namespace=namespace or meta["namespace"],
        owner={**vmbackup, "kind": vmbackup.get("kind", BACKUP.kind)},
        labels=labels,
        settings=settings,
        args=verify_args(
            meta["namespace"],
            meta["name"],
            fsck=fsck,
            yara=rules_config_map is not None,
            fsck_refused=fsck_refused,
        ),
        pieces=[repository_env(repository), rules],
        transport="nbd",  # no vCenter, no hot-add: it reads the repository only
        fuse=fsck,
        active_deadline=active_deadline,
        ttl=ttl,
    )


def backup_labels(vmbackup: Mapping[str, Any]) -> dict[str, str]:
    meta, spec = vmbackup["metadata"], vmbackup.get("spec") or {}
    status = vmbackup.get("status") or {}
    moref = (status.get("vm") or {}).get("moref") or (spec.get("vm") or {}).get("moref") or ""
    return proxy_labels(
        COMPONENT_BACKUP,
        meta["name"],
        {
            LABEL_VMBACKUP: bounded_name(meta["name"]),
            LABEL_VMBACKUP_UID: meta["uid"],
            LABEL_VM: moref,
            LABEL_POLICY: (spec.get("policyRef") or {}).get("name", ""),
        },
    )


def build_backup_job(
    vmbackup: Mapping[str, Any],
    settings: ProxySettings,
    *,
    vcenter: Mapping[str, Any],
    repository: Mapping[str, Any],
    attempt: int,
    transport: str = "auto",
    nodes: Sequence[str] = (),
    active_deadline: int = 4 * 3600,
    ttl: int = 3600,
    policy_proxy: Mapping[str, Any] | None = None,
    namespace: str | None = None,
) -> dict[str, Any]:
    """The proxy Job of one transfer attempt of ``vmbackup``.

    ``namespace``: where the Job runs, when not the backup's own (its vCenter and
    repository referenced in another namespace: the Job runs beside their Secrets and is
    not owned by the backup, see :func:`~vmguard.controller.kube.proxyjob.proxy_job`).

    ``vcenter`` and ``repository`` are the specs of the objects the backup resolved to;
    ``policy_proxy`` its policy's ``spec.proxy``, added to the chart's pod settings
    (:func:`~vmguard.controller.kube.proxyjob.policy_pod`: ProxySettingsNotAllowed when
    the chart does not allow it); ``nodes``, when given, are the only nodes its pod may
    run on (those that can hot-add).
    """
    meta = vmbackup["metadata"]
    labels = backup_labels(vmbackup) | {LABEL_ATTEMPT: str(attempt)}
    return proxy_job(
        name=job_name(meta["name"], attempt),
        namespace=namespace or meta["namespace"],
        owner={**vmbackup, "kind": vmbackup.get("kind", BACKUP.kind)},
        labels=labels,
        settings=settings,
        args=backup_args(meta["namespace"], meta["name"]),
        pieces=[
            vcenter_env(vcenter),
            repository_env(repository),
            ([{"name": TRANSPORT_ENV, "value": transport}], [], []),
        ],
        transport=transport,
        nodes=nodes,
        active_deadline=active_deadline,
        ttl=ttl,
        pod=policy_pod(settings, policy_proxy),
    )
