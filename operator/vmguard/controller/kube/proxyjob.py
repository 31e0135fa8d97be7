"""Pure builders of the proxy Job every kind starts, and of the proxy's RBAC.

Every function here takes plain data (a custom object as a dict, the specs of its
VCenter and VMGuardRepository, :class:`~vmguard.config.ProxySettings`) and returns a
manifest as a dict: no API calls, no clock, no randomness, so they are unit-tested
without a cluster (tests/controller/test_builders.py) and the same input always gives
the same object — which is what makes a Job found again by name after a restart.

Pieces a proxy Job is made of, shared by the backup Job
(:mod:`vmguard.controller.backup.builders`) and the restore Job
(:mod:`vmguard.controller.restore.builders`):
:func:`job_name`, :func:`proxy_labels`, :func:`owner_reference`,
:func:`vcenter_env` and :func:`repository_env` (connection settings as environment,
credentials only as ``secretKeyRef`` or read-only Secret volumes — never a literal
value), :func:`security_context` (restricted unless hot-add or FUSE needs devices) and
:func:`pod_placement` and :func:`policy_pod` (the chart's pod settings, and what a
policy adds within the chart's allow-list), :func:`proxy_job` (the Job around one
proxy container). :func:`build_proxy_rbac` is
the ServiceAccount, Role and RoleBinding a proxy runs as: read its own kinds, patch
their status, nothing else.

A Job runs in its object's namespace and is owned by it (ownerReference: deleting the
object deletes the Job), unless the object references its VCenter and VMGuardRepository
in another namespace (docs/tenancy.md): then the Job runs there, beside the Secrets it is
given, carries :data:`~vmguard.api.LABEL_OWNER_NAMESPACE` and
:data:`~vmguard.api.LABEL_OWNER_UID` instead of an ownerReference (none can cross
namespaces), and :func:`build_reporting_rbac` lets the proxy's ServiceAccount of that
namespace read and report to the object in the object's namespace.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from vmguard.api import API_VERSION, GROUP, LABEL_OWNER_NAMESPACE, LABEL_OWNER_UID
from vmguard.api.kinds import BACKUP, RESTORE
from vmguard.config import ProxySettings
from vmguard.errors import ProxySettingsNotAllowed
from vmguard.proxy.contract import (
    KEY_FILE_ENV,
    LOCATOR_ENV,
    REPO_ENV,
    S3_ACCESS_ENV,
    S3_CA_BUNDLE_ENV,
    S3_SECRET_ENV,
    VC_CA_BUNDLE_ENV,
    VC_CA_FILE_ENV,
    VC_INSECURE_ENV,
    VC_PASSWORD_ENV,
    VC_THUMBPRINT_ENV,
    VC_URL_ENV,
    VC_USER_ENV,
    VDDK_PATH_ENV,
    copy_target_name,
)

SECRETS_DIR = "/var/run/secrets/vmguard"
SCRATCH_DIR = "/var/tmp/vmguard"  # TMPDIR: CA files, NBD sockets; the root fs is read-only
KEY_VOLUME, VC_CA_VOLUME = "repository-key", "vcenter-ca"
COPY_KEY_VOLUME = "copy-target-key"
PROXY_UID = 65532  # "nonroot" in distroless images

DEFAULT_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "500m", "memory": "512Mi"},
    "limits": {"memory": "2Gi"},
}

MAX_NAME = 63  # Job names become the job-name label of their pods


def bounded_name(name: str, suffix: str = "", limit: int = MAX_NAME) -> str:
    """``name + suffix`` when it fits in ``limit``; else truncated plus a hash of ``name``.

    Deterministic and distinct for distinct names, and a valid label value: starts and
    ends with an alphanumeric character.
    """
    if len(name) + len(suffix) <= limit:
        return name + suffix
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - 1
    return f"{name[:keep].rstrip('-.')}-{digest}{suffix}"


def job_name(owner_name: str, attempt: int) -> str:
    """``<owner>-<attempt>``, at most 63 characters: found again by name after a restart."""
    return bounded_name(owner_name, f"-{attempt}")


def owner_reference(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The object as the controlling owner: deleting it deletes what it owns."""
    meta = obj["metadata"]
    return {
        "apiVersion": obj.get("apiVersion", API_VERSION),
        "kind": obj["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def proxy_labels(component: str, owner_name: str, extra: Mapping[str, str]) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": "vmguard-proxy",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/instance": bounded_name(owner_name),
        "app.kubernetes.io/part-of": "vmguard",
        "app.kubernetes.io/managed-by": "vmguard-operator",
    }
    labels.update({k: v for k, v in extra.items() if v})
    return labels


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _secret_volume(volume: str, secret: str, key: str, path: str) -> dict[str, Any]:
    return {
        "name": volume,
        "secret": {
            "secretName": secret,
            "items": [{"key": key, "path": path}],
            "defaultMode": 0o400,
        },
    }


Pieces = tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]
"""(env, volumes, volumeMounts)."""


