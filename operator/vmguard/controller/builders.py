"""Pure ``build_*()`` functions for the Kubernetes objects the operator creates.

Every object the operator creates is built here from plain inputs, with no API call,
so each is unit-tested without a cluster (tests/controller/test_restore_builders.py).

The proxy pieces are shared by every proxy Job:

- :func:`build_proxy_service_account`, :func:`build_proxy_role`,
  :func:`build_proxy_role_binding`: the ServiceAccount a proxy runs as in a namespace.
  Its Role lets it read vmguard objects and patch their ``status`` — nothing else: no
  Secrets (its credentials arrive as Secret key references in its environment, resolved
  by the kubelet), no Jobs, no other kinds.
- :func:`proxy_env`: how a proxy reaches the repository and vCenter. Secret values are
  never copied into a Job: the Job names the Secret and key (``secretKeyRef``), so no
  secret appears in the Job, the pod spec, an event or a log line.
- :func:`proxy_pod_security`: the restricted pod and container security contexts (no
  privilege, no capabilities, read-only root file system, a scratch ``emptyDir``).
  NBD needs nothing more; hot-add (block devices) is the backup Job's affair.

Names: a Job's name is derived from its owner's name and UID (:func:`restore_job_name`),
so a restarted operator computes the same name and adopts the Job it made before
(AlreadyExists) instead of making a second one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vmguard.config import (
    S3_CA_PEM_ENV,
    VC_CA_PEM_ENV,
    VC_INSECURE_ENV,
    VC_PASSWORD_ENV,
    VC_THUMBPRINT_ENV,
    VC_URL_ENV,
    VC_USER_ENV,
    ProxySettings,
)
from vmguard.store.crypto import KEY_ENV
from vmguard.store.location import CREDENTIAL_ENVS, REPO_ENV

GROUP_VERSION = "vmguard.io/v1alpha1"
PROXY_LOCATOR_ENV = "VMGUARD_PROXY_LOCATOR"
SCRATCH_DIR = "/var/tmp/vmguard"
RESTORE_TARGET_DIR = "/restore-target"
JOB_TTL_SECONDS = 24 * 3600


# -- generic pieces ---------------------------------------------------------------------


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    """The owner reference that makes Kubernetes delete what we made with its owner."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner.get("apiVersion", GROUP_VERSION),
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def proxy_labels(component: str, owner_label: str, owner_name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "vmguard-proxy",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "vmguard",
        owner_label: _label_value(owner_name),
    }


def _label_value(text: str) -> str:
    """A valid label value (≤ 63, alphanumeric ends) carrying as much of ``text`` as fits."""
    value = re.sub(r"[^A-Za-z0-9._-]", "-", text)[:63]
    return value.strip("._-")


def job_name(prefix: str, owner_name: str, owner_uid: str) -> str:
    """``<prefix>-<owner name, cut>-<8 of the UID>``: a DNS label, stable per owner."""
    stem = re.sub(r"[^a-z0-9-]", "-", owner_name.lower())[: 63 - len(prefix) - 10].strip("-")
    return (
        f"{prefix}-{stem}-{owner_uid.replace('-', '')[:8]}" if stem else f"{prefix}-{owner_uid[:8]}"
    )


@dataclass(frozen=True)
class SecretKey:
    name: str
    key: str


@dataclass(frozen=True)
class RepositoryAccess:
    """How a proxy opens the repository: a URL and Secret key references."""

    url: str
    """``s3://host/bucket/prefix`` or ``s3+http://…`` (:mod:`vmguard.store.location`)."""
    access_key: SecretKey
    secret_key: SecretKey
    encryption_key: SecretKey | None = None
    ca_pem: str = ""


@dataclass(frozen=True)
class VCenterAccess:
    """How a proxy reaches vCenter: the SDK URL, trust, and Secret key references."""

    url: str
    username: SecretKey
    password: SecretKey
    ca_pem: str = ""
    thumbprint: str = ""
    insecure: bool = False


