"""Declaring copies (issue 17) against the lab's apiserver and operator: a policy's copy
target that is the primary is refused at admission (CEL); one that overlaps the primary
(the same bucket, a nested prefix) or has another chunk size is refused by the policy
controller with a named reason; a target in the lab's second MinIO is accepted.

Only the policy controller runs: no backup is made here.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from tests.controller import objects

from vmguard_lab.procs import eventually

pytestmark = [pytest.mark.lab, pytest.mark.operator_controllers("policies")]

PP = "vmprotectionpolicies"


def _copies(*names: str) -> list[dict[str, Any]]:
    return [{"repositoryRef": {"name": n}, "retention": {"keepDaily": 7}} for n in names]


def test_overlapping_or_mismatched_copy_targets_are_refused_with_a_reason(
    kube_api: Any,
    namespace: str,
    lab_vcenter: str,
    s3_bucket: dict[str, Any],
    s3_bucket2: dict[str, Any],
    operator_log: Any,
) -> None:
    objects.create_repository(kube_api, namespace, "repo", s3_bucket, prefix="prod")
    objects.create_repository(kube_api, namespace, "nested", s3_bucket, prefix="prod/copy")
    objects.create_repository(kube_api, namespace, "small", s3_bucket2, chunkSize=1 << 20)
    objects.create_repository(kube_api, namespace, "offsite", s3_bucket2)
    selector = {"names": ["nothing-*"]}

    with pytest.raises(ApiException) as refused:
        objects.create_policy(
            kube_api, namespace, "self", selector=selector, copies=_copies("repo")
        )
    assert "a copy target must be another repository than repositoryRef" in refused.value.body

    objects.create_policy(
        kube_api, namespace, "overlap", selector=selector, copies=_copies("nested")
    )
    objects.create_policy(kube_api, namespace, "chunks", selector=selector, copies=_copies("small"))
    objects.create_policy(kube_api, namespace, "good", selector=selector, copies=_copies("offsite"))

    def judged(name: str) -> dict[str, Any]:
        return eventually(
            lambda: objects.condition(objects.get(kube_api, namespace, PP, name), "CopiesValid"),
            timeout=60,
            what=f"{name} CopiesValid",
        )

    overlap = judged("overlap")
    assert (overlap["status"], overlap["reason"]) == ("False", "CopyTargetOverlaps")
    assert "nested" in overlap["message"]
    chunks = judged("chunks")
    assert (chunks["status"], chunks["reason"]) == ("False", "ChunkSizeMismatch")
    good = judged("good")
    assert (good["status"], good["reason"]) == ("True", "Valid")
    # A refused copy target does not stop the policy's own backups.
    for name in ("overlap", "chunks"):
        ready = objects.condition(objects.get(kube_api, namespace, PP, name), "Ready")
        assert ready["status"] == "True"


@pytest.mark.operator_controllers("policies,repositories")
def test_the_primary_reached_under_another_host_name_is_refused(
    kube_api: Any,
    namespace: str,
    lab_vcenter: str,
    s3_bucket: dict[str, Any],
    operator_log: Any,
) -> None:
    """``localhost`` and ``127.0.0.1``: two URLs, one repository. The repository controller
    opens both objects' place and finds one repository id; the policy refuses the copy."""
    objects.create_repository(kube_api, namespace, "repo", s3_bucket, prefix="prod")
    repo_id = eventually(
        lambda: (
            objects.get(kube_api, namespace, "vmguardrepositories", "repo")
            .get("status", {})
            .get("repositoryId")
        ),
        timeout=60,
        what="the primary opened",
    )
    port = s3_bucket["endpoint"].rpartition(":")[2]
    alias = {**s3_bucket, "endpoint": f"localhost:{port}"}
    objects.create_repository(kube_api, namespace, "alias", alias, prefix="prod")
    objects.create_policy(
        kube_api, namespace, "aliased", selector={"names": ["nothing-*"]}, copies=_copies("alias")
    )

    def refused() -> dict[str, Any] | None:
        policy = objects.get(kube_api, namespace, PP, "aliased")
        found = objects.condition(policy, "CopiesValid")
        return found if found and found["status"] == "False" else None

    copies = eventually(refused, timeout=60, what="aliased CopiesValid False")
    assert copies["reason"] == "CopyTargetOverlaps"
    assert f"the same repository as the primary ({repo_id})" in copies["message"]
    status = objects.get(kube_api, namespace, "vmguardrepositories", "alias")["status"]
    assert status["repositoryId"] == repo_id
