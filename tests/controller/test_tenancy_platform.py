"""Credentials in a platform namespace, tenants holding the built-in ``edit`` (docs/tenancy.md).

The platform namespace P (the test's ``namespace``) holds the VCenter, the
VMGuardRepository and their Secrets; both admit tenant namespaces A and B
(``spec.allowedNamespaces``), not C. ``bob`` holds Kubernetes' built-in ``edit`` in A —
the chart's rules aggregated into it by the lab's kube-controller-manager — and every
request of his goes through the apiserver's impersonation, so what is refused is refused
by the real authorizer. Restores and backups run through the operator and real proxy
Jobs, which run in P, beside the Secrets, and report to the tenant's object through the
reporting Role.

The first test's archives are written by the one-process backup with the origin a proxy
records (``vmguard.io/namespace``), and its VMGuardBackups are made by the operator's
catalog sync pass from the shared repository; the second runs a backup through the
operator.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from tests.charts.conftest import CHART, helm, run_helm  # noqa: F401
from tests.controller import objects
from tests.controller.backup_helpers import wait_done
from tests.controller.restore_helpers import MASTER_KEY, REPO_PREFIX, destroy_vm, init_store
from tests.controller.test_restores import locator, one_disk_vm, vc  # noqa: F401
from tests.controller.test_tenancy import as_user, chart_roles  # noqa: F401

from vmguard.api import LABEL_OWNER_NAMESPACE, LABEL_OWNER_UID, LABEL_SYNCED, SYNCED
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.proxyjob import REPORTING_ROLE
from vmguard.controller.repository import catalog
from vmguard.controller.repository.catalog import archive_of
from vmguard.store.lineage import ORIGIN_NAMESPACE
from vmguard.vm.backup import BackupOptions, backup_vm
from vmguard_lab.procs import eventually
from vmguard_lab.vsim import LabDiskLocator, VSimVM

pytestmark = [
    pytest.mark.lab,
    pytest.mark.operator_controllers("vcenters,backups,restores"),
]

B_, R_ = "vmguardbackups", "vmguardrestores"
BOB = "bob"
As = Callable[..., Any]
RBAC = "rbac.authorization.k8s.io"


def _doc(kind: str, ns: str, name: str, spec: dict[str, Any]) -> str:
    return json.dumps(
        {
            "apiVersion": "vmguard.io/v1alpha1",
            "kind": kind,
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }
    )


def _restore(ns: str, name: str, backup: str, target: dict[str, Any]) -> str:
    spec = {"source": {"backupRef": {"name": backup}}, "target": target}
    return _doc("VMGuardRestore", ns, name, spec)


def _forbidden(done: Any) -> bool:
    return bool(done.returncode != 0 and "Forbidden" in done.stderr)


def _reason(kube_api: Any, ns: str, plural: str, name: str, type_: str) -> str:
    return str(objects.condition(objects.get(kube_api, ns, plural, name), type_).get("reason"))


class Platform:
    """P's VCenter ``lab`` and encrypted VMGuardRepository ``repo``, admitting A and B;
    tenant namespaces A, B, C; ``bob`` bound to the built-in ``edit`` in A."""

    def __init__(
        self, kube_api: Any, lab_state: dict[str, Any], platform: str, bucket: dict[str, Any]
    ) -> None:
        self.kube_api, self.platform = kube_api, platform
        core = client.CoreV1Api(kube_api)
        self.a, self.b, self.c = (f"t-{k}-{secrets.token_hex(3)}" for k in "abc")
        for ns in (self.a, self.b, self.c):
            core.create_namespace({"metadata": {"name": ns}})
        objects.create_vcenter(kube_api, lab_state, platform, "lab")
        client.CustomObjectsApi(kube_api).patch_namespaced_custom_object(
            "vmguard.io",
            "v1alpha1",
            platform,
            "vcenters",
            "lab",
            {"spec": {"allowedNamespaces": [self.a, self.b]}},
        )
        objects.create_repository(
            kube_api,
            platform,
            "repo",
            bucket,
            key=MASTER_KEY,
            prefix=REPO_PREFIX,
            allowedNamespaces=[self.a, self.b],
        )
        self.refs = {
            "vcenterRef": {"name": "lab", "namespace": platform},
            "repositoryRef": {"name": "repo", "namespace": platform},
        }
        rbac = client.RbacAuthorizationV1Api(kube_api)

        def aggregated() -> bool:
            rules = rbac.read_cluster_role("edit").rules or []
            return any("vmguardrestores" in r.resources and "create" in r.verbs for r in rules)

        eventually(aggregated, timeout=60, what="edit to aggregate vmguard-edit")
        rbac.create_namespaced_role_binding(
            self.a,
            {
                "metadata": {"name": "bob-edit"},
                "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "edit"},
                "subjects": [{"apiGroup": RBAC, "kind": "User", "name": BOB}],
            },
        )

    def watched(self) -> list[str]:
        return [arg for ns in (self.a, self.b, self.c) for arg in ("--namespace", ns)]

    def delete(self) -> None:
        core = client.CoreV1Api(self.kube_api)
        for ns in (self.a, self.b, self.c):
            core.delete_namespace(ns)


@pytest.fixture
def platform(
    kube_api: Any,
    lab_state: dict[str, Any],
    namespace: str,
    s3_bucket: dict[str, Any],
    chart_roles: dict[str, str],  # noqa: F811
) -> Iterator[Platform]:
    made = Platform(kube_api, lab_state, namespace, s3_bucket)
    yield made
    made.delete()


def test_tenant_with_built_in_edit_restores_its_own_backup_from_a_platform_namespace(
    kube_api: Any,
    platform: Platform,
    as_user: As,  # noqa: F811
    vc: Any,  # noqa: F811
    locator: LabDiskLocator,  # noqa: F811
    one_disk_vm: VSimVM,  # noqa: F811
    start_operator: Any,
    s3_bucket: dict[str, Any],
) -> None:
    p, a, b, c, refs = platform.platform, platform.a, platform.b, platform.c, platform.refs
    operator = start_operator(*platform.watched())  # starts while the archives are written
    repo, vm = init_store(s3_bucket), {"moref": one_disk_vm.moref}
    archives = {}
    for ns in (a, b):  # an archive of A's and one of B's, as their proxies record them
        options = BackupOptions(transport="nbd", vcenter="lab", labels={ORIGIN_NAMESPACE: ns})
        archives[ns] = backup_vm(vc, repo, one_disk_vm.moref, locator, options).manifest
    # Catalog sync (the operator's pass, run here once) hands each archive to its
    # origin: A's to A, B's to B, nothing to P and nothing of B's to A.
    repository = objects.get(kube_api, p, "vmguardrepositories", "repo")
    asyncio.run(catalog.sync(KubeAPI(kube_api), repository, lambda *_: None))
    synced = {}
    for ns in (p, a, b):
        found = {archive_of(o): o for o in objects.items(kube_api, ns, B_)}
        assert set(found) == ({archives[ns].archive_id} if ns != p else set()), ns
        if ns != p:
            synced[ns] = found[archives[ns].archive_id]["metadata"]["name"]
            spec = found[archives[ns].archive_id]["spec"]
            assert spec["repositoryRef"] == {"name": "repo", "namespace": p}
    a_1 = synced[a]

    # Bob restores A's backup to a new VM: admitted by RBAC, run by a Job in P.
    new_vm = {"newVM": {"name": f"tenant-{secrets.token_hex(3)}"}}
    made = as_user(BOB, "create", "-f", "-", input=_restore(a, "a-1-new", a_1, new_vm))
    assert made.returncode == 0, made.stderr
    done = objects.wait_phase(kube_api, a, R_, "a-1-new", {"Completed", "Failed"}, 120)
    moref = ((done["status"].get("result") or {}).get("vm") or {}).get("moref")
    try:
        assert done["status"]["phase"] == "Completed", done["status"]
        assert done["status"]["jobNamespace"] == p
        assert objects.condition(done, "SourceReady")["status"] == "True"
    finally:
        if moref:
            destroy_vm(vc, moref)

    # No credential anywhere he can read: none in A (built-in edit reads A's), P's are 403.
    can = as_user(BOB, "auth", "can-i", "get", "secrets", "-n", a)
    assert can.stdout.strip() == "yes", can.stderr
    assert not client.CoreV1Api(kube_api).list_namespaced_secret(a).items
    for secret in ("lab-creds", "repo-s3", "repo-key"):
        assert _forbidden(as_user(BOB, "get", "secret", secret, "-n", p)), secret
    assert _forbidden(as_user(BOB, "get", "secrets", "-n", p))
    for verb, what in (("create", "pods"), ("create", "jobs"), ("patch", "vcenters")):
        can = as_user(BOB, "auth", "can-i", verb, what, "-n", p)
        assert can.stdout.strip() == "no", (verb, what)

    # B's archive named from A — a VMGuardBackup in A whose status someone other than the
    # operator wrote — is refused by its origin, any mode, files included; a files
    # restore into A's PVC cannot be run from P, nor one to S3 outside A's prefix.
    b_1 = objects.get(kube_api, b, B_, synced[b])["status"]
    objects.create(
        kube_api,
        a,
        B_,
        "VMGuardBackup",
        "b-forged",
        {"vm": vm, **refs},
        labels={LABEL_SYNCED: SYNCED},
    )
    objects.patch_status(kube_api, a, B_, "b-forged", b_1)
    files = {"paths": ["/**"], "to": {"s3": {"prefix": "out/b"}}}
    pvc = {"paths": ["/**"], "to": {"pvc": {"claimName": "data"}}}
    refused = (
        ("b-vm", "b-forged", {"newVM": {"name": "x"}}, "SourceReady", "ArchiveOfAnotherNamespace"),
        ("b-files", "b-forged", {"files": files}, "SourceReady", "ArchiveOfAnotherNamespace"),
        ("a-pvc", a_1, {"files": pvc}, "TargetReady", "PVCAcrossNamespaces"),
        ("a-s3", a_1, {"files": files}, "TargetReady", "PrefixOutsideNamespace"),
    )
    for name, backup, target, _, _ in refused:
        made = as_user(BOB, "create", "-f", "-", input=_restore(a, name, backup, target))
        assert made.returncode == 0, made.stderr
    for name, _, _, type_, reason in refused:
        obj = objects.wait_phase(kube_api, a, R_, name, {"Completed", "Failed"}, 60)
        assert obj["status"]["phase"] == "Failed", obj["status"]
        assert objects.condition(obj, type_)["reason"] == reason, obj["status"]
        assert "jobName" not in obj["status"]

    # C is not on the allow-list: its backup and its restore are refused by reference.
    objects.create(kube_api, c, B_, "VMGuardBackup", "c-1", {"vm": vm, **refs})
    objects.create(
        kube_api,
        c,
        B_,
        "VMGuardBackup",
        "c-done",
        {"vm": vm, **refs},
        labels={LABEL_SYNCED: SYNCED},
    )
    objects.patch_status(
        kube_api, c, B_, "c-done", {**b_1, "archiveId": done["status"]["archiveId"]}
    )
    objects.create(
        kube_api,
        c,
        R_,
        "VMGuardRestore",
        "c-files",
        {"source": {"backupRef": {"name": "c-done"}}, "target": {"files": files}},
    )
    for plural, name, type_ in ((B_, "c-1", "RefsResolved"), (R_, "c-files", "SourceReady")):
        eventually(
            lambda: _reason(kube_api, c, plural, name, type_) == "ReferenceNotAllowed",  # noqa: B023
            what=f"{name} refused",
        )
        obj = objects.get(kube_api, c, plural, name)
        assert f"does not list namespace {c}" in objects.condition(obj, type_)["message"]

    # Deleting the restore removes its Job in P, found by its labels.
    uid = done["metadata"]["uid"]
    objects.custom(kube_api).delete_namespaced_custom_object(
        "vmguard.io", "v1alpha1", a, R_, "a-1-new"
    )
    batch = client.BatchV1Api(kube_api)
    selector = f"{LABEL_OWNER_UID}={uid}"
    eventually(
        lambda: not batch.list_namespaced_job(p, label_selector=selector).items,
        what="the restore's Job in P deleted",
    )
    assert s3_bucket["secret_key"] not in operator.log.read_text()


@pytest.mark.operator_controllers("backups,repositories")
def test_a_tenants_backup_runs_its_proxy_in_the_platform_namespace(
    kube_api: Any,
    platform: Platform,
    as_user: As,  # noqa: F811
    one_disk_vm: VSimVM,  # noqa: F811
    start_operator: Any,
) -> None:
    p, a = platform.platform, platform.a
    start_operator(*platform.watched())
    spec = {"vm": {"moref": one_disk_vm.moref}, **platform.refs}
    made = as_user(BOB, "create", "-f", "-", input=_doc("VMGuardBackup", a, "a-1", spec))
    assert made.returncode == 0, made.stderr
    status = wait_done(kube_api, a, "a-1")["status"]
    assert status["phase"] == "Completed", status
    assert (status["jobNamespace"], status["repositoryNamespace"]) == (p, p)
    # Its proxy ran in P as P's proxy account, not owned (no ownerReference crosses
    # namespaces) but labelled, and reported to A's object through the reporting Role.
    job = client.BatchV1Api(kube_api).read_namespaced_job(status["jobName"], p)
    assert job.metadata.labels[LABEL_OWNER_NAMESPACE] == a
    assert not job.metadata.owner_references
    binding = client.RbacAuthorizationV1Api(kube_api).list_namespaced_role_binding(a).items
    subjects = [
        (s.kind, s.namespace)
        for rb in binding
        if rb.role_ref.name == REPORTING_ROLE
        for s in rb.subjects
    ]
    assert subjects == [("ServiceAccount", p)]
    assert not [
        s
        for s in client.CoreV1Api(kube_api).list_namespaced_service_account(a).items
        if s.metadata.name != "default"
    ]
