"""vmguard.metrics without a lab: what the observe_* calls make a scrape show.

Values are read back through prometheus-client's own text parser, i.e. as Prometheus
would read the exposition.
"""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vmguard.metrics import Metrics, epoch_seconds

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
    "vm": "web-01",
    "vm_uuid": "5003a1b2-0000-0000-0000-000000000001",
}


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
    m.observe_vm("prod", "vc1", "gold", {"name": "web-01", "instanceUuid": VM["vm_uuid"]}, 3600)
    m.forget_vcenter("prod", "vc1")
    assert not [k for k in samples(m) if ("vcenter", "vc1") in k[1]]


def test_finished_backups_feed_counters_and_the_vms_last_values() -> None:
    clock = Clock(T0)
    m = Metrics(clock=clock)
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
    policy = {"namespace": "prod", "vcenter": "vc1", "policy": "gold"}
    assert value(m, "vmguard_backups_total", **policy, outcome="Completed") == 1, "once per UID"
    assert value(m, "vmguard_backup_read_bytes_total", **policy) == 2 * gib
    assert value(m, "vmguard_backup_uploaded_bytes_total", **policy) == gib // 4
    assert value(m, "vmguard_backup_duration_seconds_count", **policy) == 1
    assert value(m, "vmguard_backup_duration_seconds_bucket", **policy, le="120.0") == 1
    assert value(m, "vmguard_backup_duration_seconds_bucket", **policy, le="60.0") == 0
    finished = epoch_seconds("2026-03-01T12:10:00Z")
    assert value(m, "vmguard_vm_last_successful_backup_timestamp_seconds", **VM) == finished
    assert value(m, "vmguard_vm_last_backup_change_ratio", **VM) == pytest.approx(0.1)
    assert value(m, "vmguard_vm_last_backup_compressibility", **VM) == 0.25
    assert value(m, "vmguard_vm_last_backup_failed", **VM) == 0

    # A failure later on: the VM's last backup failed, its last success stays.
    m.observe_backup(backup("u3", "Failed", "2026-03-01T13:00:00Z"))
    assert value(m, "vmguard_vm_last_backup_failed", **VM) == 1
    assert value(m, "vmguard_vm_last_successful_backup_timestamp_seconds", **VM) == finished
    assert value(m, "vmguard_backups_total", **policy, outcome="Failed") == 1
    # An older success observed late (a resync) changes no "last" value.
    m.observe_backup(backup("u0", "Completed", "2026-03-01T12:05:00Z"))
    assert value(m, "vmguard_vm_last_backup_failed", **VM) == 1
    assert value(m, "vmguard_vm_last_successful_backup_timestamp_seconds", **VM) == finished


def test_backups_finished_before_the_process_started_are_not_counted_again() -> None:
    m = Metrics(clock=Clock(T0))
    m.observe_backup(backup("old", "Completed", "2026-03-01T11:00:00Z", bytesRead=100))
    policy = {"namespace": "prod", "vcenter": "vc1", "policy": "gold"}
    assert value(m, "vmguard_backups_total", **policy, outcome="Completed") is None
    # ...but the VM's last success is known all the same.
    assert value(m, "vmguard_vm_last_successful_backup_timestamp_seconds", **VM) == epoch_seconds(
        "2026-03-01T11:00:00Z"
    )


def test_rpo_breach_is_computed_at_scrape_time() -> None:
    clock = Clock(T0)
    m = Metrics(clock=clock)
    vm = {"name": "web-01", "instanceUuid": VM["vm_uuid"]}
    m.observe_vm("prod", "vc1", "gold", vm, rpo_seconds=3600)
    assert value(m, "vmguard_vm_rpo_breached", **VM) == 0, "a new VM gets one RPO of grace"
    clock.now = T0 + 3601
    assert value(m, "vmguard_vm_rpo_breached", **VM) == 1, "never backed up within its RPO"
    m.observe_backup(backup("u1", "Completed", "2026-03-01T13:00:00Z"))
    assert value(m, "vmguard_vm_rpo_breached", **VM) == 0
    assert value(m, "vmguard_vm_rpo_seconds", **VM) == 3600
    clock.now = T0 + 2 * 3600 + 1
    assert value(m, "vmguard_vm_rpo_breached", **VM) == 1


def test_a_renamed_vm_keeps_one_series() -> None:
    m = Metrics(clock=Clock(T0))
    m.observe_vm("prod", "vc1", "gold", {"name": "web-01", "instanceUuid": VM["vm_uuid"]}, 60)
    m.observe_vm("prod", "vc1", "silver", {"name": "web-02", "instanceUuid": VM["vm_uuid"]}, 60)
    rpo = [k for k in samples(m) if k[0] == "vmguard_vm_rpo_seconds"]
    assert len(rpo) == 1
    assert dict(rpo[0][1])["vm"] == "web-02" and dict(rpo[0][1])["policy"] == "silver"


def test_repository_snapshots_and_jobs() -> None:
    clock = Clock(T0)
    m = Metrics(clock=clock)
    m.observe_repository(
        "prod",
        "repo",
        {"reachable": True, "storedBytes": 1000, "logicalBytes": 3000, "dedupRatio": 3.0},
    )
    assert value(m, "vmguard_repository_dedup_ratio", namespace="prod", repository="repo") == 3.0
    assert value(m, "vmguard_repository_stored_bytes", namespace="prod", repository="repo") == 1000
    m.observe_repository("prod", "repo", {"reachable": False})
    assert value(m, "vmguard_repository_reachable", namespace="prod", repository="repo") == 0
    m.forget_repository("prod", "repo")
    assert value(m, "vmguard_repository_stored_bytes", namespace="prod", repository="repo") is None

    m.observe_snapshots("prod", "vc1", [("web-01", "vmguard-abc", T0 - 600)])
    clock.now = T0 + 600
    snap = {"namespace": "prod", "vcenter": "vc1", "vm": "web-01", "snapshot": "vmguard-abc"}
    assert value(m, "vmguard_snapshot_age_seconds", **snap) == 1200
    m.observe_snapshots("prod", "vc1", [])
    assert value(m, "vmguard_snapshot_age_seconds", **snap) is None

    m.observe_proxy_jobs("prod", "backup", 3)
    assert value(m, "vmguard_proxy_jobs_running", namespace="prod", kind="backup") == 3


def test_two_instances_share_nothing_and_serve_over_http() -> None:
    a, b = Metrics(), Metrics()
    a.observe_proxy_jobs("prod", "backup", 1)
    assert value(b, "vmguard_proxy_jobs_running", namespace="prod", kind="backup") is None
    server = a.serve(0, "127.0.0.1")
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as rsp:
            text = rsp.read().decode()
    finally:
        server.shutdown()
    assert 'vmguard_proxy_jobs_running{kind="backup",namespace="prod"} 1.0' in text


def test_build_info_is_exported_from_the_start_and_names_the_version() -> None:
    from vmguard import __version__

    m = Metrics(clock=Clock(T0))
    # Nothing observed yet: build_info is still there, so its absence means "operator gone".
    assert value(m, "vmguard_build_info", version=__version__) == 1.0
    assert [k for k in samples(m) if k[0] == "vmguard_build_info"] == [
        ("vmguard_build_info", (("version", __version__),))
    ]
