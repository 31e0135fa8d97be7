"""A copy's outcome is recorded in its restore point (``ProtectedVM.status.points[]
.copies[]``) as well as in its run (``VMGuardBackup.status.copies``), through
``controller/kube/copies.py`` and the points' one writer: the point keeps it after the
run expired (docs/copies.md).

Unit tests for the pure pieces; a lab test against the real apiserver records a copy
with the copy controller's own call, expires the run with the backup controller's own
call, and reads the point back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from tests.controller import objects

from vmguard.api import BackupCopy, RestorePoint, VMIdentity
from vmguard.api.kinds import BACKUP, PROTECTEDVM
from vmguard.controller.backup import expiry
from vmguard.controller.kube import copies, points
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.policy import copying
from vmguard.controller.policy.targets import CopyTarget

UUID = "4201aaaa-bbbb-cccc-dddd-eeeeffff0017"
DONE: BackupCopy = {
    "repository": "offsite",
    "state": "Completed",
    "time": "2026-12-06T10:00:00Z",
    "bytes": 4096,
    "archiveId": "vm1-20261206t100000z-c0",
    "attempts": 2,
    "message": "a first Job failed: connection reset",
}


@pytest.mark.unit
def test_a_point_keeps_each_targets_last_entry_without_its_message() -> None:
    point: RestorePoint = {"archiveId": "a1", "repository": "repo", "time": "2026-12-06T09:00:00Z"}
    running = copies.point_copy({"repository": "offsite", "state": "Running", "attempts": 1})
    assert running == {"repository": "offsite", "state": "Running", "attempts": 1}
    step = copies.with_copy(point, running)
    assert step is not None and step["copies"] == [running]
    done = copies.point_copy(DONE)
    assert "message" not in done and done["archiveId"] == DONE["archiveId"]
    other = copies.point_copy({"repository": "archive", "state": "Pending"})
    after = copies.with_copy(step, done)
    assert after is not None
    after = copies.with_copy(after, other)
    assert after is not None
    assert [c["repository"] for c in after["copies"]] == ["archive", "offsite"]
    assert after["copies"][1] == done
    assert copies.with_copy(after, done) is None  # written already: nothing to write
    assert "copies" not in point  # the entry handed in is not changed


def _expired(archive: str, time: str, *copies_: dict[str, Any]) -> dict[str, Any]:
    """A ProtectedVM whose one point's run expired (no ``backup``), with ``copies_``."""
    point: dict[str, Any] = {
        "archiveId": archive,
        "repository": "repo",
        "time": time,
        "policy": "gold",
    }
    if copies_:
        point["copies"] = list(copies_)
    return {
        "metadata": {"name": "pvm", "namespace": "ns"},
        "status": {"vm": {"instanceUuid": UUID}, "vcenter": "lab", "points": [point]},
    }


@pytest.mark.unit
def test_after_its_run_expired_a_copied_point_is_neither_copied_again_nor_lagging() -> None:
    policy = {"metadata": {"name": "gold", "namespace": "ns"}, "spec": {}}
    target = CopyTarget("offsite", {"keepDaily": 7}, 0.0)
    copied = _expired("vm1-a1", "2026-12-01T00:00:00Z", copies.point_copy(DONE))
    waiting = _expired(
        "vm1-a2", "2026-12-02T00:00:00Z", {"repository": "offsite", "state": "Pending"}
    )
    runs = points.stand_ins([copied, waiting], [])

    assert [copies.copies_of(b).get("offsite", {}).get("state") for b in runs] == [
        "Completed",
        "Pending",
    ]
    # The copy lag and retention's hold see the copy made; the other still waits.
    lagging = copying.oldest_uncopied(policy, [target], runs)["offsite"]
    assert lagging is not None and lagging.archive_id == "vm1-a2"
    assert copying.awaiting_copy(policy, [target], runs) == {runs[1]["metadata"]["name"]}


