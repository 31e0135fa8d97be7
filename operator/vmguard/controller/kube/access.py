"""From VCenter and VMGuardRepository objects to connections, for the operator and its Jobs.

Every kind reaches vCenter and the repository through this module: the VCenter and
VMGuardBackup controllers and a restore's target preparation log in with
:func:`endpoint_for`; a backup opens the repository with :func:`open_for_backup`, the
VMGuardRepository controller creates it with :func:`create_repository` (the only
creator), and a restore, retention and catalog sync open it with
:func:`open_repository`.

Two views of the same object:

- the operator's own: an :class:`~vmguard.vsphere.session.Endpoint` (credentials read
  from the Secret) and an opened :class:`~vmguard.store.Repository`, used for control
  plane work (reading an archive's manifest and VM config, creating a VM);
- a proxy Job's: built from the same specs by :mod:`vmguard.controller.kube.proxyjob`,
  which carries only Secret *names and keys*; the kubelet resolves them into the
  proxy's environment.

Invariants: a Secret value is held in memory only as long as the connection is made
and never put in an error message; errors say which object or Secret is wrong. The
``*_blocking`` functions and :func:`create_repository` / :func:`open_for_backup` block
(S3): callers run them in a thread.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from typing import Any

from kubernetes import client

from vmguard.config import S3_ACCESS_ENV, S3_SECRET_ENV, ca_bundle_file
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.proxyjob import repository_url
from vmguard.controller.kube.repository_spec import creation_parameters, spec_mismatches
from vmguard.errors import ConfigError, RepositorySpecMismatchError
from vmguard.store import MasterKey, Repository, location
from vmguard.store.backend import Backend
from vmguard.store.location import open_location
from vmguard.vsphere.session import Endpoint, user_agent

__all__ = [
    "create_repository",
    "endpoint_for",
    "open_for_backup",
    "open_repository",
    "open_repository_blocking",
    "repository_secrets",
    "vcenter_endpoint",
]


async def open_repository(api: KubeAPI, repo: dict[str, Any]) -> Repository:
    """The repository a VMGuardRepository describes, opened with its Secrets (never
    created: a restore reads an existing repository)."""
    namespace, spec = repo["metadata"]["namespace"], repo["spec"]
    creds, key = await repository_secrets(api, namespace, spec)
    return await asyncio.to_thread(open_repository_blocking, spec, creds, key)


async def vcenter_endpoint(api: KubeAPI, vc: dict[str, Any]) -> Endpoint:
    if "spec" not in vc:
        raise ConfigError("VCenter has no spec")
    return await endpoint_for(api, vc["metadata"]["namespace"], vc["spec"])


async def endpoint_for(api: KubeAPI, namespace: str, spec: dict[str, Any]) -> Endpoint:
    ref = spec["credentialsSecretRef"]
    creds = await api.secret_keys(
        namespace,
        ref["name"],
        {
            "username": ref.get("usernameKey", "username"),
            "password": ref.get("passwordKey", "password"),
        },
    )
    tls = spec.get("tls") or {}
    ca_file = None
    if tls.get("caBundle"):
        ca_file = ca_bundle_file(tls["caBundle"])
    elif tls.get("caSecretRef"):
        ca_ref = tls["caSecretRef"]
        ca = await api.secret_keys(namespace, ca_ref["name"], {"ca": ca_ref.get("key", "ca.crt")})
        ca_file = ca_bundle_file(ca["ca"])
    url = f"https://{spec['host']}:{spec.get('port', 443)}/sdk"
    return Endpoint(
        url=url,
        username=creds["username"],
        password=creds["password"],
        ca_file=ca_file,
        thumbprint=tls.get("thumbprint"),
        insecure=bool(tls.get("insecureSkipVerify")),
        user_agent=user_agent("operator"),
    )


async def repository_secrets(
    api: KubeAPI, namespace: str, spec: Mapping[str, Any]
) -> tuple[dict[str, str], bytes | None]:
    """({VMGUARD_S3_ACCESS_KEY, VMGUARD_S3_SECRET_KEY}, master key bytes or None)."""
    ref = spec["credentialsSecretRef"]
    creds = await api.secret_keys(
        namespace,
        ref["name"],
        {
            S3_ACCESS_ENV: ref.get("accessKeyIDKey", "accessKeyID"),
            S3_SECRET_ENV: ref.get("secretAccessKeyKey", "secretAccessKey"),
        },
    )
    key_ref = (spec.get("encryption") or {}).get("keySecretRef")
    if not key_ref:
        return creds, None

    def read_key() -> bytes:
        try:
            secret = api.core.read_namespaced_secret(key_ref["name"], namespace)
        except client.ApiException as exc:
            raise ConfigError(f"Secret {namespace}/{key_ref['name']}: {exc.status}") from None
        data = (secret.data or {}).get(key_ref.get("key", "key"))
        if not data:
            raise ConfigError(f"Secret {namespace}/{key_ref['name']} has no repository key")
        return base64.b64decode(data)

    return creds, await asyncio.to_thread(read_key)


def _ca_file(spec: Mapping[str, Any]) -> str | None:
    bundle = (spec.get("s3") or {}).get("caBundle")
    return ca_bundle_file(bundle) if bundle else None


def _backend(spec: Mapping[str, Any], creds: Mapping[str, str]) -> Backend:
    return open_location(repository_url(spec), creds, ca_file=_ca_file(spec))


def open_repository_blocking(
    spec: Mapping[str, Any], creds: Mapping[str, str], key: bytes | None
) -> Repository:
    """Blocking: open the VMGuardRepository's repository. Never creates one: the
    VMGuardRepository controller does, from its spec (:func:`create_repository`).

    Through :func:`vmguard.store.location.open_repository`, the one opener every caller
    uses: the same key rule (:meth:`MasterKey.from_text`) and KDF bounds as the CLI's."""
    return location.open_repository(
        repository_url(spec),
        MasterKey.from_text(key) if key else None,
        creds,
        ca_file=_ca_file(spec),
    )


def create_repository(
    spec: Mapping[str, Any], creds: Mapping[str, str], key: bytes | None
) -> Repository:
    """Blocking: create the repository with every field of ``spec`` that the config fixes
    (chunk size, Object Lock, encryption); RepositoryExistsError over a non-empty
    prefix. Only the VMGuardRepository controller calls this."""
    return Repository.init(
        _backend(spec, creds),
        master_key=MasterKey.from_text(key) if key else None,
        **creation_parameters(spec),
    )


def open_for_backup(
    spec: Mapping[str, Any], creds: Mapping[str, str], key: bytes | None
) -> Repository:
    """Blocking: open the repository to write a backup into it; RepositoryNotFoundError
    until the VMGuardRepository controller has created it, RepositorySpecMismatchError
    when its config is not what the spec declares (format §4.3: what no key check covers)."""
    repo = open_repository_blocking(spec, creds, key)
    mismatches = spec_mismatches(spec, repo.config)
    if mismatches:
        raise RepositorySpecMismatchError(
            "; ".join(message for _, message in mismatches), mismatches[0][0]
        )
    return repo
