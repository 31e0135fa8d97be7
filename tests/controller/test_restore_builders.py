"""Unit tests of the restore Job and the proxy identity builders: pure functions, no cluster."""

from __future__ import annotations

import json
from typing import Any

import pytest

from vmguard.config import ProxySettings
from vmguard.controller.kube import proxyjob
from vmguard.controller.restore import builders
from vmguard.controller.restore.targets import _inside

pytestmark = pytest.mark.unit

SETTINGS = ProxySettings(
    image="vmguard-proxy:1.2.3",
    command=("vmguard",),
    locator="vddk",
    service_account="vmguard-proxy",
    image_pull_policy="IfNotPresent",
)


def _restore(target: dict[str, Any], name: str = "restore-web.1") -> dict[str, Any]:
    return {
        "apiVersion": "vmguard.io/v1alpha1",
        "kind": "VMGuardRestore",
        "metadata": {
            "name": name,
            "namespace": "ops",
            "uid": "0b6c1f9e-2f4a-4c55-9d0e-6a7b8c9d0e1f",
        },
        "spec": {"source": {"backupRef": {"name": "web-1"}}, "target": target},
    }


REPO = {
    "metadata": {"name": "repo", "namespace": "ops"},
    "spec": {
        "s3": {"endpoint": "minio:9000", "bucket": "backups", "prefix": "vm", "insecure": True},
        "credentialsSecretRef": {"name": "repo-s3"},
        "encryption": {"keySecretRef": {"name": "repo-key"}},
    },
}
VCENTER = {
    "metadata": {"name": "lab", "namespace": "ops"},
    "spec": {
        "host": "vc.example",
        "credentialsSecretRef": {"name": "vc-creds", "usernameKey": "user"},
        "tls": {"thumbprint": "AA:BB"},
    },
}


def _job(target: dict[str, Any], vcenter: bool = True) -> dict[str, Any]:
    return builders.build_restore_job(
        _restore(target),
        SETTINGS,
        repository=REPO["spec"],
        vcenter=VCENTER["spec"] if vcenter else None,
    )


def test_restore_job_runs_the_proxy_as_the_restore_s_owned_job() -> None:
    job = _job({"newVM": {"name": "web"}})
    meta = job["metadata"]
    assert meta["name"] == "vmr-restore-web.1-0b6c1f9e"
    assert meta["name"] == builders.restore_job_name(_restore({}))
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "vmguard.io/v1alpha1",
            "kind": "VMGuardRestore",
            "name": "restore-web.1",
            "uid": "0b6c1f9e-2f4a-4c55-9d0e-6a7b8c9d0e1f",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert meta["labels"]["vmguard.io/vmrestore"] == "restore-web.1"
    spec = job["spec"]
    assert spec["backoffLimit"] == 0 and spec["ttlSecondsAfterFinished"] > 0
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "vmguard-proxy"
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["image"] == "vmguard-proxy:1.2.3"
    assert container["command"] + container["args"] == [
        "vmguard",
        "proxy",
        "restore",
        "--namespace",
        "ops",
        "--name",
        "restore-web.1",
    ]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert {"name": "scratch", "mountPath": proxyjob.SCRATCH_DIR} in container["volumeMounts"]


