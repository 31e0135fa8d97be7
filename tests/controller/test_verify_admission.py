"""Verifications in the admission queue (controller/backup/verification.py's lane, the
queue's background kinds in controller/kube/admission.py): they never starve backups.

With backups and verifications both queued, every backup that its limits allow starts,
exactly as if no verification waited, and before any verification; a waiting backup's
position and message are the same as without them; a running verification of a VM does
not make that VM's backup wait; verifications are held by their policy's
``verification.concurrency`` only, and say so."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from vmguard.controller.backup.admission import queued_of as backup_queued_of
from vmguard.controller.backup.verification import VerifyLane, queued_of, request
from vmguard.controller.kube.admission import VCenterLimits, WorkKind
from vmguard.controller.kube.workqueue import Memory, PolicyTerms, Queued, decide
from vmguard.controller.restore.admission import queued_of as restore_queued_of

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 12, 6, 1, 30, tzinfo=dt.UTC)
GOLD = {"concurrency": {"total": 4}, "verification": {"fsck": True, "concurrency": 2}}
TERMS = {"gold": PolicyTerms.of(GOLD)}


def backup(i: int, phase: str = "Pending", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"b{i:03d}",
            "namespace": "ns",
            "uid": f"uid-b{i}",
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
            "placement": {
                "host": f"esx{i % 3}",
                "disks": [{"datastore": f"ds{i % 2}", "count": 2}],
            },
            **status,
        },
    }


def verification(i: int, phase: str = "Pending") -> dict[str, Any]:
    """A completed backup of ``vm-<i>`` (yesterday's) whose verification is ``phase``."""
    body = backup(i, "Completed", archiveId=f"vm-{i}-20261205T010000Z")
    body["metadata"] |= {"name": f"v{i:03d}", "uid": f"uid-v{i}"}
    body["metadata"]["creationTimestamp"] = f"2026-12-05T01:00:{i % 60:02d}Z"
    asked = request(GOLD, dt.datetime(2026, 12, 6, 0, i % 60, tzinfo=dt.UTC))
    assert asked is not None
    body["status"]["verification"] = {**asked, "phase": phase}
    return body


def restore(i: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"r{i:03d}",
            "namespace": "ns",
            "uid": f"uid-r{i}",
            "resourceVersion": "1",
            "generation": 1,
            "creationTimestamp": "2026-12-06T01:10:00Z",
        },
        "spec": {},
        "status": {
            "phase": "Pending",
            "vcenter": "vc1",
            "placement": {"host": "esx9", "disks": [{"datastore": "ds9", "count": 1}]},
            "result": {"vm": {"moref": f"vm-9{i}"}},
        },
    }


def records(*bodies: dict[str, Any]) -> list[Queued]:
    out = []
    for b in bodies:
        if b["metadata"]["name"].startswith("r"):
            q = restore_queued_of(b)
        elif b["metadata"]["name"].startswith("v"):
            q = queued_of(b)
        else:
            q = backup_queued_of(b)
        assert q is not None, b["metadata"]["name"]
        out.append(q)
    return out


def turn(qs: list[Queued], limits: VCenterLimits | None = None) -> Any:
    limits = limits or VCenterLimits()
    return decide(qs, TERMS, limits, Memory(), now=NOW, deadline=6 * 3600.0, vcenter="vc1")


@pytest.mark.parametrize(
    "limits",
    [VCenterLimits(), VCenterLimits(disks=6, disks_per_host=48, disks_per_datastore=8)],
    ids=["policy-bound", "vcenter-bound"],
)
def test_backups_start_first_and_within_their_slots_with_verifications_queued(
    limits: VCenterLimits,
) -> None:
    backups = records(*(backup(i) for i in range(7)))
    # Yesterday's points of the same VMs, asked for earlier than tonight's backups.
    verifications = records(*(verification(i) for i in range(20)))  # acceptance 4's 20
    alone = turn(backups, limits)
    both = turn(verifications + backups, limits)

    started = [q.name for q in both.start]
    kinds = [q.kind for q in both.start]
    # Every backup that starts without verifications starts with them, and first.
    assert started[: len(alone.start)] == [q.name for q in alone.start]
    assert set(kinds[len(alone.start) :]) == {WorkKind.VERIFY}
    assert len(alone.start) == (4 if limits.disks == 52 else 3)  # policy total; 6 NFC disks
    # The policy's verification concurrency: two of twenty start, beside the backups.
    assert started[len(alone.start) :] == ["v000", "v001"]
    # A waiting backup is told exactly what it is told without verifications.
    told_alone = [(q.name, w.position, w.reason, w.message) for q, w in alone.tell]
    told_both = [(q.name, w.position, w.reason, w.message) for q, w in both.tell]
    assert told_both[: len(told_alone)] == told_alone
    rest = {name: (position, message) for name, position, _, message in told_both}
    assert rest["v002"][1] == "policy gold runs at most 2 verifications at once (total)"
    assert min(p for n, (p, _) in rest.items() if n.startswith("v")) > max(
        p for n, (p, _) in rest.items() if n.startswith("b")
    )


