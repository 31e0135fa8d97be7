"""The cluster the cluster verbs (``status``, ``backup``, ``restore``) talk to, chosen as
kubectl chooses it.

``--kubeconfig FILE`` (else ``$KUBECONFIG``, else ``~/.kube/config``), ``--context NAME``
(else the file's current context) and ``-n/--namespace`` (else the context's namespace,
else ``default``) are accepted before the command (``kubectl vmguard --context X
status``, as kubectl passes them to a plugin) and after it. With none of the first two
given, a process in a pod uses its service account.

Every request goes through the :class:`Cluster` this module returns, never through the
Kubernetes client's global configuration, so the context asked for is the one used.
The Kubernetes client is imported when a cluster verb runs, never at start-up
(``tests/cli/test_cli_imports.py``). API failures become vmguard errors (exit code 1)
that name the object and the server's answer, never a credential.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from vmguard.api import GROUP, VERSION
from vmguard.errors import ConfigError, ObjectNotFoundError, RetryableError

_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
T = TypeVar("T")


def add_cluster_options(parser: argparse.ArgumentParser, *, top_level: bool = False) -> None:
    """``--kubeconfig``, ``--context``, ``-n``. On a command's own parser they default to
    *absent*, so that values given before the command are not reset by it."""
    default = None if top_level else argparse.SUPPRESS
    parser.add_argument(
        "--kubeconfig",
        metavar="FILE",
        default=default,
        help="kubeconfig of the cluster (default: $KUBECONFIG, else ~/.kube/config)",
    )
    parser.add_argument(
        "--context", default=default, help="kubeconfig context to use (default: the current one)"
    )
    parser.add_argument(
        "-n",
        "--namespace",
        dest="kube_namespace",
        metavar="NAMESPACE",
        default=default,
        help="namespace of the objects (default: the context's, else 'default')",
    )


@dataclass
class Cluster:
    """An API client for the chosen cluster, and the namespace the command works in."""

    api: Any  # kubernetes.client.ApiClient
    namespace: str
    context: str

    def custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api)

    def call(self, what: str, request: Callable[[], T]) -> T:
        """:func:`call`, naming this cluster's server when it cannot be reached."""
        server = str(getattr(self.api.configuration, "host", "") or "")
        where = f" at {server} (context {self.context})" if server else ""
        return call(what, request, where)


def connect(args: argparse.Namespace) -> Cluster:
    """The cluster ``args`` select (see the module docstring)."""
    from kubernetes import config

    kubeconfig = getattr(args, "kubeconfig", None)
    context = getattr(args, "context", None)
    namespace = getattr(args, "kube_namespace", None)
    if not kubeconfig and not context and _SA_NAMESPACE.exists():
        conf = _in_cluster()
        if conf is not None:
            from kubernetes import client

            own = _SA_NAMESPACE.read_text().strip()
            return Cluster(client.ApiClient(conf), namespace or own, "in-cluster")
    try:
        api = config.new_client_from_config(
            config_file=kubeconfig, context=context, persist_config=False
        )
        contexts, active = config.list_kube_config_contexts(kubeconfig)
    except (config.ConfigException, OSError, ValueError, TypeError) as exc:
        where = f" (context {context!r})" if context else ""
        raise ConfigError(f"no cluster to talk to{where}: {exc}") from None
    chosen = next((c for c in contexts if c.get("name") == context), active) if context else active
    own = str(((chosen or {}).get("context") or {}).get("namespace") or "default")
    return Cluster(api, namespace or own, str((chosen or {}).get("name", "")))


def _in_cluster() -> Any:
    from kubernetes import client, config

    conf = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=conf)
    except config.ConfigException:
        return None
    return conf


def call(what: str, request: Callable[[], T], where: str = "") -> T:
    """``request()``, its failures as vmguard errors naming ``what``: 404 is
    ObjectNotFoundError, 401/403/409/422 ConfigError (the server refused; its message
    says why), anything else (5xx, the server unreachable) RetryableError."""
    import urllib3
    from kubernetes import client

    try:
        return request()
    except client.ApiException as exc:
        reason = _server_message(exc)
        if exc.status == 404:
            raise ObjectNotFoundError(f"{what}: not found") from None
        if exc.status in (400, 401, 403, 409, 422):
            raise ConfigError(f"{what}: {exc.status} {reason}") from None
        raise RetryableError(f"{what}: {exc.status} {reason}") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise RetryableError(f"{what}: cannot reach the cluster{where}: {_short(exc)}") from None


def _server_message(exc: Any) -> str:
    import json

    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


def _short(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc)


def get_object(cluster: Cluster, plural: str, name: str) -> dict[str, Any]:
    api = cluster.custom()
    found: dict[str, Any] = cluster.call(
        f"{plural} {cluster.namespace}/{name}",
        lambda: api.get_namespaced_custom_object(GROUP, VERSION, cluster.namespace, plural, name),
    )
    return found


def list_objects(cluster: Cluster, plural: str, selector: str = "") -> list[dict[str, Any]]:
    api = cluster.custom()
    found = cluster.call(
        f"listing {plural} in {cluster.namespace}",
        lambda: api.list_namespaced_custom_object(
            GROUP, VERSION, cluster.namespace, plural, label_selector=selector
        ),
    )
    return list(found.get("items", []))


def create_object(cluster: Cluster, plural: str, body: dict[str, Any]) -> dict[str, Any]:
    api = cluster.custom()
    made: dict[str, Any] = cluster.call(
        f"creating {body['kind']} in {cluster.namespace}",
        lambda: api.create_namespaced_custom_object(
            GROUP, VERSION, cluster.namespace, plural, body
        ),
    )
    return made


def api_version() -> str:
    return f"{GROUP}/{VERSION}"


def follow(
    cluster: Cluster,
    plural: str,
    name: str,
    terminal: Collection[str],
    display: Any,
    *,
    timeout: float,
    poll: float = 1.0,
) -> dict[str, Any]:
    """Read the object every ``poll`` seconds until its phase is in ``terminal``; each
    read feeds ``status.progress`` to ``display`` and a new phase is written to stderr.
    A ``timeout`` (seconds, 0: none) that passes first is a RetryableError (exit 1)."""
    import sys
    import time

    deadline = time.monotonic() + timeout if timeout > 0 else None
    seen = ""
    while True:
        obj = get_object(cluster, plural, name)
        status = obj.get("status") or {}
        phase = str(status.get("phase") or "Pending")
        if phase != seen:
            seen = phase
            display.close()  # a bar in progress would be torn by the line
            print(f"{plural[:-1]} {name}: {phase}", file=sys.stderr, flush=True)
        progress = status.get("progress") or {}
        if progress.get("bytesTotal"):
            display(int(progress.get("bytesDone") or 0), int(progress["bytesTotal"]))
        if phase in terminal:
            if progress.get("bytesTotal"):
                display.finish()
            return obj
        if deadline is not None and time.monotonic() > deadline:
            raise RetryableError(f"{plural[:-1]} {name} still {phase} after {timeout:.0f} s")
        time.sleep(poll)  # the apiserver's state is what we follow; a watch adds no precision
