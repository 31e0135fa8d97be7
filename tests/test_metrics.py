"""vmguard.metrics without a lab: what the observe_* calls make a scrape show.

Values are read back through prometheus-client's own text parser, i.e. as Prometheus
would read the exposition.
"""

from __future__ import annotations

import datetime as dt
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vmguard.metrics import Metrics, PolicyVM, epoch_seconds

pytestmark = pytest.mark.unit

T0 = epoch_seconds("2026-03-01T12:00:00Z") or 0.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(m.exposition()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return samples(m).get((name, tuple(sorted(labels.items()))))


def backup(
    uid: str,
    phase: str,
    completed: str,
    *,
    vm: str = "web-01",
    uuid: str = "5003a1b2-0000-0000-0000-000000000001",
    policy: str = "gold",
    **totals: Any,
) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "prod", "name": f"b-{uid}", "uid": uid},
        "spec": {
            "vm": {"name": vm, "instanceUuid": uuid, "moref": "vm-42"},
            "policyRef": {"name": policy},
        },
        "status": {
            "phase": phase,
            "vcenter": "vc1",
            "completionTime": completed,
            "durationSeconds": 90,
            "totals": totals,
        },
    }


VM = {
    "namespace": "prod",
    "vcenter": "vc1",
    "policy": "gold",
    "vm_uuid": "5003a1b2-0000-0000-0000-000000000001",
}
POLICY = {"namespace": "prod", "vcenter": "vc1", "policy": "gold"}
WEB = {"name": "web-01", "instanceUuid": VM["vm_uuid"], "moref": "vm-42"}


def gold(m: Metrics, *vms: PolicyVM, rpo: float | None = 3600, **phases: int) -> None:
    """The policy scheduler's pass over policy gold (repository r1)."""
    m.observe_policy(
        "prod", "vc1", "gold", repository="r1", rpo_seconds=rpo, vms=list(vms), in_progress=phases
    )


def test_sweep_counts_and_forgetting_a_vcenter() -> None:
    m = Metrics(clock=Clock(T0))
    status = {
        "reachable": True,
        "vms": {"discovered": 24, "protected": 20, "protectedByDefault": 5, "unprotected": 4},
        "lastSweepTime": "2026-03-01T12:00:00Z",
    }
    m.observe_sweep("prod", "vc1", status)
    assert value(m, "vmguard_vms_discovered", namespace="prod", vcenter="vc1") == 24
    assert value(m, "vmguard_vms_unprotected", namespace="prod", vcenter="vc1") == 4
    assert value(m, "vmguard_vms_protected_by_default", namespace="prod", vcenter="vc1") == 5
    assert (
        value(m, "vmguard_vcenter_last_sweep_timestamp_seconds", namespace="prod", vcenter="vc1")
        == T0
    )
    # An unreachable vCenter keeps the last counts and says it is unreachable.
    m.observe_sweep("prod", "vc1", {"reachable": False})
    assert value(m, "vmguard_vms_discovered", namespace="prod", vcenter="vc1") == 24
    assert value(m, "vmguard_vcenter_reachable", namespace="prod", vcenter="vc1") == 0
    assert (
        value(m, "vmguard_vcenter_sweeps_total", namespace="prod", vcenter="vc1", result="failed")
        == 1
    )
    gold(m, PolicyVM(WEB))
    assert value(m, "vmguard_vm_info", **VM, vm="web-01", moref="vm-42") == 1
    m.forget_vcenter("prod", "vc1")
    assert not [k for k in samples(m) if ("vcenter", "vc1") in k[1] and "_vm_" in k[0]]