def test_a_restore_and_the_backups_go_before_every_verification() -> None:
    qs = records(verification(1), verification(2), restore(1), backup(3), backup(4))
    assert [q.name for q in turn(qs).start] == ["r001", "b003", "b004", "v001", "v002"]


def test_a_running_verification_does_not_hold_its_vms_backup() -> None:
    running = records(verification(1, phase="Verifying"))
    assert not running[0].waiting
    d = turn([*running, *records(backup(1))])
    assert [q.name for q in d.start] == ["b001"]
    # ... while a VM's second verification waits for its first (one at a time per VM).
    second = verification(1)
    second["metadata"] |= {"name": "v101", "uid": "uid-v101"}
    d = turn([*running, *records(second)])
    assert d.start == [] and [w.reason for _, w in d.tell] == ["VMBusy"]


def test_verifications_beyond_their_policys_concurrency_wait_and_say_so() -> None:
    running = records(verification(1, "Verifying"), verification(2, "Verifying"))
    d = turn([*running, *records(verification(3))])
    assert d.start == []
    [(q, w)] = d.tell
    assert (q.name, w.position, w.reason) == ("v003", 1, "ConcurrencyLimit")


def test_the_lanes_patches_touch_the_verification_block_only_and_are_written_once() -> None:
    lane = VerifyLane()
    [q] = records(verification(3))
    running = records(verification(1, "Verifying"), verification(2, "Verifying"))
    mem = Memory()
    d = decide([*running, q], TERMS, VCenterLimits(), mem, now=NOW, deadline=lane.deadline)
    [(told, w)] = d.tell
    patch = lane.waiting_status(told, w, NOW)
    assert set(patch) == {"verification"}
    assert patch["verification"]["queuePosition"] == 1
    mem.told[told.uid] = (told.resource_version, (w.position, w.reason, w.message))
    # The watch brings the write back: the next turn writes nothing.
    body = verification(3)
    body["metadata"]["resourceVersion"] = "2"
    body["status"]["verification"] |= patch["verification"]
    [back] = records(body)
    again = decide([*running, back], TERMS, VCenterLimits(), mem, now=NOW, deadline=lane.deadline)
    assert again.tell == [] and again.start == []
    start = lane.start_status(back, NOW)
    assert set(start) == {"verification"} and start["verification"]["phase"] == "Verifying"
    expired = lane.expired_status(back, NOW)["verification"]
    assert (expired["phase"], expired["result"], expired["reason"]) == (
        "Completed",
        "Error",
        "DeadlineExceeded",
    )


def test_only_a_completed_backup_with_a_requested_verification_is_queued() -> None:
    assert queued_of(backup(1, "Completed", archiveId="a")) is None  # none requested
    done = verification(1)
    done["status"]["verification"]["phase"] = "Completed"
    assert queued_of(done) is None
    deleted = verification(2)
    deleted["metadata"]["deletionTimestamp"] = "2026-12-06T01:20:00Z"
    assert queued_of(deleted) is None
    q = queued_of(verification(4))
    assert q is not None and q.kind == WorkKind.VERIFY and q.vm == "vm-4 verify"
    assert (q.host, q.disks, q.nfc) == ("", (), False)
    assert request({}, NOW) is None
    assert request({"verification": {"fsck": False, "yara": {"configMapRef": {"name": "r"}}}}, NOW)[
        "checks"
    ] == ["yara"]  # type: ignore[index]


def test_a_verification_waiting_past_the_lanes_deadline_expires() -> None:
    [q] = records(verification(1))
    late = dataclasses.replace(q)
    d = decide(
        [late],
        TERMS,
        VCenterLimits(),
        Memory(),
        now=NOW + dt.timedelta(days=2),
        deadline={WorkKind.VERIFY: VerifyLane().deadline},
    )
    assert [x.name for x in d.expire] == ["v001"]
