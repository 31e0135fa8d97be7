"""Copies in the admission queue (controller/policy/copyqueue.py's lane, the queue's
background kinds in controller/kube/admission.py): they never starve backups.

With backups and copies both queued, every backup that its limits allow starts, exactly
as if no copy waited, and before any copy; a waiting backup's position and message are
the same as without them; a running copy of a VM does not make that VM's backup wait;
one VM's points go to one target one at a time, oldest first; copies are held by their
policy's ``concurrency.total`` only, and say so. The lane's patches rewrite the entry
list only under the record's resourceVersion, and its waiting patch touches
``copyQueue`` only."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from tests.controller.test_verify_admission import TERMS, backup, restore
from tests.controller.test_verify_admission import records as other_records

from vmguard.controller.kube.admission import VCenterLimits, Work, WorkKind, plan
from vmguard.controller.kube.workqueue import Memory, Queued, decide
from vmguard.controller.policy.copyqueue import CopyLane, queued_of

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 12, 6, 1, 30, tzinfo=dt.UTC)


def point(i: int, *entries: dict[str, Any], vm: int | None = None) -> dict[str, Any]:
    """A completed backup of ``vm-<vm or i>`` (yesterday's) with copy ``entries``."""
    body = backup(vm if vm is not None else i, "Completed", archiveId=f"a-{i}")
    body["metadata"] |= {"name": f"c{i:03d}", "uid": f"uid-c{i}"}
    body["status"]["completionTime"] = f"2026-12-05T01:{i % 60:02d}:00Z"
    body["status"]["copies"] = list(entries) or [pending("offsite")]
    return body


def pending(target: str, attempts: int | None = None) -> dict[str, Any]:
    entry = {"repository": target, "state": "Pending", "time": "2026-12-06T00:00:00Z"}
    if attempts:
        entry["attempts"] = attempts
    return entry


def records(*bodies: dict[str, Any]) -> list[Queued]:
    out: list[Queued] = []
    for b in bodies:
        if b["metadata"]["name"].startswith("c"):
            q = queued_of(b)
            assert q is not None, b["metadata"]["name"]
            out.append(q)
        else:
            out.extend(other_records(b))
    return out


def turn(qs: list[Queued], limits: VCenterLimits | None = None, mem: Memory | None = None) -> Any:
    return decide(
        qs,
        TERMS,
        limits or VCenterLimits(),
        mem or Memory(),
        now=NOW,
        deadline={k: 6 * 3600.0 for k in WorkKind},
        vcenter="vc1",
    )


@pytest.mark.parametrize(
    "limits",
    [VCenterLimits(), VCenterLimits(disks=6, disks_per_host=48, disks_per_datastore=8)],
    ids=["policy-bound", "vcenter-bound"],
)
def test_backups_start_first_and_within_their_slots_with_copies_queued(
    limits: VCenterLimits,
) -> None:
    backups = records(*(backup(i) for i in range(7)))
    # Yesterday's points of the same VMs, completed (and queued) before tonight's backups.
    copies = records(*(point(i) for i in range(6)))
    alone = turn(backups, limits)
    both = turn(copies + backups, limits)

    started = [q.name for q in both.start]
    assert started[: len(alone.start)] == [q.name for q in alone.start]
    assert {q.kind for q in both.start[len(alone.start) :]} == {WorkKind.COPY}
    assert len(alone.start) == (4 if limits.disks == 52 else 3)
    # The policy's total (4) bounds its copies, beside its backups: four of six start.
    assert started[len(alone.start) :] == ["c000", "c001", "c002", "c003"]
    told_alone = [(q.name, w.position, w.reason, w.message) for q, w in alone.tell]
    told_both = [(q.name, w.position, w.reason, w.message) for q, w in both.tell]
    assert told_both[: len(told_alone)] == told_alone
    rest = {name: (position, message) for name, position, _, message in told_both}
    assert rest["c004"][1] == "policy gold runs at most 4 copies at once (total)"
    assert min(p for n, (p, _) in rest.items() if n.startswith("c")) > max(
        p for n, (p, _) in rest.items() if n.startswith("b")
    )


def test_copy_work_takes_no_turn_ahead_of_a_waiting_backup() -> None:
    """The planner itself: a copy queued before the backups is still placed after them
    (before, copies took turns with backups and restores and pushed them back)."""
    backups = [Work(f"b{i}", f"b{i}", "gold", f"vm-{i}", "esx1", (("ds1", 1),)) for i in range(3)]
    copy = Work(
        "c0", "c0", "gold", "vm-9 copy to offsite", "", (), created=NOW, nfc=False,
        kind=WorkKind.COPY,
    )  # fmt: skip
    busy = Work("c9", "c9", "gold", copy.vm, "", (), nfc=False, kind=WorkKind.COPY)
    p = plan([copy, *backups], [busy], VCenterLimits(disks_per_datastore=1))
    assert [w.name for w in p.start] == ["b0"]
    assert [(w.work.name, w.position) for w in p.waiting] == [("b1", 1), ("b2", 2), ("c0", 3)]


def test_a_restore_and_the_backups_go_before_every_copy() -> None:
    qs = records(point(1), point(2), restore(1), backup(3), backup(4))
    assert [q.name for q in turn(qs).start] == ["r001", "b003", "b004", "c001", "c002"]


def test_a_running_copy_does_not_hold_its_vms_backup_and_a_vms_points_go_one_at_a_time() -> None:
    running = records(point(1, {"repository": "offsite", "state": "Running", "attempts": 1}))
    assert not running[0].waiting
    d = turn([*running, *records(backup(1))])
    assert [q.name for q in d.start] == ["b001"]
    # The VM's next point waits for the first's copy to that target, not to another.
    later = records(point(2, vm=1), point(3, pending("vault"), vm=1))
    d = turn([*running, *later])
    assert [q.name for q in d.start] == ["c003"]
    assert [(q.name, w.reason) for q, w in d.tell] == [("c002", "VMBusy")]


def test_the_lanes_patches_keep_the_other_entries_and_are_written_once() -> None:
    lane = CopyLane()
    done = {"repository": "archive", "state": "Completed", "archiveId": "x", "attempts": 1}
    body = point(5, done, pending("offsite", attempts=1))
    [q] = records(body)
    running = records(*(point(i, {"repository": "offsite", "state": "Running"}) for i in range(4)))
    mem = Memory()
    d = turn([*running, q], mem=mem)
    [(told, w)] = d.tell
    patch = lane.waiting_status(told, w, NOW)
    assert patch == {
        "copyQueue": {
            "repository": "offsite",
            "queuePosition": 1,
            "reason": "ConcurrencyLimit",
            "message": "policy gold runs at most 4 copies at once (total)",
        }
    }
    mem.told[told.uid] = (told.resource_version, (w.position, w.reason, w.message))
    body["metadata"]["resourceVersion"] = "2"
    body["status"] |= patch
    [back] = records(body)
    again = turn([*running, back], mem=mem)
    assert again.tell == [] and again.start == []
    start = lane.start_status(back, NOW)
    assert start["copyQueue"] is None
    assert start["copies"] == [
        done,
        {
            "repository": "offsite",
            "state": "Running",
            "time": "2026-12-06T01:30:00Z",
            "attempts": 2,
        },
    ]
    expired = lane.expired_status(back, NOW)["copies"][1]
    assert (expired["state"], expired["attempts"]) == ("Failed", 2)
    assert expired["message"].startswith("DeadlineExceeded")


def test_only_a_completed_backup_with_a_queued_or_running_copy_is_in_the_queue() -> None:
    assert queued_of(backup(1, "Completed", archiveId="a")) is None  # no copy queued
    assert queued_of(point(1, {"repository": "offsite", "state": "Completed"})) is None
    deleted = point(2)
    deleted["metadata"]["deletionTimestamp"] = "2026-12-06T01:20:00Z"
    assert queued_of(deleted) is None
    # Running first, else the first Pending by target: one record per backup.
    q = queued_of(point(3, pending("vault"), pending("archive")))
    assert q is not None and q.vm == "vm-3 copy to archive" and q.waiting
    q = queued_of(point(3, pending("archive"), {"repository": "vault", "state": "Running"}))
    assert q is not None and q.vm == "vm-3 copy to vault" and not q.waiting
    assert (q.kind, q.host, q.disks, q.nfc) == (WorkKind.COPY, "", (), False)
    assert q.created == dt.datetime(2026, 12, 5, 1, 3, tzinfo=dt.UTC)