def vcenter_env(spec: Mapping[str, Any]) -> Pieces:
    """How the proxy reaches vCenter: URL and trust as values, credentials by reference."""
    creds = spec["credentialsSecretRef"]
    env: list[dict[str, Any]] = [
        {"name": VC_URL_ENV, "value": f"https://{spec['host']}:{spec.get('port', 443)}/sdk"},
        _secret_env(VC_USER_ENV, creds["name"], creds.get("usernameKey", "username")),
        _secret_env(VC_PASSWORD_ENV, creds["name"], creds.get("passwordKey", "password")),
    ]
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    tls = spec.get("tls") or {}
    if tls.get("caBundle"):  # a CA certificate is public: a value is fine
        env.append({"name": VC_CA_BUNDLE_ENV, "value": tls["caBundle"]})
    elif tls.get("caSecretRef"):
        ref = tls["caSecretRef"]
        volumes.append(
            _secret_volume(VC_CA_VOLUME, ref["name"], ref.get("key", "ca.crt"), "ca.crt")
        )
        mounts.append(
            {"name": VC_CA_VOLUME, "mountPath": f"{SECRETS_DIR}/{VC_CA_VOLUME}", "readOnly": True}
        )
        env.append({"name": VC_CA_FILE_ENV, "value": f"{SECRETS_DIR}/{VC_CA_VOLUME}/ca.crt"})
    elif tls.get("thumbprint"):
        env.append({"name": VC_THUMBPRINT_ENV, "value": tls["thumbprint"]})
    elif tls.get("insecureSkipVerify"):
        env.append({"name": VC_INSECURE_ENV, "value": "true"})
    return env, volumes, mounts


def repository_url(spec: Mapping[str, Any]) -> str:
    """The repository's location as :mod:`vmguard.store.location` reads it (no secrets)."""
    s3 = spec["s3"]
    scheme = "s3+http" if s3.get("insecure") else "s3"
    url = f"{scheme}://{s3['endpoint']}/{s3['bucket']}"
    if s3.get("prefix"):
        url += "/" + s3["prefix"].strip("/")
    if s3.get("region"):
        url += f"?region={s3['region']}"
    return url


