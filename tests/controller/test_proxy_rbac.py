"""The proxy's ServiceAccount, as the operator creates it, is refused Secrets and may
only read its objects and patch their status.

The objects come from :func:`vmguard.controller.kube.proxyjob.build_proxy_rbac`, applied
with the operator's own :meth:`JobAPI.ensure_rbac`. The apiserver is asked twice:
``SelfSubjectAccessReview`` while impersonating the ServiceAccount (the admin client
with ``Impersonate-User``), and real requests made as it, whose refusals (403) and
effects (a patched status) are observed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config
from tests import captures
from tests.controller import objects

from vmguard.api.kinds import BACKUP
from vmguard.controller.kube.jobs import JobAPI
from vmguard.controller.kube.proxyjob import build_proxy_rbac

pytestmark = pytest.mark.lab

SA = "vmguard-proxy"


@pytest.fixture
def as_proxy(lab: Any, kube_api: Any, namespace: str) -> Iterator[client.ApiClient]:
    """An API client acting as ``system:serviceaccount:<namespace>:vmguard-proxy``."""
    asyncio.run(JobAPI(kube_api).ensure_rbac(build_proxy_rbac(namespace, SA)))
    impersonating = config.new_client_from_config(str(lab.paths.kubeconfig))
    impersonating.set_default_header("Impersonate-User", f"system:serviceaccount:{namespace}:{SA}")
    yield impersonating
    impersonating.close()


def allowed(api: client.ApiClient, namespace: str, verb: str, resource: str, **extra: str) -> bool:
    group = "" if resource == "secrets" else objects.G
    resource, _, subresource = resource.partition("/")
    review = client.AuthorizationV1Api(api).create_self_subject_access_review(
        {
            "spec": {
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": verb,
                    "group": group,
                    "resource": resource,
                    "subresource": subresource,
                    **extra,
                }
            }
        }
    )
    return bool(review.status.allowed)


def test_review_of_the_proxy_account(as_proxy: client.ApiClient, namespace: str) -> None:
    ns = namespace
    may = {
        (verb, resource): allowed(as_proxy, ns, verb, resource)
        for verb, resource in [
            ("get", "vmguardbackups"),
            ("get", "vmguardrestores"),
            ("patch", "vmguardbackups/status"),
            ("patch", "vmguardrestores/status"),
            ("get", "secrets"),
            ("list", "secrets"),
            ("watch", "secrets"),
            ("list", "vmguardbackups"),
            ("patch", "vmguardbackups"),
            ("update", "vmguardbackups/status"),
            ("delete", "vmguardbackups"),
            ("create", "vmguardbackups"),
            ("get", "vcenters"),
            ("get", "vmguardrepositories"),
        ]
    }
    assert may == {
        ("get", "vmguardbackups"): True,
        ("get", "vmguardrestores"): True,
        ("patch", "vmguardbackups/status"): True,
        ("patch", "vmguardrestores/status"): True,
        ("get", "secrets"): False,
        ("list", "secrets"): False,
        ("watch", "secrets"): False,
        ("list", "vmguardbackups"): False,
        ("patch", "vmguardbackups"): False,
        ("update", "vmguardbackups/status"): False,
        ("delete", "vmguardbackups"): False,
        ("create", "vmguardbackups"): False,
        ("get", "vcenters"): False,
        ("get", "vmguardrepositories"): False,
    }
    # The Role binds in its own namespace only.
    assert not allowed(as_proxy, "default", "get", "vmguardbackups")
    assert not allowed(as_proxy, "default", "get", "secrets")


def test_requests_as_the_proxy_account(
    kube_api: Any, as_proxy: client.ApiClient, namespace: str
) -> None:
    ns = namespace
    objects.secret(kube_api, ns, "repo-s3", {"secretAccessKey": "not-for-the-proxy"})
    objects.create(
        kube_api,
        ns,
        "vmguardbackups",
        "VMGuardBackup",
        "b1",
        {"vm": {"name": "web-1"}, "vcenterRef": {"name": "lab"}, "repositoryRef": {"name": "r"}},
    )
    core, custom = client.CoreV1Api(as_proxy), client.CustomObjectsApi(as_proxy)

    with pytest.raises(client.ApiException) as denied:
        core.read_namespaced_secret("repo-s3", ns)
    assert denied.value.status == 403
    with pytest.raises(client.ApiException) as denied:
        core.list_namespaced_secret(ns)
    assert denied.value.status == 403

    got = custom.get_namespaced_custom_object(objects.G, objects.V, ns, "vmguardbackups", "b1")
    assert got["spec"]["vm"]["name"] == "web-1"
    captures.fabricated(BACKUP.plural, ns, "b1")  # the proxy's status, written by a test
    custom.patch_namespaced_custom_object_status(
        objects.G, objects.V, ns, "vmguardbackups", "b1", {"status": {"progress": {"percent": 42}}}
    )
    assert objects.get(kube_api, ns, "vmguardbackups", "b1")["status"]["progress"]["percent"] == 42

    # The object itself (labels, finalizers, spec) stays out of reach.
    with pytest.raises(client.ApiException) as denied:
        custom.patch_namespaced_custom_object(
            objects.G, objects.V, ns, "vmguardbackups", "b1", {"metadata": {"labels": {"x": "y"}}}
        )
    assert denied.value.status == 403
    assert "labels" not in objects.get(kube_api, ns, "vmguardbackups", "b1")["metadata"]
