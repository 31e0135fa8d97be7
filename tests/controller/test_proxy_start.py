"""A proxy pod that cannot start is noticed at once, not at the Job's 4 h deadline.

An image that does not exist: the proxy pods run in the lab's container mode (podman),
from a tag no node has; the node agent reports the pull's failure as a kubelet does.

Both cases are made with a LimitRange in the test's own namespace, so nothing outside
it is touched: a ``min`` cpu above the proxy's request makes the LimitRanger admission
plugin refuse the pod (the Job controller records ``FailedCreate ... forbidden``), a
``defaultRequest`` of ephemeral storage no lab node has makes kube-scheduler leave the
pod ``Unschedulable``. Each test checks the VMGuardBackup's reason and that no snapshot of
ours is left on the VM (the simulator is asked).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.controller import objects
from tests.controller.backup_helpers import create_backup, data_vm, no_snapshot_left, wait_done
from tests.vsphere.helpers import our_snapshots

from vmguard_lab.containers import ANNOTATION, CONTAINER
from vmguard_lab.procs import eventually

pytestmark = pytest.mark.lab


def _limit_range(kube_api: Any, ns: str, limit: dict[str, Any]) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": {"name": "proxy-start"},
        "spec": {"limits": [{"type": "Container", **limit}]},
    }
    client.CoreV1Api(kube_api).create_namespaced_limit_range(ns, body)


def _not_starting(kube_api: Any, ns: str, name: str) -> dict[str, Any]:
    """The backup's ``Transferring`` condition once it says ``ProxyNotStarting`` (within
    the 2 minutes the issue allows)."""

    def said() -> dict[str, Any] | None:
        st = objects.get(kube_api, ns, "vmguardbackups", name).get("status") or {}
        cond = {c["type"]: c for c in st.get("conditions") or []}.get("Transferring") or {}
        return cond if cond.get("reason") == "ProxyNotStarting" else None

    found: dict[str, Any] = eventually(said, timeout=120, what=f"ProxyNotStarting on {name}")
    return found


def test_proxy_refused_at_admission_fails_the_backup_at_once(
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    start_operator: Any,
    tmp_path: Path,
) -> None:
    _limit_range(kube_api, namespace, {"min": {"cpu": "64"}})
    # An hour's start timeout: ending Failed within wait_done's 4 minutes can only be
    # the permanent path.
    start_operator(extra_env={"VMGUARD_PROXY_START_TIMEOUT": "3600"})
    with data_vm(vc, vsim, image_factory, tmp_path) as vm:
        create_backup(kube_api, namespace, "refused", {"moref": vm.moref})
        status = wait_done(kube_api, namespace, "refused")["status"]
        assert status["phase"] == "Failed", status
        error = status["error"]
        assert error["reason"] == "FailedCreate", error
        assert "forbidden" in error["message"] and "minimum cpu" in error["message"], error
        assert "did not start within" not in error["message"]
        assert status["snapshot"]["removed"] is True and not status.get("archiveId")
        no_snapshot_left(vc, vm.moref)


def test_unschedulable_proxy_shows_its_reason_then_fails_at_the_start_timeout(
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    start_operator: Any,
    tmp_path: Path,
) -> None:
    _limit_range(kube_api, namespace, {"defaultRequest": {"ephemeral-storage": "100Ti"}})
    # The condition shows from the operator's first look at the Job (every 2.5 s while it
    # does not start: five backup polls); the failure comes at 15 s.
    start_operator(extra_env={"VMGUARD_PROXY_START_TIMEOUT": "15"})
    with data_vm(vc, vsim, image_factory, tmp_path) as vm:
        create_backup(kube_api, namespace, "stuck", {"moref": vm.moref})
        cond = _not_starting(kube_api, namespace, "stuck")
        assert "Unschedulable" in cond["message"], cond
        assert "ephemeral-storage" in cond["message"], cond
        status = wait_done(kube_api, namespace, "stuck")["status"]
        assert status["phase"] == "Failed", status
        assert status["error"]["reason"] == "Unschedulable", status["error"]
        assert "did not start within 15s" in status["error"]["message"]
        assert status["snapshot"]["removed"] is True and not status.get("archiveId")
        no_snapshot_left(vc, vm.moref)
        jobs = client.BatchV1Api(kube_api).list_namespaced_job(namespace).items
        assert [j.metadata.name for j in jobs if j.metadata.name.startswith("stuck")] == []


def test_a_proxy_image_that_does_not_exist_shows_its_reason_then_fails_at_the_start_timeout(
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    start_operator: Any,
    tmp_path: Path,
) -> None:
    """The proxy pods run as containers (the lab's container mode) from an image no
    node has: the node agent reports ``ErrImagePull``, then ``ImagePullBackOff``, as a
    kubelet does; a pull that may succeed later is retried until the start timeout."""
    image = f"localhost/vmguard-proxy:no-such-tag-{namespace}"
    start_operator(
        extra_env={
            "VMGUARD_PROXY_IMAGE": image,
            "VMGUARD_PROXY_POD_ANNOTATIONS": json.dumps({ANNOTATION: CONTAINER}),
            "VMGUARD_PROXY_START_TIMEOUT": "20",
        }
    )
    with data_vm(vc, vsim, image_factory, tmp_path) as vm:
        create_backup(kube_api, namespace, "pull", {"moref": vm.moref})
        cond = _not_starting(kube_api, namespace, "pull")
        assert "ErrImagePull" in cond["message"] or "ImagePullBackOff" in cond["message"], cond
        assert image in cond["message"], cond
        status = wait_done(kube_api, namespace, "pull")["status"]
        assert status["phase"] == "Failed", status
        assert status["error"]["reason"] in ("ErrImagePull", "ImagePullBackOff"), status["error"]
        assert "did not start within 20s" in status["error"]["message"]
        assert status["snapshot"]["removed"] is True and not status.get("archiveId")
        no_snapshot_left(vc, vm.moref)


def test_a_proxy_that_cannot_start_is_retried_on_a_fresh_snapshot_each_time(
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    start_operator: Any,
    tmp_path: Path,
) -> None:
    """Transient proxy-start trouble (unschedulable) does not keep the VM on one snapshot
    for the whole proxy-start timeout: each retry removes the snapshot and takes a new
    one. Sampled in the simulator: never two of ours at once, more than one snapshot id
    over the backup's life, none left when it fails at the timeout."""
    _limit_range(kube_api, namespace, {"defaultRequest": {"ephemeral-storage": "100Ti"}})
    start_operator(extra_env={"VMGUARD_PROXY_START_TIMEOUT": "9"})
    with data_vm(vc, vsim, image_factory, tmp_path) as vm:
        create_backup(kube_api, namespace, "fresh", {"moref": vm.moref})
        seen: list[list[str]] = []
        waited_on: list[str] = []  # our snapshots seen while the proxy was being started

        def ended() -> dict[str, Any] | None:
            obj = objects.get(kube_api, namespace, "vmguardbackups", "fresh")
            phase = (obj.get("status") or {}).get("phase")
            seen.append([s.moref for s in our_snapshots(vc, vm.moref)])
            if phase == "Transferring":  # (preparing may cycle a snapshot to turn CBT on)
                waited_on.extend(seen[-1])
            return obj if phase in ("Completed", "Failed") else None

        status = eventually(ended, timeout=180, what="the backup to end")["status"]
        assert max(len(s) for s in seen) <= 1, seen
        ids = list(dict.fromkeys(waited_on))
        assert len(ids) >= 2, f"one snapshot for the whole proxy-start timeout: {ids}"
        assert status["phase"] == "Failed", status
        assert status["error"]["reason"] == "Unschedulable", status["error"]
        assert "did not start within 9s" in status["error"]["message"]
        assert status["snapshot"]["removed"] is True
        no_snapshot_left(vc, vm.moref)
