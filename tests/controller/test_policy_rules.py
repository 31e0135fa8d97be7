"""The policy controller's pure rules: assessment, conditions, status, runs, fail-safe."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from vmguard.api import Trigger
from vmguard.controller.kube.policy_spec import consolidation_allowed
from vmguard.controller.kube.sweeps import SweepView
from vmguard.controller.policy import failsafe, judgement
from vmguard.controller.policy.builders import build_vmbackup
from vmguard.controller.policy.history import BackupHistory, history_fields
from vmguard.controller.policy.runs import plan_run, vm_state
from vmguard.controller.vcenter import orphans
from vmguard.vsphere.matching import Assignment, MatchResult
from vmguard.vsphere.records import VMRecord

pytestmark = pytest.mark.unit

T0 = dt.datetime(2025, 1, 7, 2, 0, tzinfo=dt.UTC)
VMS = [
    VMRecord(
        moref=f"vm-{i}", name=f"vm {i}", instance_uuid=f"5000000{i}-0000-4000-8000-000000000000"
    )
    for i in range(3)
]


def policy(name: str = "gold", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 2},
        "spec": {
            "vcenterRef": {"name": "lab"},
            "repositoryRef": {"name": "repo"},
            "schedule": {"cron": "0 2 * * *"},
            **spec,
        },
    }


def backup(
    vm: VMRecord,
    phase: str | None,
    when: dt.datetime = T0,
    trigger: str = Trigger.SCHEDULE,
    created: dt.datetime | None = None,
    completed: dt.datetime | None = None,
    name: str = "gold",
) -> dict[str, Any]:
    obj = build_vmbackup(policy(name), vm, when, trigger)
    obj["metadata"]["creationTimestamp"] = (created or when).strftime("%Y-%m-%dT%H:%M:%SZ")
    status: dict[str, Any] = {}
    if phase:
        status["phase"] = phase
    if completed:
        status["completionTime"] = completed.strftime("%Y-%m-%dT%H:%M:%SZ")
    obj["status"] = status
    return obj


# --- assessment and conditions -------------------------------------------------------------


def test_missing_references_stop_the_policy() -> None:
    a = judgement.assess_spec(policy()["spec"], vcenter_exists=True, repository_exists=False)
    assert not a.ready and a.problems[0][0] == "RepositoryNotFound"
    assert "VMGuardRepository 'repo' does not exist" in a.problems[0][1]
    conds = judgement.conditions(None, a, False, [], 2, None)
    ready = next(c for c in conds if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "RepositoryNotFound")
    assert "creating no backups" in ready["message"]
    b = judgement.assess_spec(policy()["spec"], vcenter_exists=False, repository_exists=True)
    assert b.problems[0][0] == "VCenterNotFound"


@pytest.mark.parametrize(
    ("schedule", "reason"),
    [
        ({"cron": "30-10 * * * *"}, "UpwardRange"),
        ({"cron": "0 0 31 2 *"}, "NeverOccurs"),
        ({"cron": "0 0 * * *", "timeZone": "Nowhere/Land"}, "UnknownTimeZone"),
    ],
)
def test_schedule_problems_stop_the_policy(schedule: dict[str, str], reason: str) -> None:
    a = judgement.assess_spec(policy(schedule=schedule)["spec"], True, True)
    assert not a.ready and a.schedule_problem is not None
    conds = {c["type"]: c for c in judgement.conditions(None, a, False, [], 2, None)}
    assert conds["Ready"]["reason"] == reason
    assert (conds["ScheduleValid"]["status"], conds["ScheduleValid"]["reason"]) == (
        "False",
        reason,
    )


def test_long_jitter_is_capped_and_reported_but_does_not_stop() -> None:
    spec = policy(schedule={"cron": "*/10 * * * *", "jitter": "1h"})["spec"]
    a = judgement.assess_spec(spec, True, True)
    assert a.ready and a.jitter == 600
    conds = {c["type"]: c for c in judgement.conditions(None, a, False, [], 2, T0)}
    assert conds["Ready"]["status"] == "True"
    assert conds["ScheduleValid"]["reason"] == "JitterExceedsInterval"
    assert "jitter 1h is longer than the 10m between two runs" in conds["ScheduleValid"]["message"]


def test_rpo_defaults_to_twice_the_longest_gap() -> None:
    a = judgement.assess_spec(policy(schedule={"cron": "0 2 * * mon-fri"})["spec"], True, True)
    assert a.rpo == dt.timedelta(days=6)
    b = judgement.assess_spec(policy(rpo="36h")["spec"], True, True)
    assert b.rpo == dt.timedelta(hours=36)


def test_paused_condition() -> None:
    a = judgement.assess_spec(policy()["spec"], True, True)
    conds = {c["type"]: c for c in judgement.conditions(None, a, True, [], 2, T0)}
    assert (conds["Paused"]["status"], conds["Paused"]["reason"]) == ("True", "Paused")
    assert conds["Ready"]["status"] == "True" and "paused" in conds["Ready"]["message"]


def test_two_default_policies_both_told_first_by_name_acts() -> None:
    a, b = policy("aaa", default=True), policy("bbb", default=True)
    other_vc = policy("ccc", default=True, vcenterRef={"name": "other"})
    everyone = [a, b, other_vc]
    (reason, message), *_ = judgement.conflicts(a, everyone, None)
    assert reason == "SeveralDefaults" and "this one acts as the default" in message
    (reason, message), *_ = judgement.conflicts(b, everyone, None)
    assert reason == "SeveralDefaults"
    assert "aaa (first by name) acts as the default, this one protects nothing" in message
    assert judgement.conflicts(other_vc, everyone, None) == []


def test_priority_ties_name_the_vms_on_both_sides() -> None:
    result = MatchResult(
        [
            Assignment(VMS[0], "alpha", "Matched", ("beta",)),
            Assignment(VMS[1], "alpha", "Matched"),
            Assignment(VMS[2], "beta", "Matched"),
        ]
    )
    view = SweepView(T0, 30, result)
    [(reason, message)] = judgement.conflicts(policy("alpha"), [], view)
    assert reason == "PriorityTie" and "also selected by beta" in message and "vm 0" in message
    [(reason, message)] = judgement.conflicts(policy("beta"), [], view)
    assert "protected by alpha instead" in message and "vm 0" in message


# --- status -------------------------------------------------------------------------------


def test_status_counts_the_last_run_and_rpo() -> None:
    objs = [
        backup(VMS[0], "Completed", completed=T0 + dt.timedelta(minutes=5)),
        backup(VMS[1], "Failed"),
        backup(VMS[2], "Transferring"),
        backup(
            VMS[2], "Completed", when=T0 - dt.timedelta(days=3), completed=T0 - dt.timedelta(days=3)
        ),
        backup(VMS[1], None, trigger=Trigger.FAILSAFE),
    ]
    history = BackupHistory.of_policy(objs, "gold")
    p = policy()
    a = judgement.assess_spec(p["spec"], True, True)
    now = T0 + dt.timedelta(hours=1)
    uuids = [vm.instance_uuid for vm in VMS]
    st = judgement.status(p, a, now, T0, history, uuids, [])
    assert st["lastScheduleTime"] == "2025-01-07T02:00:00Z"
    assert st["lastRun"] == {
        "time": "2025-01-07T02:00:00Z",
        "backups": 3,
        "completed": 1,
        "failed": 1,
        "running": 1,
    }
    assert st["nextScheduleTime"] == "2025-01-08T02:00:00Z"
    assert st["lastSuccessfulTime"] == "2025-01-07T02:05:00Z"
    # rpo 48h: vm 0 is fine, vm 1 never completed, vm 2's last completed is 3 days old.
    assert st["vmsOutsideRPO"] == 2
    assert st["observedGeneration"] == 2


def test_status_of_a_policy_that_cannot_act_has_no_next_run() -> None:
    p = policy()
    a = judgement.assess_spec(p["spec"], True, False)
    st = judgement.status(p, a, T0, None, BackupHistory([]), None, [])
    assert st["nextScheduleTime"] is None
    assert "lastRun" not in st and "vmsOutsideRPO" not in st


def test_ad_hoc_backups_under_the_policy_count() -> None:
    adhoc = {
        "metadata": {"name": "by-hand", "creationTimestamp": "2025-01-07T03:00:00Z"},
        "spec": {
            "vm": {"instanceUuid": VMS[0].instance_uuid.upper()},
            "policyRef": {"name": "gold"},
        },
        "status": {"phase": "Completed", "completionTime": "2025-01-07T03:10:00Z"},
    }
    elsewhere = backup(VMS[1], "Completed", name="silver")
    history = BackupHistory.of_policy([adhoc, elsewhere], "gold")
    assert history.has_completed(VMS[0].instance_uuid)
    assert not history.has_completed(VMS[1].instance_uuid)


def test_a_history_of_the_fields_it_reads_is_the_history_of_the_whole_backups() -> None:
    """The fail-safe keeps only ``history_fields`` of each listed backup: the records and
    stand-ins made of them are those made of the whole objects."""
    from vmguard.api import ANNOTATION_ARCHIVE_ID
    from vmguard.controller.kube import points

    done = backup(VMS[0], "Completed", completed=T0 + dt.timedelta(minutes=5))
    done["status"].update(archiveId="arch-0", disks=[{"key": 2000}], conditions=[{"type": "x"}])
    ended = {"phase": "Completed", "time": "2025-01-07T04:00:00Z", "result": "Passed", "run": 1}
    done["status"]["verification"] = ended
    synced = backup(VMS[1], "Completed", trigger=Trigger.FAILSAFE)
    synced["metadata"]["annotations"] = {ANNOTATION_ARCHIVE_ID: "arch-1", "other": "x"}
    adhoc = {"metadata": {"name": "by-hand"}, "spec": {"vm": {"instanceUuid": "U"}}}
    whole = [done, synced, backup(VMS[2], None), adhoc]
    slim = [history_fields(b) for b in whole]
    for name in ("gold", "silver"):
        assert BackupHistory.of_policy(slim, name) == BackupHistory.of_policy(whole, name)
    held = points.HeldVM(
        points.ProtectedVMKey("ns", "lab", VMS[0].instance_uuid),
        None,
        tuple(
            points.PointRecord(a, "2025-01-06T02:00:00Z", "gold", "repo", "")
            for a in ("arch-0", "arch-1", "arch-2")
        ),
    )
    assert points.stand_ins([held], slim) == points.stand_ins([held], whole)
    assert len(points.stand_ins([held], slim)) == 1


# --- runs ---------------------------------------------------------------------------------


def test_a_run_spreads_vms_over_the_jitter_and_skips_vms_still_waiting() -> None:
    earlier = backup(VMS[1], None, when=T0 - dt.timedelta(days=1))
    started = backup(VMS[2], "Transferring", when=T0 - dt.timedelta(days=1))
    history = BackupHistory.of_policy([earlier, started], "gold")
    todo, skipped = plan_run(policy(), 600, T0, VMS, history)
    assert [vm.name for vm in skipped] == ["vm 1"]
    assert {p.vm.name for p in todo} == {"vm 0", "vm 2"}
    assert all(T0 <= p.start < T0 + dt.timedelta(minutes=10) and p.run == T0 for p in todo)
    again, _ = plan_run(policy(), 600, T0, VMS, history)
    assert [p.start for p in again] == [p.start for p in todo]
    # The same run again (a restart) is not "an earlier run": nothing is skipped for it.
    same = BackupHistory.of_policy([backup(VMS[0], None)], "gold")
    assert len(plan_run(policy(), 0, T0, VMS, same)[0]) == 3


# --- fail-safe ----------------------------------------------------------------------------


def test_failsafe_only_for_vms_never_backed_up_and_not_in_progress() -> None:
    uuid = VMS[0].instance_uuid
    now = T0
    assert failsafe.due(uuid, BackupHistory([]), now, 30)
    for phase in (None, "Pending", "Transferring", "Completed"):
        history = BackupHistory.of_policy([backup(VMS[0], phase)], "gold")
        assert not failsafe.due(uuid, history, now, 30), phase
    # A failed scheduled backup does not hold it back; no completed one exists.
    history = BackupHistory.of_policy([backup(VMS[0], "Failed")], "gold")
    assert failsafe.due(uuid, history, now, 30)


def test_failsafe_backs_off_after_failures() -> None:
    uuid = VMS[0].instance_uuid

    def failed(minutes_ago: float) -> dict[str, Any]:
        at = T0 - dt.timedelta(minutes=minutes_ago)
        return backup(VMS[0], "Failed", when=at, trigger=Trigger.FAILSAFE, created=at)

    one = BackupHistory.of_policy([failed(0.25)], "gold")
    assert not failsafe.due(uuid, one, T0, 30)
    one = BackupHistory.of_policy([failed(0.5)], "gold")
    assert failsafe.due(uuid, one, T0, 30)
    two = BackupHistory.of_policy([failed(5), failed(0.75)], "gold")
    assert not failsafe.due(uuid, two, T0, 30)  # waits 60 s after the second
    assert failsafe.due(uuid, BackupHistory.of_policy([failed(5), failed(1)], "gold"), T0, 30)
    many = BackupHistory.of_policy([failed(100 + i) for i in range(12)] + [failed(59)], "gold")
    assert not failsafe.due(uuid, many, T0, 30)
    many = BackupHistory.of_policy([failed(100 + i) for i in range(12)] + [failed(60)], "gold")
    assert failsafe.due(uuid, many, T0, 30), "capped at an hour"


def test_failsafe_plan_picks_the_vms() -> None:
    history = BackupHistory.of_policy(
        [backup(VMS[0], "Completed"), backup(VMS[1], "Snapshotting")], "gold"
    )
    assert [vm.name for vm in failsafe.plan(VMS, history, T0, 30).now] == ["vm 2"]


def test_failsafe_plan_spreads_a_rollout() -> None:
    many = [
        VMRecord(moref=f"vm-{i}", name=f"vm {i:03}", instance_uuid=f"{i:08x}-0000-4000-8000-0")
        for i in range(200)
    ]
    limits = failsafe.Limits(per_sweep=25, in_flight=40)
    first = failsafe.plan(list(reversed(many)), BackupHistory.of_policy([], "gold"), T0, 30, limits)
    assert [vm.name for vm in first.now] == [vm.name for vm in many[:25]], "by name"
    assert first.waiting == 175
    # 25 still in flight: only 15 more, the next ones by name.
    made = [backup(vm, None, trigger=Trigger.FAILSAFE) for vm in first.now]
    second = failsafe.plan(many, BackupHistory.of_policy(made, "gold"), T0, 30, limits)
    assert [vm.name for vm in second.now] == [vm.name for vm in many[25:40]]
    assert second.waiting == 160
    done = [backup(vm, "Completed", trigger=Trigger.FAILSAFE) for vm in first.now]
    third = failsafe.plan(many, BackupHistory.of_policy(done, "gold"), T0, 30, limits)
    assert [vm.name for vm in third.now] == [vm.name for vm in many[25:50]]
    assert failsafe.Limits.of(policy()) == failsafe.Limits(50, 100)
    assert failsafe.Limits.of(policy(failsafe={"maxPerSweep": 3})) == failsafe.Limits(3, 100)


def test_failsafe_dry_run_reports_instead() -> None:
    made = failsafe.plan(VMS, BackupHistory.of_policy([], "gold"), T0, 30, failsafe.Limits(2, 9))
    assert failsafe.failsafe_status(policy(dryRun=True), made, 0) == {
        "created": 0,
        "planned": 2,
        "plannedVMs": ["vm 0", "vm 1"],
        "waiting": 1,
    }
    live = failsafe.failsafe_status(policy(), made, 2)
    assert live == {"created": 2, "planned": None, "plannedVMs": None, "waiting": 1}


def test_dry_run_status_has_a_plan_and_a_condition() -> None:
    p = policy(dryRun=True)
    a = judgement.assess_spec(p["spec"], vcenter_exists=True, repository_exists=True)
    out = judgement.status(p, a, T0, None, BackupHistory.of_policy([], "gold"), ["a", "b"], [])
    assert out["plan"] == {"nextRunTime": "2025-01-08T02:00:00Z", "vms": 2}
    dry = next(c for c in out["conditions"] if c["type"] == "DryRun")
    assert dry["status"] == "True" and dry["reason"] == "DryRun"
    live = judgement.status(policy(), a, T0, None, BackupHistory.of_policy([], "gold"), [], [])
    assert live["plan"] is None


# --- consolidation ---------------------------------------------------------------------------


def test_consolidation_follows_each_vms_policy() -> None:
    assert consolidation_allowed({}) is True
    assert consolidation_allowed({"snapshot": {"consolidate": False}}) is False
    result = MatchResult(
        [
            Assignment(VMS[0], "gold", "Matched"),
            Assignment(VMS[1], "careful", "Matched"),
            Assignment(VMS[2], None, "Unprotected"),
        ]
    )
    allowed = orphans.consolidation_policy(
        result, [policy("gold"), policy("careful", snapshot={"consolidate": False})]
    )
    assert [allowed(vm) for vm in VMS] == [True, False, True]
    # Before the first match (no result), nothing is refused.
    assert orphans.consolidation_policy(None, [])(VMS[1]) is True


def test_a_vms_metrics_state_carries_its_oldest_success_and_newest_passed_verification() -> None:
    """runs.vm_state, what the verification allowance is judged from (metrics): the
    oldest Completed backup the policy holds, and the newest verification that Passed —
    not a newer one that Failed, and not a Passed one still in flight."""
    vm = VMS[0]

    def done(day: int, result: str | None = None, phase: str = "Completed") -> dict[str, Any]:
        obj = backup(vm, "Completed", T0 + dt.timedelta(days=day),
                     completed=T0 + dt.timedelta(days=day, hours=1))  # fmt: skip
        if result:
            ended = T0 + dt.timedelta(days=day, hours=2)
            obj["status"]["verification"] = {
                "phase": phase,
                "result": result,
                "time": ended.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        return obj

    objs = [done(0), done(1, "Passed"), done(2, "Failed"), done(3, "Passed", phase="Running")]
    state = vm_state(vm, BackupHistory.of_policy(objs, "gold"))
    assert state.first_success == (T0 + dt.timedelta(hours=1)).timestamp()
    assert state.last_passed == (T0 + dt.timedelta(days=1, hours=2)).timestamp()
    assert state.last_verification == ((T0 + dt.timedelta(days=2, hours=2)).timestamp(), "Failed")
    assert state.last_success == (T0 + dt.timedelta(days=3, hours=1)).timestamp()

    never = vm_state(VMS[1], BackupHistory.of_policy(objs, "gold"))
    assert (never.first_success, never.last_passed) == (None, None)
