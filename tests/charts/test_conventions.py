"""The chart's conventions, as Velero's and cert-manager's users expect them.

- ``values.schema.json``: a misspelt or mistyped value fails ``helm lint``, ``helm
  template`` and ``helm install --dry-run`` against the lab's apiserver, instead of
  being ignored;
- the CRDs are real files in the chart (templates behind ``crds.enabled``, with
  ``helm.sh/resource-policy: keep`` behind ``crds.keep``): a chart checked out without
  symlinks, as Flux's Git source hands it to helm, still installs them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.charts.conftest import CHART, Render, helm_result

from vmguard.api import ANNOTATION_SCHEMA_HASH
from vmguard.crds import KINDS
from vmguard.crds.peering import peering_crds

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
VMGUARD_CRDS = {kind.name for kind in KINDS}
PEERING_CRDS = {crd["metadata"]["name"] for crd in peering_crds()}

TYPOS = [
    ({"replica": 2}, "replica"),
    ({"proxy": {"vddk": {"mountpath": "/opt/vddk"}}}, "mountpath"),
    ({"serviceAccount": {"craete": False}}, "craete"),
    ({"crds": {"keeep": False}}, "keeep"),
    ({"replicas": "two"}, "replicas"),
]


@pytest.mark.unit
@pytest.mark.parametrize(("values", "word"), TYPOS, ids=[w for _, w in TYPOS])
def test_a_misspelt_value_fails_lint_and_template(
    helm: Path, tmp_path: Path, values: dict[str, Any], word: str
) -> None:
    for command in (("lint", "--strict"), ("template", "vmguard")):
        done = helm_result(helm, *command, str(CHART), values=values, tmp=tmp_path)
        assert done.returncode != 0, f"helm {command[0]} accepted {values}:\n{done.stdout}"
        assert word in done.stdout + done.stderr


def _copy_without_symlinks(source: Path, target: Path) -> Path:
    """The chart as Flux's Git source hands it to helm: symlinks are dropped."""
    for path in sorted(source.rglob("*")):
        if any(p.is_symlink() for p in (path, *path.parents) if p != source.parent):
            continue
        dest = target / path.relative_to(source)
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
    return target