def repository_env(spec: Mapping[str, Any], *, copy_target: bool = False) -> Pieces:
    """Where the repository is, its S3 credentials by reference, its key as a file.
    ``copy_target``: as a copy Job's target (the variables of
    :data:`~vmguard.proxy.contract.COPY_TARGET`, its key in a volume of its own)."""
    name = copy_target_name if copy_target else str
    key_volume = COPY_KEY_VOLUME if copy_target else KEY_VOLUME
    creds = spec["credentialsSecretRef"]
    env: list[dict[str, Any]] = [
        {"name": name(REPO_ENV), "value": repository_url(spec)},
        _secret_env(name(S3_ACCESS_ENV), creds["name"], creds.get("accessKeyIDKey", "accessKeyID")),
        _secret_env(
            name(S3_SECRET_ENV),
            creds["name"],
            creds.get("secretAccessKeyKey", "secretAccessKey"),
        ),
    ]
    if (spec.get("s3") or {}).get("caBundle"):
        env.append({"name": name(S3_CA_BUNDLE_ENV), "value": spec["s3"]["caBundle"]})
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    key_ref = (spec.get("encryption") or {}).get("keySecretRef")
    if key_ref:
        volumes.append(
            _secret_volume(key_volume, key_ref["name"], key_ref.get("key", "key"), "key")
        )
        mounts.append(
            {"name": key_volume, "mountPath": f"{SECRETS_DIR}/{key_volume}", "readOnly": True}
        )
        env.append({"name": name(KEY_FILE_ENV), "value": f"{SECRETS_DIR}/{key_volume}/key"})
    return env, volumes, mounts


def may_hotadd(transport: str) -> bool:
    return transport in ("hotadd", "auto")