def _from_secret(name: str, ref: SecretKey) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def proxy_env(
    settings: ProxySettings, repository: RepositoryAccess, vcenter: VCenterAccess | None
) -> list[dict[str, Any]]:
    """The proxy's environment; every secret as a ``secretKeyRef``, never a value."""
    access_env, secret_env = CREDENTIAL_ENVS[0]
    env: list[dict[str, Any]] = [
        {"name": PROXY_LOCATOR_ENV, "value": settings.locator},
        {"name": "TMPDIR", "value": SCRATCH_DIR},
        {"name": REPO_ENV, "value": repository.url},
        _from_secret(access_env, repository.access_key),
        _from_secret(secret_env, repository.secret_key),
    ]
    if repository.encryption_key is not None:
        env.append(_from_secret(KEY_ENV, repository.encryption_key))
    if repository.ca_pem:
        env.append({"name": S3_CA_PEM_ENV, "value": repository.ca_pem})
    if vcenter is not None:
        env += [
            {"name": VC_URL_ENV, "value": vcenter.url},
            _from_secret(VC_USER_ENV, vcenter.username),
            _from_secret(VC_PASSWORD_ENV, vcenter.password),
        ]
        if vcenter.ca_pem:
            env.append({"name": VC_CA_PEM_ENV, "value": vcenter.ca_pem})
        if vcenter.thumbprint:
            env.append({"name": VC_THUMBPRINT_ENV, "value": vcenter.thumbprint})
        if vcenter.insecure:
            env.append({"name": VC_INSECURE_ENV, "value": "true"})
    return env


def proxy_pod_security() -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod securityContext, container securityContext) of a restricted proxy."""
    pod = {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    return pod, container


# -- the proxy's identity ----------------------------------------------------------------


def build_proxy_service_account(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": namespace, "labels": _managed()},
    }


def build_proxy_role(namespace: str, name: str) -> dict[str, Any]:
    """Read vmguard objects, patch their status: what the status reporter needs."""
    kinds = ["vmbackups", "vmrestores"]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace, "labels": _managed()},
        "rules": [
            {"apiGroups": ["vmguard.io"], "resources": kinds, "verbs": ["get"]},
            {
                "apiGroups": ["vmguard.io"],
                "resources": [f"{k}/status" for k in kinds],
                "verbs": ["get", "patch"],
            },
        ],
    }


def build_proxy_role_binding(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": namespace, "labels": _managed()},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    }


def _managed() -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": "vmguard"}


# -- restore ----------------------------------------------------------------------------


def restore_job_name(restore: dict[str, Any]) -> str:
    meta = restore["metadata"]
    return job_name("vmr", meta["name"], meta["uid"])


def build_restore_job(
    restore: dict[str, Any],
    settings: ProxySettings,
    repository: RepositoryAccess,
    vcenter: VCenterAccess | None,
) -> dict[str, Any]:
    """The proxy Job of one VMRestore: ``vmguard proxy restore --namespace NS --name N``.

    ``vcenter`` is None for a files restore (it reads only the repository). A files
    restore into a PVC mounts the claim at :data:`RESTORE_TARGET_DIR`.
    """
    meta = restore["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    labels = proxy_labels("restore", "vmguard.io/restore", name)
    pod_security, container_security = proxy_pod_security()
    mounts: list[dict[str, Any]] = [{"name": "scratch", "mountPath": SCRATCH_DIR}]
    volumes: list[dict[str, Any]] = [{"name": "scratch", "emptyDir": {}}]
    pvc = ((restore["spec"]["target"].get("files") or {}).get("to") or {}).get("pvc")
    if pvc:
        mounts.append({"name": "target", "mountPath": RESTORE_TARGET_DIR})
        volumes.append({"name": "target", "persistentVolumeClaim": {"claimName": pvc["claimName"]}})
    container = {
        "name": "restore",
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": [*settings.command, "proxy", "restore"],
        "args": ["--namespace", namespace, "--name", name],
        "env": proxy_env(settings, repository, vcenter),
        "securityContext": container_security,
        "volumeMounts": mounts,
        "resources": {
            "requests": {"cpu": "250m", "memory": "256Mi"},
            "limits": {"memory": "1Gi"},
        },
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": restore_job_name(restore),
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [owner_reference({"kind": "VMRestore", **restore})],
        },
        "spec": {
            # A failed restore is reported, not retried: the operator decides (and
            # destroys a half-made VM); a retry would race that cleanup.
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": JOB_TTL_SECONDS,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": settings.service_account,
                    "restartPolicy": "Never",
                    "securityContext": pod_security,
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }
