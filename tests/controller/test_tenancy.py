"""Tenancy (docs/tenancy.md) against the lab's real apiserver, its RBAC and the operator.

A user ``alice`` is bound in tenant namespace A to the chart's aggregated ClusterRoles
(rendered by helm from the chart, bound directly, as the doc prescribes); every request
of hers goes through the lab apiserver's impersonation (``kubectl --as``), so what is
refused is refused by the real authorizer. A's VMGuardRestore is driven by the operator
from a real archive (one-process backup, as tests/controller/test_restores.py does).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from tests.charts.conftest import CHART, helm, run_helm  # noqa: F401
from tests.controller import objects
from tests.controller.restore_helpers import (
    completed_backup,
    destroy_vm,
    patch_backup_status,
)
from tests.controller.test_restores import locator, one_disk_vm, repo, vc  # noqa: F401

from vmguard_lab.procs import eventually
from vmguard_lab.vsim import LabDiskLocator, VSimVM

pytestmark = [
    pytest.mark.lab,
    pytest.mark.operator_controllers("vcenters,policies,backups,restores"),
]

R = "vmguardrestores"
ALICE = "alice"
AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"

As = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def chart_roles(
    kube_api: Any,
    helm: Path,  # noqa: F811
    tmp_path: Path,
) -> Iterator[dict[str, str]]:
    """The chart's aggregated ClusterRoles, rendered by helm and created in the lab (with a
    fresh release name, so parallel runs do not meet); {"view"|"edit": name}."""
    release = f"t{secrets.token_hex(3)}"
    out = run_helm(helm, "template", release, str(CHART), tmp=tmp_path)
    rbac = client.RbacAuthorizationV1Api(kube_api)
    made = {}
    for doc in yaml.safe_load_all(out):
        labels = ((doc or {}).get("metadata") or {}).get("labels") or {}
        if doc["kind"] == "ClusterRole" and any(k.startswith(AGGREGATE) for k in labels):
            rbac.create_cluster_role(doc)
            made[doc["metadata"]["name"].rsplit("-", 1)[1]] = doc["metadata"]["name"]
    assert set(made) == {"view", "edit"}
    yield made
    for name in made.values():
        rbac.delete_cluster_role(name)


def _bind(kube_api: Any, ns: str, cluster_role: str, user: str) -> None:
    client.RbacAuthorizationV1Api(kube_api).create_namespaced_role_binding(
        ns,
        {
            "metadata": {"name": f"{user}-{cluster_role}"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": cluster_role,
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        },
    )


@pytest.fixture
def as_user(lab: Any, kubectl: Path) -> As:
    """``as_user(user, *args, input=None)``: kubectl as ``user``, impersonated by the admin."""
    env = dict(os.environ, KUBECONFIG=str(lab.paths.kubeconfig))

    def run(user: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(kubectl), f"--as={user}", *args],
            capture_output=True,
            text=True,
            env=env,
            input=input,
            timeout=60,
        )

    return run


def _forbidden(done: subprocess.CompletedProcess[str]) -> bool:
    return done.returncode != 0 and "Forbidden" in done.stderr


def _restore_doc(ns: str, name: str, backup: str, target: dict[str, Any]) -> str:
    return json.dumps(
        {
            "apiVersion": "vmguard.io/v1alpha1",
            "kind": "VMGuardRestore",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"source": {"backupRef": {"name": backup}}, "target": target},
        }
    )


def test_built_in_edit_gains_the_chart_rules_by_aggregation(
    kube_api: Any, chart_roles: dict[str, str], as_user: As, namespace: str
) -> None:
    """The lab's kube-controller-manager aggregates: ``edit`` may then create restores."""
    rbac = client.RbacAuthorizationV1Api(kube_api)

    def aggregated() -> bool:
        rules = rbac.read_cluster_role("edit").rules or []
        return any(
            "vmguard.io" in r.api_groups
            and "vmguardrestores" in r.resources
            and "create" in r.verbs
            for r in rules
        )

    eventually(aggregated, timeout=60, what="edit to aggregate vmguard-edit")
    _bind(kube_api, namespace, "edit", "bob")
    can = as_user("bob", "auth", "can-i", "create", R, "-n", namespace)
    assert can.stdout.strip() == "yes", can.stderr
    # Why credentials must never sit where a tenant holds the built-in edit (the doc says so).
    can = as_user("bob", "auth", "can-i", "get", "secrets", "-n", namespace)
    assert can.stdout.strip() == "yes", can.stderr

    # ProtectedVMs are the operator's record of a VM's restore points: read, never written.
    def may(verb: str, resource: str, *more: str) -> bool:
        done = as_user("bob", "auth", "can-i", verb, resource, *more, "-n", namespace)
        return done.stdout.strip() == "yes"

    eventually(lambda: may("list", "protectedvms.vmguard.io"), 60, "edit to aggregate vmguard-view")
    assert may("get", "protectedvms.vmguard.io") and may("watch", "protectedvms.vmguard.io")
    for verb in ("create", "update", "patch", "delete"):
        assert not may(verb, "protectedvms.vmguard.io"), verb
    assert not may("patch", "protectedvms.vmguard.io", "--subresource=status")
    assert may("patch", "vmguardrestores.vmguard.io")  # what edit may do, to show the check bites


