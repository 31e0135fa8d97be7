"""A policy's pass reads an expired run's point as it is (``points.StandIn``), not as a
stand-in body built per point (docs/scale.md, "The policies' first passes").

The history and retention read the points straight from the shared read of the
ProtectedVMs; these unit tests hold them to what the bodies (``points.stand_ins``) gave:
the same records, candidates, kept and pruned sets, and fail-safe history, over points
with and without a policy, a repository, a time, a verification or copies, points whose
run still exists or whose archive a backup names, and policies whose repository lives in
another namespace. And a policy that copies and verifies nothing keeps only a few
fields of each run (``retention.pass_fields``): the same history, candidates, kept and
pruned sets, verifications in flight and expired points as from the whole runs.
"""

from __future__ import annotations

from typing import Any

import pytest

from vmguard.api import ANNOTATION_VM_NAME
from vmguard.controller.kube import points, verifications
from vmguard.controller.policy import retention
from vmguard.controller.policy.history import BackupHistory, BackupRecord

UUIDS = ("4201AAAA-bbbb-cccc-dddd-eeeeffff0001", "4201aaaa-bbbb-cccc-dddd-eeeeffff0002")


def pt(archive: str, day: int, policy: str = "gold", **more: Any) -> dict[str, Any]:
    time = f"2026-01-{day:02d}T01:00:00Z" if day else ""
    return {"archiveId": archive, "repository": "repo", "time": time, "policy": policy, **more}


def protected_vm(uuid: str, *pts: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": f"lab-{uuid[-4:]}"},
        "status": {"vm": {"instanceUuid": uuid}, "vcenter": "lab", "points": list(pts)},
    }


VERIFIED = {"result": "Passed", "time": "2026-01-09T02:00:00Z", "checks": ["index"]}
COPIES = [{"repository": "far", "state": "Copied", "archiveId": "c1"}]


def estate() -> list[points.HeldVM]:
    first = protected_vm(
        UUIDS[0],
        pt("a9", 9, backup="gold-run-9"),  # its run exists: no stand-in
        pt("a8", 8, verification=VERIFIED, copies=COPIES),
        pt("a7", 7, repository=""),
        pt("a6", 6, policy=""),
        pt("a5", 5, policy="silver"),
        pt("a4", 4),
        pt("a3", 3),
        pt("a2", 2, verification={"result": "Failed"}),  # no time: not ended
        pt("a1", 0),  # no time
    )
    second = protected_vm(UUIDS[1], pt("b3", 3), pt("b2", 2, policy="silver"), pt("b1", 1))
    return [h for h in map(points.held_of, (first, second)) if h is not None]


RUNS = [
    {
        "metadata": {"name": "gold-run-9", "namespace": "ns", "labels": {"vmguard.io/vm": "x"}},
        "spec": {"policyRef": {"name": "gold"}, "vm": {"instanceUuid": UUIDS[0]}},
        "status": {
            "phase": "Completed",
            "archiveId": "a9",
            "completionTime": "2026-01-09T01:01:00Z",
        },
    },
    {  # a backup naming b1's archive: b1 gets no stand-in
        "metadata": {"name": "synced", "namespace": "ns"},
        "spec": {"policyRef": {"name": "gold"}, "vm": {"instanceUuid": UUIDS[1]}},
        "status": {"phase": "Completed", "archiveId": "b1"},
    },
]


def policy(name: str, **repository_ref: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {
            "vcenterRef": {"name": "lab"},
            "repositoryRef": {"name": "main", **repository_ref},
            "retention": {"keepLast": 2},
        },
    }


POLICIES = [policy("gold"), policy("silver"), policy("gold", namespace="platform")]


@pytest.mark.unit
@pytest.mark.parametrize("newest", [False, True])
@pytest.mark.parametrize("name", ["gold", "silver", None])
def test_an_expired_point_reads_as_its_stand_in_body_did(name: str | None, newest: bool) -> None:
    held = estate()
    expired = points.expired_points(held, RUNS, policy=name, newest=newest)
    bodies = points.stand_ins(held, RUNS, policy=name, newest=newest)
    assert [points.stand_in_body(s) for s in expired] == bodies
    assert [s.name for s in expired] == [b["metadata"]["name"] for b in bodies]
    assert [BackupRecord.from_stand_in(s) for s in expired] == [
        BackupRecord.from_object(b) for b in bodies
    ]
    for p in POLICIES:
        assert [retention.stand_in_candidate(s, p) for s in expired] == [
            retention.candidate(b, p) for b in bodies
        ]


