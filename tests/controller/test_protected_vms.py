"""ProtectedVMs: each completed backup's restore point in its VM's one object.

Unit tests for the pure pieces of ``controller/kube/points.py`` (names, the list's order
and bound, the derived fields); lab tests for its writes against the real apiserver
(racing writers lose nothing) and for the VMGuardBackup controller end to end (a full and
an incremental backup give two points, newest first — checked in test_backups.py's
end-to-end test —; an operator killed after recording a point and before the backup
read Completed adds nothing twice), and the fold of completed backups whose point an
older operator recorded or not (the upgrade): it reads no ProtectedVM when every backup
says its point was recorded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.controller import objects
from tests.controller.backup_helpers import create_backup, data_vm, wait_done
from tests.controller.conftest import OperatorProcess
from tests.controller.scrape import scrape

from vmguard.api import LABEL_SYNCED, SYNCED, RestorePoint, format_time
from vmguard.api.kinds import PROTECTEDVM
from vmguard.controller.kube import points
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.crds import protectedvm
from vmguard.errors import ConfigError
from vmguard_lab.procs import eventually

UUID = "4201aaaa-bbbb-cccc-dddd-eeeeffff0001"


def point(archive: str, time: str, **more: Any) -> RestorePoint:
    return {"archiveId": archive, "repository": "repo", "time": time, **more}  # type: ignore[typeddict-item]


# ---- pure ------------------------------------------------------------------------------


@pytest.mark.unit
def test_names_come_from_the_vcenter_and_instance_uuid_only() -> None:
    name = points.protected_vm_name("lab", UUID)
    assert name == points.protected_vm_name("lab", UUID.upper())
    assert name.startswith("lab-") and len(name) == len("lab-") + 16
    assert name != points.protected_vm_name("lab", UUID[:-1] + "2")
    assert name != points.protected_vm_name("other", UUID)
    long = points.protected_vm_name("v" * 80, UUID)
    assert len(long) == 63 and long != points.protected_vm_name("v" * 81, UUID)


@pytest.mark.unit
def test_points_are_newest_first_unique_by_archive_and_bounded() -> None:
    status: Any = {}
    for archive, time in [("a2", "2026-01-02T00:00:00Z"), ("a1", "2026-01-01T00:00:00Z")]:
        added = points.with_point(status, point(archive, time), limit=2)
        assert added is not None
        status, cut = added
        assert cut == []
    assert points.with_point(status, point("a1", "2026-01-01T00:00:00Z")) is None
    # An older point found late (catalog sync) goes in its place; the bound cuts the oldest.
    added = points.with_point(status, point("a3", "2026-01-03T00:00:00Z"), limit=2)
    assert added is not None
    status, cut = added
    assert [p["archiveId"] for p in status["points"]] == ["a3", "a2"]
    assert [p["archiveId"] for p in cut] == ["a1"]
    assert points.MAX_POINTS == protectedvm.MAX_POINTS


@pytest.mark.unit
def test_derived_fields_follow_the_points() -> None:
    status: Any = {
        "points": [
            point("a2", "2026-01-02T00:00:00Z", policy="gold", verification={"result": "Failed"}),
            point("a1", "2026-01-01T00:00:00Z", policy="silver"),
        ]
    }
    out = points.derived(status, 1)
    assert out["pointCount"] == 2 and out["policy"] == "gold"
    assert out["lastGoodPoint"] == {"archiveId": "a1", "time": "2026-01-01T00:00:00Z"}
    conditions = {c["type"]: c for c in out["conditions"]}
    assert conditions["Ready"]["status"] == "True" and conditions["Protected"]["status"] == "True"
    assert "Stalled" not in conditions and "Reconciling" not in conditions
    none_good = points.derived({"points": status["points"][:1]}, 1)
    assert none_good["lastGoodPoint"] is None  # removed by the merge patch
    ready = {c["type"]: c for c in none_good["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "NoGoodPoint")


# ---- lab: the real apiserver -------------------------------------------------------------


@pytest.mark.lab
def test_racing_writers_lose_nothing_and_a_point_is_added_once(
    kube_api: Any, namespace: str
) -> None:
    """Eight points added at once (from as many writers, each its own read-modify-write),
    then each point's verification written at once, and every point added again: all are
    there once, each with its own verification."""
    api = KubeAPI(kube_api)
    key = points.ProtectedVMKey(namespace, "lab", UUID)
    vm = {"instanceUuid": UUID, "name": "web-01"}

    async def run() -> tuple[list[bool], list[bool]]:
        adds = [
            points.add_point(api, key, point(f"a{i}", f"2026-01-0{i + 1}T00:00:00Z"), vm=vm)
            for i in range(8)
        ]
        first = await asyncio.gather(*adds)

        def verified(i: int) -> Callable[[RestorePoint], RestorePoint]:
            def mutate(p: RestorePoint) -> RestorePoint:
                p["verification"] = {"result": "Passed", "time": f"2026-02-0{i + 1}T00:00:00Z"}
                return p

            return mutate

        await asyncio.gather(
            *(points.update_point(api, key, f"a{i}", verified(i)) for i in range(8))
        )
        again = await asyncio.gather(
            *(
                points.add_point(api, key, point(f"a{i}", "2026-01-01T00:00:00Z"), vm=vm)
                for i in range(8)
            )
        )
        return list(first), list(again)

    first, again = asyncio.run(run())
    assert first == [True] * 8 and again == [False] * 8
    obj = objects.get(kube_api, namespace, PROTECTEDVM.plural, key.name)
    status = obj["status"]
    assert [p["archiveId"] for p in status["points"]] == [f"a{i}" for i in reversed(range(8))]
    assert [p["verification"]["time"][:10] for p in status["points"]] == [
        f"2026-02-0{i + 1}" for i in reversed(range(8))
    ]
    assert status["pointCount"] == 8 and status["lastGoodPoint"]["archiveId"] == "a7"
    assert status["vm"] == vm and status["vcenter"] == "lab"
    assert obj["metadata"]["labels"] == {"vmguard.io/vcenter": "lab", "vmguard.io/vm": UUID}

    async def missing() -> None:
        await points.update_point(api, key, "nope", lambda p: p)

    with pytest.raises(points.PointNotFound):
        asyncio.run(missing())
    # Another VM whose object's name would be this one's (a hash collision, or a
    # hand-made object): refused, nothing written.

    class Colliding(points.ProtectedVMKey):
        @property
        def name(self) -> str:
            return key.name

    other = Colliding(namespace, "lab", "4201aaaa-bbbb-cccc-dddd-eeeeffff0002")

    async def collide() -> None:
        await points.add_point(api, other, point("b1", "2026-03-01T00:00:00Z"), vm={})

    with pytest.raises(ConfigError, match="belongs to VM"):
        asyncio.run(collide())
    assert (
        objects.get(kube_api, namespace, PROTECTEDVM.plural, key.name)["status"]["pointCount"] == 8
    )


@pytest.mark.lab
@pytest.mark.operator_controllers("backups,repositories")
def test_an_operator_killed_after_recording_a_point_does_not_add_it_twice(
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
    """The backup creates its VM's ProtectedVM, then writes the point into its status,
    then reads Completed. An operator killed after the creation (the object has no status
    yet: kstatus reads it Current, Argo CD Progressing) writes the point after its
    restart; one killed after recording the point finishes the backup with the point
    listed once. (The points of a full and an incremental backup, newest first, are
    checked by tests/controller/test_backups.py's end-to-end test.)"""
    first_operator = start_operator(stall="protectedVMCreated")
    with data_vm(vc, vsim, image_factory, tmp_path) as vm:
        name = points.protected_vm_name(lab_vcenter, vm.instance_uuid)

        def created() -> dict[str, Any] | None:
            found = objects.items(kube_api, namespace, PROTECTEDVM.plural)
            return found[0] if found else None

        def recorded() -> dict[str, Any] | None:
            found = objects.items(kube_api, namespace, PROTECTEDVM.plural)
            return found[0] if found and found[0].get("status", {}).get("pointCount") else None

        create_backup(kube_api, namespace, "first", {"moref": vm.moref})
        made = eventually(created, 120, "the VM's ProtectedVM")
        # Parked after creating it: no status yet, the backup still Finalizing.
        assert made["metadata"]["name"] == name and "status" not in made
        backup = objects.get(kube_api, namespace, "vmguardbackups", "first")["status"]
        assert backup["phase"] == "Finalizing"
        first_operator.kill()
        second_operator = start_operator(stall="pointRecorded")
        assert eventually(recorded, 120, "the backup's point")["metadata"]["name"] == name
        # Parked after recording the point: the backup has not read Completed yet.
        backup = objects.get(kube_api, namespace, "vmguardbackups", "first")["status"]
        assert backup["phase"] == "Finalizing"
        second_operator.kill()
        start_operator()
        done = wait_done(kube_api, namespace, "first")["status"]
        assert done["phase"] == "Completed", done

    obj = objects.get(kube_api, namespace, PROTECTEDVM.plural, name)
    status = obj["status"]
    got = [(p["archiveId"], p["mode"], p["bytes"], p["backup"]) for p in status["points"]]
    assert got == [(done["archiveId"], "full", done["totals"]["bytesUploaded"], "first")]
    assert status["pointCount"] == 1
    # Said in the patch that completed it: no start folds it again.
    assert points.point_recorded(done)
    assert status["points"][0]["time"] == done["snapshot"]["createTime"]
    assert status["points"][0]["repository"] == lab_repository
    assert status["vm"] == {"instanceUuid": vm.instance_uuid, "moref": vm.moref, "name": vm.name}
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert objects.condition(obj, "Ready")["status"] == "True"
    assert "ownerReferences" not in obj["metadata"]


OTHER = "4201aaaa-bbbb-cccc-dddd-eeeeffff0099"


@pytest.mark.unit
def test_only_completed_backups_that_do_not_say_their_point_was_recorded_are_folded() -> None:
    from vmguard.controller.kube import migration

    def backup(phase: str, conditions: list[dict[str, str]], uuid: str = UUID) -> Any:
        status = {"phase": phase, "archiveId": "a1", "vcenter": "lab"}
        status |= {"vm": {"instanceUuid": uuid, "name": "web"} if uuid else {}}
        meta = {"namespace": "ns", "name": "b1", "uid": "u1", "creationTimestamp": "x"}
        return {"metadata": meta, "spec": {}, "status": {**status, "conditions": conditions}}

    said = points.recorded([], points.ProtectedVMKey("ns", "lab", UUID))
    assert said[0]["type"] == "PointRecorded" and said[0]["status"] == "True"
    older = migration.unrecorded(backup("Completed", []))
    assert older is not None and older.key == points.ProtectedVMKey("ns", "lab", UUID)
    assert (older.uid, older.point["archiveId"], older.point["backup"]) == ("u1", "a1", "b1")
    assert migration.unrecorded(backup("Completed", list(said))) is None
    assert migration.unrecorded(backup("Failed", [])) is None
    assert migration.unrecorded(backup("Completed", [], uuid="")) is None  # no ProtectedVM
    refused = [{"type": "PointRecorded", "status": "False"}]  # tried again at each start
    assert migration.unrecorded(backup("Completed", refused)) is not None


def finished_backups(
    kube_api: Any, namespace: str, made: list[tuple[str, str, str, str]], *, recorded: bool
) -> None:
    """VMGuardBackups finished as an operator leaves them: ``(name, VM instance UUID,
    phase, point time)``; a Completed one says ``PointRecorded=True`` when ``recorded``
    (what this operator writes), nothing when not (what an older one wrote). Name
    ``c1`` is a synced one (catalog sync's). They finished now: none expires meanwhile."""
    now = format_time(dt.datetime.now(dt.UTC))
    for name, uuid, phase, when in made:
        spec = {"vm": {"instanceUuid": uuid}, "vcenterRef": {"name": "lab"}}
        spec["repositoryRef"] = {"name": "repo"}
        labels = {LABEL_SYNCED: SYNCED} if name == "c1" else {}
        objects.create(
            kube_api, namespace, "vmguardbackups", "VMGuardBackup", name, spec, labels=labels
        )
        status: dict[str, Any] = {
            "phase": phase,
            "vm": {"instanceUuid": uuid, "name": f"vm-of-{name[0]}"},
            "vcenter": "lab",
            "repository": "repo",
            "snapshot": {"createTime": when},
            "completionTime": now,
        }
        if phase == "Completed":
            status["archiveId"] = f"archive-{name}"
            if recorded:
                status["conditions"] = [
                    {
                        "type": "PointRecorded",
                        "status": "True",
                        "reason": "Recorded",
                        "message": "in its VM's ProtectedVM",
                        "lastTransitionTime": now,
                    }
                ]
        objects.patch_status(kube_api, namespace, "vmguardbackups", name, status)


def seen(operator: OperatorProcess, namespace: str, uuids: set[str]) -> bool:
    """Whether the operator's kopf handlers have seen a finished backup of each VM (its
    per-VM series on /metrics): every backup of those VMs went past its first handler."""
    samples = scrape(operator.metrics_port) or {}
    found = {
        dict(labels).get("vm_uuid")
        for (name, labels) in samples
        if name == "vmguard_vm_info" and dict(labels).get("namespace") == namespace
    }
    return uuids <= found


def protected_vm_requests(log: Path) -> list[str]:
    """The requests an operator made of ProtectedVMs (``--record-requests``)."""
    text = log.read_text() if log.exists() else ""
    return [line for line in text.splitlines() if f"/{PROTECTEDVM.plural}" in line]


def unrecorded_backups(
    kube_api: Any, namespace: str, failed_too: bool = False
) -> points.ProtectedVMKey:
    """Backups an older operator finished, none saying PointRecorded: b1 and b2 of VM
    UUID, c1 of OTHER (and b3, Failed, with ``failed_too``); b1's point is in UUID's
    ProtectedVM already (that operator recorded it when b1 completed). Returns UUID's key."""
    made = [
        ("b1", UUID, "Completed", "2026-01-01T00:00:00Z"),
        ("b2", UUID, "Completed", "2026-01-02T00:00:00Z"),
        *([("b3", UUID, "Failed", "2026-01-03T00:00:00Z")] if failed_too else []),
        ("c1", OTHER, "Completed", "2026-01-01T00:00:00Z"),
    ]
    finished_backups(kube_api, namespace, made, recorded=False)
    key = points.ProtectedVMKey(namespace, "lab", UUID)
    b1 = point("archive-b1", "2026-01-01T00:00:00Z")
    asyncio.run(points.add_point(KubeAPI(kube_api), key, b1, vm={"name": "v"}))
    return key


@pytest.mark.lab
def test_a_start_folds_the_points_of_backups_an_older_operator_completed(
    kube_api: Any,
    namespace: str,
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    """The upgrade to ProtectedVMs (controller/kube/migration.py): the Completed backups
    that do not say their point was recorded (an older operator's; a synced one among
    them) get it folded into their VMs' ProtectedVMs by the operator that starts (not
    the Failed one's; b1's point was there already), and then say so. The next start
    reads no ProtectedVM and adds nothing."""
    key = unrecorded_backups(kube_api, namespace, failed_too=True)
    first = start_operator(record_requests=tmp_path / "first.requests")

    def all_say_so() -> bool:
        return all(
            objects.condition(
                objects.get(kube_api, namespace, "vmguardbackups", name), "PointRecorded"
            ).get("status")
            == "True"
            for name in ("b1", "b2", "c1")
        )

    eventually(all_say_so, 60, "the completed backups saying PointRecorded=True")
    mine = objects.get(kube_api, namespace, PROTECTEDVM.plural, key.name)
    assert [p["archiveId"] for p in mine["status"]["points"]] == ["archive-b2", "archive-b1"]
    theirs = points.protected_vm_name("lab", OTHER)
    status = objects.get(kube_api, namespace, PROTECTEDVM.plural, theirs)["status"]
    assert [(p["archiveId"], p["backup"]) for p in status["points"]] == [("archive-c1", "c1")]
    b3 = objects.get(kube_api, namespace, "vmguardbackups", "b3")
    assert not objects.condition(b3, "PointRecorded")
    first.stop()

    second = start_operator(record_requests=tmp_path / "second.requests")
    eventually(lambda: seen(second, namespace, {UUID, OTHER}), 60, "the backups seen")
    assert protected_vm_requests(tmp_path / "second.requests") == []
    again = objects.get(kube_api, namespace, PROTECTEDVM.plural, key.name)
    assert again["metadata"]["resourceVersion"] == mine["metadata"]["resourceVersion"]


@pytest.mark.lab
@pytest.mark.parametrize("list_above", [100, 0])
def test_the_fold_adds_each_missing_point_once_read_by_get_or_by_list(
    kube_api: Any, namespace: str, list_above: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """controller/kube/migration.py's fold_points, in this process against the real
    apiserver, reading the ProtectedVMs by a GET each and (``LIST_ABOVE`` 0) by the
    namespace's paged LIST: the missing points are added (not b1's, there already), each
    backup is marked, and a second fold of the same backups adds nothing."""
    from vmguard.controller.kube import migration

    monkeypatch.setattr(migration, "LIST_ABOVE", list_above)
    key = unrecorded_backups(kube_api, namespace)
    api = KubeAPI(kube_api)
    found = [migration.unrecorded(b) for b in objects.items(kube_api, namespace, "vmguardbackups")]
    todo = [u for u in found if u is not None]
    assert sorted(u.name for u in todo) == ["b1", "b2", "c1"]
    assert asyncio.run(migration.fold_points(api, todo)) == 2
    assert asyncio.run(migration.fold_points(api, todo)) == 0
    mine = objects.get(kube_api, namespace, PROTECTEDVM.plural, key.name)["status"]
    assert [p["archiveId"] for p in mine["points"]] == ["archive-b2", "archive-b1"]
    theirs = points.protected_vm_name("lab", OTHER)
    status = objects.get(kube_api, namespace, PROTECTEDVM.plural, theirs)["status"]
    assert [(p["archiveId"], p["backup"]) for p in status["points"]] == [("archive-c1", "c1")]
    for backup in objects.items(kube_api, namespace, "vmguardbackups"):
        assert points.point_recorded(backup["status"]), backup["metadata"]["name"]
        assert migration.unrecorded(backup) is None


@pytest.mark.lab
def test_a_start_whose_backups_all_say_their_point_was_recorded_reads_no_protected_vm(
    kube_api: Any,
    namespace: str,
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    """The start after the upgrade (issue #13: 5,000 runs and 150,000 points at each
    start): every Completed backup says ``PointRecorded=True``, as this operator's
    finalize and catalog sync write it, so the operator reads no ProtectedVM for them —
    neither a LIST nor a GET — by the time its handlers have seen every backup."""
    made = [
        ("b1", UUID, "Completed", "2026-01-01T00:00:00Z"),
        ("c1", OTHER, "Completed", "2026-01-01T00:00:00Z"),
        ("d1", "4201aaaa-bbbb-cccc-dddd-eeeeffff0098", "Failed", "2026-01-03T00:00:00Z"),
    ]
    finished_backups(kube_api, namespace, made, recorded=True)
    api = KubeAPI(kube_api)
    for name, uuid in (("b1", UUID), ("c1", OTHER)):
        key = points.ProtectedVMKey(namespace, "lab", uuid)
        recorded = point(f"archive-{name}", "2026-01-01T00:00:00Z", backup=name)
        asyncio.run(points.add_point(api, key, recorded, vm={"name": f"vm-of-{name[0]}"}))
    log = tmp_path / "operator.requests"
    operator = start_operator(record_requests=log)
    uuids = {uuid for _, uuid, _, _ in made}
    eventually(lambda: seen(operator, namespace, uuids), 60, "the backups seen")
    assert protected_vm_requests(log) == []


@pytest.mark.unit
def test_rpo_state_follows_the_last_good_point() -> None:
    import datetime as dt

    now = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
    hours = dt.timedelta(hours=2)
    assert points.rpo_of(None, hours, now) == {"objectiveSeconds": 7200, "state": "Unknown"}
    within = points.rpo_of(now - dt.timedelta(hours=1), hours, now)
    assert within == {"objectiveSeconds": 7200, "due": "2026-01-01T13:00:00Z", "state": "Within"}
    assert points.rpo_of(now - hours, hours, now)["state"] == "Outside"  # due now: out


@pytest.mark.lab
def test_the_policy_pass_writes_each_vms_rpo_state_into_its_protected_vm_once(
    kube_api: Any, namespace: str, lab_vcenter: str, lab_repository: str
) -> None:
    """A policy's scheduler pass (controller/policy/runs.py), run in this process against
    the real apiserver: each of its VMs' ProtectedVMs gets status.rpo and WithinRPO from
    its last good point; a second pass writes nothing."""
    import datetime as dt
    import logging

    from vmguard.api import format_time
    from vmguard.controller.kube.sweeps import LatestSweeps, SweepView
    from vmguard.controller.policy.runs import PolicyRunner
    from vmguard.vsphere.matching import PolicyRef, assign
    from vmguard.vsphere.records import VMRecord

    objects.create_policy(
        kube_api, namespace, "gold", selector={"names": ["rpo-*"]}, rpo="2h", paused=True
    )
    policy = objects.get(kube_api, namespace, "vmprotectionpolicies", "gold")
    vms = [
        VMRecord(moref="vm-1", name="rpo-1", instance_uuid="4201aaaa-0000-4000-8000-000000000001"),
        VMRecord(moref="vm-2", name="rpo-2", instance_uuid="4201aaaa-0000-4000-8000-000000000002"),
    ]
    now = dt.datetime.now(dt.UTC)
    api = KubeAPI(kube_api)

    async def setup() -> None:
        for vm, age in zip(vms, (1, 5), strict=True):
            key = points.ProtectedVMKey(namespace, lab_vcenter, vm.instance_uuid)
            when = format_time(now - dt.timedelta(hours=age))
            new = {"archiveId": f"a-{vm.name}", "repository": "repo", "time": when}
            await points.add_point(api, key, {**new, "policy": "gold"}, vm={"name": vm.name})  # type: ignore[typeddict-item]

    asyncio.run(setup())
    sweeps = LatestSweeps()
    matched = assign(vms, [PolicyRef.from_object(policy)], lab_vcenter)
    sweeps.publish(namespace, lab_vcenter, SweepView(now, 30.0, matched))
    runner = PolicyRunner(api, policy, sweeps, asyncio.Event(), None, logging.getLogger(__name__))

    def held() -> dict[str, dict[str, Any]]:
        found = objects.items(kube_api, namespace, PROTECTEDVM.plural)
        return {o["status"]["vm"]["name"]: o for o in found}

    asyncio.run(runner.turn())
    first = held()
    assert {n: o["status"]["rpo"]["state"] for n, o in first.items()} == {
        "rpo-1": "Within",
        "rpo-2": "Outside",
    }
    assert first["rpo-1"]["status"]["rpo"]["objectiveSeconds"] == 7200
    assert objects.condition(first["rpo-1"], "WithinRPO")["status"] == "True"
    assert objects.condition(first["rpo-2"], "WithinRPO")["reason"] == "Outside"
    # Ready still says whether the VM has a good point; the RPO is its own condition.
    assert objects.condition(first["rpo-2"], "Ready")["status"] == "True"
    asyncio.run(runner.turn())
    again = held()
    assert {n: o["metadata"]["resourceVersion"] for n, o in again.items()} == {
        n: o["metadata"]["resourceVersion"] for n, o in first.items()
    }