def test_finished_backups_feed_counters_and_the_vms_last_values() -> None:
    clock = Clock(T0)
    m = Metrics(clock=clock)
    gold(m, PolicyVM(WEB))
    gib = 1 << 30
    first = backup(
        "u1",
        "Completed",
        "2026-03-01T12:10:00Z",
        capacityBytes=10 * gib,
        bytesRead=2 * gib,
        bytesChanged=gib,
        bytesUploaded=gib // 4,
        compressibility=0.25,
    )
    m.observe_backup(first)
    m.observe_backup(first)  # a resync or a second event for the same object
    m.observe_backup(backup("u2", "Transferring", "", bytesRead=gib))  # not finished: ignored
    policy = POLICY
    assert value(m, "vmguard_backups_total", **policy, outcome="Completed") == 1, "once per UID"
    assert value(m, "vmguard_backup_read_bytes_total", **policy) == 2 * gib
    assert value(m, "vmguard_backup_uploaded_bytes_total", **policy) == gib // 4
    assert value(m, "vmguard_backup_duration_seconds_count", **policy) == 1
    assert value(m, "vmguard_backup_duration_seconds_bucket", **policy, le="120.0") == 1
    assert value(m, "vmguard_backup_duration_seconds_bucket", **policy, le="60.0") == 0
    finished = epoch_seconds("2026-03-01T12:10:00Z") or 0.0
    deadline = "vmguard_vm_backup_deadline_timestamp_seconds"
    assert value(m, deadline, **VM) == finished + 3600
    assert value(m, "vmguard_vm_last_backup_change_ratio", **VM) == pytest.approx(0.1)
    assert value(m, "vmguard_vm_last_backup_compressibility", **VM) == 0.25
    assert value(m, "vmguard_policy_vms_last_backup_failed", **policy) == 0

    # A failure later on: the VM's last backup failed, its last success stays.
    failed = backup("u3", "Failed", "2026-03-01T13:00:00Z")
    failed["status"]["error"] = {"reason": "RepositoryUnreachable", "message": "x"}
    m.observe_backup(failed)
    assert value(m, "vmguard_policy_vms_last_backup_failed", **policy) == 1
    assert value(m, deadline, **VM) == finished + 3600
    assert value(m, "vmguard_backups_total", **policy, outcome="Failed") == 1
    assert value(m, "vmguard_backup_failures_total", **policy, reason="RepositoryUnreachable") == 1
    # The repository's fault, not the proxy's: no proxy failure.
    assert not [k for k in samples(m) if k[0] == "vmguard_proxy_failures_total"]
    # An older success observed late (a resync) changes no "last" value.
    m.observe_backup(backup("u0", "Completed", "2026-03-01T12:05:00Z"))
    assert value(m, "vmguard_policy_vms_last_backup_failed", **policy) == 1
    assert value(m, deadline, **VM) == finished + 3600


def test_backups_finished_before_the_process_started_are_not_counted_again() -> None:
    m = Metrics(clock=Clock(T0))
    gold(m, PolicyVM(WEB))
    m.observe_backup(backup("old", "Completed", "2026-03-01T11:00:00Z", bytesRead=100))
    assert value(m, "vmguard_backups_total", **POLICY, outcome="Completed") is None
    # ...but the VM's last success is known all the same.
    assert (
        value(m, "vmguard_vm_backup_deadline_timestamp_seconds", **VM)
        == (epoch_seconds("2026-03-01T11:00:00Z") or 0.0) + 3600
    )


def test_the_deadline_and_the_policys_rpo_count_are_computed_at_scrape_time() -> None:
    clock = Clock(T0)
    m = Metrics(clock=clock)
    gold(m, PolicyVM(WEB))
    deadline = "vmguard_vm_backup_deadline_timestamp_seconds"
    assert value(m, deadline, **VM) == T0 + 3600, "a new VM gets one RPO of grace"
    assert value(m, "vmguard_policy_vms_outside_rpo", **POLICY) == 0
    upcoming = "vmguard_policy_next_backup_deadline_timestamp_seconds"
    assert value(m, upcoming, **POLICY) == T0 + 3600
    clock.now = T0 + 3601
    assert value(m, "vmguard_policy_vms_outside_rpo", **POLICY) == 1, "never backed up in time"
    assert value(m, upcoming, **POLICY) is None, "no VM of the policy is within its RPO"
    m.observe_backup(backup("u1", "Completed", "2026-03-01T13:00:00Z"))
    assert value(m, "vmguard_policy_vms_outside_rpo", **POLICY) == 0
    assert value(m, "vmguard_policy_rpo_seconds", **POLICY) == 3600
    assert value(m, "vmguard_policy_vms", **POLICY) == 1
    assert value(m, "vmguard_policy_info", **POLICY, repository="r1") == 1
    assert value(m, upcoming, **POLICY) == T0 + 2 * 3600
    clock.now = T0 + 2 * 3600 + 1
    assert value(m, "vmguard_policy_vms_outside_rpo", **POLICY) == 1
    # A policy whose RPO cannot be judged (no schedule) exports no deadline.
    gold(m, PolicyVM(WEB), rpo=None)
    assert value(m, deadline, **VM) is None
    assert value(m, "vmguard_policy_vms_outside_rpo", **POLICY) is None


def test_a_restarted_operator_knows_each_vms_last_backup_from_the_policys_history() -> None:
    # No backup event since the start: the scheduler's pass brings what the objects say.
    m = Metrics(clock=Clock(T0))
    success, failure = T0 - 7200, T0 - 600
    gold(m, PolicyVM(WEB, last_success=success, last_finish=failure, last_failed=True))
    assert value(m, "vmguard_vm_backup_deadline_timestamp_seconds", **VM) == success + 3600
    assert value(m, "vmguard_policy_vms_outside_rpo", **POLICY) == 1
    assert value(m, "vmguard_policy_vms_last_backup_failed", **POLICY) == 1
    # A newer success seen as it happens stands against an older history.
    m.observe_backup(backup("u9", "Completed", "2026-03-01T12:00:00Z"))
    gold(m, PolicyVM(WEB, last_success=success, last_finish=failure, last_failed=True))
    assert value(m, "vmguard_vm_backup_deadline_timestamp_seconds", **VM) == T0 + 3600
    assert value(m, "vmguard_policy_vms_last_backup_failed", **POLICY) == 0


def test_a_vm_that_leaves_the_policy_drops_its_series_and_the_queue_is_counted() -> None:
    m = Metrics(clock=Clock(T0))
    other = {"name": "db-01", "instanceUuid": "u-db", "moref": "vm-7"}
    gold(m, PolicyVM(WEB), PolicyVM(other), Pending=3, Transferring=1)
    assert value(m, "vmguard_policy_vms", **POLICY) == 2
    assert value(m, "vmguard_policy_backups_in_progress", **POLICY, phase="Pending") == 3
    assert value(m, "vmguard_policy_backups_in_progress", **POLICY, phase="Transferring") == 1
    assert value(m, "vmguard_policy_backups_in_progress", **POLICY, phase="Snapshotting") == 0
    gold(m, PolicyVM(WEB))  # db-01 deleted from vCenter, or matched elsewhere now
    assert value(m, "vmguard_policy_vms", **POLICY) == 1
    assert not [k for k in samples(m) if ("vm_uuid", "u-db") in k[1]]
    m.forget_policy("prod", "gold")
    assert not [k for k in samples(m) if ("policy", "gold") in k[1]]


def test_a_renamed_vm_keeps_one_series() -> None:
    m = Metrics(clock=Clock(T0))
    gold(m, PolicyVM(WEB))
    m.observe_policy(
        "prod",
        "vc1",
        "silver",
        repository="r1",
        rpo_seconds=60,
        vms=[PolicyVM({**WEB, "name": "web-02"})],
    )
    info = [k for k in samples(m) if k[0] == "vmguard_vm_info"]
    assert len(info) == 1
    assert dict(info[0][1])["vm"] == "web-02" and dict(info[0][1])["policy"] == "silver"


def test_restores_count_outcomes_reasons_and_proxy_failures_once() -> None:
    m = Metrics(clock=Clock(T0))

    def restore(uid: str, phase: str, reason: str | None = None) -> dict[str, Any]:
        status: dict[str, Any] = {"phase": phase, "completionTime": "2026-03-01T12:30:00Z"}
        if reason:
            status["error"] = {"reason": reason, "message": "..."}
        return {"metadata": {"namespace": "prod", "uid": uid}, "status": status}

    m.observe_restore(restore("r1", "Restoring"))  # not finished: ignored
    m.observe_restore(restore("r2", "Completed"))
    m.observe_restore(restore("r3", "Failed", "ImagePullBackOff"))
    m.observe_restore(restore("r3", "Failed", "ImagePullBackOff"))  # the same object again
    m.observe_restore(restore("r4", "Failed", "TargetExists"))
    assert value(m, "vmguard_restores_total", namespace="prod", outcome="Completed") == 1
    assert value(m, "vmguard_restores_total", namespace="prod", outcome="Failed") == 2
    assert value(m, "vmguard_restore_failures_total", namespace="prod", reason="TargetExists") == 1
    proxy = "vmguard_proxy_failures_total"
    assert value(m, proxy, namespace="prod", kind="restore", reason="ImagePullBackOff") == 1
    assert value(m, proxy, namespace="prod", kind="restore", reason="TargetExists") is None
    # A backup whose proxy pod was never scheduled counts as a proxy failure too.
    failed = backup("b1", "Failed", "2026-03-01T12:40:00Z")
    failed["status"]["error"] = {"reason": "Unschedulable", "message": "0/3 nodes"}
    m.observe_backup(failed)
    assert value(m, proxy, namespace="prod", kind="backup", reason="Unschedulable") == 1


def test_repository_verify_and_snapshots() -> None:
    clock = Clock(T0)
    m = Metrics(clock=clock)
    m.observe_repository(
        "prod",
        "repo",
        {"reachable": True, "storedBytes": 1000, "logicalBytes": 3000, "dedupRatio": 3.0},
    )
    repo = {"namespace": "prod", "repository": "repo"}
    assert value(m, "vmguard_repository_dedup_ratio", **repo) == 3.0
    assert value(m, "vmguard_repository_stored_bytes", **repo) == 1000
    assert value(m, "vmguard_repository_verify_errors", **repo) is None, "never verified"
    verify = {"time": "2026-03-01T12:00:00Z", "depth": "full", "chunksChecked": 9, "errors": 2}
    m.observe_repository("prod", "repo", {"lastVerify": verify})
    assert value(m, "vmguard_repository_verify_errors", **repo) == 2
    assert value(m, "vmguard_repository_last_verify_timestamp_seconds", **repo) == T0
    assert value(m, "vmguard_repository_reachable", **repo) == 1, "a verify leaves it as it was"
    m.observe_repository("prod", "repo", {"reachable": False})
    assert value(m, "vmguard_repository_reachable", **repo) == 0
    m.forget_repository("prod", "repo")
    assert value(m, "vmguard_repository_stored_bytes", **repo) is None
    assert value(m, "vmguard_repository_verify_errors", **repo) is None

    m.observe_snapshots("prod", "vc1", [("web-01", "vmguard-abc", T0 - 600)])
    clock.now = T0 + 600
    snap = {"namespace": "prod", "vcenter": "vc1", "vm": "web-01", "snapshot": "vmguard-abc"}
    assert value(m, "vmguard_snapshot_age_seconds", **snap) == 1200
    m.observe_snapshots("prod", "vc1", [])
    assert value(m, "vmguard_snapshot_age_seconds", **snap) is None


def test_two_instances_share_nothing_and_serve_over_http() -> None:
    a, b = Metrics(), Metrics()
    a.observe_repository("prod", "repo", {"reachable": True})
    assert value(b, "vmguard_repository_reachable", namespace="prod", repository="repo") is None
    server = a.serve(0, "127.0.0.1")
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as rsp:
            text = rsp.read().decode()
    finally:
        server.shutdown()
    assert 'vmguard_repository_reachable{namespace="prod",repository="repo"} 1.0' in text


def test_build_info_is_exported_from_the_start_and_names_the_version() -> None:
    from vmguard import __version__

    m = Metrics(clock=Clock(T0))
    # Nothing observed yet: build_info is still there, so its absence means "operator gone".
    assert value(m, "vmguard_build_info", version=__version__) == 1.0
    assert [k for k in samples(m) if k[0] == "vmguard_build_info"] == [
        ("vmguard_build_info", (("version", __version__),))
    ]


def test_a_verification_is_counted_once_and_gauged_per_policy_by_result() -> None:
    """observe_verification: the counter counts each backup's verification once (a
    restart's resync or a second event does not count it again); the per-policy gauge
    counts each VM by its newest verification; an older one observed late changes
    nothing; a policy pass after a restart rebuilds it from the backups' history."""
    now = 1_800_000_000.0
    m = Metrics(clock=lambda: now - 3600)

    def verified(uid: str, vm: str, result: str, at: float) -> dict[str, object]:
        at_text = dt.datetime.fromtimestamp(at, dt.UTC)
        return {
            "metadata": {"namespace": "ns", "uid": uid},
            "spec": {"policyRef": {"name": "gold"}, "vm": {"instanceUuid": vm}},
            "status": {
                "vcenter": "vc1",
                "vm": {"instanceUuid": vm, "moref": "vm-1", "name": vm},
                "verification": {
                    "phase": "Completed",
                    "result": result,
                    "time": at_text.strftime("%Y-%m-%dT%H:%M:%SZ"),
                },
            },
        }

    m.observe_verification(verified("a", "u1", "Infected", now - 60))
    m.observe_verification(verified("a", "u1", "Infected", now - 60))  # the same, again
    m.observe_verification(verified("b", "u2", "Passed", now - 60))
    m.observe_verification(verified("c", "u1", "Passed", now - 600))  # older: u1 stays
    text = m.exposition()
    labels = 'namespace="ns",policy="gold",result="{}",vcenter="vc1"'
    assert f"vmguard_verifications_total{{{labels.format('Infected')}}} 1.0" in text
    assert f"vmguard_verifications_total{{{labels.format('Passed')}}} 2.0" in text
    assert f"vmguard_policy_vms_last_verification{{{labels.format('Infected')}}} 1.0" in text
    assert f"vmguard_policy_vms_last_verification{{{labels.format('Passed')}}} 1.0" in text
    assert f"vmguard_policy_vms_last_verification{{{labels.format('Failed')}}} 0.0" in text

    restarted = Metrics(clock=lambda: now)
    restarted.observe_policy(
        "ns",
        "vc1",
        "gold",
        repository="repo",
        rpo_seconds=86400,
        vms=[
            PolicyVM({"instanceUuid": "u1", "name": "u1"}, last_verification=(now - 60, "Infected"))
        ],
    )
    again = restarted.exposition()
    assert f"vmguard_policy_vms_last_verification{{{labels.format('Infected')}}} 1.0" in again
    assert "vmguard_verifications_total{" not in again  # nothing ended since it started


