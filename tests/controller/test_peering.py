"""High availability through kopf peering: of two operator replicas only one acts, and
when it is SIGKILLed the other takes over and reconciles.

Which replica acts is read three ways. Each process's own /metrics: the active one
reports the vCenter's sweeps, a paused one reports nothing (it runs no daemons). Each
process's own log, at DEBUG, where kopf writes a line for every handler and daemon it
invokes: the standby's has none until it takes over. And the API: every Event the
operator posts names the replica that posted it (``reportingInstance``, the replica's
``POD_ID``, also its identity in the peering object), so the Events of the run show
which one acted before and after the kill.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.controller import objects
from tests.controller.backup_helpers import (
    create_backup,
    data_vm,
    disk_hashes,
    no_snapshot_left,
    open_repo,
    restored_hashes,
    wait_done,
)
from tests.controller.conftest import OperatorProcess
from tests.controller.scrape import scrape, value
from tests.vsphere.helpers import our_snapshots

from vmguard.controller.kube.peering import PRIORITY_MAX, build_peering, draw_priority, replica_name
from vmguard_lab.procs import eventually, free_port

PEERING = "vmguard"
LIFETIME = 10  # seconds a SIGKILLed replica still counts as alive
ACTIVE, STANDBY = "replica-active", "replica-standby"  # their POD_IDs
HANDLER_RUN = re.compile(r"(Handler|Daemon|Timer) '[^']+' is invoked")  # kopf, at DEBUG


@pytest.mark.unit
def test_priorities_are_explicit_or_drawn_apart() -> None:
    assert draw_priority(7) == 7
    drawn = {draw_priority() for _ in range(50)}
    assert len(drawn) == 50 and all(1 <= p <= PRIORITY_MAX for p in drawn)


@pytest.mark.unit
def test_peering_objects() -> None:
    assert build_peering("vmguard", "team-a") == {
        "apiVersion": "kopf.dev/v1",
        "kind": "KopfPeering",
        "metadata": {
            "name": "vmguard",
            "namespace": "team-a",
            "labels": {"app.kubernetes.io/part-of": "vmguard"},
        },
    }
    cluster = build_peering("vmguard", None)
    assert cluster["kind"] == "ClusterKopfPeering" and "namespace" not in cluster["metadata"]


@pytest.mark.unit
def test_a_replica_is_named_by_its_pod() -> None:
    assert replica_name({"POD_ID": "vmguard-7d4b9-x2x7q"}) == "vmguard-7d4b9-x2x7q"
    outside = replica_name({})
    assert outside.endswith(f"-{os.getpid()}") and len(outside) > len(f"-{os.getpid()}")


def _replica(
    start: Callable[..., OperatorProcess], priority: int, name: str
) -> tuple[OperatorProcess, int]:
    port = free_port()
    proc = start(
        "--peering",
        PEERING,
        "--priority",
        str(priority),
        "--peering-lifetime",
        str(LIFETIME),
        "--metrics-port",
        str(port),
        "--metrics-address",
        "127.0.0.1",
        log=f"{name}.log",
        extra_env={"POD_ID": name, "VMGUARD_LOG_LEVEL": "DEBUG"},
    )
    return proc, port


def _instances(kube_api: Any, namespace: str) -> list[str]:
    """The replica named by each Event the operator (kopf) posted in ``namespace``."""
    events = client.CoreV1Api(kube_api).list_namespaced_event(namespace).items
    return [e.reporting_instance for e in events if e.reporting_component == "kopf"]


def _sweeps(port: int, namespace: str, vcenter: str) -> float | None:
    return value(
        scrape(port),
        "vmguard_vcenter_sweeps_total",
        namespace=namespace,
        vcenter=vcenter,
        result="ok",
    )


@pytest.mark.lab
@pytest.mark.operator_controllers("vcenters,policies,restores")  # its default policy: no backups
def test_one_replica_acts_and_the_other_takes_over_when_it_dies(
    kube_api: Any,
    lab_state: dict[str, Any],
    namespace: str,
    lab_vcenter: str,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    active, active_port = _replica(start_operator, 200, ACTIVE)
    eventually(
        lambda: _sweeps(active_port, namespace, lab_vcenter),
        timeout=90,
        what="the first replica sweeping",
    )
    standby, standby_port = _replica(start_operator, 100, STANDBY)

    def peers() -> dict[str, Any] | None:
        obj = client.CustomObjectsApi(kube_api).get_namespaced_custom_object(
            "kopf.dev", "v1", namespace, "kopfpeerings", PEERING
        )
        status = obj.get("status") or {}
        return status if len(status) == 2 else None

    status = eventually(peers, timeout=60, what="both replicas in the peering object")
    assert {name: p["priority"] for name, p in status.items()} == {ACTIVE: 200, STANDBY: 100}
    eventually(
        lambda: scrape(standby_port) is not None, timeout=60, what="the standby serving /metrics"
    )

    # A new policy wakes the sweeper of whoever acts: the active replica sweeps again,
    # the standby (paused) does nothing.
    before = _sweeps(active_port, namespace, lab_vcenter) or 0
    objects.create_policy(kube_api, namespace, "fail-safe", default=True)
    eventually(
        lambda: (_sweeps(active_port, namespace, lab_vcenter) or 0) > before,
        timeout=30,
        what="the active replica sweeping on the policy change",
    )
    assert _sweeps(standby_port, namespace, lab_vcenter) is None
    assert (
        value(
            scrape(standby_port), "vmguard_vms_discovered", namespace=namespace, vcenter=lab_vcenter
        )
        is None
    )
    # The API agrees: the policy's handler ran, and every Event came from the active one.
    eventually(
        lambda: ACTIVE in _instances(kube_api, namespace), timeout=30, what="an Event posted"
    )
    assert set(_instances(kube_api, namespace)) == {ACTIVE}
    # So do the logs: the active one invoked the sweeper and the policy's handler; the
    # standby, alive and logging at DEBUG (its paused watches, its peering keep-alives),
    # invoked nothing.
    active_log = active.text()
    assert "Daemon 'vcenter_sweeper' is invoked" in active_log
    assert "Handler 'policy_changed' is invoked" in active_log
    standby_log = standby.text()
    assert "Pausing the watch-stream for vcenters" in standby_log
    assert f"Keep-alive in {PEERING!r}" in standby_log
    assert HANDLER_RUN.findall(standby_log) == []

    # SIGKILL: no farewell in the peering object; the standby waits out the lifetime.
    active.kill()
    objects.create_vcenter(kube_api, lab_state, namespace, "lab2")

    def taken_over() -> bool:
        vc2 = objects.get(kube_api, namespace, "vcenters", "lab2").get("status") or {}
        return bool(vc2.get("lastSweepTime")) and bool(_sweeps(standby_port, namespace, "lab2"))

    eventually(taken_over, timeout=LIFETIME + 90, what="the standby taking over")
    assert standby.alive()
    assert "Daemon 'vcenter_sweeper' is invoked" in standby.text()
    eventually(
        lambda: STANDBY in _instances(kube_api, namespace),
        timeout=30,
        what="an Event posted by the standby",
    )
    assert set(_instances(kube_api, namespace)) == {ACTIVE, STANDBY}
    samples = scrape(standby_port)
    vc = objects.get(kube_api, namespace, "vcenters", lab_vcenter)
    assert (
        value(samples, "vmguard_vms_discovered", namespace=namespace, vcenter="lab2")
        == (objects.get(kube_api, namespace, "vcenters", "lab2")["status"]["vms"]["discovered"])
    )
    assert vc["status"]["vms"]["unprotected"] == 0, "the fail-safe policy was applied"


@pytest.mark.lab
def test_a_replica_that_is_paused_stops_its_backup_and_the_acting_one_completes_it(
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    s3_bucket: dict[str, Any],
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    """A backup in flight is the operator's own task, not a kopf daemon (kube/supervisor.py),
    so kopf's pause does not reach it by itself: the replica's ``Presence`` gate does.
    The low replica drives a backup to its snapshot and is parked there (``stall``); a
    replica of higher priority joins, kopf pauses the low one, whose task is stopped
    (its log says why), and the high one resumes the backup from the recorded snapshot
    to Completed: one archive, restored bit-exact, no snapshot left."""
    low = start_operator(
        "--peering", PEERING, "--priority", "100", "--peering-lifetime", str(LIFETIME),
        stall="snapshotted", log="low.log",
        extra_env={"POD_ID": "replica-low", "VMGUARD_LOG_LEVEL": "DEBUG"},
    )  # fmt: skip
    with data_vm(vc, vsim, image_factory, tmp_path) as vm:
        expected = disk_hashes(vsim, vm.moref)
        uid = create_backup(kube_api, namespace, "handed", {"moref": vm.moref})["metadata"]["uid"]
        taken = eventually(
            lambda: [s for s in our_snapshots(vc, vm.moref) if s.backup_uid == uid],
            timeout=120,
            what="the low replica's snapshot",
        )
        eventually(lambda: "lab: stalled at snapshotted" in low.text(), timeout=60, what="parked")
        start_operator(
            "--peering", PEERING, "--priority", "200", "--peering-lifetime", str(LIFETIME),
            log="high.log", extra_env={"POD_ID": "replica-high"},
        )  # fmt: skip
        status = wait_done(kube_api, namespace, "handed")["status"]
        assert status["phase"] == "Completed", status
        assert status["snapshot"]["moref"] == taken[0].moref, "the snapshot was reused"
        no_snapshot_left(vc, vm.moref)
        repo = open_repo(s3_bucket)
        archives = repo.list_archives(f"lab:{vm.instance_uuid}")
        assert [a.archive_id for a in archives] == [status["archiveId"]], "exactly one archive"
        assert restored_hashes(repo, status["archiveId"], tmp_path) == expected
    assert low.alive()
    assert "backup task ended (not acting)" in low.text()