@pytest.mark.lab
def test_a_copy_recorded_in_its_run_stays_in_its_point_after_the_run_expired(
    kube_api: Any, namespace: str
) -> None:
    api = KubeAPI(kube_api)
    archive = "vm1-20261206t090000z-a0"
    objects.create(
        kube_api,
        namespace,
        BACKUP.plural,
        BACKUP.kind,
        "b1",
        {"vm": {"moref": "vm-1"}, "policyRef": {"name": "gold"}},
    )
    vm: VMIdentity = {"instanceUuid": UUID, "name": "web-17", "moref": "vm-1"}
    status = {
        "phase": "Completed",
        "archiveId": archive,
        "repository": "repo",
        "vcenter": "lab",
        "vm": vm,
        "startTime": "2026-12-06T09:00:00Z",
        "completionTime": "2026-12-06T09:01:00Z",
    }

    async def run() -> None:
        await api.patch_status(BACKUP.plural, namespace, "b1", status)
        backup = objects.get(kube_api, namespace, BACKUP.plural, "b1")
        key = points.backup_key(backup)
        await points.add_point(api, key, points.backup_point(backup), vm=vm)
        await copies.record_copy(
            api, backup, {"repository": "offsite", "state": "Running", "attempts": 2}
        )
        await copies.record_copy(api, backup, DONE)
        await expiry.expire(api, objects.get(kube_api, namespace, BACKUP.plural, "b1"))

    asyncio.run(run())
    with pytest.raises(ApiException) as gone:
        objects.get(kube_api, namespace, BACKUP.plural, "b1")
    assert gone.value.status == 404
    name = points.protected_vm_name("lab", UUID)
    (entry,) = objects.get(kube_api, namespace, PROTECTEDVM.plural, name)["status"]["points"]
    assert entry["archiveId"] == archive and "backup" not in entry
    assert entry["copies"] == [{k: v for k, v in DONE.items() if k != "message"}]


@pytest.mark.unit
def test_an_expired_runs_point_is_matched_to_its_copy_found_in_the_target() -> None:
    policy = {"metadata": {"name": "gold", "namespace": "ns"}, "spec": {}}
    runs = points.stand_ins(
        [_expired("vm1-a1", "2026-12-01T00:00:00Z"), _expired("vm1-a2", "2026-12-02T00:00:00Z")],
        [],
    )
    orphans = copying.points(policy, runs)
    when = dt.datetime(2026, 12, 2, tzinfo=dt.UTC)
    made = copying.CopiedPoint("copy-of-a2", "tag", "vm1-a2", when)
    assert [(p.archive_id, c) for p, c in copying.adoptable(orphans, [made])] == [
        ("vm1-a2", "copy-of-a2")
    ]


@pytest.mark.lab
def test_a_copy_made_outside_the_operator_is_recorded_on_an_expired_runs_point(
    kube_api: Any, namespace: str
) -> None:
    """An expired run's point (its stand-in) has no object to patch: the copy found in
    the target (``vmguard repo copy``) goes into the point alone, and the point then
    neither lags nor waits for a copy."""
    api = KubeAPI(kube_api)
    archive = "vm1-20261206t100000z-a1"
    objects.create(
        kube_api,
        namespace,
        BACKUP.plural,
        BACKUP.kind,
        "b2",
        {"vm": {"moref": "vm-1"}, "policyRef": {"name": "gold"}},
    )
    vm: VMIdentity = {"instanceUuid": UUID, "name": "web-17", "moref": "vm-1"}
    status = {
        "phase": "Completed",
        "archiveId": archive,
        "repository": "repo",
        "vcenter": "lab",
        "vm": vm,
        "startTime": "2026-12-06T10:00:00Z",
        "completionTime": "2026-12-06T10:01:00Z",
    }
    policy = {"metadata": {"name": "gold", "namespace": namespace}, "spec": {}}
    target = CopyTarget("offsite", {"keepDaily": 7}, 0.0)
    name = points.protected_vm_name("lab", UUID)
    found: BackupCopy = {
        "repository": "offsite",
        "state": "Completed",
        "time": "2026-12-07T08:00:00Z",
        "bytes": 512,
        "archiveId": "vm1-20261207t080000z-c1",
    }

    async def run() -> None:
        await api.patch_status(BACKUP.plural, namespace, "b2", status)
        backup = objects.get(kube_api, namespace, BACKUP.plural, "b2")
        await points.add_point(api, points.backup_key(backup), points.backup_point(backup), vm=vm)
        await expiry.expire(api, objects.get(kube_api, namespace, BACKUP.plural, "b2"))
        pvm = objects.get(kube_api, namespace, PROTECTEDVM.plural, name)
        (stand_in,) = points.stand_ins([pvm], [])
        lag = copying.oldest_uncopied(policy, [target], [stand_in])["offsite"]
        assert lag is not None and lag.archive_id == archive
        await copies.record_point_copy(api, stand_in, found)

    asyncio.run(run())
    pvm = objects.get(kube_api, namespace, PROTECTEDVM.plural, name)
    (entry,) = pvm["status"]["points"]
    assert entry["copies"] == [found]
    (again,) = points.stand_ins([pvm], [])
    assert copying.oldest_uncopied(policy, [target], [again]) == {"offsite": None}
