"""Unit tests of cross-namespace references (docs/tenancy.md): the allow-list, where a
proxy Job runs and how it is labelled, the reporting Role, the origin routing of catalog
sync and the files-restore limits. Pure functions, no cluster: the lab test is
tests/controller/test_tenancy_platform.py."""

from __future__ import annotations

from typing import Any

import pytest
from tests.controller.test_catalog import manifest, vmb
from tests.controller.test_restore_builders import REPO, SETTINGS, VCENTER, _restore

from vmguard.api import LABEL_OWNER_NAMESPACE, LABEL_OWNER_UID
from vmguard.api.kinds import REPOSITORY
from vmguard.controller.kube import proxyjob, refs
from vmguard.controller.repository.catalog import (
    Placement,
    build_synced_backup,
    home_of,
    plan_catalog,
)
from vmguard.controller.restore import builders
from vmguard.controller.restore.reconcile import _files_across
from vmguard.store.lineage import ORIGIN_NAMESPACE

pytestmark = pytest.mark.unit


def _obj(ns: str, allowed: list[str] | None = None) -> dict[str, Any]:
    spec = {"allowedNamespaces": allowed} if allowed is not None else {}
    return {"metadata": {"name": "repo", "namespace": ns}, "spec": spec}


def test_a_reference_across_namespaces_needs_the_allow_list() -> None:
    assert refs.admits(_obj("team-a"), "team-a")  # its own namespace: always, as before
    assert refs.admits(_obj("platform", ["team-a"]), "team-a")
    assert not refs.admits(_obj("platform", ["team-a"]), "team-b")
    assert not refs.admits(_obj("platform"), "team-a")
    with pytest.raises(refs.ReferenceNotAllowed) as caught:
        refs.check_admitted(_obj("platform", ["team-a"]), REPOSITORY, "team-b")
    assert caught.value.reason == "ReferenceNotAllowed"
    assert str(caught.value) == (
        "VMGuardRepository platform/repo does not list namespace team-b in spec.allowedNamespaces"
    )
    assert refs.ref_namespace({"name": "x"}, "team-a") == "team-a"
    assert refs.shown({"name": "x"}, "team-a") == "x"
    assert refs.shown({"name": "x", "namespace": "platform"}, "team-a") == "platform/x"
    assert refs.ref_to(_obj("platform"), "team-a") == {"name": "repo", "namespace": "platform"}
    assert refs.ref_to(_obj("team-a"), "team-a") == {"name": "repo"}


def test_the_job_runs_where_the_credentials_are() -> None:
    assert refs.job_namespace("team-a", _obj("team-a"), _obj("team-a")) == "team-a"
    assert refs.job_namespace("team-a", _obj("platform"), None) == "platform"
    assert refs.job_namespace("team-a", _obj("platform"), _obj("platform")) == "platform"
    with pytest.raises(refs.ReferencesSplit, match="platform, team-a"):
        refs.job_namespace("team-a", _obj("platform"), _obj("team-a"))


def test_a_job_in_another_namespace_is_labelled_not_owned() -> None:
    restore = _restore({"newVM": {"name": "web"}})
    here = builders.build_restore_job(
        restore, SETTINGS, repository=REPO["spec"], vcenter=VCENTER["spec"]
    )
    assert here["metadata"]["namespace"] == "ops"
    assert here["metadata"]["ownerReferences"][0]["uid"] == restore["metadata"]["uid"]
    assert LABEL_OWNER_NAMESPACE not in here["metadata"]["labels"]
    there = builders.build_restore_job(
        restore, SETTINGS, repository=REPO["spec"], vcenter=VCENTER["spec"], namespace="plat"
    )
    meta = there["metadata"]
    assert meta["namespace"] == "plat" and "ownerReferences" not in meta
    assert meta["labels"][LABEL_OWNER_NAMESPACE] == "ops"
    assert meta["labels"][LABEL_OWNER_UID] == restore["metadata"]["uid"]
    pod_labels = there["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[LABEL_OWNER_UID] == restore["metadata"]["uid"]
    # The same Job otherwise: the proxy is told the restore's own namespace and name.
    assert there["spec"]["template"]["spec"] == here["spec"]["template"]["spec"]


def test_the_reporting_role_lets_the_platform_proxy_report_and_nothing_more() -> None:
    role, binding = proxyjob.build_reporting_rbac("team-a", "platform", "vmguard-proxy")
    assert role["kind"] == "Role" and role["metadata"]["namespace"] == "team-a"
    assert role["rules"] == [
        {
            "apiGroups": ["vmguard.io"],
            "resources": ["vmguardbackups", "vmguardrestores"],
            "verbs": ["get"],
        },
        {
            "apiGroups": ["vmguard.io"],
            "resources": ["vmguardbackups/status", "vmguardrestores/status"],
            "verbs": ["patch"],
        },
    ]
    assert binding["metadata"]["name"] == "vmguard-proxy-report-platform"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "vmguard-proxy", "namespace": "platform"}
    ]


def test_catalog_sync_hands_an_archive_to_its_admitted_origin_only() -> None:
    allowed = ["team-a", "team-b"]
    assert home_of(manifest(labels={ORIGIN_NAMESPACE: "team-a"}), "platform", allowed) == "team-a"
    assert home_of(manifest(labels={ORIGIN_NAMESPACE: "team-c"}), "platform", allowed) == (
        "platform"
    )
    assert home_of(manifest(labels={}), "platform", allowed) == "platform"
    # An archive another namespace's backup names gets no second object anywhere.
    plan = plan_catalog("repo", ["a", "b"], [], covered_elsewhere=["a"])
    assert plan.create == ("b",)
    # A backup of a same-named repository of its own namespace is not one of this one's.
    own = vmb("own", "gone")
    own["metadata"]["namespace"] = "team-a"
    assert plan_catalog("repo", [], [own]).flag == ("own",)
    assert plan_catalog("repo", [], [own], repository_namespace="platform").empty
    body = build_synced_backup(
        manifest(labels={ORIGIN_NAMESPACE: "team-a"}),
        namespace="team-a",
        repository="repo",
        placement=Placement("lab", None),
        repository_namespace="platform",
        vcenter_namespace="platform",
    )
    assert body["spec"]["repositoryRef"] == {"name": "repo", "namespace": "platform"}
    assert body["spec"]["vcenterRef"] == {"name": "lab", "namespace": "platform"}


def test_files_from_a_platform_repository_go_to_s3_under_the_namespace() -> None:
    s3 = {"bucket": "backups", "prefix": "vm"}
    assert _files_across({"s3": {"prefix": "team-a/out"}}, "team-a", "plat", s3) is None
    assert _files_across({"s3": {"prefix": "team-a"}}, "team-a", "plat", s3) is None
    for to in (
        {"s3": {"prefix": "team-b/out"}},
        {"s3": {"prefix": "team-ab/out"}},
        {"s3": {"bucket": "other", "prefix": "team-a/out"}},
    ):
        refused = _files_across(to, "team-a", "plat", s3)
        assert refused is not None and refused[0] == "PrefixOutsideNamespace", to
    refused = _files_across({"pvc": {"claimName": "data"}}, "team-a", "plat", s3)
    assert refused is not None and refused[0] == "PVCAcrossNamespaces"