def security_context(
    transport: str, *, fuse: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod, container) security contexts.

    Restricted (Pod Security "restricted" profile) when the proxy reads over NBD. Hot-add
    attaches the snapshot's disks to the proxy's own VM, and reading them needs the block
    devices; a verification that checks file systems (``fuse``) mounts each volume with
    FUSE, which needs ``/dev/fuse`` and the ``mount`` system call. Kubernetes grants a
    device only to a privileged container (a hostPath of ``/dev/fuse`` is not in the
    container's device cgroup), and ``/dev/fuse`` is root's on some nodes: those
    containers run privileged, as root, and nothing else does. ``transport`` is what
    :mod:`vmguard.controller.backup.transport` chose: ``auto`` or ``hotadd`` only in a
    namespace whose labels allow privileged proxies; ``fuse`` likewise
    (:func:`vmguard.controller.kube.podsecurity.fsck_refused`).
    """
    if may_hotadd(transport) or fuse:
        return {"seccompProfile": {"type": "RuntimeDefault"}}, {
            "privileged": True,
            "runAsUser": 0,
            "runAsNonRoot": False,
        }
    # fsGroup: a kubelet writes Secret volumes owned by root with the Secret's mode (0400
    # here) unless the pod names a group to own them: without it the proxy could not read
    # its repository key or vCenter CA (seen in the lab's container mode).
    pod = {
        "runAsNonRoot": True,
        "runAsUser": PROXY_UID,
        "runAsGroup": PROXY_UID,
        "fsGroup": PROXY_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    return pod, container


def pod_placement(settings: ProxySettings) -> dict[str, Any]:
    """The chart's settings of every proxy pod (``proxy.*`` values, read into
    :class:`~vmguard.config.ProxySettings`): the Secrets its image is pulled with, where
    it may run, its priority. Only the keys that are set; copies, never the settings'
    own objects."""
    pod: dict[str, Any] = {}
    if settings.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in settings.image_pull_secrets]
    if settings.node_selector:
        pod["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        pod["tolerations"] = copy.deepcopy(list(settings.tolerations))
    if settings.affinity:
        pod["affinity"] = copy.deepcopy(settings.affinity)
    if settings.priority_class:
        pod["priorityClassName"] = settings.priority_class
    return pod


def _allowed(what: str, values: Iterable[str], allowed: frozenset[str], chart_key: str) -> None:
    refused = sorted(set(values) - allowed)
    if refused:
        listed = ", ".join(sorted(allowed)) or "none"
        raise ProxySettingsNotAllowed(
            f"spec.proxy.{what}: {', '.join(refused)} is not allowed for policies "
            f"(the chart's proxy.policyMay.{chart_key}: {listed})"
        )


def policy_pod(settings: ProxySettings, policy_proxy: Mapping[str, Any] | None) -> dict[str, Any]:
    """:func:`pod_placement` with what a policy's ``spec.proxy`` adds: node selector
    entries (the policy's value wins), tolerations (appended), its priority class
    (replaces the chart's) — each only when the chart's allow-list
    (``settings.policy_may``) names it, else :class:`ProxySettingsNotAllowed` naming
    the value. The chart's ValidatingAdmissionPolicy refuses the same at admission; this
    is the check for policies admitted before the list changed or without it."""
    pod = pod_placement(settings)
    proxy = policy_proxy or {}
    may = settings.policy_may
    klass = proxy.get("priorityClassName")
    selector = dict(proxy.get("nodeSelector") or {})
    tolerations = [dict(t) for t in proxy.get("tolerations") or []]
    if klass:
        _allowed("priorityClassName", [klass], may.priority_class_names, "priorityClassNames")
        pod["priorityClassName"] = klass
    _allowed("nodeSelector", selector, may.node_selector_keys, "nodeSelectorKeys")
    # A toleration without a key tolerates every taint: never on a policy's say-so.
    keys = [t.get("key") or "(every taint)" for t in tolerations]
    _allowed("tolerations", keys, may.toleration_keys, "tolerationKeys")
    if selector:
        pod["nodeSelector"] = {**pod.get("nodeSelector", {}), **selector}
    if tolerations:
        pod["tolerations"] = [*pod.get("tolerations", []), *tolerations]
    return pod


def proxy_job(
    *,
    name: str,
    namespace: str,
    owner: Mapping[str, Any],
    labels: Mapping[str, str],
    settings: ProxySettings,
    args: Sequence[str],
    pieces: Sequence[Pieces],
    transport: str,
    active_deadline: int,
    ttl: int,
    resources: Mapping[str, Any] | None = None,
    pod: Mapping[str, Any] | None = None,
    nodes: Sequence[str] = (),
    fuse: bool = False,
) -> dict[str, Any]:
    """A batch/v1 Job running one proxy container; the operator does the retries.

    ``pod``: where the pod runs and with what priority and pull Secrets (default:
    :func:`pod_placement`, the chart's); ``resources``: the container's (default: the
    chart's ``settings.resources``, else :data:`DEFAULT_RESOURCES`); ``nodes``: the pod
    runs only on these, in addition to ``pod``'s own placement (:func:`only_on_nodes`);
    ``fuse``: the container may mount FUSE file systems (privileged: :func:`security_context`)."""
    env: list[dict[str, Any]] = [
        {"name": LOCATOR_ENV, "value": settings.locator},
        {"name": "TMPDIR", "value": SCRATCH_DIR},
    ]
    volumes: list[dict[str, Any]] = [{"name": "scratch", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "scratch", "mountPath": SCRATCH_DIR}]
    for e, v, m in pieces:
        env += e
        volumes += v
        mounts += m
    if settings.vddk_volume is not None:  # production NBD: nbdkit's VDDK plugin, user-supplied
        volumes.append({"name": "vddk", **settings.vddk_volume})
        mounts.append({"name": "vddk", "mountPath": settings.vddk_path, "readOnly": True})
        env.append({"name": VDDK_PATH_ENV, "value": settings.vddk_path})
    pod_security, container_security = security_context(transport, fuse=fuse)
    container: dict[str, Any] = {
        "name": "proxy",
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(settings.command),
        "args": list(args),
        "env": env,
        "resources": copy.deepcopy(dict(resources or settings.resources or DEFAULT_RESOURCES)),
        "securityContext": container_security,
    }
    container["volumeMounts"] = mounts
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": settings.service_account,
        "automountServiceAccountToken": True,
        "securityContext": pod_security,
        "containers": [container],
        "volumes": volumes,
    }
    pod_spec.update(copy.deepcopy(dict(pod if pod is not None else pod_placement(settings))))
    if nodes:
        pod_spec["affinity"] = only_on_nodes(pod_spec.get("affinity"), nodes)
    job_labels = dict(labels)
    job_meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": job_labels}
    owner_meta = owner["metadata"]
    if owner_meta.get("namespace", namespace) == namespace:
        job_meta["ownerReferences"] = [owner_reference(owner)]
    else:  # no ownerReference crosses namespaces: found and removed by these labels
        job_labels[LABEL_OWNER_NAMESPACE] = owner_meta["namespace"]
        job_labels[LABEL_OWNER_UID] = owner_meta["uid"]
    template_meta: dict[str, Any] = {"labels": dict(job_labels)}
    if settings.pod_annotations:
        template_meta["annotations"] = dict(settings.pod_annotations)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": job_meta,
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": max(1, int(active_deadline)),
            "ttlSecondsAfterFinished": int(ttl),
            "template": {"metadata": template_meta, "spec": pod_spec},
        },
    }


# -- the proxy's identity ----------------------------------------------------------------

PROXY_ROLE = "vmguard-proxy"


def build_proxy_rbac(namespace: str, service_account: str) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding of the proxy Jobs in ``namespace``.

    A proxy reads the object it works for and patches its status; nothing else — no
    Secrets (its credentials come in as environment and files), no wildcards.
    """
    labels = {"app.kubernetes.io/name": "vmguard-proxy", "app.kubernetes.io/part-of": "vmguard"}
    meta = {"namespace": namespace, "labels": labels}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": service_account, **meta},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": PROXY_ROLE, **meta},
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": [BACKUP.plural, RESTORE.plural],
                    "verbs": ["get"],
                },
                {
                    "apiGroups": [GROUP],
                    "resources": ["vmguardbackups/status", "vmguardrestores/status"],
                    "verbs": ["patch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": PROXY_ROLE, **meta},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": PROXY_ROLE,
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
            ],
        },
    ]


