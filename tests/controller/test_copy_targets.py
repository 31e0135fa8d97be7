"""The pure judgement of a policy's copy targets (controller/policy/targets.py): a target
that is or overlaps the primary, or has another chunk size, is refused with its reason;
a distinct one is used. No lab."""

from __future__ import annotations

from typing import Any

import pytest

from vmguard.controller.policy import judgement, targets

pytestmark = pytest.mark.unit


def _repo(endpoint: str, bucket: str, prefix: str = "", chunk: int | None = None) -> dict[str, Any]:
    s3: dict[str, Any] = {"endpoint": endpoint, "bucket": bucket, "insecure": True}
    if prefix:
        s3["prefix"] = prefix
    spec: dict[str, Any] = {"s3": s3, "credentialsSecretRef": {"name": "x"}}
    if chunk:
        spec["chunkSize"] = chunk
    return spec


def _policy(*names: str) -> dict[str, Any]:
    return {
        "repositoryRef": {"name": "primary"},
        "copies": [
            {"repositoryRef": {"name": n}, "retention": {"keepDaily": 7}, "delay": "10m"}
            for n in names
        ],
    }


PRIMARY = _repo("127.0.0.1:9000", "vmguard", "prod")


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        (_repo("127.0.0.1:9000", "vmguard", "prod"), targets.OVERLAPS),  # the same place
        (_repo("127.0.0.1:9000", "vmguard", "prod/copies"), targets.OVERLAPS),  # nested
        (_repo("127.0.0.1:9000", "vmguard"), targets.OVERLAPS),  # the primary inside it
        (_repo("127.0.0.1:9001", "vmguard", "prod", chunk=1 << 20), targets.CHUNK_SIZE),
    ],
)
def test_a_target_that_overlaps_or_differs_in_chunk_size_is_refused(
    target: dict[str, Any], reason: str
) -> None:
    judged = targets.judge(_policy("copy"), PRIMARY, {"copy": target})
    assert judged.targets == []
    assert [r for r, _ in judged.problems] == [reason]
    assert "copy" in judged.problems[0][1]


def test_distinct_targets_are_used_and_a_missing_one_is_named() -> None:
    other_prefix = _repo("127.0.0.1:9000", "vmguard", "prod-copies")  # a sibling, not nested
    other_server = _repo("127.0.0.1:9001", "vmguard", "prod")
    judged = targets.judge(
        _policy("a", "b", "gone"), PRIMARY, {"a": other_prefix, "b": other_server, "gone": None}
    )
    assert [t.repository for t in judged.targets] == ["a", "b"]
    assert judged.targets[0].delay == 600.0
    assert judged.targets[0].retention == {"keepDaily": 7}
    assert judged.problems == [
        (targets.NOT_FOUND, "copy target VMGuardRepository 'gone' does not exist")
    ]


def test_the_condition_names_the_reason_and_appears_only_with_copies() -> None:
    refused = judgement.Assessment(
        copies=targets.judge(_policy("copy"), PRIMARY, {"copy": PRIMARY})
    )
    conds = judgement.conditions(None, refused, False, [], 1, None)
    copies = next(c for c in conds if c["type"] == targets.CONDITION)
    assert (copies["status"], copies["reason"]) == ("False", targets.OVERLAPS)
    # Refusing a copy target does not stop the policy's own backups.
    ready = next(c for c in conds if c["type"] == "Ready")
    assert ready["status"] == "True"
    # Copies removed from the spec: the condition goes with them.
    after = judgement.conditions(conds, judgement.Assessment(), False, [], 2, None)
    assert targets.CONDITION not in {c["type"] for c in after}


def test_the_primary_reached_under_another_host_name_is_refused() -> None:
    # Two names of one MinIO (a Service's short and full DNS name): the URLs differ, but
    # the repository controller found the same repository (status.repositoryId) there.
    alias = _repo("minio.backup.svc.cluster.local:9000", "vmguard", "prod")
    primary = _repo("minio.backup.svc:9000", "vmguard", "prod")
    judged = targets.judge(
        _policy("copy"), primary, {"copy": alias}, ids={"primary": "r-1", "copy": "r-1"}
    )
    assert judged.targets == []
    assert [r for r, _ in judged.problems] == [targets.OVERLAPS]
    assert "the same repository as the primary (r-1)" in judged.problems[0][1]
    # Another repository id there (or none known yet): the URLs decide alone.
    other = targets.judge(
        _policy("copy"), primary, {"copy": alias}, ids={"primary": "r-1", "copy": "r-2"}
    )
    assert [t.repository for t in other.targets] == ["copy"]


@pytest.mark.parametrize(
    ("primary", "target"),
    [
        (
            _repo("s3.example.org", "vmguard", "prod"),
            _repo("s3.example.org:443", "vmguard", "prod/c"),
        ),
        (_repo("MinIO.local:9000", "vmguard"), _repo("minio.local.:9000", "vmguard", "prod")),
    ],
)
def test_the_same_endpoint_spelt_another_way_is_refused(
    primary: dict[str, Any], target: dict[str, Any]
) -> None:
    for p in (primary, target):
        p["s3"]["insecure"] = False
    judged = targets.judge(_policy("copy"), primary, {"copy": target})
    assert [r for r, _ in judged.problems] == [targets.OVERLAPS]
