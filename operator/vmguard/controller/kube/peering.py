"""High availability: of several operator replicas, exactly one acts (kopf peering).

``vmguard operator --peering NAME`` makes every replica keep a record — identity,
priority, last seen, lifetime — in the status of a kopf peering object called NAME: a
``KopfPeering`` in each watched namespace, or one ``ClusterKopfPeering`` with
``--all-namespaces``. The replica with the highest live priority acts; the others
pause (no watches, no daemons) and resume when its record expires: at once when it
shuts down cleanly (it withdraws its record), one ``--peering-lifetime`` (60 s by
default) after it dies without a word (SIGKILL, node loss).

Invariants:

- Priorities must differ: kopf pauses *every* replica that sees a live peer of equal
  priority, because it cannot tell which of two equals should act. Unless
  ``--priority`` is given, each process draws one at random from 1..2^31-1, so two
  replicas tie with odds of one in two billion (and a restart of either draws anew).
  A replica of higher priority that joins later takes over from the one acting.
- Every replica signs the Events it posts (``reportingInstance``) with its name,
  :func:`replica_name`: the pod name from ``POD_ID`` (the chart sets it; kopf takes the
  same variable as the replica's identity in the peering object), so ``kubectl get
  events`` tells which replica acted.
- The peering objects exist before kopf starts: kopf only writes into them, and a
  replica that finds none carries on as if alone — two of them would both act.
  :func:`ensure_peering` creates the missing ones (the chart also ships them); a
  namespace given as a glob pattern cannot be created for and is left to the chart.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Mapping
from typing import Any

from kubernetes import client

from vmguard.crds.peering import PEERING_GROUP, PEERING_VERSION
from vmguard.errors import ConfigError

PRIORITY_MAX = 2**31 - 1


def draw_priority(explicit: int | None = None) -> int:
    """The replica's peering priority: ``explicit`` if given, else a random one ≥ 1."""
    if explicit is not None:
        return explicit
    return 1 + secrets.randbelow(PRIORITY_MAX)


def replica_name(env: Mapping[str, str] | None = None) -> str:
    """This replica's name on its Events: ``POD_ID`` (the pod name, also its identity in
    the peering object), else ``<host>-<pid>`` (an operator run outside a pod)."""
    env = os.environ if env is None else env
    return env.get("POD_ID") or f"{socket.gethostname()}-{os.getpid()}"


def build_peering(name: str, namespace: str | None) -> dict[str, Any]:
    """A peering object: namespaced ``KopfPeering``, or cluster-wide without a namespace."""
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {"app.kubernetes.io/part-of": "vmguard"},
    }
    if namespace is not None:
        metadata["namespace"] = namespace
    return {
        "apiVersion": f"{PEERING_GROUP}/{PEERING_VERSION}",
        "kind": "KopfPeering" if namespace is not None else "ClusterKopfPeering",
        "metadata": metadata,
    }


def _is_pattern(namespace: str) -> bool:
    # kopf accepts globs and exclusions (``team-*``, ``!kube-system``) as namespaces.
    return any(ch in namespace for ch in "*?[!,")


def ensure_peering(
    api_client: client.ApiClient, name: str, namespaces: list[str], clusterwide: bool
) -> list[str]:
    """Create the peering objects that are missing; return where one was created.

    Blocking (the kubernetes client): called once before the operator's event loop runs.
    """
    custom = client.CustomObjectsApi(api_client)
    created: list[str] = []
    targets: list[str | None] = (
        [None] if clusterwide else [ns for ns in namespaces if not _is_pattern(ns)]
    )
    for namespace in targets:
        # Read first: the chart creates these objects and grants no `create` on them.
        try:
            if namespace is None:
                custom.get_cluster_custom_object(
                    PEERING_GROUP, PEERING_VERSION, "clusterkopfpeerings", name
                )
            else:
                custom.get_namespaced_custom_object(
                    PEERING_GROUP, PEERING_VERSION, namespace, "kopfpeerings", name
                )
            continue
        except client.ApiException as exc:
            if exc.status != 404:
                raise
        body = build_peering(name, namespace)
        try:
            if namespace is None:
                custom.create_cluster_custom_object(
                    PEERING_GROUP, PEERING_VERSION, "clusterkopfpeerings", body
                )
            else:
                custom.create_namespaced_custom_object(
                    PEERING_GROUP, PEERING_VERSION, namespace, "kopfpeerings", body
                )
        except client.ApiException as exc:
            if exc.status == 409:  # a peer created it meanwhile
                continue
            if exc.status == 403:
                where = f"namespace {namespace}" if namespace else "the cluster"
                raise ConfigError(
                    f"peering object {name!r} is missing in {where} and this operator may "
                    "not create it: install it with the chart (peering.enabled) or grant "
                    "create on kopf.dev peerings"
                ) from None
            raise
        created.append(namespace or "(cluster)")
    return created
