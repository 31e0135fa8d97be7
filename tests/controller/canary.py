"""Secret canaries (BRIEF §9.4): recognisable secret values handed to the operator, and
a scan of everything an end-to-end run leaves behind for them.

A canary is a secret value the test chose (``canary-s3-<hex>``, ``canary-key-<hex>``)
or, where a peer fixes the value, the real one: the simulator accepts only the lab's
own vCenter password, so that is what the VCenter Secret carries and what is looked for.
The S3 secret is a canary for real: :func:`minio_account` makes a MinIO service account
(the admin API of the lab's MinIO) whose secret key is one.

:class:`Scan` gathers what a run produced, each piece under the name of where it came
from: every object of every listable kind in the test namespace except Secrets (they
hold the values by design), every cluster-scoped object of vmguard's API groups, logs
and ``/metrics`` pages, bucket object names and bytes, decoded archive manifests. It
then names any piece that holds a canary, verbatim or base64-encoded (how a value
copied out of a Secret's ``data`` would look), without printing the value itself.
Pods' ``*.run.json`` files in the lab's node directory are not scanned: they are the
node agent's resolved environment, the kubelet's memory, which holds the values as a
running container must.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minio import Minio
from minio.credentials import StaticProvider
from minio.minioadmin import MinioAdmin

# API groups whose cluster-scoped objects are vmguard's (the peering objects are kopf's
# kinds, installed and written by vmguard).
VMGUARD_GROUPS = ("vmguard.io", "kopf.dev")


def new_value(kind: str) -> str:
    """A fresh canary, recognisable in any output: ``canary-<kind>-<24 hex digits>``."""
    return f"canary-{kind}-{secrets.token_hex(12)}"


@dataclass(frozen=True)
class Canary:
    label: str  # what the value is, for failure messages; the value is never printed
    value: str

    def forms(self) -> list[str]:
        """The value as it could appear: verbatim, and base64 as in a Secret's data."""
        return [self.value, base64.b64encode(self.value.encode()).decode()]


@contextlib.contextmanager
def minio_account(lab_state: dict[str, Any], bucket: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``bucket`` as seen through a new service account of the lab MinIO's root user
    whose secret key is a canary (root's rights; removed afterwards)."""
    m = lab_state["minio"]
    admin = MinioAdmin(
        endpoint=m["endpoint"],
        credentials=StaticProvider(m["access_key"], m["secret_key"]),
        secure=False,
    )
    access = f"canary{secrets.token_hex(6)}"  # an access key is an id, not a secret
    secret = new_value("s3")
    admin.add_service_account(access_key=access, secret_key=secret)
    try:
        yield {**bucket, "access_key": access, "secret_key": secret}
    finally:
        admin.delete_service_account(access)


def _get(kube_api: Any, path: str) -> dict[str, Any]:
    """GET ``path`` of the apiserver as plain JSON, through the client's own transport."""
    method, url, headers, _, _ = kube_api.param_serialize(
        "GET", path, header_params={"Accept": "application/json"}, auth_settings=["BearerToken"]
    )
    rsp = kube_api.call_api(method, url, header_params=headers)
    rsp.read()
    if rsp.status != 200:
        raise AssertionError(f"GET {path}: {rsp.status}")
    result: dict[str, Any] = json.loads(rsp.data)
    return result


def _resource_lists(kube_api: Any) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(group, API path, resource) of every listable top-level resource the apiserver
    serves, in each group's preferred version."""
    paths = [("", "/api/v1")]
    for group in _get(kube_api, "/apis")["groups"]:
        paths.append((group["name"], f"/apis/{group['preferredVersion']['groupVersion']}"))
    for group, path in paths:
        for res in _get(kube_api, path)["resources"]:
            if "/" not in res["name"] and "list" in res.get("verbs", []):
                yield group, path, res


@dataclass
class Scan:
    """Everything captured from a run, by source: ``kind name``, ``log ...``, ``s3 ...``."""

    pieces: dict[str, str] = field(default_factory=dict)
    objects: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, source: str, text: str) -> None:
        self.pieces[source] = text

    def kube(self, kube_api: Any, namespace: str) -> None:
        """Every object of every listable namespaced kind in ``namespace`` but Secrets,
        status included, and every cluster-scoped object of :data:`VMGUARD_GROUPS`."""
        for group, path, res in _resource_lists(kube_api):
            kind = f"{res['name']}.{group}" if group else res["name"]
            if res["namespaced"]:
                if kind == "secrets":
                    continue
                found = _get(kube_api, f"{path}/namespaces/{namespace}/{res['name']}")
            elif group in VMGUARD_GROUPS:
                found = _get(kube_api, f"{path}/{res['name']}")
            else:
                continue
            items = found.get("items") or []
            self.objects[kind] = items
            for obj in items:
                self.add(f"{kind} {obj['metadata']['name']}", json.dumps(obj))

    def logs(self, prefix: str, files: list[Path]) -> None:
        for path in files:
            text = path.read_text(errors="replace")
            self.add(f"log {prefix}/{path.parent.name}/{path.name}", text)

    def bucket(self, bucket: dict[str, Any]) -> list[str]:
        """Every object's name and bytes (chunks, indexes, manifests, config, leases);
        returns the names."""
        s3 = Minio(
            bucket["endpoint"],
            access_key=bucket["access_key"],
            secret_key=bucket["secret_key"],
            secure=False,
        )
        names = [o.object_name for o in s3.list_objects(bucket["bucket"], recursive=True)]
        self.add("s3 object names", "\n".join(names))
        for name in names:
            rsp = s3.get_object(bucket["bucket"], name)
            try:
                self.add(f"s3 {name}", rsp.read().decode("latin-1"))
            finally:
                rsp.close()
                rsp.release_conn()
        return names

    def names(self, kind: str) -> set[str]:
        return {o["metadata"]["name"] for o in self.objects.get(kind, [])}

    def leaks(self, canaries: list[Canary]) -> list[str]:
        """``source: label`` for every piece holding a canary in any of its forms."""
        return [
            f"{source}: {c.label}"
            for source, text in self.pieces.items()
            for c in canaries
            if any(form in text for form in c.forms())
        ]