REPORTING_ROLE = "vmguard-proxy-report"


def build_reporting_rbac(
    namespace: str, job_namespace: str, service_account: str
) -> list[dict[str, Any]]:
    """Role and RoleBinding in ``namespace`` (a tenant's) that let the proxy's
    ServiceAccount of ``job_namespace`` (the platform namespace its Jobs run in) do what
    a proxy does to the object it works for: get VMGuardBackups and VMGuardRestores,
    patch their status. No ServiceAccount is made in ``namespace``: no pod there runs as
    a proxy. The RoleBinding is named after ``job_namespace``, one per namespace that
    runs Jobs for this one."""
    labels = {"app.kubernetes.io/name": "vmguard-proxy", "app.kubernetes.io/part-of": "vmguard"}
    meta = {"namespace": namespace, "labels": labels}
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": REPORTING_ROLE, **meta},
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": [BACKUP.plural, RESTORE.plural],
                    "verbs": ["get"],
                },
                {
                    "apiGroups": [GROUP],
                    "resources": [f"{BACKUP.plural}/status", f"{RESTORE.plural}/status"],
                    "verbs": ["patch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": bounded_name(f"{REPORTING_ROLE}-{job_namespace}"), **meta},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": REPORTING_ROLE,
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": service_account, "namespace": job_namespace}
            ],
        },
    ]


def only_on_nodes(affinity: Mapping[str, Any] | None, nodes: Sequence[str]) -> dict[str, Any]:
    """``affinity`` (the chart's or a policy's) narrowed to ``nodes`` by name. A required
    node affinity's terms are ORed and a term's requirements ANDed, so the node names are
    added to every existing term (or make the only one): the pod still meets the placement
    it had, on one of ``nodes``."""
    out = copy.deepcopy(dict(affinity or {}))
    node_affinity = out.setdefault("nodeAffinity", {})
    required = node_affinity.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    by_name = {"key": "metadata.name", "operator": "In", "values": list(nodes)}
    terms = required.get("nodeSelectorTerms") or [{}]
    required["nodeSelectorTerms"] = [
        {**term, "matchFields": [*term.get("matchFields", []), by_name]} for term in terms
    ]
    return out
