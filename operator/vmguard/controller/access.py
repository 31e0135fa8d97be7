"""From VCenter and BackupRepository objects to connections, for the operator and its Jobs.

Two views of the same object:

- the operator's own: an :class:`~vmguard.vsphere.session.Endpoint` (credentials read
  from the Secret) and an opened :class:`~vmguard.store.Repository`, used for control
  plane work (reading an archive's manifest and VM config, creating a VM);
- a proxy Job's: built from the same specs by :mod:`vmguard.controller.builders`, which
  carries only Secret *names and keys*; the kubelet resolves them into the proxy's
  environment.

Invariants: a Secret value is held in memory only as long as the connection is made
and never put in an error message; errors say which object or Secret is wrong.
"""

from __future__ import annotations

import asyncio
from typing import Any

from vmguard.controller.kubeapi import KubeAPI
from vmguard.controller.vcenter import endpoint_for
from vmguard.errors import ConfigError
from vmguard.store import Repository
from vmguard.vsphere.session import Endpoint

__all__ = ["endpoint_for", "open_repository", "vcenter_endpoint"]


async def open_repository(api: KubeAPI, repo: dict[str, Any]) -> Repository:
    """The repository a BackupRepository describes, opened with its Secrets (never
    created: a restore reads an existing repository)."""
    from vmguard.controller import backupsteps

    namespace, spec = repo["metadata"]["namespace"], repo["spec"]
    creds, key = await backupsteps.repository_secrets(api, namespace, spec)
    return await asyncio.to_thread(backupsteps.open_repository, spec, creds, key)


async def vcenter_endpoint(api: KubeAPI, vc: dict[str, Any]) -> Endpoint:
    if "spec" not in vc:
        raise ConfigError("VCenter has no spec")
    return await endpoint_for(api, vc["metadata"]["namespace"], vc["spec"])