def test_vms_without_a_passed_verification_within_the_allowance_are_counted_per_policy() -> None:
    """The verification allowance (docs/verification.md, "The allowance"), judged at
    scrape time: a VM counts once its newest *passed* verification (never passed: its
    oldest completed backup) is older than the allowance; a newer Failed one does not
    reset it; a VM never backed up is not judged; the earliest deadline still ahead is
    exported for the operator-gone latch; a policy that verifies nothing has no series."""
    clock = Clock(T0)
    m = Metrics(clock=clock)
    day, hour = 86400.0, 3600.0

    def vm(uuid: str, **kw: Any) -> PolicyVM:
        return PolicyVM({"instanceUuid": uuid, "name": uuid}, **kw)

    m.observe_policy(
        "prod",
        "vc1",
        "gold",
        repository="repo",
        rpo_seconds=day,
        verification_allowance_seconds=day,
        vms=[
            vm("u1", last_success=T0 - hour, first_success=T0 - 9 * day, last_passed=T0 - 2 * hour),
            vm(
                "u2",
                last_success=T0 - hour,
                first_success=T0 - 9 * day,
                last_passed=T0 - 2 * day,
                last_verification=(T0 - hour, "Failed"),
            ),
            vm("u3", last_success=T0 - hour, first_success=T0 - 3 * day),
            vm("u4", last_success=T0 - hour, first_success=T0 - hour),
            vm("u5"),  # never backed up: VmguardBackupMissing's case
        ],
    )
    silver_vms = [vm("s1", last_success=T0 - hour, first_success=T0 - 9 * day)]
    m.observe_policy("prod", "vc1", "silver", repository="repo", rpo_seconds=day, vms=silver_vms)
    gold = {"namespace": "prod", "vcenter": "vc1", "policy": "gold"}
    assert value(m, "vmguard_policy_verification_allowance_seconds", **gold) == day
    assert value(m, "vmguard_policy_vms_unverified", **gold) == 2, "u2 and u3"
    # u1's passed verification runs out first (T0 - 2h + 1d), before u4's first backup's.
    deadline = "vmguard_policy_next_verification_deadline_timestamp_seconds"
    assert value(m, deadline, **gold) == T0 - 2 * hour + day
    silver = {**gold, "policy": "silver"}
    for name in ("vmguard_policy_verification_allowance_seconds", "vmguard_policy_vms_unverified",
                 deadline):  # fmt: skip
        assert value(m, name, **silver) is None, f"{name}: silver verifies nothing"

    clock.now = T0 + day - 90 * 60  # nothing observed: the scrape judges u1 late now
    assert value(m, "vmguard_policy_vms_unverified", **gold) == 3
    assert value(m, deadline, **gold) == T0 - hour + day, "u4's is the earliest left"

    # u3's point passes: it is within its allowance again; a Failed one of u1 changes nothing.
    for uid, uuid, result in (("v3", "u3", "Passed"), ("v1", "u1", "Failed")):
        m.observe_verification(
            {
                "metadata": {"namespace": "prod", "uid": uid},
                "spec": {"policyRef": {"name": "gold"}, "vm": {"instanceUuid": uuid}},
                "status": {
                    "vcenter": "vc1",
                    "verification": {
                        "phase": "Completed",
                        "result": result,
                        "time": dt.datetime.fromtimestamp(clock.now, dt.UTC).strftime(
                            "%Y-%m-%dT%H:%M:%SZ"
                        ),
                    },
                },
            }
        )
    assert value(m, "vmguard_policy_vms_unverified", **gold) == 2, "u1 and u2"
