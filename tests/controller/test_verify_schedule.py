"""Scheduled verification (controller/policy/verifying.py, controller/kube/verifications.py):
at each time of ``verification.every``, each VM's newest completed point is asked for
again — once per time, never while a run is in flight, never for an expired run's
stand-in — and a new run clears the last one's outcome. Pure, no lab."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from vmguard.controller.kube.schedule import parse
from vmguard.controller.kube.verifications import again, request
from vmguard.controller.policy.verifying import allowance, due

pytestmark = pytest.mark.unit

TICK = dt.datetime(2026, 12, 6, 3, 0, tzinfo=dt.UTC)
SPEC = {"verification": {"every": "0 3 * * *", "yara": {"configMapRef": {"name": "r"}}}}


def backup(name: str, vm: str, done: str, verification: dict[str, Any] | None = None,
           **meta: Any) -> dict[str, Any]:  # fmt: skip
    status: dict[str, Any] = {
        "phase": "Completed",
        "archiveId": f"a-{name}",
        "completionTime": done,
        "vm": {"instanceUuid": vm},
    }
    if verification is not None:
        status["verification"] = verification
    return {"metadata": {"name": name, "namespace": "ns", **meta}, "status": status}


def names(objs: list[Any]) -> list[str]:
    return [o["metadata"]["name"] for o in objs]


def test_each_vms_newest_point_completed_before_the_time_is_asked_for_once() -> None:
    ended = {"phase": "Completed", "result": "Passed", "requestTime": "2026-12-05T03:00:05Z"}
    backups = [
        backup("a1", "u-a", "2026-12-05T01:00:00Z"),
        backup("a2", "u-a", "2026-12-06T01:00:00Z", ended),  # newest of a: verified before
        backup("b1", "u-b", "2026-12-06T01:00:00Z"),
        backup("b2", "u-b", "2026-12-06T03:30:00Z"),  # completed after the time: waits
        backup(
            "c1", "u-c", "2026-12-06T01:00:00Z", {**ended, "requestTime": "2026-12-06T03:00:01Z"}
        ),
        backup("d1", "u-d", "2026-12-06T01:00:00Z", {"phase": "Verifying", "run": 1}),
    ]
    assert names(due(backups, TICK)) == ["a2"]
    stand_in = backup("point-x", "u-e", "2026-12-06T01:00:00Z",
                      annotations={"vmguard.io/point-stand-in": "true"})  # fmt: skip
    synced = backup("s1", "u-f", "2026-12-06T01:00:00Z", labels={"vmguard.io/synced": "true"})
    assert due([stand_in, synced], TICK) == []


def test_a_new_run_counts_up_and_clears_the_last_runs_outcome() -> None:
    first = request({**SPEC, "verification": {**SPEC["verification"], "every": "EachBackup"}}, TICK)
    assert first is not None and first["run"] == 1 and "result" not in first
    assert request(SPEC, TICK) is None  # on a schedule: not asked for at completion
    previous = {"phase": "Completed", "run": 1, "result": "Infected", "findings": [{"rule": "x"}]}
    second = again(SPEC, TICK, previous)
    assert second is not None
    assert (second["phase"], second["run"], second["checks"]) == ("Pending", 2, ["fsck", "yara"])
    assert second["result"] is None and second["findings"] is None and second["jobName"] is None


def test_a_request_in_the_times_own_second_counts_as_made_for_it() -> None:
    """Status times are whole seconds; a sped-up line's times are not."""
    tick = TICK + dt.timedelta(milliseconds=600)
    asked = {"phase": "Completed", "run": 1, "requestTime": "2026-12-06T03:00:00Z"}
    assert due([backup("a", "u-a", "2026-12-06T01:00:00Z", asked)], tick) == []


def test_the_allowance_is_two_of_the_lines_gaps_or_the_rpo_plus_a_backup_gap() -> None:
    """verifying.allowance: a cron line misses one time before a VM is late (as the
    default RPO lets one backup run be missed); verifying each backup, the RPO plus the
    backup schedule's longest gap (the verification queues behind the next run); a policy
    that verifies nothing, or whose line cannot run, has none."""
    backups_hourly = parse("0 * * * *")
    day, hour = dt.timedelta(days=1), dt.timedelta(hours=1)
    assert allowance(SPEC, 2 * hour, backups_hourly) == 2 * day
    weekly = {"verification": {"every": "0 3 * * 0"}}
    assert allowance(weekly, 2 * hour, backups_hourly) == 14 * day
    each = {"verification": {"fsck": True}}
    assert allowance(each, 2 * hour, backups_hourly) == 3 * hour
    assert allowance(each, None, None) is None, "no schedule (its condition says why)"
    assert allowance({}, 2 * hour, backups_hourly) is None, "verifies nothing"
    broken = {"verification": {"every": "61 * * * *"}}
    assert allowance(broken, 2 * hour, backups_hourly) is None, "VerificationReady says why"
