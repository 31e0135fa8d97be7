"""Verified restore points through the operator (issue 18, acceptance 2 and 5's YARA part).

A policy verifies each completed backup with the user's YARA rules (a ConfigMap). Five
backups of one lab VM are made by the operator; a file matching the rule is planted in
the VM's ext4 file system before the third and stays. Each backup's verification runs
as a proxy Job admitted by the vCenter's queue; the third to fifth are Infected, with the
volume, the path and the rule, on the VMGuardBackup and on the point in the ProtectedVM;
the first two Passed. A files restore asking for the ProtectedVM's latest clean point
reads the second. A ConfigMap whose rule does not compile is the policy's
VerificationReady condition naming the key, the line and the rule.

The operator runs the backup, policy, repository and restore controllers; proxies run
as processes of the lab's node agent (where YARA-X is installed with vmguard).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.controller import objects, scrape
from tests.controller.backup_helpers import TINY_DISK, data_vm, wait_done
from tests.controller.conftest import OperatorProcess

from vmguard_lab import images
from vmguard_lab.imaging import damage
from vmguard_lab.imaging.tree import TreeSpec
from vmguard_lab.procs import eventually

pytestmark = [
    pytest.mark.lab,
    pytest.mark.operator_controllers("backups,policies,repositories,restores"),
]

MiB = 1 << 20
SEED = 1818
MARKER = b"VMGUARD-TEST-MARKER-7f3a9c"
PLANTED = "Users/Public/Downloads/invoice.pdf.exe"
CLEAN_FILE = "srv/motd"
RULES = """\
rule planted_marker
{
    strings:
        $marker = "VMGUARD-TEST-MARKER-7f3a9c"
    condition:
        $marker
}
"""
SPEC = images.gpt_ext4(
    48 * MiB, TreeSpec(files=8, dirs=2, big_file_size=0, sparse_files=0, symlinks=1)
)


def config_map(kube_api: Any, ns: str, name: str, data: dict[str, str]) -> None:
    body = {"metadata": {"name": name, "namespace": ns}, "data": data}
    core = client.CoreV1Api(kube_api)
    try:
        core.create_namespaced_config_map(ns, body)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
        core.replace_namespaced_config_map(name, ns, body)


def point_image(image_factory: Any, number: int, work: Path) -> Path:
    """The VM's disk at point ``number``: a clean file in every point, the marker from
    the third on."""
    image = image_factory.build(SPEC.next_point(number), SEED, work / f"point{number}.img")
    root = image.partition(2)
    damage.plant_ext4_file(image.path, root.offset, root.length, CLEAN_FILE, b"hello\n", work)
    if number >= 2:
        payload = b"MZ" + bytes(4094) + MARKER + b"\n" * 100
        damage.plant_ext4_file(image.path, root.offset, root.length, PLANTED, payload, work)
    return image.path


def verified(kube_api: Any, ns: str, name: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        obj = objects.get(kube_api, ns, "vmguardbackups", name)
        v = obj.get("status", {}).get("verification", {})
        return obj if v.get("phase") == "Completed" else None

    result: dict[str, Any] = eventually(ended, timeout=180, what=f"{name} verified")
    return result


def test_a_planted_file_is_found_in_the_third_of_five_points_and_latest_clean_is_the_second(
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    s3_bucket: dict[str, Any],
    minio_client: Any,
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    objects.create_repository(kube_api, namespace, "repo", s3_bucket, prefix="repo", chunkSize=MiB)
    config_map(kube_api, namespace, "malware-rules", {"marker.yar": RULES, "README": "not a rule"})
    verification = {"fsck": False, "yara": {"configMapRef": {"name": "malware-rules"}}}
    objects.create_policy(
        kube_api,
        namespace,
        "gold",
        selector={"names": ["nothing-*"]},
        retention={"keepLast": 10},
        verification={**verification, "concurrency": 3},
    )
    port = start_operator().metrics_port
    names = [f"b{n}" for n in range(5)]
    with data_vm(vc, vsim, image_factory, tmp_path, spec=SPEC) as vm:
        for n, name in enumerate(names):
            vsim.put_image(vm.moref, vm.disks[0].key, str(point_image(image_factory, n, tmp_path)))
            objects.create(
                kube_api,
                namespace,
                "vmguardbackups",
                "VMGuardBackup",
                name,
                {"vm": {"moref": vm.moref}, "policyRef": {"name": "gold"}},
                labels={"vmguard.io/policy": "gold", "vmguard.io/vm": vm.instance_uuid.lower()},
            )
            status = wait_done(kube_api, namespace, name)["status"]
            assert status["phase"] == "Completed", status
        done = {name: verified(kube_api, namespace, name) for name in names}

    archive = {name: obj["status"]["archiveId"] for name, obj in done.items()}
    outcome = {name: obj["status"]["verification"] for name, obj in done.items()}
    assert [outcome[n]["result"] for n in names] == [
        "Passed",
        "Passed",
        "Infected",
        "Infected",
        "Infected",
    ], outcome
    for name in names[2:]:
        found = [
            (f["volume"], f["path"], f["rule"]) for f in outcome[name]["findings"] if f.get("rule")
        ]
        assert found == [("p2", PLANTED, "planted_marker")], outcome[name]
        assert objects.condition(done[name], "Verified")["status"] == "False"
        assert outcome[name]["jobName"].startswith("vmv-")
    for name in names[:2]:
        assert outcome[name]["findings"] == [] and outcome[name]["checks"] == ["yara"]
        assert objects.condition(done[name], "Verified")["status"] == "True"
    # The points in the VM's ProtectedVM carry the same, and the last good point is the
    # second (a point found infected is not a good point).
    [pvm] = objects.items(kube_api, namespace, "protectedvms")
    by_archive = {p["archiveId"]: p for p in pvm["status"]["points"]}
    for name in names:
        recorded = by_archive[archive[name]]["verification"]
        assert recorded["result"] == outcome[name]["result"]
    third = by_archive[archive["b2"]]["verification"]["findings"]
    assert [(f["volume"], f["path"], f["rule"]) for f in third] == [
        ("p2", PLANTED, "planted_marker")
    ]
    assert pvm["status"]["lastGoodPoint"]["archiveId"] == archive["b1"]
    # Metrics (what VmguardMalwareFound reads): the VM's newest verification is Infected.
    labels = {"namespace": namespace, "vcenter": "lab", "policy": "gold"}

    def counted() -> bool:
        samples = scrape.scrape(port)
        infected = scrape.value(
            samples, "vmguard_policy_vms_last_verification", result="Infected", **labels
        )
        total = scrape.value(samples, "vmguard_verifications_total", result="Infected", **labels)
        # Each backup verified, the schedule daily and the RPO its default (2 days): the
        # allowance is the RPO plus a day (docs/verification.md, "The allowance").
        allowance = scrape.value(samples, "vmguard_policy_verification_allowance_seconds", **labels)
        return infected == 1.0 and total == 3.0 and allowance == 3 * 86400.0

    eventually(counted, timeout=30, what="verification metrics")

    # "Latest clean" resolves to the second point: a files restore of it completes.
    objects.create(
        kube_api,
        namespace,
        "vmguardrestores",
        "VMGuardRestore",
        "clean",
        {
            "source": {"protectedVM": pvm["metadata"]["name"], "latestClean": True},
            "target": {"files": {"paths": [f"/{CLEAN_FILE}"], "to": {"s3": {"prefix": "out"}}}},
        },
    )
    restore = objects.wait_phase(
        kube_api, namespace, "vmguardrestores", "clean", {"Completed", "Failed"}, 120
    )
    assert restore["status"]["phase"] == "Completed", restore["status"]
    assert restore["status"]["archiveId"] == archive["b1"]
    keys = [o.object_name for o in minio_client.list_objects(s3_bucket["bucket"], "out/", True)]
    assert [k for k in keys if k.endswith("motd")], keys


@pytest.mark.operator_speedup(15)
def test_a_rule_that_does_not_compile_is_the_policys_condition_naming_it(
    kube_api: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    lines = ["rule fine { condition: true }", "", "rule broken {", '  strings: $a = "x"']
    broken = "\n".join([*lines, "  condition: $a and", "}", ""])
    config_map(kube_api, namespace, "rules", {"good.yar": RULES, "broken.yar": broken})
    objects.create_policy(
        kube_api,
        namespace,
        "gold",
        selector={"names": ["nothing-*"]},
        # the rules alone: a check of file systems would need a privileged pod, which
        # this namespace does not allow (test_fsck_pod_security.py)
        verification={"fsck": False, "yara": {"configMapRef": {"name": "rules"}}},
    )
    start_operator()

    def ready(status: str) -> dict[str, Any] | None:
        obj = objects.get(kube_api, namespace, "vmprotectionpolicies", "gold")
        found = objects.condition(obj, "VerificationReady")
        return found if found.get("status") == status else None

    refused = eventually(lambda: ready("False"), timeout=60, what="VerificationReady=False")
    assert refused["reason"] == "RulesInvalid"
    assert "configmap/rules/broken.yar line 6 (rule broken)" in refused["message"], refused
    # The policy still backs up (its Ready is its schedule's and references').
    policy = objects.get(kube_api, namespace, "vmprotectionpolicies", "gold")
    assert objects.condition(policy, "Ready")["status"] == "True"
    # Fixed in the ConfigMap: the next pass says so.
    config_map(kube_api, namespace, "rules", {"good.yar": RULES, "broken.yar": lines[0]})
    fixed = eventually(lambda: ready("True"), timeout=60, what="VerificationReady=True")
    assert fixed["reason"] == "Valid" and "2 rule files" in fixed["message"]


@pytest.mark.operator_speedup(60)
def test_a_policy_verifying_on_a_schedule_verifies_the_newest_point_at_each_time(
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    """``every`` a cron line (every minute: a second at speedup 60): the
    newest point is verified at the line's next time after it completed, and again at
    the one after (run 2, its own Job); that it is not asked for at completion is
    test_verify_schedule's (a race with the next time here)."""
    config_map(kube_api, namespace, "rules", {"marker.yar": RULES})
    objects.create_policy(
        kube_api,
        namespace,
        "gold",
        selector={"names": ["nothing-*"]},
        verification={
            "every": "*/2 * * * *",
            "fsck": False,
            "yara": {"configMapRef": {"name": "rules"}},
        },
    )
    start_operator()
    with data_vm(vc, vsim, image_factory, tmp_path, spec=TINY_DISK) as vm:
        objects.create(
            kube_api,
            namespace,
            "vmguardbackups",
            "VMGuardBackup",
            "b0",
            {"vm": {"moref": vm.moref}, "policyRef": {"name": "gold"}},
            labels={"vmguard.io/policy": "gold", "vmguard.io/vm": vm.instance_uuid.lower()},
        )
        status = wait_done(kube_api, namespace, "b0")["status"]
        assert status["phase"] == "Completed", status

        def run(n: int) -> dict[str, Any] | None:
            v = objects.get(kube_api, namespace, "vmguardbackups", "b0")["status"].get(
                "verification", {}
            )
            return v if v.get("run", 0) >= n and v.get("phase") == "Completed" else None

        again = eventually(lambda: run(2), timeout=60, what="b0 verified again")
    assert again["result"] == "Passed", again
    assert again["jobName"] == f"vmv-b0-{again['run']}"
    jobs = client.BatchV1Api(kube_api).list_namespaced_job(namespace).items
    runs = {j.metadata.name for j in jobs if j.metadata.name.startswith("vmv-b0-")}
    assert {"vmv-b0-1", "vmv-b0-2"} <= runs, runs  # one Job per run
