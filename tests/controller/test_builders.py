"""The pure builders: proxy Job and proxy RBAC, checked without a cluster."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from vmguard.api.kinds import RESTORE
from vmguard.config import ProxyAllowance, ProxySettings
from vmguard.controller.backup import builders
from vmguard.controller.kube import proxyjob
from vmguard.controller.kube.jobs import job_state
from vmguard.controller.restore import builders as restore_builders
from vmguard.errors import ProxySettingsNotAllowed

pytestmark = pytest.mark.unit

SETTINGS = ProxySettings(
    image="registry.example/vmguard-proxy:1.2.3",
    command=("vmguard",),
    locator="vddk",
    service_account="vmguard-proxy",
    image_pull_policy="IfNotPresent",
)
BACKUP = {
    "apiVersion": "vmguard.io/v1alpha1",
    "kind": "VMGuardBackup",
    "metadata": {"name": "db-1-20250101", "namespace": "prod", "uid": "1234-uid"},
    "spec": {"vm": {"name": "db-1"}, "policyRef": {"name": "gold"}},
    "status": {"vm": {"moref": "vm-42", "name": "db-1"}},
}
VCENTER = {
    "host": "vc.example",
    "credentialsSecretRef": {"name": "vc-creds"},
    "tls": {"caSecretRef": {"name": "vc-ca"}},
}
REPOSITORY = {
    "s3": {"endpoint": "minio:9000", "bucket": "backups", "prefix": "site-a", "insecure": True},
    "credentialsSecretRef": {"name": "s3-creds"},
    "encryption": {"keySecretRef": {"name": "repo-key", "key": "k"}},
}


def _job(transport: str = "nbd", **kw: Any) -> dict[str, Any]:
    return builders.build_backup_job(
        BACKUP,
        SETTINGS,
        vcenter=VCENTER,
        repository=REPOSITORY,
        attempt=2,
        transport=transport,
        active_deadline=600,
        ttl=120,
        **kw,
    )


def _container(job: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = job["spec"]["template"]["spec"]["containers"][0]
    return container


def test_backup_job_shape_owner_labels_and_retry_policy() -> None:
    job = _job()
    meta, spec = job["metadata"], job["spec"]
    assert meta["name"] == "db-1-20250101-2" and meta["namespace"] == "prod"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "vmguard.io/v1alpha1",
            "kind": "VMGuardBackup",
            "name": "db-1-20250101",
            "uid": "1234-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    labels = meta["labels"]
    assert labels["vmguard.io/vmbackup"] == "db-1-20250101"
    assert labels["vmguard.io/vmbackup-uid"] == "1234-uid"
    assert labels["vmguard.io/vm"] == "vm-42" and labels["vmguard.io/policy"] == "gold"
    assert labels["app.kubernetes.io/name"] == "vmguard-proxy"
    assert labels["app.kubernetes.io/component"] == "backup"
    assert spec["template"]["metadata"]["labels"] == labels
    assert spec["backoffLimit"] == 0
    assert (spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (600, 120)
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == "vmguard-proxy"
    c = _container(job)
    assert c["image"] == SETTINGS.image and c["command"] == ["vmguard"]
    assert c["args"] == ["proxy", "backup", "--namespace", "prod", "--name", "db-1-20250101"]
    assert c["resources"]["limits"]["memory"]
    assert _job() == job, "deterministic: the same input gives the same Job"


def test_credentials_only_by_reference_and_key_as_read_only_file() -> None:
    job = _job()
    c = _container(job)
    env = {e["name"]: e for e in c["env"]}
    for name, secret, key in [
        ("VMGUARD_VC_USER", "vc-creds", "username"),
        ("VMGUARD_VC_PASSWORD", "vc-creds", "password"),
        ("VMGUARD_S3_ACCESS_KEY", "s3-creds", "accessKeyID"),
        ("VMGUARD_S3_SECRET_KEY", "s3-creds", "secretAccessKey"),
    ]:
        assert "value" not in env[name]
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": key}
    assert env["VMGUARD_VC_URL"]["value"] == "https://vc.example:443/sdk"
    assert env["VMGUARD_REPO"]["value"] == "s3+http://minio:9000/backups/site-a"
    assert env["VMGUARD_PROXY_LOCATOR"]["value"] == "vddk"
    assert env["VMGUARD_TRANSPORT"]["value"] == "nbd"
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["repository-key"]["secret"]["secretName"] == "repo-key"
    assert volumes["repository-key"]["secret"]["items"] == [{"key": "k", "path": "key"}]
    assert volumes["vcenter-ca"]["secret"]["secretName"] == "vc-ca"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert all(m["readOnly"] for n, m in mounts.items() if n != "scratch")
    assert env["VMGUARD_KEY_FILE"]["value"] == mounts["repository-key"]["mountPath"] + "/key"
    assert env["VMGUARD_VC_CA_FILE"]["value"].startswith(mounts["vcenter-ca"]["mountPath"])


def test_restricted_security_context_unless_hotadd_may_be_used() -> None:
    nbd = _job("nbd")
    pod = nbd["spec"]["template"]["spec"]["securityContext"]
    c = _container(nbd)["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["allowPrivilegeEscalation"] is False and c["capabilities"] == {"drop": ["ALL"]}
    assert c["privileged"] is False
    for transport in ("hotadd", "auto"):
        c = _container(_job(transport))["securityContext"]
        assert c["privileged"] is True, transport


def test_a_hot_add_proxy_is_pinned_to_the_nodes_that_can_hot_add() -> None:
    assert "affinity" not in _job("auto")["spec"]["template"]["spec"]
    job = builders.build_backup_job(
        BACKUP,
        SETTINGS,
        vcenter=VCENTER,
        repository=REPOSITORY,
        attempt=1,
        transport="auto",
        nodes=("node-b", "node-c"),
    )
    affinity = job["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    terms = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [
        {
            "matchFields": [
                {"key": "metadata.name", "operator": "In", "values": ["node-b", "node-c"]}
            ]
        }
    ]


def test_thumbprint_and_inline_ca_are_values_and_a_long_name_is_bounded() -> None:
    vc = {**VCENTER, "tls": {"thumbprint": "AB:" * 19 + "CD"}}
    job = builders.build_backup_job(
        {**BACKUP, "metadata": {**BACKUP["metadata"], "name": "x" * 200}},
        SETTINGS,
        vcenter=vc,
        repository={
            "s3": {"endpoint": "s3.example", "bucket": "b", "region": "eu-1"},
            "credentialsSecretRef": {"name": "s"},
        },
        attempt=12,
    )
    name = job["metadata"]["name"]
    assert len(name) <= 63 and name.endswith("-12") and name.startswith("x" * 40)
    assert len(job["metadata"]["labels"]["vmguard.io/vmbackup"]) <= 63
    env = {e["name"]: e for e in _container(job)["env"]}
    assert env["VMGUARD_VC_THUMBPRINT"]["value"] == "AB:" * 19 + "CD"
    assert env["VMGUARD_REPO"]["value"] == "s3://s3.example/b?region=eu-1"
    assert [v["name"] for v in job["spec"]["template"]["spec"]["volumes"]] == ["scratch"]
    other = proxyjob.job_name("x" * 199 + "y", 12)
    assert other != name and len(other) <= 63


def test_no_secret_value_can_reach_the_job() -> None:
    text = json.dumps(_job())
    assert "secretKeyRef" in text
    for word in ('password":', 'secretAccessKey": "'):
        assert word not in text


def test_proxy_rbac_allows_reading_its_kinds_and_patching_status_only() -> None:
    sa, role, binding = proxyjob.build_proxy_rbac("prod", "vmguard-proxy")
    assert (sa["kind"], sa["metadata"]["name"], sa["metadata"]["namespace"]) == (
        "ServiceAccount",
        "vmguard-proxy",
        "prod",
    )
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
    assert "*" not in json.dumps(role)
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "vmguard-proxy", "namespace": "prod"}
    ]


def test_job_state_reads_complete_failed_and_running() -> None:
    def job(*conds: dict[str, str]) -> dict[str, Any]:
        return {"metadata": {"name": "j"}, "status": {"conditions": list(conds)}}

    assert job_state(job()).active
    done = job_state(job({"type": "Complete", "status": "True"}))
    assert done.succeeded and not done.active
    failed = job_state(
        job(
            {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"},
            {
                "type": "Failed",
                "status": "True",
                "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit",
                "lastTransitionTime": "2025-01-01T00:00:00Z",
            },
        )
    )
    assert failed.failed and failed.reason == "BackoffLimitExceeded"
    assert failed.finished_at is not None and failed.finished_at.year == 2025


def test_the_user_supplied_vddk_volume_is_mounted_read_only_where_nbdkit_looks() -> None:
    vddk = dataclasses.replace(
        SETTINGS,
        vddk_volume={"persistentVolumeClaim": {"claimName": "vddk-8"}},
        vddk_path="/opt/vddk",
    )
    job = builders.build_backup_job(BACKUP, vddk, vcenter=VCENTER, repository=REPOSITORY, attempt=1)
    pod = job["spec"]["template"]["spec"]
    assert {"name": "vddk", "persistentVolumeClaim": {"claimName": "vddk-8"}} in pod["volumes"]
    container = _container(job)
    assert {"name": "vddk", "mountPath": "/opt/vddk", "readOnly": True} in container["volumeMounts"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VMGUARD_PROXY_VDDK_PATH"] == "/opt/vddk"
    plain = builders.build_backup_job(
        BACKUP, SETTINGS, vcenter=VCENTER, repository=REPOSITORY, attempt=1
    )
    assert "vddk" not in json.dumps(plain["spec"]["template"]["spec"]["volumes"])


def test_a_non_root_proxy_can_read_its_secret_volumes_and_carries_the_pod_annotations() -> None:
    # Secret files are root-owned with the Secret's mode (0400) unless fsGroup names the
    # group that owns them: without it the non-root proxy cannot read its repository key.
    pod = _job("nbd")["spec"]["template"]["spec"]
    key = next(v for v in pod["volumes"] if v["name"] == proxyjob.KEY_VOLUME)
    assert key["secret"]["defaultMode"] == 0o400
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"] == 65532
    annotated = dataclasses.replace(SETTINGS, pod_annotations={"example.com/a": "b"})
    job = builders.build_backup_job(
        BACKUP, annotated, vcenter=VCENTER, repository=REPOSITORY, attempt=1,
        transport="nbd", active_deadline=600, ttl=120,
    )  # fmt: skip
    assert job["spec"]["template"]["metadata"]["annotations"] == {"example.com/a": "b"}
    assert "annotations" not in _job()["spec"]["template"]["metadata"]


PLACED = dataclasses.replace(
    SETTINGS,
    image_pull_secrets=("regcred",),
    node_selector={"vmguard.io/proxy": "true"},
    tolerations=({"key": "backup", "operator": "Exists", "effect": "NoSchedule"},),
    affinity={"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
    priority_class="backup-proxies",
    resources={"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
    policy_may=ProxyAllowance(
        priority_class_names=frozenset({"backup-high"}),
        node_selector_keys=frozenset({"topology.kubernetes.io/zone"}),
        toleration_keys=frozenset({"dedicated-backup"}),
    ),
)


def test_the_charts_pod_settings_go_on_every_proxy_job() -> None:
    restore = {
        "apiVersion": "vmguard.io/v1alpha1",
        "kind": RESTORE.kind,
        "metadata": {"name": "r", "namespace": "prod", "uid": "5678-uid"},
        "spec": {"source": {"backupRef": {"name": "b"}}, "target": {"vm": {"name": "x"}}},
    }
    backup = builders.build_backup_job(
        BACKUP, PLACED, vcenter=VCENTER, repository=REPOSITORY, attempt=1, transport="hotadd"
    )
    restored = restore_builders.build_restore_job(
        restore, PLACED, repository=REPOSITORY, vcenter=VCENTER
    )
    for job in (backup, restored):
        pod = job["spec"]["template"]["spec"]
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        assert pod["nodeSelector"] == {"vmguard.io/proxy": "true"}
        assert pod["tolerations"] == [
            {"key": "backup", "operator": "Exists", "effect": "NoSchedule"}
        ]
        assert pod["affinity"] == PLACED.affinity
        assert pod["priorityClassName"] == "backup-proxies"
        assert pod["containers"][0]["resources"] == PLACED.resources
        assert pod["affinity"] is not PLACED.affinity, "a copy: a caller's edit stays its own"

    pod = _job()["spec"]["template"]["spec"]
    for key in ("imagePullSecrets", "nodeSelector", "tolerations", "affinity", "priorityClassName"):
        assert key not in pod, f"unset: no {key}"
    assert pod["containers"][0]["resources"] == proxyjob.DEFAULT_RESOURCES


def test_a_policy_adds_to_the_charts_pod_settings_only_what_the_chart_allows() -> None:
    own = {"key": "dedicated-backup", "operator": "Exists"}
    pod = proxyjob.policy_pod(
        PLACED,
        {
            "priorityClassName": "backup-high",
            "nodeSelector": {"topology.kubernetes.io/zone": "a"},
            "tolerations": [own],
        },
    )
    assert pod["priorityClassName"] == "backup-high"
    assert pod["nodeSelector"] == {"vmguard.io/proxy": "true", "topology.kubernetes.io/zone": "a"}
    assert pod["tolerations"] == [*PLACED.tolerations, own]
    job = builders.build_backup_job(
        BACKUP,
        PLACED,
        vcenter=VCENTER,
        repository=REPOSITORY,
        attempt=1,
        policy_proxy={"tolerations": [own]},
    )
    assert job["spec"]["template"]["spec"]["tolerations"] == [*PLACED.tolerations, own]
    assert proxyjob.policy_pod(PLACED, None) == proxyjob.pod_placement(PLACED)

    refused = [
        (
            {"priorityClassName": "system-cluster-critical"},
            "system-cluster-critical",
            "backup-high",
        ),
        ({"nodeSelector": {"kubernetes.io/hostname": "n1"}}, "kubernetes.io/hostname", "zone"),
        (
            {
                "tolerations": [
                    {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}
                ]
            },
            "node-role.kubernetes.io/control-plane",
            "dedicated-backup",
        ),
        ({"tolerations": [{"operator": "Exists"}]}, "(every taint)", "dedicated-backup"),
    ]
    for proxy, named, listed in refused:
        with pytest.raises(ProxySettingsNotAllowed) as exc:
            proxyjob.policy_pod(PLACED, proxy)
        assert named in str(exc.value) and listed in str(exc.value)
    with pytest.raises(ProxySettingsNotAllowed, match=r"policyMay\.priorityClassNames: none"):
        proxyjob.policy_pod(SETTINGS, {"priorityClassName": "backup-high"})


@pytest.mark.unit
def test_a_hot_add_node_pin_narrows_the_placement_it_is_given() -> None:
    # The chart's (or a policy's) required node affinity keeps holding: the node names
    # are ANDed into each of its terms, never put in place of them.
    ssd = {"key": "disktype", "operator": "In", "values": ["ssd"]}
    chart = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [ssd]}]
            }
        },
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []},
    }
    pinned = proxyjob.only_on_nodes(chart, ["esx-proxy-1"])
    terms = pinned["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    by_name = {"key": "metadata.name", "operator": "In", "values": ["esx-proxy-1"]}
    assert terms == [{"matchExpressions": [ssd], "matchFields": [by_name]}]
    assert pinned["podAntiAffinity"] == chart["podAntiAffinity"]
    assert (
        "matchFields"
        not in chart["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
            "nodeSelectorTerms"
        ][0]
    )  # the caller's value is left as it was
    assert proxyjob.only_on_nodes(None, ["n1"])["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ] == {"nodeSelectorTerms": [{"matchFields": [{**by_name, "values": ["n1"]}]}]}
