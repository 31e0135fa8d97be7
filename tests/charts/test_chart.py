"""The Helm chart: it lints, its rendering applies to the lab's real apiserver
(server-side dry run, CRDs first), and its RBAC is least privilege — checked both on
the rendered rules and by asking the apiserver what the operator's account may do."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.charts.conftest import CHART, Render, run_helm

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
MONITORING = {"ServiceMonitor", "PrometheusRule"}
RBAC_KINDS = {"ClusterRole", "Role"}


def non_default(namespaces: list[str]) -> dict[str, Any]:
    """Every toggle and placement value turned on, as a production install might."""
    return {
        "replicas": 2,
        "image": {"repository": "registry.example/vmguard/operator", "tag": "1.2.3"},
        "imagePullSecrets": [{"name": "regcred"}],
        "watch": {"namespaces": namespaces},
        "proxy": {
            "image": {"repository": "registry.example/vmguard/proxy", "tag": "1.2.3"},
            "command": ["/opt/vmguard/bin/vmguard"],
            "serviceAccountName": "backup-mover",
            "vddk": {
                "source": {"persistentVolumeClaim": {"claimName": "vddk"}},
                "mountPath": "/opt/vddk",
            },
        },
        "peering": {"name": "vmguard-prod", "lifetime": 30},
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        },
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "resources": {"requests": {"cpu": "200m", "memory": "300Mi"}, "limits": {"memory": "1Gi"}},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "vmguard"}},
                        },
                    }
                ]
            }
        },
        "priorityClassName": "system-cluster-critical",
        "extraEnv": [{"name": "TZ", "value": "Europe/Berlin"}],
        "logLevel": "DEBUG",
    }


def of_kind(docs: list[dict[str, Any]], *kinds: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in kinds]


def watch_rbac(docs: list[dict[str, Any]], *kinds: str) -> list[dict[str, Any]]:
    """The Roles/RoleBindings of the watched namespaces (not the CRD-events pair in
    "default", which every install has)."""
    return [d for d in of_kind(docs, *kinds) if not d["metadata"]["name"].endswith("-crd-events")]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = of_kind(docs, "Deployment")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(c)


def env(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container(docs)["env"]}


# ---- no cluster --------------------------------------------------------------------


@pytest.mark.unit
def test_helm_lint_passes_with_default_and_non_default_values(helm: Path, tmp_path: Path) -> None:
    for values in ({}, non_default(["team-a", "team-b"]), {"watch": {"allNamespaces": True}}):
        out = run_helm(helm, "lint", "--strict", str(CHART), values=values, tmp=tmp_path)
        assert "0 chart(s) failed" in out


@pytest.mark.unit
def test_default_rendering(render: Render) -> None:
    docs = render(namespace="backup")
    c = container(docs)
    assert c["image"] == "vmguard-operator:0.1.0"
    assert c["args"] == [
        "operator",
        "--namespace=backup",
        "--liveness=http://0.0.0.0:8081/healthz",
        "--metrics-port=8080",
        "--metrics-address=0.0.0.0",
    ]
    e = env(docs)
    assert e["VMGUARD_PROXY_IMAGE"] == "vmguard-proxy:0.1.0"
    assert e["VMGUARD_PROXY_LOCATOR"] == "vddk"
    assert e["VMGUARD_PROXY_SERVICE_ACCOUNT"] == "vmguard-proxy"
    assert "VMGUARD_PROXY_COMMAND" not in e and "VMGUARD_PROXY_VDDK_VOLUME" not in e
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert not of_kind(docs, "KopfPeering", "ClusterKopfPeering", *MONITORING)
    (role,) = watch_rbac(docs, "Role")
    assert role["metadata"]["namespace"] == "backup"
    crds = {d["metadata"]["name"] for d in of_kind(docs, "CustomResourceDefinition")}
    assert {"vmguardbackups.vmguard.io", "kopfpeerings.kopf.dev"} <= crds


@pytest.mark.unit
def test_non_default_rendering(render: Render) -> None:
    docs = render(non_default(["team-a", "team-b"]), namespace="vmguard-system")
    c = container(docs)
    assert c["image"] == "registry.example/vmguard/operator:1.2.3"
    assert "--namespace=team-a" in c["args"] and "--namespace=team-b" in c["args"]
    assert "--peering=vmguard-prod" in c["args"] and "--peering-lifetime=30" in c["args"]
    e = env(docs)
    assert json.loads(e["VMGUARD_PROXY_COMMAND"]) == ["/opt/vmguard/bin/vmguard"]
    assert json.loads(e["VMGUARD_PROXY_VDDK_VOLUME"]) == {
        "persistentVolumeClaim": {"claimName": "vddk"}
    }
    assert e["VMGUARD_PROXY_VDDK_PATH"] == "/opt/vddk"
    assert e["VMGUARD_PROXY_SERVICE_ACCOUNT"] == "backup-mover"
    assert e["TZ"] == "Europe/Berlin"
    (deployment,) = of_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["tolerations"][0]["key"] == "infra"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    peerings = of_kind(docs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert {p["metadata"]["name"] for p in peerings} == {"vmguard-prod"}
    assert sorted(r["metadata"]["namespace"] for r in watch_rbac(docs, "Role")) == [
        "team-a",
        "team-b",
    ]

    # The PrometheusRule carries files/alerts.yaml verbatim (what promtool tests).
    (rule,) = of_kind(docs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # The ServiceMonitor selects the metrics Service and names its port.
    (monitor,) = of_kind(docs, "ServiceMonitor")
    (service,) = of_kind(docs, "Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    # Whatever the release is called, the scrape job is "vmguard": VmguardOperatorDown
    # matches up{job="vmguard"}.
    assert {"targetLabel": "job", "replacement": "vmguard"} in monitor["spec"]["endpoints"][0][
        "relabelings"
    ]
    assert (
        service["spec"]["selector"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )


@pytest.mark.unit
def test_single_alerts_can_be_disabled_and_every_alert_can_get_labels(
    render: Render, helm: Path, tmp_path: Path
) -> None:
    values = {
        "prometheusRule": {
            "enabled": True,
            "disabled": {"VmguardStaleSnapshot": True, "VmguardUnprotectedVMs": True},
            "additionalRuleLabels": {"team": "infra", "severity": "page-everyone"},
            "additionalRuleAnnotations": {"dashboard": "https://grafana.example/d/vmguard"},
            "runbookBaseUrl": "https://wiki.example/ops/vmguard-runbooks/",
        }
    }
    (rule,) = of_kind(render(values), "PrometheusRule")
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    source = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    every = [r for g in source["groups"] for r in g["rules"]]
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    assert set(alerts) == {r["alert"] for r in every if "alert" in r} - {
        "VmguardStaleSnapshot",
        "VmguardUnprotectedVMs",
    }
    assert [r["record"] for r in rules if "record" in r] == [
        r["record"] for r in every if "record" in r
    ], "recording rules are never left out"
    for name, r in alerts.items():
        original = next(o for o in every if o.get("alert") == name)
        assert r["labels"]["team"] == "infra"
        assert r["labels"]["severity"] == original["labels"]["severity"], "the alert's own wins"
        assert r["annotations"]["dashboard"] == "https://grafana.example/d/vmguard"
        assert r["annotations"]["summary"] == original["annotations"]["summary"]
        anchor = original["annotations"]["runbook_url"].split("#")[1]
        assert r["annotations"]["runbook_url"] == (
            f"https://wiki.example/ops/vmguard-runbooks#{anchor}"
        ), "the runbooks where the values say, each alert at its own section"
        assert r["expr"] == original["expr"]
    # What the chart renders is still a valid rule file.
    rendered = tmp_path / "rendered-rules.yaml"
    rendered.write_text(yaml.safe_dump(rule["spec"]))
    checked = subprocess.run(
        ["promtool", "check", "rules", str(rendered)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # A name that is no alert of ours (a typo) fails the rendering instead of doing nothing.
    typo = {"prometheusRule": {"enabled": True, "disabled": {"VmguardStaleSnapshots": True}}}
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(typo))
    done = subprocess.run(
        [str(helm), "template", "v", str(CHART), "--values", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "HELM_CACHE_HOME": str(tmp_path / "c"),
            "HELM_CONFIG_HOME": str(tmp_path / "f"),
        },
    )
    assert done.returncode != 0
    assert "VmguardStaleSnapshots, which is no vmguard alert" in done.stderr


@pytest.mark.unit
def test_the_dashboard_ships_as_a_sidecar_configmap_unless_disabled(render: Render) -> None:
    (board,) = of_kind(render(namespace="backup"), "ConfigMap")
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert board["metadata"]["namespace"] == "backup"
    shipped = json.loads(board["data"]["vmguard.json"])
    assert shipped == json.loads((CHART / "files" / "dashboard.json").read_text())
    moved = render(
        {"dashboard": {"namespace": "monitoring", "annotations": {"grafana_folder": "Backup"}}}
    )
    (board,) = of_kind(moved, "ConfigMap")
    assert board["metadata"]["namespace"] == "monitoring"
    assert board["metadata"]["annotations"] == {"grafana_folder": "Backup"}
    assert not of_kind(render({"dashboard": {"enabled": False}}), "ConfigMap")


@pytest.mark.unit
def test_images_by_digest_and_proxy_pod_annotations(render: Render) -> None:
    op, px = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    docs = render(
        {
            "image": {"repository": "r.example/operator", "tag": "9", "digest": op},
            "proxy": {
                "image": {"repository": "r.example/proxy", "digest": px},
                "podAnnotations": {"example.com/mesh": "off"},
            },
        }
    )
    assert container(docs)["image"] == f"r.example/operator@{op}"  # the digest wins
    e = env(docs)
    assert e["VMGUARD_PROXY_IMAGE"] == f"r.example/proxy@{px}"
    assert json.loads(e["VMGUARD_PROXY_POD_ANNOTATIONS"]) == {"example.com/mesh": "off"}
    assert "VMGUARD_PROXY_POD_ANNOTATIONS" not in env(render({}))


@pytest.mark.unit
def test_cluster_wide_rendering_uses_a_cluster_role_and_peering(render: Render) -> None:
    docs = render({"watch": {"allNamespaces": True}, "replicas": 2})
    assert "--all-namespaces" in container(docs)["args"]
    assert not watch_rbac(docs, "Role", "RoleBinding", "KopfPeering")
    assert len(of_kind(docs, "ClusterKopfPeering")) == 1
    names = {r["metadata"]["name"] for r in of_kind(docs, "ClusterRole")}
    assert names == {
        "vmguard-vmguard",
        "vmguard-vmguard-discovery",
        "vmguard-view",
        "vmguard-edit",
    }


AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"


def _aggregated(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        r["metadata"]["name"].rsplit("-", 1)[1]: r
        for r in of_kind(docs, "ClusterRole")
        if any(k.startswith(AGGREGATE) for k in r["metadata"]["labels"])
    }


def _grants(role: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (resource, verb)
        for rule in role["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        if rule["apiGroups"] == ["vmguard.io"]
    }


@pytest.mark.unit
def test_aggregated_view_and_edit_roles_follow_the_tenancy_model(render: Render) -> None:
    roles = _aggregated(render())
    assert set(roles) == {"view", "edit"}
    labels = {
        name: {k for k in r["metadata"]["labels"] if k.startswith(AGGREGATE)}
        for name, r in roles.items()
    }
    assert labels["view"] == {AGGREGATE + "view", AGGREGATE + "edit", AGGREGATE + "admin"}
    assert labels["edit"] == {AGGREGATE + "edit", AGGREGATE + "admin"}
    for role in roles.values():
        for rule in role["rules"]:
            assert rule["apiGroups"] == ["vmguard.io"], rule  # nothing on Secrets or any core kind
    kinds = [
        "vcenters",
        "vmguardrepositories",
        "vmprotectionpolicies",
        "vmguardbackups",
        "vmguardrestores",
        "protectedvms",
    ]
    view = _grants(roles["view"])
    assert {(k, v) for k in kinds for v in ("get", "list", "watch")} <= view
    assert {v for _, v in view} == {"get", "list", "watch"}
    edit = _grants(roles["edit"])
    assert {
        (k, v) for k in ("vmguardbackups", "vmguardrestores") for v in ("create", "delete")
    } <= edit
    # Tenants never change where credentials come from, nor what the operator recorded.
    assert not {k for k, _ in edit} & {"vcenters", "vmguardrepositories", "vmprotectionpolicies"}
    # ProtectedVMs are the operator's record of a VM's restore points: read-only to tenants.
    assert not {k for k, _ in edit} & {"protectedvms"}
    assert not any(k.endswith("/status") for k, _ in edit)


@pytest.mark.unit
def test_aggregated_roles_can_be_disabled(render: Render) -> None:
    assert set(_aggregated(render({"aggregatedRoles": {"edit": False}}))) == {"view"}
    assert not _aggregated(render({"aggregatedRoles": {"view": False, "edit": False}}))


@pytest.mark.unit
@pytest.mark.parametrize(
    "values",
    [{}, non_default(["team-a"]), {"watch": {"allNamespaces": True}}],
    ids=["default", "non-default", "cluster-wide"],
)
def test_rbac_has_no_wildcard_and_secrets_are_get_only(
    render: Render, values: dict[str, Any]
) -> None:
    rules = [rule for doc in of_kind(render(values), *RBAC_KINDS) for rule in doc["rules"]]
    assert rules
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            assert not any("*" in item for item in rule.get(field, [])), rule
    secret_rules = [r for r in rules if "secrets" in r["resources"]]
    assert secret_rules and all(r["verbs"] == ["get"] for r in secret_rules)
    assert all(r["apiGroups"] == [""] for r in secret_rules)


# ---- the lab apiserver -------------------------------------------------------------


def _apply_dry_run(kubectl_run: Kubectl, docs: list[dict[str, Any]]) -> str:
    stream = yaml.safe_dump_all(docs)
    done = kubectl_run("apply", "--dry-run=server", "-f", "-", input=stream)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.lab
def test_rendered_chart_applies_to_the_lab_apiserver(
    render: Render, kubectl_run: Kubectl, namespaces: Callable[[], str]
) -> None:
    # The CRDs are installed by the vmguard_crds fixture (as `helm install` installs
    # crds/ first); everything else is dry-run applied by the real apiserver.
    release_ns, team_a, team_b = namespaces(), namespaces(), namespaces()
    for values in ({}, non_default([team_a, team_b]), {"watch": {"allNamespaces": True}}):
        docs = [
            d
            for d in render(values, namespace=release_ns)
            if d["kind"] != "CustomResourceDefinition"
        ]
        # prometheus-operator's CRDs are not in the lab (test_non_default_rendering
        # checks those two objects against the Service and files/alerts.yaml).
        out = _apply_dry_run(kubectl_run, [d for d in docs if d["kind"] not in MONITORING])
        assert "deployment.apps/vmguard created (server dry run)" in out


@pytest.mark.lab
def test_the_operators_account_may_do_what_it_needs_and_no_more(
    render: Render, kubectl_run: Kubectl, namespaces: Callable[[], str]
) -> None:
    ns = namespaces()
    release = f"rbac-{ns.rsplit('-', 1)[1]}"
    docs = render({}, namespace=ns, release=release)
    access = [
        d
        for d in docs
        if d["kind"] in {"ServiceAccount", *RBAC_KINDS, "RoleBinding", "ClusterRoleBinding"}
    ]
    done = kubectl_run("apply", "-f", "-", input=yaml.safe_dump_all(access))
    assert done.returncode == 0, done.stderr
    sa = f"system:serviceaccount:{ns}:{release}-vmguard"

    def can(verb: str, resource: str, namespace: str = ns) -> bool:
        out = kubectl_run("auth", "can-i", verb, resource, "--as", sa, "-n", namespace)
        return out.stdout.strip() == "yes"

    try:
        allowed = [
            ("get", "secrets"),
            ("watch", "vcenters.vmguard.io"),
            ("patch", "vmguardbackups.vmguard.io/status"),
            ("create", "vmguardbackups.vmguard.io"),
            ("create", "jobs.batch"),
            ("list", "pods"),
            ("create", "events"),
            ("create", "roles.rbac.authorization.k8s.io"),
            ("update", "roles.rbac.authorization.k8s.io"),
            ("create", "serviceaccounts"),
            ("patch", "kopfpeerings.kopf.dev"),
            ("get", "namespaces"),  # the labels that say whether a proxy may be privileged
            ("list", "nodes"),  # which nodes are VMs that could hot-add
        ]
        denied = [
            ("list", "secrets"),
            ("watch", "secrets"),
            ("create", "secrets"),
            ("delete", "vcenters.vmguard.io"),
            ("update", "vmguardbackups.vmguard.io/status"),
            ("create", "pods"),
            ("delete", "roles.rbac.authorization.k8s.io"),
            ("create", "kopfpeerings.kopf.dev"),
            ("create", "leases.coordination.k8s.io"),
            ("patch", "namespaces"),
            ("patch", "nodes"),
        ]
        assert [a for a in allowed if not can(*a)] == []
        assert [d for d in denied if can(*d)] == []
        assert not can("get", "secrets", "default"), "only in the namespaces it watches"
        # ...but Events about a CRD (cluster-scoped) go to "default": create only there.
        assert can("create", "events", "default") and not can("list", "events", "default")

        # The proxy's Role the operator creates per namespace is no escalation for it...
        proxy_role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "vmguard-proxy", "namespace": ns},
            "rules": [
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
            ],
        }
        as_operator = ("--as", sa, "create", "--dry-run=server", "-f", "-")
        done = kubectl_run(*as_operator, input=json.dumps(proxy_role))
        assert done.returncode == 0, done.stderr
        # ...but it cannot hand out what it does not hold (listing Secrets).
        proxy_role["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]})
        done = kubectl_run(*as_operator, input=json.dumps(proxy_role))
        assert done.returncode != 0 and "forbidden" in done.stderr.lower()
    finally:
        cluster = [
            d
            for d in access
            if d["kind"] in {"ClusterRole", "ClusterRoleBinding"}
            or d["metadata"].get("namespace") == "default"
        ]
        kubectl_run("delete", "-f", "-", "--wait=false", input=yaml.safe_dump_all(cluster))
