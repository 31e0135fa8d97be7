"""Building, reading and waiting on vmguard objects in the lab apiserver, for tests.

Every object read here is offered to :mod:`tests.captures` (what the health checks are
tested on); a test that writes an object's status itself goes through
:func:`patch_status`, which keeps that object out of the captures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes import client
from tests import captures

from vmguard.api import GROUP, VERSION
from vmguard_lab.procs import eventually

G, V = GROUP, VERSION


def custom(kube_api: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api)


def create(
    kube_api: Any, ns: str, plural: str, kind: str, name: str, spec: dict[str, Any], **meta: Any
) -> dict[str, Any]:
    body = {
        "apiVersion": f"{G}/{V}",
        "kind": kind,
        "metadata": {"name": name, **meta},
        "spec": spec,
    }
    result: dict[str, Any] = custom(kube_api).create_namespaced_custom_object(
        G, V, ns, plural, body
    )
    return result


def get(kube_api: Any, ns: str, plural: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = custom(kube_api).get_namespaced_custom_object(G, V, ns, plural, name)
    captures.capture(result)
    return result


def items(kube_api: Any, ns: str, plural: str, selector: str = "") -> list[dict[str, Any]]:
    res = custom(kube_api).list_namespaced_custom_object(G, V, ns, plural, label_selector=selector)
    found = list(res.get("items", []))
    # A list's items carry no kind/apiVersion of their own: the list's say it.
    kind = str(res.get("kind", "")).removesuffix("List")
    captures.capture({"apiVersion": f"{G}/{V}", "kind": kind, **obj} for obj in found)
    return found


def patch_status(
    kube_api: Any, ns: str, plural: str, name: str, status: dict[str, Any]
) -> dict[str, Any]:
    """Write ``status`` as a test (not the operator); the object is then never captured."""
    captures.fabricated(plural, ns, name)
    result: dict[str, Any] = custom(kube_api).patch_namespaced_custom_object_status(
        G, V, ns, plural, name, {"status": status}
    )
    return result


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return dict(c)
    return {}


def secret(kube_api: Any, ns: str, name: str, data: dict[str, str]) -> None:
    client.CoreV1Api(kube_api).create_namespaced_secret(
        ns, {"metadata": {"name": name}, "stringData": data}
    )


def create_vcenter(
    kube_api: Any,
    lab_state: dict[str, Any],
    ns: str,
    name: str = "lab",
    password: str | None = None,
    sweep: str = "30s",
    port: int | None = None,
) -> None:
    """A VCenter for the lab's simulator (``port``: another listener in front of it)."""
    vs = lab_state["vsphere"]
    port = port or int(vs["sdk_url"].split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    secret(
        kube_api,
        ns,
        f"{name}-creds",
        {"username": vs["username"], "password": password or vs["password"]},
    )
    create(
        kube_api,
        ns,
        "vcenters",
        "VCenter",
        name,
        {
            "host": "127.0.0.1",
            "port": port,
            "credentialsSecretRef": {"name": f"{name}-creds"},
            "tls": {"caBundle": Path(vs["ca"]).read_text()},
            "sweepInterval": sweep,
        },
    )


def create_repository(
    kube_api: Any,
    ns: str,
    name: str,
    bucket: dict[str, Any],
    key: str | None = None,
    prefix: str | None = None,
    **spec: Any,
) -> None:
    secret(
        kube_api,
        ns,
        f"{name}-s3",
        {"accessKeyID": bucket["access_key"], "secretAccessKey": bucket["secret_key"]},
    )
    s3 = {"endpoint": bucket["endpoint"], "bucket": bucket["bucket"], "insecure": True}
    if prefix:
        s3["prefix"] = prefix
    body: dict[str, Any] = {
        "s3": s3,
        "credentialsSecretRef": {"name": f"{name}-s3"},
        **spec,
    }
    if key is not None:
        secret(kube_api, ns, f"{name}-key", {"key": key})
        body["encryption"] = {"keySecretRef": {"name": f"{name}-key"}}
    create(kube_api, ns, "vmguardrepositories", "VMGuardRepository", name, body)


def create_policy(
    kube_api: Any,
    ns: str,
    name: str,
    vcenter: str = "lab",
    repository: str = "repo",
    **spec: Any,
) -> None:
    create(
        kube_api,
        ns,
        "vmprotectionpolicies",
        "VMProtectionPolicy",
        name,
        {
            "vcenterRef": {"name": vcenter},
            "repositoryRef": {"name": repository},
            "schedule": {"cron": "0 1 * * *"},
            "retention": {"keepLast": 3},
            **spec,
        },
    )


def wait_phase(
    kube_api: Any, ns: str, plural: str, name: str, phases: set[str], timeout: float = 180.0
) -> dict[str, Any]:
    """The object once its ``status.phase`` is one of ``phases``."""

    def reached() -> dict[str, Any] | None:
        obj = get(kube_api, ns, plural, name)
        return obj if obj.get("status", {}).get("phase") in phases else None

    result: dict[str, Any] = eventually(reached, timeout=timeout, what=f"{name} in {phases}")
    return result
