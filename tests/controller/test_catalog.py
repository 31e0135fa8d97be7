"""Catalog sync's pure parts: the plan, the names, the synced VMGuardBackup and its status."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest

from vmguard.controller.backup import reconcile
from vmguard.controller.repository.catalog import (
    Placement,
    build_synced_backup,
    place,
    plan_catalog,
    synced_name,
    synced_status,
)
from vmguard.metrics import Metrics
from vmguard.store import ArchiveManifest, CbtState, DiskRecord, TransferStats, VmIdentity
from vmguard.store.names import new_archive_id

pytestmark = pytest.mark.unit

UUID = "5029A7C2-0E8B-4C6B-9A4B-1D2E3F405162"
T0 = dt.datetime(2025, 1, 7, 2, 0, 5, tzinfo=dt.UTC)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def manifest(
    name: str = "web-1",
    vcenter: str = "lab",
    labels: dict[str, str] | None = None,
    mode: str = "incremental",
) -> ArchiveManifest:
    vm_id = f"{vcenter}:{UUID}"
    stats = TransferStats(
        logical_bytes=64 << 20,
        bytes_read=8 << 20,
        bytes_changed=4 << 20,
        bytes_stored=1 << 20,
        chunks_new=1,
        chunks_reused=15,
        compressibility=0.25,
    )
    disk = DiskRecord(
        key="2000",
        label="Hard disk 1",
        length=64 << 20,
        index="indexes/x/0",
        index_hash="0" * 64,
        cbt=CbtState("6000C29-d", "[LocalDS_0] web-1/web-1.vmdk", 64 << 20, "52 7c/42"),
        stats=stats,
    )
    return ArchiveManifest(
        archive_id=new_archive_id(vm_id, T0),
        vm=VmIdentity(vm_id, name, UUID, "bios", "vm-42", vcenter),
        disks=(disk,),
        started=T0,
        finished=T0 + dt.timedelta(seconds=90),
        parent="parent-id" if mode == "incremental" else None,
        mode=mode,  # type: ignore[arg-type]
        mode_reason="incremental from parent-id",
        labels={"backup_uid": "u-1", "quiesced": "false", **(labels or {})},
        stats=stats,
    )


def vmb(
    name: str,
    archive: str = "",
    phase: str = "Completed",
    repository: str = "repo",
    conditions: list[dict[str, Any]] | None = None,
    synced: bool = False,
    deleting: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": f"uid-{name}", "labels": {}, "annotations": {}}
    status: dict[str, Any] = {"repository": repository}
    if synced:
        meta["labels"]["vmguard.io/synced"] = "true"
        meta["annotations"]["vmguard.io/archive-id"] = archive
    else:
        status.update(phase=phase, archiveId=archive)
    if deleting:
        meta["deletionTimestamp"] = "2025-01-07T03:00:00Z"
    if conditions:
        status["conditions"] = conditions
    return {"metadata": meta, "spec": {}, "status": status}


MISSING = [{"type": "ArchiveAvailable", "status": "False", "reason": "ArchiveMissing"}]


def test_plan_creates_flags_clears_and_completes() -> None:
    backups_ = [
        vmb("has-a", "a"),
        vmb("lost-b", "b"),  # Completed, archive gone: flag
        vmb("lost-c", "c", conditions=MISSING),  # flagged already: nothing
        vmb("back-d", "d", conditions=MISSING),  # flagged, archive back: clear
        vmb("dying-e", "e", deleting=True),  # being deleted: left alone
        vmb("other-f", "f", repository="elsewhere"),  # another repository's: not flagged
        vmb("failed-g", "g", phase="Failed"),  # not Completed: never flagged
        vmb("synced-h", "h", synced=True),  # synced, no status yet: complete it
        vmb("running", "", phase="Transferring"),
    ]
    plan = plan_catalog("repo", ["a", "d", "e", "f", "h", "new-1", "new-2"], backups_)
    assert plan.create == ("new-1", "new-2")  # e and f are covered by their objects
    assert plan.flag == ("lost-b",)
    assert plan.clear == ("back-d",)
    assert plan.complete == (("synced-h", "h"),)
    assert plan_catalog("repo", ["a"], [vmb("has-a", "a")]).empty


def test_a_copy_target_gets_no_object_for_a_copy_its_point_records() -> None:
    point = vmb("b1", "a-1")
    point["status"]["copies"] = [
        {"repository": "offsite", "state": "Completed", "archiveId": "copy-of-a-1"}
    ]
    plan = plan_catalog("offsite", ["copy-of-a-1", "copy-of-unknown"], [point])
    assert plan.create == ("copy-of-unknown",)


def test_a_synced_object_whose_archive_is_gone_waits_uncompleted() -> None:
    plan = plan_catalog("repo", [], [vmb("synced-h", "h", synced=True)])
    assert plan.empty


def test_synced_names_are_dns_labels_unique_per_archive_and_stable() -> None:
    m = manifest()
    name = synced_name(m.vm.name, m.archive_id)
    assert name == f"web-1-{m.archive_id.lower()}"
    assert synced_name(m.vm.name, m.archive_id) == name
    for vm_name in ["Ünïcode/with slashes %20 ..", "---", "", "x" * 255, "日本語", "A_B.C"]:
        made = synced_name(vm_name, m.archive_id)
        assert DNS_LABEL.match(made) and len(made) <= 63, made
        assert made.endswith(m.archive_id.lower())
    assert synced_name("Ünïcode/with slashes", m.archive_id).startswith("unicode-with-slashes-")
    assert synced_name("日本語", m.archive_id).startswith("vm-")


def test_placement_prefers_the_recorded_vcenter_and_an_existing_policy() -> None:
    m = manifest(labels={"vmguard.io/policy": "gold"})
    assert place(m, ["lab", "other"], ["gold"]) == Placement("lab", "gold")
    # Not applied (yet): the name is kept, a VMGuardRestore may name another VCenter.
    assert place(m, ["other"], []) == Placement("lab", None)
    cli = manifest(vcenter="")  # `vmguard vm backup` without --vcenter records none
    assert place(cli, ["only"], []) == Placement("only", None)
    assert place(cli, ["a", "b"], []) == Placement(None, None)


def test_synced_backup_object() -> None:
    m = manifest(
        labels={
            "vmguard.io/policy": "gold",
            "vmguard.io/namespace": "old-ns",
            "vmguard.io/vmbackup": "gold-1234abcd-s202501070200",
        }
    )
    body = build_synced_backup(
        m, namespace="ns", repository="repo", placement=Placement("lab", "gold")
    )
    meta = body["metadata"]
    assert meta["name"] == synced_name("web-1", m.archive_id) and meta["namespace"] == "ns"
    assert meta["labels"] == {
        "vmguard.io/synced": "true",
        "vmguard.io/repository": "repo",
        "vmguard.io/vcenter": "lab",
        "vmguard.io/vm": UUID.lower(),
        "vmguard.io/policy": "gold",
    }
    assert meta["annotations"] == {
        "vmguard.io/archive-id": m.archive_id,
        "vmguard.io/vm-name": "web-1",
        "vmguard.io/synced-from": "old-ns/gold-1234abcd-s202501070200",
    }
    assert "ownerReferences" not in meta  # deleting a policy must not delete these
    assert body["spec"] == {
        "vm": {"name": "web-1", "instanceUuid": UUID.lower(), "moref": "vm-42"},
        "vcenterRef": {"name": "lab"},
        "repositoryRef": {"name": "repo"},
        "policyRef": {"name": "gold"},
    }
    no_policy = build_synced_backup(
        m, namespace="ns", repository="repo", placement=Placement("lab", None)
    )
    assert "policyRef" not in no_policy["spec"]
    assert no_policy["metadata"]["labels"]["vmguard.io/policy"] == "gold"
    with pytest.raises(ValueError):
        build_synced_backup(m, namespace="ns", repository="repo", placement=Placement(None, None))


def test_synced_status_from_the_manifest() -> None:
    m = manifest()
    status = synced_status(m, repository="repo", vcenter="lab", at="2025-01-08T00:00:00Z")
    assert status["phase"] == "Completed" and status["archiveId"] == m.archive_id
    assert (status["startTime"], status["completionTime"]) == (
        "2025-01-07T02:00:05Z",
        "2025-01-07T02:01:35Z",
    )
    assert status["durationSeconds"] == 90.0
    assert status["modeUsed"] == "incremental" and status["parentArchiveId"] == "parent-id"
    assert status["quiesced"] is False and status["vcenter"] == "lab"
    (disk,) = status["disks"]
    assert disk == {
        "key": 2000,
        "label": "Hard disk 1",
        "capacityBytes": 64 << 20,
        "mode": "incremental",
        "bytesRead": 8 << 20,
        "bytesChanged": 4 << 20,
        "bytesUploaded": 1 << 20,
        "chunksNew": 1,
        "chunksReused": 15,
        "uuid": "6000C29-d",
        "backing": "[LocalDS_0] web-1/web-1.vmdk",
        "changeId": "52 7c/42",
    }
    assert status["totals"] == {
        "capacityBytes": 64 << 20,
        "bytesRead": 8 << 20,
        "bytesChanged": 4 << 20,
        "bytesUploaded": 1 << 20,
        "chunksNew": 1,
        "chunksReused": 15,
        "compressibility": 0.25,
    }
    conds = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conds == {
        "Ready": ("True", "Completed"),
        "ArchiveAvailable": ("True", "Synced"),
        "Reconciling": ("False", "Completed"),  # kstatus: Current, not in progress
    }
    assert synced_status(manifest(mode="full-scan"), repository="r", vcenter="v")["modeUsed"] == (
        "fullScan"
    )


def test_a_synced_backup_is_never_in_flight() -> None:
    assert reconcile.in_flight({}, {}) is True
    assert reconcile.in_flight({}, {"vmguard.io/synced": "true"}) is False
    assert reconcile.in_flight({"phase": "Completed"}, None) is False


def test_synced_backups_feed_the_gauges_not_the_counters() -> None:
    # Started before the archive finished: a VMGuardBackup of ours would count.
    metrics = Metrics(clock=lambda: (T0 - dt.timedelta(hours=1)).timestamp())
    m = manifest()
    body = build_synced_backup(
        m, namespace="ns", repository="repo", placement=Placement("lab", None)
    )
    obj = {**body, "status": synced_status(m, repository="repo", vcenter="lab")}
    obj["metadata"]["uid"] = "synced-uid"
    metrics.observe_backup(obj)
    text = metrics.exposition()
    assert 'vmguard_backups_total{namespace="ns"' not in text
    assert "vmguard_vm_last_backup_compressibility{" in text or "vmguard_vm_info{" in text
    # The same backup as the VMGuardBackup controller's own would be counted.
    ours = {**obj, "metadata": {**obj["metadata"], "uid": "our-uid", "labels": {}}}
    metrics.observe_backup(ours)
    assert 'vmguard_backups_total{namespace="ns"' in metrics.exposition()
