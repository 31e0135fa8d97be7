"""Process-wide settings, loaded once from the environment into one typed object.

Nothing here is mutable after load; callers receive the settings object explicitly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class ProxySettings:
    """How the operator runs its proxy Jobs (the data plane).

    ``command`` is the argv prefix that starts ``vmguard`` in the proxy image (the lab
    runs this checkout's interpreter instead). ``locator`` says how the proxy reaches
    disks: ``vddk`` (nbdkit's VDDK plugin against vCenter, production) or
    ``lab:<simulator control URL>`` (the lab's file-backed disks).
    """

    image: str
    command: tuple[str, ...]
    locator: str
    service_account: str
    image_pull_policy: str

    @classmethod
    def from_env(cls) -> ProxySettings:
        return cls(
            image=os.environ.get("VMGUARD_PROXY_IMAGE", f"vmguard-proxy:{__version__}"),
            command=_argv(os.environ.get("VMGUARD_PROXY_COMMAND"), ("vmguard",)),
            locator=os.environ.get("VMGUARD_PROXY_LOCATOR", "vddk"),
            service_account=os.environ.get("VMGUARD_PROXY_SERVICE_ACCOUNT", "vmguard-proxy"),
            image_pull_policy=os.environ.get("VMGUARD_PROXY_IMAGE_PULL_POLICY", "IfNotPresent"),
        )


# How a proxy Job reaches vCenter: the operator sets these in the Job's environment (the
# user and password as Secret key references), the proxy reads them. Not secret: the
# URL, the CA bundle (PEM text) and the thumbprint.
VC_URL_ENV = "VMGUARD_VC_URL"
VC_USER_ENV = "VMGUARD_VC_USER"
VC_PASSWORD_ENV = "VMGUARD_VC_PASSWORD"
VC_CA_PEM_ENV = "VMGUARD_VC_CA_PEM"
VC_THUMBPRINT_ENV = "VMGUARD_VC_THUMBPRINT"
VC_INSECURE_ENV = "VMGUARD_VC_INSECURE"
S3_CA_PEM_ENV = "VMGUARD_S3_CA_PEM"
"""The repository's private CA (PEM text), when its BackupRepository names one."""
