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

from vmguard.api import ANNOTATION_SCHEMA_HASH, GROUP, VERSION
from vmguard.api.kinds import POLICY
from vmguard.config import ProxySettings
from vmguard.crds import KINDS
from vmguard.crds.peering import peering_crds
from vmguard_lab.procs import eventually

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
VMGUARD_CRDS = {kind.name for kind in KINDS}
PEERING_CRDS = {crd["metadata"]["name"] for crd in peering_crds()}

TYPOS = [
    ({"replica": 2}, "replica"),
    ({"proxy": {"vddk": {"mountpath": "/opt/vddk"}}}, "mountpath"),
    ({"proxy": {"nodeSelecter": {"disktype": "ssd"}}}, "nodeSelecter"),
    ({"proxy": {"tolerations": [{"key": "gpu", "efect": "NoSchedule"}]}}, "efect"),
    ({"serviceAccount": {"craete": False}}, "craete"),
    ({"crds": {"keeep": False}}, "keeep"),
    ({"replicas": "two"}, "replicas"),
    ({"prometheusRule": {"disable": {"VmguardBackupFailed": True}}}, "disable"),
    ({"dashboard": {"enable": False}}, "enable"),
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


PROXY_POD = {
    "imagePullSecrets": [{"name": "regcred"}],
    "nodeSelector": {"vmguard.io/proxy": "true"},
    "tolerations": [{"key": "backup", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                ]
            }
        }
    },
    "priorityClassName": "backup-proxies",
    "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
}


@pytest.mark.unit
def test_proxy_pod_settings_reach_the_operators_config(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `helm template` puts into the operator's environment is what the operator
    reads (vmguard.config.ProxySettings); the builders' tests and the lab test below take
    it from there to the Job."""
    (c,) = _deployment(render({"proxy": PROXY_POD}))["spec"]["template"]["spec"]["containers"]
    for var in c["env"]:
        if "value" in var:
            monkeypatch.setenv(var["name"], var["value"])
    settings = ProxySettings.from_env()
    assert settings.image_pull_secrets == ("regcred",)
    assert settings.node_selector == PROXY_POD["nodeSelector"]
    assert list(settings.tolerations) == PROXY_POD["tolerations"]
    assert settings.affinity == PROXY_POD["affinity"]
    assert settings.priority_class == "backup-proxies"
    assert settings.resources == PROXY_POD["resources"]

    (c,) = _deployment(render())["spec"]["template"]["spec"]["containers"]
    names = {var["name"] for var in c["env"]}
    assert not {n for n in names if "NODE_SELECTOR" in n or "TOLERATIONS" in n}, "unset: none"


def _policy(name: str, proxy: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": POLICY.kind,
        "metadata": {"name": name},
        "spec": {
            "vcenterRef": {"name": "lab"},
            "repositoryRef": {"name": "repo"},
            "schedule": {"cron": "0 1 * * *"},
            "retention": {"keepLast": 3},
            "selector": {"names": ["db-*"]},
            "proxy": proxy,
        },
    }


@pytest.mark.lab
def test_a_policy_may_set_only_the_proxy_settings_the_chart_allows(
    render: Render, kubectl_run: Kubectl, namespaces: Callable[[], str]
) -> None:
    """The chart's ValidatingAdmissionPolicy, rendered from proxy.policyMay, in the lab's
    real apiserver: a system priority class, a control-plane toleration and a node label
    nobody allowed are refused with a message naming them; what is allowed is accepted."""
    may = {
        "priorityClassNames": ["backup-low"],
        "nodeSelectorKeys": ["topology.kubernetes.io/zone"],
        "tolerationKeys": ["dedicated-backup"],
    }
    admission = [
        d
        for d in render({"proxy": {"policyMay": may}}, namespace=namespaces())
        if d["kind"].startswith("ValidatingAdmissionPolicy")
    ]
    assert len(admission) == 2
    ns = namespaces()
    done = kubectl_run(
        "apply",
        "-f",
        "-",
        input=json.dumps({"kind": "List", "apiVersion": "v1", "items": admission}),
    )
    assert done.returncode == 0, done.stderr
    try:

        def create(name: str, proxy: dict[str, Any]) -> subprocess.CompletedProcess[str]:
            return kubectl_run(
                "create", "-n", ns, "-f", "-", input=json.dumps(_policy(name, proxy))
            )

        # The binding takes effect once the apiserver has loaded it: wait for a refusal
        # (a policy accepted before that is deleted again).
        system = {"priorityClassName": "system-cluster-critical"}

        def refused_system() -> subprocess.CompletedProcess[str] | None:
            done = create("system", system)
            if done.returncode == 0:
                kubectl_run("delete", POLICY.plural, "system", "-n", ns)
                return None
            return done

        refused = eventually(refused_system, timeout=60, what="the admission policy in force")
        assert "system-cluster-critical is not a priority class policies may use" in refused.stderr
        assert "backup-low" in refused.stderr

        control_plane = {
            "tolerations": [
                {
                    "key": "node-role.kubernetes.io/control-plane",
                    "operator": "Exists",
                    "effect": "NoSchedule",
                }
            ]
        }
        refused = create("control-plane", control_plane)
        assert refused.returncode != 0
        assert (
            "node-role.kubernetes.io/control-plane is not a taint policies may tolerate"
            in refused.stderr
        )

        refused = create("hostname", {"nodeSelector": {"kubernetes.io/hostname": "node-1"}})
        assert refused.returncode != 0
        assert "kubernetes.io/hostname is not a node label policies may select on" in refused.stderr

        # A toleration without a key (every taint) is refused by the CRD itself.
        refused = create("any-taint", {"tolerations": [{"operator": "Exists"}]})
        assert refused.returncode != 0 and "key" in refused.stderr

        allowed = {
            "priorityClassName": "backup-low",
            "nodeSelector": {"topology.kubernetes.io/zone": "a"},
            "tolerations": [{"key": "dedicated-backup", "operator": "Exists"}],
        }
        done = create("allowed", allowed)
        assert done.returncode == 0, done.stderr
    finally:
        kubectl_run(
            "delete",
            "-f",
            "-",
            input=json.dumps({"kind": "List", "apiVersion": "v1", "items": admission}),
        )
