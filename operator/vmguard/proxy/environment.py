"""What a proxy Job is given, read back from its environment: vCenter, repository, disks.

The names are :mod:`vmguard.proxy.contract`'s, written by the Job builders; both the
backup and the restore proxy read them here, the same way. vCenter trust comes from a
CA bundle (PEM text, written to a file named by its hash), a mounted CA file, a
thumbprint, or ``insecure``; the repository is opened by
:func:`vmguard.store.location.open_repository` with the key file the Job mounts and the
S3 endpoint's CA bundle. No value read here is ever logged.
"""

from __future__ import annotations

from collections.abc import Mapping

from vmguard.config import DEFAULT_VDDK_PATH, ca_bundle_file
from vmguard.errors import ConfigError
from vmguard.proxy import contract as env_names
from vmguard.store import MasterKey, Repository
from vmguard.store.location import open_repository
from vmguard.vm.access import DiskLocator, open_locator
from vmguard.vsphere.session import Endpoint, user_agent


def endpoint_from(env: Mapping[str, str]) -> Endpoint:
    """vCenter as the Job describes it; ConfigError when URL or credentials are missing."""
    url, user, password = (
        env.get(env_names.VC_URL_ENV),
        env.get(env_names.VC_USER_ENV),
        env.get(env_names.VC_PASSWORD_ENV),
    )
    if not url or not user or not password:
        raise ConfigError(
            f"{env_names.VC_URL_ENV}, {env_names.VC_USER_ENV} and"
            f" {env_names.VC_PASSWORD_ENV} must be set"
        )
    bundle = env.get(env_names.VC_CA_BUNDLE_ENV)
    return Endpoint(
        url,
        user,
        password,
        ca_file=ca_bundle_file(bundle) if bundle else env.get(env_names.VC_CA_FILE_ENV) or None,
        thumbprint=env.get(env_names.VC_THUMBPRINT_ENV) or None,
        insecure=env.get(env_names.VC_INSECURE_ENV) == "true",
        user_agent=user_agent("proxy"),
    )


def repository_from(env: Mapping[str, str]) -> Repository:
    """The repository the Job names, opened (never created) with its mounted key."""
    url = env.get(env_names.REPO_ENV)
    if not url:
        raise ConfigError(f"{env_names.REPO_ENV} is not set")
    bundle = env.get(env_names.S3_CA_BUNDLE_ENV)
    key_file = env.get(env_names.KEY_FILE_ENV)
    return open_repository(
        url,
        MasterKey.from_file(key_file) if key_file else None,
        env,
        ca_file=ca_bundle_file(bundle) if bundle else None,
    )


def job_locator(env: Mapping[str, str], ep: Endpoint) -> DiskLocator:
    """The locator ``VMGUARD_PROXY_LOCATOR`` names (``vddk`` when unset; another scheme
    from an installed distribution, :func:`vmguard.vm.access.open_locator`); the VDDK
    directory is where the Job mounts the user's VDDK (``VMGUARD_PROXY_VDDK_PATH``)."""
    libdir = env.get(env_names.VDDK_PATH_ENV) or DEFAULT_VDDK_PATH
    return open_locator(env.get(env_names.LOCATOR_ENV, "vddk"), ep, vddk_libdir=libdir)


def disks_at_once(env: Mapping[str, str]) -> int | None:
    """How many disks the Job may write at once (``VMGUARD_RESTORE_DISKS_AT_ONCE``), or
    None when the operator set no bound."""
    text = env.get(env_names.DISKS_AT_ONCE_ENV, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{env_names.DISKS_AT_ONCE_ENV} must be a whole number >= 1")
    return value


__all__ = ["disks_at_once", "endpoint_from", "job_locator", "repository_from"]