@pytest.mark.unit
def test_a_chart_checked_out_without_symlinks_renders_every_crd(helm: Path, tmp_path: Path) -> None:
    chart = _copy_without_symlinks(CHART, tmp_path / "vmguard")
    done = helm_result(
        helm, "template", "vmguard", str(chart), "--include-crds", values={}, tmp=tmp_path
    )
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    crds = {d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"}
    assert crds == VMGUARD_CRDS | PEERING_CRDS


def _crds(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "CustomResourceDefinition"}


@pytest.mark.unit
def test_crds_follow_crds_enabled_keep_and_kopf_peering(render: Render) -> None:
    crds = _crds(render())
    assert set(crds) == VMGUARD_CRDS | PEERING_CRDS
    for crd in crds.values():
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # The annotation the operator compares with its own (vmguard.controller.kube.crdcheck).
    for kind in KINDS:
        annotations = crds[kind.name]["metadata"]["annotations"]
        assert annotations[ANNOTATION_SCHEMA_HASH] == kind.schema_hash()

    unkept = _crds(render({"crds": {"keep": False}}))
    assert set(unkept) == set(crds)
    assert not any("helm.sh/resource-policy" in (c["metadata"].get("annotations") or {})
                   for c in unkept.values())  # fmt: skip
    assert set(_crds(render({"crds": {"kopfPeering": False}}))) == VMGUARD_CRDS
    assert _crds(render({"crds": {"enabled": False}})) == {}


def _deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    return deployment


@pytest.mark.unit
def test_names_service_account_and_security_contexts_come_from_values(render: Render) -> None:
    docs = render(
        {
            "fullnameOverride": "backup-operator",
            "serviceAccount": {"create": False, "name": "platform-sa"},
            "podSecurityContext": {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001},
            "containerSecurityContext": {"readOnlyRootFilesystem": False},
        }
    )
    deployment = _deployment(docs)
    assert deployment["metadata"]["name"] == "backup-operator"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "platform-sa"
    assert not [d for d in docs if d["kind"] == "ServiceAccount"]
    bindings = [d for d in docs if d["kind"] in {"RoleBinding", "ClusterRoleBinding"}]
    assert bindings and all(b["subjects"][0]["name"] == "platform-sa" for b in bindings)
    # Maps merge with the defaults: the restricted profile's other fields stay.
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (c,) = pod["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}

    named = render({"nameOverride": "vmg"}, release="prod")
    assert _deployment(named)["metadata"]["name"] == "prod-vmg"
    assert [d["metadata"]["name"] for d in named if d["kind"] == "ServiceAccount"] == ["prod-vmg"]


@pytest.mark.unit
def test_serviceaccount_create_false_needs_a_name(helm: Path, tmp_path: Path) -> None:
    values = {"serviceAccount": {"create": False}}
    done = helm_result(helm, "template", "vmguard", str(CHART), values=values, tmp=tmp_path)
    assert done.returncode != 0 and "name" in done.stderr


@pytest.mark.unit
def test_disruption_budget_spread_volumes_and_pull_secrets(render: Render) -> None:
    assert not [d for d in render() if d["kind"] == "PodDisruptionBudget"], "one replica"
    digest = "sha256:" + "c" * 64
    docs = render(
        {
            "replicas": 2,
            "podDisruptionBudget": {"minAvailable": 1},
            "image": {"repository": "r.example/op", "digest": digest},
            "imagePullSecrets": [{"name": "regcred"}],
            "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}
            ],
            "extraVolumes": [{"name": "corp-ca", "configMap": {"name": "corp-ca"}}],
            "extraVolumeMounts": [{"name": "corp-ca", "mountPath": "/etc/corp-ca"}],
        }
    )
    (pdb,) = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"] == {
        "selector": _deployment(docs)["spec"]["selector"],
        "minAvailable": 1,
    }
    pod = _deployment(docs)["spec"]["template"]["spec"]
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["labelSelector"] == _deployment(docs)["spec"]["selector"]
    assert spread["topologyKey"] == "zone"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert {"name": "corp-ca", "configMap": {"name": "corp-ca"}} in pod["volumes"]
    (c,) = pod["containers"]
    assert c["image"] == f"r.example/op@{digest}"
    assert {"name": "corp-ca", "mountPath": "/etc/corp-ca"} in c["volumeMounts"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]

    single = render({"podDisruptionBudget": {"enabled": True}})
    (pdb,) = [d for d in single if d["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"]["maxUnavailable"] == 1


# ---- the lab apiserver -------------------------------------------------------------


@pytest.mark.lab
def test_a_misspelt_value_fails_helm_install_dry_run(
    helm: Path, lab: Any, namespaces: Callable[[], str], tmp_path: Path
) -> None:
    ns = namespaces()
    args = ("install", "typo", str(CHART), "--namespace", ns, "--dry-run=server")
    good = {"crds": {"enabled": False}}
    done = helm_result(helm, *args, values=good, tmp=tmp_path, kubeconfig=lab.paths.kubeconfig)
    assert done.returncode == 0, done.stderr  # the same install, spelt right, goes through
    bad = {**good, "tolerations": [{"key": "infra", "efect": "NoSchedule"}]}
    done = helm_result(helm, *args, values=bad, tmp=tmp_path, kubeconfig=lab.paths.kubeconfig)
    assert done.returncode != 0
    assert "efect" in done.stderr and "schema" in done.stderr


@pytest.mark.lab
def test_a_chart_checked_out_without_symlinks_installs_the_crds(
    helm: Path, lab: Any, kubectl_run: Kubectl, namespaces: Callable[[], str], tmp_path: Path
) -> None:
    """As Flux installs it from a Git source. The lab's CRDs are already installed (by
    the vmguard_crds fixture, not by a release), so the release's CRDs are checked with a
    server-side dry run: the apiserver accepts every one as the CRDs it replaces."""
    chart = _copy_without_symlinks(CHART, tmp_path / "vmguard")
    done = helm_result(helm, "template", "flux", str(chart), values={}, tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    crds = [
        d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] == "CustomResourceDefinition"
    ]
    assert {c["metadata"]["name"] for c in crds} == VMGUARD_CRDS | PEERING_CRDS
    # As JSON: PyYAML writes a property named "n" bare, which Go's YAML reads as false.
    items = json.dumps({"apiVersion": "v1", "kind": "List", "items": crds})
    applied = kubectl_run(
        "apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", "-", input=items
    )
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.count("serverside-applied (server dry run)") == len(crds)