@pytest.mark.unit
@pytest.mark.parametrize("p", POLICIES, ids=["gold", "silver", "gold-across"])
def test_retention_and_history_keep_and_prune_the_same_from_the_points(p: dict[str, Any]) -> None:
    held = estate()
    name = p["metadata"]["name"]
    expired = points.expired_points(held, RUNS, policy=name)
    bodies = points.stand_ins(held, RUNS, policy=name)
    from_points = retention.plan(p, RUNS, expired)
    from_bodies = retention.plan(p, RUNS + bodies)
    assert from_points == from_bodies
    if name == "gold":  # something is kept and something pruned, across both VMs
        assert from_points.prune and len(from_points.keep) == 3
        assert any(c.stand_in for c in from_points.prune)
    history = BackupHistory.of_policy(RUNS, name, expired)
    assert history == BackupHistory.of_policy(RUNS + bodies, name)
    assert history.last_passed(UUIDS[0]) == BackupHistory.of_policy(
        RUNS + bodies, name
    ).last_passed(UUIDS[0])
    newest = points.expired_points(held, RUNS, policy=name, newest=True)
    newest_bodies = points.stand_ins(held, RUNS, policy=name, newest=True)
    assert BackupHistory.of_policy(RUNS, name, newest) == BackupHistory.of_policy(
        [*RUNS, *newest_bodies], name
    )


def whole_run(name: str, uuid: str, archive: str, day: int, **status: Any) -> dict[str, Any]:
    """A run as the apiserver returns it: disks, conditions, managed fields and all."""
    at = f"2026-01-{day:02d}T01:00:00Z"
    return {
        "apiVersion": "vmguard.io/v1alpha1",
        "kind": "VMGuardBackup",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "creationTimestamp": at,
            "labels": {
                "vmguard.io/vm": uuid.lower(),
                "vmguard.io/policy": "gold",
                "vmguard.io/trigger": "schedule",
                "vmguard.io/run": f"202601{day:02d}-0100",
            },
            "annotations": {ANNOTATION_VM_NAME: f"web-{day}-annotated", "other": "x"},
            "managedFields": [{"manager": "kopf", "fieldsV1": {"f:status": {}}}],
        },
        "spec": {
            "policyRef": {"name": "gold"},
            "vm": {"instanceUuid": uuid, "name": f"web-{day}"},
            "mode": {"type": "incremental"},
        },
        "status": {
            "phase": "Completed",
            "archiveId": archive,
            "vm": {"instanceUuid": uuid, "name": f"web-{day}-now"},
            "vcenter": "lab",
            "repository": "main",
            "startTime": at,
            "completionTime": f"2026-01-{day:02d}T01:01:35Z",
            "snapshot": {"createTime": at},
            "disks": [{"key": 2000, "bytesUploaded": 1}, {"key": 2001, "bytesUploaded": 2}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "Completed"}],
            **status,
        },
    }


def unannotated(run: dict[str, Any]) -> dict[str, Any]:
    run["metadata"]["annotations"] = {}
    return run


WHOLE_RUNS = [
    whole_run("gold-9", UUIDS[0], "a9", 9),
    whole_run("gold-10", UUIDS[0], "x10", 10, verification={"phase": "Pending"}),
    whole_run("gold-11", UUIDS[0], "x11", 11, repositoryNamespace="platform"),
    whole_run(
        "gold-12",
        UUIDS[1],
        "x12",
        12,
        verification={
            "phase": "Completed",
            "result": "Passed",
            "time": "2026-01-12T02:00:00Z",
            "checks": ["index"],
        },
    ),
    whole_run("gold-13", UUIDS[1], "x13", 13, phase="Failed"),
    {**whole_run("gold-14", UUIDS[1], "x14", 14), "status": {}},
    whole_run("gold-15", UUIDS[1], "x15", 15, snapshot={}, repository=""),
    whole_run("gold-16", UUIDS[1], "x16", 16, vm={"instanceUuid": UUIDS[1]}),  # annotated name
    unannotated(whole_run("gold-17", UUIDS[1], "x17", 17, vm={})),  # the spec's name
]


@pytest.mark.unit
@pytest.mark.parametrize("p", POLICIES, ids=["gold", "silver", "gold-across"])
def test_a_pass_reads_the_same_of_a_runs_few_fields_as_of_the_whole_run(p: dict[str, Any]) -> None:
    slim = [retention.pass_fields(b) for b in WHOLE_RUNS]
    assert not any({"disks", "conditions"} & set(b["status"]) for b in slim)
    assert not any("managedFields" in b["metadata"] for b in slim)
    name = p["metadata"]["name"]
    held = estate()
    expired = points.expired_points(held, WHOLE_RUNS, policy=name)
    assert points.expired_points(held, slim, policy=name) == expired
    assert [retention.candidate(b, p) for b in slim] == [
        retention.candidate(b, p) for b in WHOLE_RUNS
    ]
    assert retention.plan(p, slim, expired) == retention.plan(p, WHOLE_RUNS, expired)
    assert BackupHistory.of_policy(slim, name, expired) == BackupHistory.of_policy(
        WHOLE_RUNS, name, expired
    )
    flying = [verifications.in_flight(b.get("status") or {}) for b in slim]
    assert flying == [verifications.in_flight(b.get("status") or {}) for b in WHOLE_RUNS]
    assert flying.count(True) == 1
    if name == "gold":
        assert retention.plan(p, slim, expired).prune
