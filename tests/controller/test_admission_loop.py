"""The admission loop's pure turn (controller/kube/workqueue.py: decide; the
backups' lane in controller/backup/admission.py: queued_of and the status patches): what
it starts, tells and expires, and that a turn which changes nothing writes nothing —
also while the watch has not brought back the loop's own writes."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from vmguard.controller.backup.admission import queued_of, start_status, waiting_status
from vmguard.controller.kube.admission import VCenterLimits, WorkKind
from vmguard.controller.kube.workqueue import (
    Memory,
    PolicyTerms,
    Queued,
    decide,
)
from vmguard.controller.restore.admission import RestoreLane
from vmguard.controller.restore.admission import queued_of as restore_queued_of

NOW = dt.datetime(2026, 12, 6, 1, 30, tzinfo=dt.UTC)
LIMITS = VCenterLimits()
TWO = {"gold": PolicyTerms.of({"concurrency": {"total": 2}})}


def body(i: int, phase: str = "Pending", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"b{i:03d}",
            "namespace": "ns",
            "uid": f"uid-{i}",
            "resourceVersion": "1",
            "generation": 1,
            "creationTimestamp": f"2026-12-06T01:00:{i % 60:02d}Z",
            "labels": {"vmguard.io/run": "20261206T0100Z"},
        },
        "spec": {"policyRef": {"name": "gold"}},
        "status": {
            "phase": phase,
            "startTime": "2026-12-06T01:00:00Z",
            "vm": {"moref": f"vm-{i}"},
            "vcenter": "vc1",
            "placement": {"host": f"esx{i}", "datastores": [f"ds{i}"]},
            **status,
        },
    }


def records(n: int) -> list[Queued]:
    out = [queued_of(body(i)) for i in range(n)]
    return [q for q in out if q is not None]


def after_write(q: Queued, patch: dict[str, Any]) -> Queued:
    """``q`` as the watch brings it back after ``patch`` (a new resourceVersion)."""
    return dataclasses.replace(
        q,
        resource_version=str(int(q.resource_version) + 1),
        conditions=tuple(patch.get("conditions", q.conditions)),
        position=patch.get("queuePosition", q.position),
        waiting=patch.get("phase", "Pending") == "Pending",
    )


def test_queued_of_keeps_resolved_backups_in_flight_only() -> None:
    assert queued_of(body(1, phase="Completed")) is None
    unresolved = body(2)
    del unresolved["status"]["vm"]
    assert queued_of(unresolved) is None
    q = queued_of(body(3, placement={"host": "esx1", "disks": [{"datastore": "a", "count": 3}]}))
    assert q is not None and q.disks == (("a", 3),) and q.waiting
    running = queued_of(body(4, phase="Transferring"))
    assert running is not None and not running.waiting
    deleting = body(5, phase="Finalizing")
    deleting["metadata"]["deletionTimestamp"] = "2026-12-06T01:10:00Z"
    assert queued_of(deleting) is not None  # still holds its slot while cleaned up
    deleting["status"]["phase"] = "Pending"
    assert queued_of(deleting) is None  # deleted while waiting: never starts


def test_a_turn_that_changes_nothing_writes_nothing() -> None:
    mem = Memory()
    qs = records(5)
    d = decide(qs, TWO, LIMITS, mem, now=NOW, deadline=3600 * 6)
    assert [q.name for q in d.start] == ["b000", "b001"]
    assert [(q.name, w.position) for q, w in d.tell] == [("b002", 1), ("b003", 2), ("b004", 3)]
    for q in d.start:
        mem.started[q.uid] = q.resource_version
    for q, w in d.tell:
        mem.told[q.uid] = (q.resource_version, (w.position, w.reason, w.message))
    # The watch has not delivered the writes yet: nothing again, nothing more started.
    again = decide(qs, TWO, LIMITS, mem, now=NOW, deadline=3600 * 6)
    assert again.start == [] and again.tell == [] and again.expire == []
    # The watch delivered them: still nothing to write.
    patches = {q.uid: start_status(q, NOW) for q in d.start}
    patches.update({q.uid: waiting_status(q, w, NOW) for q, w in d.tell})
    fresh = [after_write(q, patches[q.uid]) for q in qs]
    settled = decide(fresh, TWO, LIMITS, mem, now=NOW, deadline=3600 * 6)
    assert settled.start == [] and settled.tell == []
    assert mem.started == {} and mem.told == {}


def test_one_finishing_moves_the_queue_by_one() -> None:
    mem = Memory()
    qs = records(5)
    d = decide(qs, TWO, LIMITS, mem, now=NOW, deadline=3600 * 6)
    patches = {q.uid: start_status(q, NOW) for q in d.start}
    patches.update({q.uid: waiting_status(q, w, NOW) for q, w in d.tell})
    fresh = [after_write(q, patches[q.uid]) for q in qs]
    done = [q for q in fresh if q.name != "b000"]  # b000 completed: it leaves the index
    d2 = decide(done, TWO, LIMITS, mem, now=NOW, deadline=3600 * 6)
    assert [q.name for q in d2.start] == ["b002"]
    assert [(q.name, w.position) for q, w in d2.tell] == [("b003", 1), ("b004", 2)]


def test_waiting_past_the_deadline_expires() -> None:
    d = decide(records(3), TWO, LIMITS, Memory(), now=NOW, deadline=60)
    assert [q.name for q in d.expire] == ["b000", "b001", "b002"]
    assert d.start == []


def test_waiting_status_says_why_and_where() -> None:
    mem = Memory()
    d = decide(records(3), TWO, LIMITS, mem, now=NOW, deadline=3600 * 6)
    q, w = d.tell[0]
    patch = waiting_status(q, w, NOW)
    assert patch["queuePosition"] == 1
    admitted = next(c for c in patch["conditions"] if c["type"] == "Admitted")
    assert (admitted["status"], admitted["reason"]) == ("False", "ConcurrencyLimit")
    assert admitted["message"] == "policy gold runs at most 2 backups at once (total)"
    ready = next(c for c in patch["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ConcurrencyLimit")


def restore_body(i: int, phase: str = "Pending", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"r{i:03d}",
            "namespace": "ns",
            "uid": f"ruid-{i}",
            "resourceVersion": "1",
            "generation": 1,
            "creationTimestamp": "2026-12-06T01:20:00Z",
        },
        "spec": {"source": {"backupRef": {"name": "b000"}}, "target": {"newVM": {"name": "x"}}},
        "status": {
            "phase": phase,
            "vcenter": "vc1",
            "result": {"vm": {"moref": f"vm-new-{i}"}},
            "placement": {"host": "esx-r", "disks": [{"datastore": "dsr", "count": 2}]},
            **status,
        },
    }


def test_a_restore_is_queued_with_the_backups_and_its_lane_writes_its_statuses() -> None:
    lane = RestoreLane()
    assert restore_queued_of(restore_body(1, phase="Completed")) is None
    unplaced = restore_body(2)
    del unplaced["status"]["placement"]
    assert restore_queued_of(unplaced) is None  # not prepared yet: the controller's
    r = restore_queued_of(restore_body(3))
    assert r is not None and r.kind == WorkKind.RESTORE and r.disks == (("dsr", 2),)
    one = VCenterLimits(disks=2, disks_per_host=48, disks_per_datastore=8)
    d = decide(
        [*records(3), r],
        TWO,
        one,
        Memory(),
        now=NOW,
        deadline={WorkKind.BACKUP: 3600.0, WorkKind.RESTORE: float("inf")},
        vcenter="vc1",
    )
    # Created after the backups, the restore goes first (restores win the first tie).
    assert [q.name for q in d.start] == ["r003"]
    assert [(q.name, w.position) for q, w in d.tell] == [("b000", 1), ("b001", 2), ("b002", 3)]
    start = lane.start_status(r, NOW)
    assert start["phase"] == "Restoring" and start["queuePosition"] is None
    admitted = next(c for c in start["conditions"] if c["type"] == "Admitted")
    assert (admitted["status"], admitted["reason"]) == ("True", "WithinLimits")
    # Running, it holds the vCenter's two disks: the backups wait, and say so.
    running = restore_queued_of(restore_body(3, phase="Restoring"))
    assert running is not None and not running.waiting
    d = decide([*records(3), running], TWO, one, Memory(), now=NOW, deadline=3600.0, vcenter="vc1")
    assert d.start == []
    _, w = d.tell[0]
    told = lane.waiting_status(running, w, NOW)  # the same patch shape for either kind
    assert told["queuePosition"] == 1
    assert w.message == "vCenter vc1 has its 2 NFC disks in use (NBD)"
