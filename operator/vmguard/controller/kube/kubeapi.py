"""The controllers' few direct Kubernetes API calls, run off kopf's event loop.

kopf itself watches and patches the objects it handles; these are the other calls:
reading a referenced Secret's keys, reading and listing vmguard objects, creating the
VMGuardBackups policies make, deleting the VMGuardBackups retention prunes, patching the status
of objects other than the one being handled, and the objects the operator creates
(proxy Jobs and the proxy's ServiceAccount, Role and RoleBinding: created, or adopted
when they exist). The kubernetes client blocks, so every call goes through
``asyncio.to_thread``. Secret values are returned to the caller and never logged;
errors name the Secret and the key, never the value.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, cast

from kubernetes import client, config

from vmguard.api import GROUP, VERSION
from vmguard.errors import ConfigError, RetryableError

PAGE = 500
"""Objects per LIST request of :meth:`KubeAPI.list_objects`."""


def load_config() -> None:
    """In a pod: the service-account token; elsewhere: ``$KUBECONFIG``."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


async def read_or_none(read: Callable[[], Any], what: str) -> Any:
    """``read()`` in a thread; None on 404, a RetryableError naming ``what`` otherwise."""

    def call() -> Any:
        try:
            return read()
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise RetryableError(f"reading {what}: {exc.status}") from None

    return await asyncio.to_thread(call)


class KubeAPI:
    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.api = api_client or client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    async def secret_keys(self, namespace: str, name: str, keys: dict[str, str]) -> dict[str, str]:
        """``{role: value}`` for ``keys = {role: key in the Secret}``."""

        def read() -> dict[str, str]:
            try:
                secret = self.core.read_namespaced_secret(name, namespace)
            except client.ApiException as exc:
                if exc.status == 404:
                    raise ConfigError(f"Secret {namespace}/{name} does not exist") from None
                if exc.status == 403:
                    raise ConfigError(f"not allowed to read Secret {namespace}/{name}") from None
                raise RetryableError(f"reading Secret {namespace}/{name}: {exc.status}") from None
            data = secret.data or {}
            out = {}
            for role, key in keys.items():
                if key not in data:
                    raise ConfigError(f"Secret {namespace}/{name} has no key {key!r}")
                out[role] = base64.b64decode(data[key]).decode()
            return out

        return await asyncio.to_thread(read)

    async def list_objects(
        self, plural: str, namespace: str, label_selector: str = "", page: int = PAGE
    ) -> list[dict[str, Any]]:
        """Every object of ``plural`` in ``namespace``, read in pages of ``page`` objects
        (``limit``/``continue``): no response grows with the estate."""
        items: list[dict[str, Any]] = []
        async for got in self.list_pages(plural, namespace, label_selector, page):
            items.extend(got)
        return items

    async def list_pages(
        self, plural: str, namespace: str, label_selector: str = "", page: int = PAGE
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """:meth:`list_objects` one page at a time, so that a caller that keeps only a
        little of each object never holds every object at once."""
        token = ""
        while True:
            more = {"_continue": token} if token else {}
            res = await asyncio.to_thread(
                self.custom.list_namespaced_custom_object,
                GROUP, VERSION, namespace, plural, label_selector=label_selector,
                limit=page, **more,
            )  # fmt: skip
            yield res.get("items", [])
            token = str((res.get("metadata") or {}).get("continue") or "")
            if not token:
                return

    async def create_object(self, plural: str, namespace: str, body: dict[str, Any]) -> bool:
        """Create ``body``; False when an object of that name exists already.

        Callers build deterministic names, so AlreadyExists means "this was done before"
        (by us before a restart, or by another replica), not a failure.
        """

        def create() -> bool:
            try:
                self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
                return True
            except client.ApiException as exc:
                if exc.status == 409:
                    return False
                if exc.status in (400, 403, 404, 422):
                    raise ConfigError(
                        f"creating {plural}/{body['metadata']['name']} was refused: "
                        f"{exc.status} {exc.reason}"
                    ) from None
                raise RetryableError(f"creating {plural}: {exc.status}") from None

        return await asyncio.to_thread(create)

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        def patch() -> None:
            try:
                self.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, plural, name, {"status": status}
                )
            except client.ApiException as exc:
                if exc.status != 404:  # deleted meanwhile: nothing to report on
                    raise

        await asyncio.to_thread(patch)

    async def patch_status_if(
        self,
        plural: str,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        resource_version: str,
    ) -> bool:
        """Patch the status only if the object still has ``resource_version`` (the
        apiserver's optimistic concurrency); False when it changed or is gone."""

        def patch() -> bool:
            body = {"metadata": {"resourceVersion": resource_version}, "status": status}
            try:
                self.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, plural, name, body
                )
                return True
            except client.ApiException as exc:
                if exc.status in (404, 409):
                    return False
                raise

        return await asyncio.to_thread(patch)

    async def delete_object(
        self, plural: str, namespace: str, name: str, uid: str | None = None
    ) -> bool:
        """Delete a vmguard object; False when it is gone already. With ``uid``, only
        that incarnation (a precondition): a new object of the same name is left alone."""

        def delete() -> bool:
            body = {"preconditions": {"uid": uid}} if uid else None
            try:
                self.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural, name, body=body
                )
                return True
            except client.ApiException as exc:
                if exc.status == 404:
                    return False
                if exc.status == 409 and uid:  # another object of that name now
                    return False
                raise RetryableError(
                    f"deleting {plural} {namespace}/{name}: {exc.status}"
                ) from None

        return await asyncio.to_thread(delete)

    async def get_object(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A vmguard object, or None when it does not exist."""
        # The Kubernetes client is untyped: the object's shape is the apiserver's word.
        return cast(
            "dict[str, Any] | None",
            await read_or_none(
                lambda: self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural, name
                ),
                f"{plural} {namespace}/{name}",
            ),
        )

    async def namespace_labels(self, name: str) -> dict[str, str]:
        """A namespace's labels (its Pod Security level, the platform's consent to
        privileged proxies); empty when the namespace is gone."""
        ns = await read_or_none(lambda: self.core.read_namespace(name), f"namespace {name}")
        return dict((ns.metadata.labels or {}) if ns is not None else {})

    async def node_uuids(self) -> dict[str, str]:
        """Node name → ``status.nodeInfo.systemUUID`` (the BIOS UUID of a node that is a VM)."""

        def read() -> dict[str, str]:
            try:
                nodes = self.core.list_node().items
            except client.ApiException as exc:
                raise RetryableError(f"listing nodes: {exc.status}") from None
            return {
                n.metadata.name: (n.status.node_info.system_uuid if n.status.node_info else "")
                or ""
                for n in nodes
            }

        return await asyncio.to_thread(read)

    async def config_map_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A ConfigMap's ``data`` (None: no such ConfigMap)."""
        cm = await read_or_none(
            lambda: self.core.read_namespaced_config_map(name, namespace),
            f"ConfigMap {namespace}/{name}",
        )
        return None if cm is None else dict(cm.data or {})

    async def read_pvc(self, namespace: str, name: str) -> dict[str, Any] | None:
        pvc = await read_or_none(
            lambda: self.core.read_namespaced_persistent_volume_claim(name, namespace),
            f"PVC {namespace}/{name}",
        )
        return None if pvc is None else dict(self.api.sanitize_for_serialization(pvc))
