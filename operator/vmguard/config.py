"""Process-wide settings, loaded once from the environment into one typed object.

Nothing here is mutable after load; callers receive the settings object explicitly.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmguard import __version__


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


@dataclass(frozen=True)
class Settings:
    """Settings shared by the CLI, the operator and the proxy."""

    cache_dir: Path
    log_level: str

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            cache_dir=Path(os.environ.get("VMGUARD_CACHE_DIR") or _cache_home() / "vmguard"),
            log_level=os.environ.get("VMGUARD_LOG_LEVEL", "INFO"),
        )


def _argv(raw: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if not raw:
        return default
    value = json.loads(raw)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError("VMGUARD_PROXY_COMMAND must be a JSON list of strings")
    return tuple(value)


DEFAULT_VDDK_PATH = "/opt/vmware-vix-disklib-distrib"


def _annotations(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError("VMGUARD_PROXY_POD_ANNOTATIONS must be a JSON object of strings")
    return value


def _volume(raw: str | None) -> dict[str, Any] | None:
    if not raw:
        return None
    value = json.loads(raw)
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError(
            "VMGUARD_PROXY_VDDK_VOLUME must be one Kubernetes volume source as a JSON object, "
            'e.g. {"persistentVolumeClaim": {"claimName": "vddk"}}'
        )
    return value


def _json(name: str, kind: type) -> Any:
    """The JSON value of the environment variable ``name`` (None when unset or empty);
    ValueError naming the variable when it is not JSON of ``kind``."""
    raw = os.environ.get(name)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        raise ValueError(f"{name} is not JSON") from None
    if not isinstance(value, kind):
        raise ValueError(f"{name} must be a JSON {'list' if kind is list else 'object'}")
    return value


def _pull_secrets(name: str) -> tuple[str, ...]:
    """Image pull Secrets as Kubernetes writes them, ``[{"name": "regcred"}]``."""
    value = _json(name, list) or []
    if not all(isinstance(v, dict) and isinstance(v.get("name"), str) for v in value):
        raise ValueError(f'{name} must be a JSON list of {{"name": <Secret>}}')
    return tuple(v["name"] for v in value)


def _node_selector(name: str) -> dict[str, str]:
    value = _json(name, dict) or {}
    if not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"{name} must be a JSON object of strings")
    return value


def _tolerations(name: str) -> tuple[dict[str, Any], ...]:
    value = _json(name, list) or []
    if not all(isinstance(v, dict) for v in value):
        raise ValueError(f"{name} must be a JSON list of tolerations (objects)")
    return tuple(value)


@dataclass(frozen=True)
class ProxyAllowance:
    """What a VMProtectionPolicy may set under ``spec.proxy`` (the chart's
    ``proxy.policyMay``): priority classes, node label keys it may select on, taint keys
    it may tolerate. Empty: nothing."""

    priority_class_names: frozenset[str] = frozenset()
    node_selector_keys: frozenset[str] = frozenset()
    toleration_keys: frozenset[str] = frozenset()

    @classmethod
    def from_json(cls, name: str) -> ProxyAllowance:
        value = _json(name, dict) or {}
        lists = ("priorityClassNames", "nodeSelectorKeys", "tolerationKeys")
        unknown = set(value) - set(lists)
        if unknown or not all(
            isinstance(value.get(k, []), list) and all(isinstance(v, str) for v in value.get(k, []))
            for k in lists
        ):
            raise ValueError(f"{name} must be a JSON object of string lists: {', '.join(lists)}")
        return cls(*(frozenset(value.get(k, [])) for k in lists))


@dataclass(frozen=True)
class ProxySettings:
    """How the operator runs its proxy Jobs (the data plane).

    ``command`` is the argv prefix that starts ``vmguard`` in the proxy image (the lab
    runs this checkout's interpreter, or its entry module with test hooks, instead).
    ``locator`` says how the proxy reaches disks: ``vddk`` (nbdkit's VDDK plugin against
    vCenter, production) or ``SCHEME:ARG`` for a locator an installed distribution
    registers (:func:`vmguard.vm.access.open_locator`; the lab's is
    ``lab:<simulator control URL>``).

    VMware's VDDK cannot ship in our image: the user supplies it as a volume.
    ``vddk_volume`` is that volume's source as Kubernetes writes it (e.g.
    ``{"persistentVolumeClaim": {"claimName": "vddk"}}``; None: no VDDK volume) and
    ``vddk_path`` where the proxy mounts it (nbdkit's ``libdir``).
    ``pod_annotations`` go on every proxy pod (e.g. a service mesh's opt-out).

    Where proxy pods run and what they may use, the platform team's choice (the chart's
    ``proxy.*`` values), applied to every proxy Job as Kubernetes writes them:
    ``image_pull_secrets`` (Secret names), ``node_selector``, ``tolerations``,
    ``affinity``, ``priority_class`` (a PriorityClass name; "" for the cluster's
    default) and ``resources`` (the container's requests and limits; None: the
    builders' default). ``policy_may``: what a policy may add to those
    (:class:`ProxyAllowance`).
    ``start_timeout``: seconds a proxy Job's pod may stay unable to run for a transient
    reason (image pull failure, unschedulable, crash loop) before its VMGuardBackup or
    VMGuardRestore fails with that reason; a pod refused at admission fails it at once
    (:mod:`vmguard.controller.kube.proxypods`).
    """

    image: str
    command: tuple[str, ...]
    locator: str
    service_account: str
    image_pull_policy: str
    vddk_volume: dict[str, Any] | None = None
    vddk_path: str = "/opt/vmware-vix-disklib-distrib"  # = DEFAULT_VDDK_PATH
    pod_annotations: Mapping[str, str] = field(default_factory=dict)
    start_timeout: float = 600.0
    image_pull_secrets: tuple[str, ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    affinity: dict[str, Any] | None = None
    priority_class: str = ""
    resources: dict[str, Any] | None = None
    policy_may: ProxyAllowance = ProxyAllowance()
    restore_disks_at_once: int = 2
    """Disks of one VM a restore Job writes in parallel, at most (and never more than its
    vCenter's limits allow: ``controller.kube.admission.disks_at_once``)."""

    @classmethod
    def from_env(cls) -> ProxySettings:
        return cls(
            image=os.environ.get("VMGUARD_PROXY_IMAGE", f"vmguard-proxy:{__version__}"),
            command=_argv(os.environ.get("VMGUARD_PROXY_COMMAND"), ("vmguard",)),
            locator=os.environ.get("VMGUARD_PROXY_LOCATOR", "vddk"),
            service_account=os.environ.get("VMGUARD_PROXY_SERVICE_ACCOUNT", "vmguard-proxy"),
            image_pull_policy=os.environ.get("VMGUARD_PROXY_IMAGE_PULL_POLICY", "IfNotPresent"),
            vddk_volume=_volume(os.environ.get("VMGUARD_PROXY_VDDK_VOLUME")),
            vddk_path=os.environ.get(VDDK_PATH_ENV, DEFAULT_VDDK_PATH),
            pod_annotations=_annotations(os.environ.get("VMGUARD_PROXY_POD_ANNOTATIONS")),
            start_timeout=float(os.environ.get("VMGUARD_PROXY_START_TIMEOUT") or 600.0),
            image_pull_secrets=_pull_secrets("VMGUARD_PROXY_IMAGE_PULL_SECRETS"),
            node_selector=_node_selector("VMGUARD_PROXY_NODE_SELECTOR"),
            tolerations=_tolerations("VMGUARD_PROXY_TOLERATIONS"),
            affinity=_json("VMGUARD_PROXY_AFFINITY", dict),
            priority_class=os.environ.get("VMGUARD_PROXY_PRIORITY_CLASS", ""),
            resources=_json("VMGUARD_PROXY_RESOURCES", dict),
            policy_may=ProxyAllowance.from_json("VMGUARD_PROXY_POLICY_MAY"),
            restore_disks_at_once=max(1, int(os.environ.get("VMGUARD_RESTORE_DISKS_AT_ONCE") or 2)),
        )


@dataclass(frozen=True)
class BackupSettings:
    """How the VMGuardBackup controller retries and how long it lets a backup run.

    ``max_attempts`` transfer attempts (proxy Jobs) per backup, ``retry_backoff`` seconds
    before the second (doubling after), ``deadline`` seconds from the start to the end of
    the last attempt, ``job_deadline`` seconds one proxy Job may run
    (``activeDeadlineSeconds``), ``job_ttl`` seconds a finished Job is kept, ``poll``
    seconds between looks at a running Job.
    """

    max_attempts: int = 3
    retry_backoff: float = 10.0
    deadline: float = 6 * 3600.0
    job_deadline: int = 4 * 3600
    job_ttl: int = 3600
    poll: float = 2.0

    @classmethod
    def from_env(cls) -> BackupSettings:
        env = os.environ
        return cls(
            max_attempts=int(env.get("VMGUARD_BACKUP_MAX_ATTEMPTS") or 3),
            retry_backoff=float(env.get("VMGUARD_BACKUP_RETRY_BACKOFF") or 10.0),
            deadline=float(env.get("VMGUARD_BACKUP_DEADLINE") or 6 * 3600.0),
            job_deadline=int(env.get("VMGUARD_BACKUP_JOB_DEADLINE") or 4 * 3600),
            job_ttl=int(env.get("VMGUARD_BACKUP_JOB_TTL") or 3600),
            poll=float(env.get("VMGUARD_BACKUP_POLL") or 2.0),
        )


CATALOG_INTERVAL_ENV = "VMGUARD_CATALOG_INTERVAL"
CATALOG_INTERVAL_DEFAULT = 300.0


def catalog_interval() -> float:
    """Seconds between two catalog sync passes of a VMGuardRepository (at least 1);
    ValueError naming the variable when it is not a number."""
    raw = os.environ.get(CATALOG_INTERVAL_ENV) or ""
    try:
        return max(float(raw), 1.0) if raw else CATALOG_INTERVAL_DEFAULT
    except ValueError:
        raise ValueError(f"{CATALOG_INTERVAL_ENV}={raw!r} is not a number of seconds") from None


@dataclass(frozen=True)
class RepositorySettings:
    """How often the VMGuardRepository controller looks at each repository (reachability
    and stats; GC and verify follow their own cron schedules), in seconds."""

    interval: float = 60.0

    @classmethod
    def from_env(cls) -> RepositorySettings:
        return cls(interval=float(os.environ.get("VMGUARD_REPOSITORY_INTERVAL") or 60.0))


# Environment names read below the proxy layer. The proxy Job's full environment (these
# and the Job-only names) is vmguard.proxy.contract, shared by the Job builders and the
# proxy. The store reads the repository URL and S3 credentials (vmguard.store.location);
# ``vmguard vm`` reads the vCenter user and password as a proxy Job does.
VC_USER_ENV = "VMGUARD_VC_USER"
VC_PASSWORD_ENV = "VMGUARD_VC_PASSWORD"
REPO_ENV = "VMGUARD_REPO"
S3_ACCESS_ENV = "VMGUARD_S3_ACCESS_KEY"
S3_SECRET_ENV = "VMGUARD_S3_SECRET_KEY"
VDDK_PATH_ENV = "VMGUARD_PROXY_VDDK_PATH"


def ca_bundle_file(pem: str) -> str:
    """A CA bundle (public) as a file named by its hash in the temp directory, written
    once and atomically: pyVmomi, urllib3 and the minio client want a path."""
    path = (
        Path(tempfile.gettempdir())
        / f"vmguard-ca-{hashlib.sha256(pem.encode()).hexdigest()[:16]}.pem"
    )
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(pem)
        tmp.replace(path)
    return str(path)