def test_secrets_are_references_never_values() -> None:
    env = {
        e["name"]: e
        for e in _job({"newVM": {"name": "web"}})["spec"]["template"]["spec"]["containers"][0][
            "env"
        ]
    }
    assert env["VMGUARD_REPO"]["value"] == "s3+http://minio:9000/backups/vm"
    assert env["VMGUARD_S3_ACCESS_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "repo-s3", "key": "accessKeyID"}
    }
    assert env["VMGUARD_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "secretAccessKey"
    assert env["VMGUARD_KEY_FILE"]["value"].startswith(proxyjob.SECRETS_DIR)
    (key_volume,) = [
        v
        for v in _job({"newVM": {"name": "web"}})["spec"]["template"]["spec"]["volumes"]
        if "secret" in v
    ]
    assert key_volume["secret"]["secretName"] == "repo-key"
    assert env["VMGUARD_VC_URL"]["value"] == "https://vc.example:443/sdk"
    assert env["VMGUARD_VC_USER"]["valueFrom"]["secretKeyRef"] == {
        "name": "vc-creds",
        "key": "user",
    }
    assert env["VMGUARD_VC_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"
    assert env["VMGUARD_VC_THUMBPRINT"]["value"] == "AA:BB"
    assert env["VMGUARD_PROXY_LOCATOR"]["value"] == "vddk"
    for e in env.values():  # every secret-bearing variable is a reference
        if e["name"] in ("VMGUARD_VC_PASSWORD", "VMGUARD_S3_SECRET_KEY", "VMGUARD_VC_USER"):
            assert "value" not in e


def test_files_to_pvc_mounts_the_claim_and_needs_no_vcenter() -> None:
    files = {"paths": ["/etc/**"], "to": {"pvc": {"claimName": "restored", "path": "a/b"}}}
    job = _job({"files": files}, vcenter=False)
    pod = job["spec"]["template"]["spec"]
    assert {"name": "target", "persistentVolumeClaim": {"claimName": "restored"}} in pod["volumes"]
    mounts = pod["containers"][0]["volumeMounts"]
    assert {"name": "target", "mountPath": builders.RESTORE_TARGET_DIR} in mounts
    names = {e["name"] for e in pod["containers"][0]["env"]}
    assert not {n for n in names if n.startswith("VMGUARD_VC_")}


def test_job_names_are_dns_labels_for_any_restore_name() -> None:
    long = _restore({}, name="a" * 240 + ".b")
    name = builders.restore_job_name(long)
    assert len(name) <= 63 and name.endswith("-0b6c1f9e")
    assert name == builders.restore_job_name(long), "stable across restarts"


def test_proxy_role_allows_reading_and_status_patches_only() -> None:
    sa, role, binding = proxyjob.build_proxy_rbac("ops", "vmguard-proxy")
    verbs = {(tuple(r["resources"]), tuple(r["verbs"])) for r in role["rules"]}
    assert verbs == {
        (("vmguardbackups", "vmguardrestores"), ("get",)),
        (("vmguardbackups/status", "vmguardrestores/status"), ("patch",)),
    }
    assert "secrets" not in json.dumps(role)
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "vmguard-proxy", "namespace": "ops"}
    ]
    assert sa["metadata"]["name"] == "vmguard-proxy"


def test_repository_url_and_prefix_containment() -> None:
    assert proxyjob.repository_url({"s3": {"endpoint": "s3.example", "bucket": "b"}}) == (
        "s3://s3.example/b"
    )
    assert _inside("vm/restored", "vm") and _inside("vm", "vm") and _inside("x", "")
    assert not _inside("vms/restored", "vm") and not _inside("restored", "vm")


def test_the_job_writes_no_more_disks_at_once_than_it_was_granted() -> None:
    """The bound the operator computed (its setting within the vCenter's limits) reaches
    the proxy as VMGUARD_RESTORE_DISKS_AT_ONCE; none computed, none set."""
    from vmguard.controller.kube.admission import VCenterLimits, disks_at_once
    from vmguard.proxy.contract import DISKS_AT_ONCE_ENV

    spec = {**VCENTER["spec"], "limits": {"disksPerDatastore": 3}}
    granted = disks_at_once(6, VCenterLimits.of(spec), nfc=True, wanted=4)
    job = builders.build_restore_job(
        _restore({"newVM": {"name": "web"}}),
        SETTINGS,
        repository=REPO["spec"],
        vcenter=spec,
        disks_at_once=granted,
    )
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert {"name": DISKS_AT_ONCE_ENV, "value": "3"} in container["env"]
    (plain,) = _job({"newVM": {"name": "web"}})["spec"]["template"]["spec"]["containers"]
    assert DISKS_AT_ONCE_ENV not in {e["name"] for e in plain["env"]}
