"""Retention per repository (issue 17, acceptance 4): the primary keeps its last 2
points, the copy target one per day for 7 days. After three backups of one VM (one day)
and GC on both, the primary holds exactly the two newest points and the copy exactly the
newest: pruning one never removed a point the other keeps, and each repository's GC left
what it keeps restorable bit-exact.

The operator runs the backup, policy and repository controllers; GC is run here, on
each repository with its own credentials, as the repository controller's schedule would.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.controller import objects
from tests.controller.backup_helpers import (
    TINY_DISK,
    data_vm,
    disk_hashes,
    open_repo,
    restored_hashes,
    wait_done,
)
from tests.controller.conftest import OperatorProcess
from tests.controller.scrape import Samples, scrape, value

from vmguard.store.gc import collect_garbage
from vmguard_lab.procs import eventually

pytestmark = [
    pytest.mark.lab,
    pytest.mark.operator_controllers("backups,policies,repositories"),
]

MiB = 1 << 20
CHUNK = {"chunkSize": MiB}


def test_each_repository_keeps_exactly_its_own_points(
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    s3_bucket: dict[str, Any],
    s3_bucket2: dict[str, Any],
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    key, copy_key = os.urandom(32).hex(), os.urandom(32).hex()
    objects.create_repository(kube_api, namespace, "repo", s3_bucket, key=key, **CHUNK)
    objects.create_repository(kube_api, namespace, "offsite", s3_bucket2, key=copy_key, **CHUNK)
    objects.create_policy(
        kube_api,
        namespace,
        "gold",
        selector={"names": ["nothing-*"]},
        retention={"keepLast": 2},
        copies=[{"repositoryRef": {"name": "offsite"}, "retention": {"keepDaily": 7}}],
    )
    operator = start_operator()
    expected: dict[str, dict[str, str]] = {}
    archive: dict[str, str] = {}
    with data_vm(vc, vsim, image_factory, tmp_path, spec=TINY_DISK) as vm:
        disk = vm.disks[0]
        for n in range(3):
            if n:
                vsim.write(vm.moref, disk.key, n * MiB + 7, os.urandom(3000))
            expected[f"b{n}"] = disk_hashes(vsim, vm.moref)
            objects.create(
                kube_api,
                namespace,
                "vmguardbackups",
                "VMGuardBackup",
                f"b{n}",
                {"vm": {"moref": vm.moref}, "policyRef": {"name": "gold"}},
                labels={"vmguard.io/policy": "gold", "vmguard.io/vm": vm.instance_uuid.lower()},
            )
            status = wait_done(kube_api, namespace, f"b{n}")["status"]
            assert status["phase"] == "Completed", status
            archive[f"b{n}"] = status["archiveId"]

    def settled() -> dict[str, Any] | None:
        """b0 pruned from the primary; b1's copy pruned from the target; b2 copied."""
        names = {
            b["metadata"]["name"]: b for b in objects.items(kube_api, namespace, "vmguardbackups")
        }
        if "b0" in names or {"b1", "b2"} - set(names):
            return None
        states = {
            n: {c["repository"]: c for c in names[n]["status"].get("copies", [])}.get("offsite", {})
            for n in ("b1", "b2")
        }
        if (states["b1"].get("state"), states["b2"].get("state")) != ("Pruned", "Completed"):
            return None
        return states

    states = eventually(settled, timeout=180, what="retention on both repositories")
    # Every point copied (or pruned there): the policy says current, and so does the
    # metric (acceptance 5: the metric matches the statuses).
    policy = objects.get(kube_api, namespace, "vmprotectionpolicies", "gold")
    current = eventually(
        lambda: objects.condition(
            objects.get(kube_api, namespace, "vmprotectionpolicies", "gold"), "CopiesCurrent"
        ),
        timeout=60,
        what="CopiesCurrent",
    )
    assert (current["status"], current["reason"]) == ("True", "Current"), policy
    labels = {"namespace": namespace, "vcenter": "lab", "policy": "gold", "repository": "offsite"}

    # The metric is the policy pass's reading: the pass after b2's copy completed reads 0
    # (before it, b2 may still be the oldest uncopied point, within the allowance).
    def caught_up() -> Samples | None:
        samples = scrape(operator.metrics_port)
        return samples if value(samples, "vmguard_policy_copy_lag_seconds", **labels) == 0 else None

    samples = eventually(caught_up, timeout=60, what="vmguard_policy_copy_lag_seconds 0")
    allowance = value(samples, "vmguard_policy_copy_allowance_seconds", **labels)
    assert allowance is not None and allowance > 0
    primary = open_repo(s3_bucket, key)
    copy = open_repo(s3_bucket2, copy_key)
    for repo in (primary, copy):
        collect_garbage(repo, chunk_grace_seconds=0)
    assert {r.archive_id for r in primary.list_archives()} == {archive["b1"], archive["b2"]}
    copy_of_b2 = states["b2"]["archiveId"]
    assert {r.archive_id for r in copy.list_archives()} == {copy_of_b2}
    for point in ("b1", "b2"):
        assert restored_hashes(primary, archive[point], tmp_path) == expected[point]
    assert restored_hashes(copy, copy_of_b2, tmp_path) == expected["b2"]
