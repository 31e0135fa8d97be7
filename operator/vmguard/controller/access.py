"""From VCenter and BackupRepository objects to connections, for the operator and its Jobs.

Two views of the same object:

- the operator's own: an :class:`~vmguard.vsphere.session.Endpoint` (credentials read
  from the Secret) and an opened :class:`~vmguard.store.Repository`, used for control
  plane work (reading an archive's manifest and VM config, creating a VM);
- a proxy Job's: :class:`~vmguard.controller.builders.RepositoryAccess` and
  :class:`~vmguard.controller.builders.VCenterAccess`, which carry only Secret *names
  and keys*; the kubelet resolves them into the proxy's environment.

Invariants: a Secret value is held in memory only as long as the connection is made
and never put in an error message; errors say which object or Secret is wrong.
"""

from __future__ import annotations

import asyncio
from typing import Any

from vmguard.controller.builders import RepositoryAccess, SecretKey, VCenterAccess
from vmguard.controller.kubeapi import KubeAPI
from vmguard.controller.vcenter import ca_bundle_file, endpoint_for
from vmguard.errors import ConfigError
from vmguard.store import MasterKey, Repository
from vmguard.vsphere.session import Endpoint

__all__ = ["endpoint_for", "open_repository", "repository_access", "vcenter_access"]


def repository_url(spec: dict[str, Any]) -> str:
    s3 = spec["s3"]
    scheme = "s3+http" if s3.get("insecure") else "s3"
    prefix = (s3.get("prefix") or "").strip("/")
    return f"{scheme}://{s3['endpoint']}/{s3['bucket']}" + (f"/{prefix}" if prefix else "")


def repository_access(repo: dict[str, Any]) -> RepositoryAccess:
    spec = repo["spec"]
    creds = spec["credentialsSecretRef"]
    enc = (spec.get("encryption") or {}).get("keySecretRef")
    return RepositoryAccess(
        url=repository_url(spec),
        access_key=SecretKey(creds["name"], creds.get("accessKeyIDKey", "accessKeyID")),
        secret_key=SecretKey(creds["name"], creds.get("secretAccessKeyKey", "secretAccessKey")),
        encryption_key=SecretKey(enc["name"], enc.get("key", "key")) if enc else None,
        ca_pem=spec["s3"].get("caBundle", ""),
    )


def vcenter_access(vc: dict[str, Any]) -> VCenterAccess:
    spec = vc["spec"]
    creds = spec["credentialsSecretRef"]
    tls = spec.get("tls") or {}
    return VCenterAccess(
        url=f"https://{spec['host']}:{spec.get('port', 443)}/sdk",
        username=SecretKey(creds["name"], creds.get("usernameKey", "username")),
        password=SecretKey(creds["name"], creds.get("passwordKey", "password")),
        ca_pem=tls.get("caBundle", ""),
        thumbprint=tls.get("thumbprint", ""),
        insecure=bool(tls.get("insecureSkipVerify")),
    )


async def open_repository(api: KubeAPI, repo: dict[str, Any]) -> Repository:
    """The repository a BackupRepository describes, opened with its Secrets."""
    namespace, spec = repo["metadata"]["namespace"], repo["spec"]
    access = repository_access(repo)
    creds = await api.secret_keys(
        namespace,
        access.access_key.name,
        {"access": access.access_key.key, "secret": access.secret_key.key},
    )
    key = None
    if access.encryption_key is not None:
        ref = access.encryption_key
        key = (await api.secret_keys(namespace, ref.name, {"key": ref.key}))["key"]

    def open_() -> Repository:
        from vmguard.store.backend import RetryingBackend
        from vmguard.store.backend.s3 import S3Backend

        s3 = spec["s3"]
        backend = S3Backend(
            s3["endpoint"],
            s3["bucket"],
            access_key=creds["access"],
            secret_key=creds["secret"],
            prefix=s3.get("prefix", ""),
            secure=not s3.get("insecure"),
            region=s3.get("region"),
            ca_file=ca_bundle_file(s3["caBundle"]) if s3.get("caBundle") else None,
        )
        return Repository.open(RetryingBackend(backend), MasterKey.from_text(key) if key else None)

    return await asyncio.to_thread(open_)


async def vcenter_endpoint(api: KubeAPI, vc: dict[str, Any]) -> Endpoint:
    if "spec" not in vc:
        raise ConfigError("VCenter has no spec")
    return await endpoint_for(api, vc["metadata"]["namespace"], vc["spec"])