def test_a_tenant_restores_its_own_backup_and_nothing_else(
    kube_api: Any,
    namespace: str,
    chart_roles: dict[str, str],
    as_user: As,
    vc: Any,  # noqa: F811
    repo: Any,  # noqa: F811
    locator: LabDiskLocator,  # noqa: F811
    one_disk_vm: VSimVM,  # noqa: F811
    start_operator: Any,
    s3_bucket: dict[str, Any],
) -> None:
    tenant_a = namespace  # holds VCenter lab, VMGuardRepository repo and their Secrets
    tenant_b = f"t-{secrets.token_hex(4)}"
    core = client.CoreV1Api(kube_api)
    core.create_namespace({"metadata": {"name": tenant_b}})
    try:
        # B: a Completed backup of its own (it is never read: the point is that A cannot).
        objects.create(
            kube_api,
            tenant_b,
            "vmguardbackups",
            "VMGuardBackup",
            "b-only",
            {"vm": {"name": "x"}, "vcenterRef": {"name": "lab"}, "repositoryRef": {"name": "repo"}},
        )
        patch_backup_status(kube_api, tenant_b, "b-only", {"phase": "Completed", "archiveId": "x"})
        for role in chart_roles.values():
            _bind(kube_api, tenant_a, role, ALICE)
        operator = start_operator()
        completed_backup(kube_api, tenant_a, "a-1", vc, repo, one_disk_vm.moref, locator)

        # Alice restores A's backup: admitted by RBAC, accepted by the operator, and run.
        new_name = f"tenant-{secrets.token_hex(3)}"
        made = as_user(
            ALICE,
            "create",
            "-f",
            "-",
            input=_restore_doc(tenant_a, "a-1-new", "a-1", {"newVM": {"name": new_name}}),
        )
        assert made.returncode == 0, made.stderr
        obj = objects.wait_phase(kube_api, tenant_a, R, "a-1-new", {"Completed", "Failed"}, 240)
        moref = ((obj["status"].get("result") or {}).get("vm") or {}).get("moref")
        try:
            assert obj["status"]["phase"] == "Completed", obj["status"]
            assert objects.condition(obj, "SourceReady")["status"] == "True"
        finally:
            if moref:
                destroy_vm(vc, moref)

        # She reads no credential: not the vCenter's, not the repository's, not its key.
        for secret in ("lab-creds", "repo-s3", "repo-key"):
            assert _forbidden(as_user(ALICE, "get", "secret", secret, "-n", tenant_a)), secret
        assert _forbidden(as_user(ALICE, "get", "secrets", "-n", tenant_a))
        # Nor reaches them sideways: no pod, no exec, no Job, no new VCenter/repository,
        # no status of a backup (its archiveId) written by her.
        # (kubectl reads "kind/x" as a name: subresources go in --subresource.)
        for verb, what, sub in (
            ("create", "pods", ""),
            ("create", "pods", "exec"),
            ("create", "jobs", ""),
            ("create", "vcenters", ""),
            ("create", "vmguardrepositories", ""),
            ("patch", "vmguardrepositories", ""),
            ("patch", "vmguardbackups", "status"),
            ("patch", "vmguardrestores", "status"),
        ):
            extra = [f"--subresource={sub}"] if sub else []
            can = as_user(ALICE, "auth", "can-i", verb, what, *extra, "-n", tenant_a)
            assert can.stdout.strip() == "no", (verb, what, sub, can.stdout)
        # and a positive control: the same question answered yes where she may.
        can = as_user(ALICE, "auth", "can-i", "patch", "vmguardbackups", "-n", tenant_a)
        assert can.stdout.strip() == "yes", can.stderr

        # B's backups: invisible to her, and no restore of them in B, any mode.
        assert _forbidden(as_user(ALICE, "get", "vmguardbackups", "b-only", "-n", tenant_b))
        files = {"paths": ["/**"], "to": {"s3": {"prefix": "out/b"}}}
        for name, target in (("b-vm", {"newVM": {"name": "x"}}), ("b-files", {"files": files})):
            done = as_user(
                ALICE, "create", "-f", "-", input=_restore_doc(tenant_b, name, "b-only", target)
            )
            assert _forbidden(done), done.stderr
            # Named from A, B's backup does not exist: references stay in their namespace.
            done = as_user(
                ALICE, "create", "-f", "-", input=_restore_doc(tenant_a, name, "b-only", target)
            )
            assert done.returncode == 0, done.stderr

        def not_found(name: str) -> Callable[[], bool]:
            def check() -> bool:
                obj = objects.get(kube_api, tenant_a, R, name)
                return objects.condition(obj, "SourceReady").get("reason") == "SourceNotFound"

            return check

        for name in ("b-vm", "b-files"):
            eventually(not_found(name), what=name)
            obj = objects.get(kube_api, tenant_a, R, name)
            assert obj["status"]["phase"] == "Pending"
            assert "b-only" in objects.condition(obj, "SourceReady")["message"]
        log = operator.log.read_text()
        assert s3_bucket["secret_key"] not in log
    finally:
        core.delete_namespace(tenant_b)
