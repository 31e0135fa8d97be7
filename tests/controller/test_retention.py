"""Issue #6 acceptance, retention and GC end to end (lab: real apiserver, the operator
as a process, proxy Jobs through the node agent, the vSphere simulator, MinIO).

A policy keeping the last 3 backups of one VM: the 4th Completed backup prunes the
oldest VMGuardBackup and its archive, and the repository's next scheduled GC frees the
chunks only that archive had; the three kept archives still restore bit-exact and a
deep verify is clean. To keep the wall time short the test creates the four VMGuardBackups
itself (with the policy's label and policyRef, as the scheduler would) instead of
waiting for cron minutes; the policy is paused so the fail-safe does not add a fifth.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.controller import objects
from tests.controller.backup_helpers import (
    data_vm,
    disk_hashes,
    no_snapshot_left,
    open_repo,
    restored_hashes,
    wait_done,
)

from vmguard.api.kinds import BACKUP
from vmguard.store import Repository, names
from vmguard.store.stats import repository_stats
from vmguard.store.verify import verify
from vmguard_lab.procs import eventually

pytestmark = [
    pytest.mark.lab,
    pytest.mark.operator_controllers("vcenters,policies,backups,repositories"),
]
MiB = 1 << 20
POLICY = "keep3"


def _referenced(repo: Repository, archive_id: str) -> set[bytes]:
    manifest = repo.load_archive(archive_id)
    out: set[bytes] = set()
    for disk in manifest.disks:
        out |= repo.load_index(manifest, disk).referenced()
    return out


def _chunk_objects(minio_client: Any, bucket: str) -> set[str]:
    found = minio_client.list_objects(bucket, prefix=names.CHUNKS, recursive=True)
    return {o.object_name for o in found}


def _gone(kube_api: Any, ns: str, name: str) -> bool:
    try:
        objects.get(kube_api, ns, "vmguardbackups", name)
    except client.ApiException as exc:
        return exc.status == 404
    return False


def test_keep_last_3_prunes_the_oldest_and_gc_frees_its_chunks(
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    s3_bucket: dict[str, Any],
    minio_client: Any,
    start_operator: Any,
    tmp_path: Path,
) -> None:
    objects.create_repository(kube_api, namespace, "repo", s3_bucket)
    # Twelve times faster (docs/lab.md, "Lab time"): the GC's cron minute lasts 5 s; its
    # grace period (a minute) is a safety rule and stays real.
    start_operator(extra_env={"VMGUARD_REPOSITORY_INTERVAL": "3"}, speedup=12)
    with data_vm(vc, vsim, image_factory, tmp_path) as vm:
        objects.create_policy(
            kube_api,
            namespace,
            POLICY,
            selector={"names": [vm.name]},
            retention={"keepLast": 3},
            paused=True,
        )
        disk = vm.disks[0]
        at: dict[str, dict[str, str]] = {}
        archives: dict[str, str] = {}
        for n in range(1, 5):
            # A whole chunk of new random data before each backup: every archive has a
            # chunk that no other archive shares.
            vsim.write(vm.moref, disk.key, 16 * MiB, os.urandom(4 * MiB))
            name = f"{POLICY}-{n}"
            at[name] = disk_hashes(vsim, vm.moref)
            objects.create(
                kube_api,
                namespace,
                "vmguardbackups",
                "VMGuardBackup",
                name,
                {"vm": {"moref": vm.moref}, "policyRef": {"name": POLICY}},
                labels={"vmguard.io/policy": POLICY, "vmguard.io/vm": vm.instance_uuid.lower()},
            )
            done = wait_done(kube_api, namespace, name)
            assert done["status"]["phase"] == "Completed", done["status"]
            archives[name] = done["status"]["archiveId"]
        no_snapshot_left(vc, vm.moref)

    oldest, kept = f"{POLICY}-1", [f"{POLICY}-{n}" for n in (2, 3, 4)]
    eventually(lambda: _gone(kube_api, namespace, oldest), timeout=60, what="oldest pruned")
    repo = open_repo(s3_bucket)
    assert {ref.archive_id for ref in repo.list_archives()} == {archives[n] for n in kept}
    assert all(not _gone(kube_api, namespace, n) for n in kept)

    def reported() -> dict[str, Any] | None:
        p = objects.get(kube_api, namespace, "vmprotectionpolicies", POLICY)
        done = ((p.get("status") or {}).get("retention") or {}).get("lastPruned") == 1
        return p if done else None

    policy = eventually(reported, timeout=30, what="the policy's retention status")
    assert objects.condition(policy, "Retention")["reason"] == "Applied"

    def pruned_event() -> bool:
        events = client.CoreV1Api(kube_api).list_namespaced_event(namespace).items
        return any(e.reason == "Pruned" and oldest in (e.message or "") for e in events)

    eventually(pruned_event, timeout=30, what="the Pruned event")

    # What only the pruned archive referenced (it is in the trash until GC empties it).
    trash = repo.decode_manifest(
        archives[oldest], repo.backend.get(names.trash_manifest_name(archives[oldest]))
    )
    only_oldest: set[bytes] = set()
    for d in trash.disks:
        only_oldest |= repo.load_index(trash, d).referenced()
    for n in kept:
        only_oldest -= _referenced(repo, archives[n])
    assert only_oldest

    chunks_before = _chunk_objects(minio_client, s3_bucket["bucket"])
    now = repository_stats(repo)
    assert (now.archives, now.chunks) == (3, len(chunks_before))

    def counted() -> dict[str, Any] | None:
        # A status written before the 4th backup also says 3 archives: wait for this one.
        s = objects.get(kube_api, namespace, "vmguardrepositories", "repo").get("status") or {}
        seen = (s.get("archives"), s.get("chunks"), s.get("storedBytes"))
        return s if seen == (3, now.chunks, now.stored_bytes) else None

    before = eventually(counted, timeout=30, what="repository stats after the prune")
    # Now schedule GC: every minute, a minute's grace.
    objects.custom(kube_api).patch_namespaced_custom_object(
        objects.G, objects.V, namespace, "vmguardrepositories", "repo",
        {"spec": {"gc": {"schedule": "* * * * *", "gracePeriod": "1m"}}},
    )  # fmt: skip

    def collected() -> dict[str, Any] | None:
        s = objects.get(kube_api, namespace, "vmguardrepositories", "repo").get("status") or {}
        return s if (s.get("lastGC") or {}).get("chunksDeleted") else None

    after = eventually(collected, timeout=180, what="a GC that deletes chunks")
    gc = after["lastGC"]
    assert gc["chunksDeleted"] == len(only_oldest) and gc["bytesFreed"] > 0
    chunks_after = _chunk_objects(minio_client, s3_bucket["bucket"])
    assert len(chunks_before) - len(chunks_after) == gc["chunksDeleted"]
    assert {names.chunk_name(c) for c in only_oldest}.isdisjoint(chunks_after)

    def shrunk() -> dict[str, Any] | None:
        s = objects.get(kube_api, namespace, "vmguardrepositories", "repo").get("status") or {}
        return s if s.get("chunks") == len(chunks_after) else None

    final = eventually(shrunk, timeout=30, what="repository stats after GC")
    assert final["storedBytes"] == before["storedBytes"] - gc["bytesFreed"]

    repo = open_repo(s3_bucket)
    for n in kept:
        assert restored_hashes(repo, archives[n], tmp_path) == at[n], n
    report = verify(repo, deep=True)
    assert report.ok and report.archives == 3


def _completed_backup(
    kube_api: Any, ns: str, name: str, archive_id: str, when: str
) -> dict[str, Any]:
    objects.create(
        kube_api,
        ns,
        "vmguardbackups",
        "VMGuardBackup",
        name,
        {"vm": {"instanceUuid": VM_UUID}, "policyRef": {"name": POLICY}},
        labels={"vmguard.io/policy": POLICY, "vmguard.io/vm": VM_UUID},
    )
    status = {
        "phase": "Completed",
        "archiveId": archive_id,
        "repository": "repo",
        "snapshot": {"createTime": when},
    }
    objects.patch_status(kube_api, ns, BACKUP.plural, name, status)
    return objects.get(kube_api, ns, BACKUP.plural, name)


VM_UUID = "4211aaaa-bbbb-cccc-dddd-eeeeffff0001"


def test_object_lock_keeps_the_backup_says_so_once_and_a_half_done_prune_is_finished(
    kube_api: Any, namespace: str, s3_lock_bucket: dict[str, Any]
) -> None:
    """Retention's pass (controller/policy/retention.py) against the lab apiserver and a MinIO
    bucket with Object Lock, without an operator: the pass is called directly."""
    import asyncio
    import datetime as dt

    from tests.store.helpers import backup, disk_image

    from vmguard.controller.kube.kubeapi import KubeAPI
    from vmguard.controller.policy.retention import Retention
    from vmguard.store import ObjectLockPolicy
    from vmguard.store.backend import S3Backend
    from vmguard.store.prune import retire_archive

    b = s3_lock_bucket
    backend = S3Backend(
        b["endpoint"], b["bucket"], access_key=b["access_key"], secret_key=b["secret_key"],
        secure=False,
    )  # fmt: skip
    repo = Repository.init(
        backend, chunk_size=256 * 1024, object_lock=ObjectLockPolicy("GOVERNANCE", 1)
    )
    locked = backup(repo, VM_UUID, {"d": disk_image(1, 2, 256 * 1024)})
    objects.create_repository(kube_api, namespace, "repo", s3_lock_bucket)
    objects.create_policy(kube_api, namespace, POLICY, selector={"names": ["x"]}, paused=True)
    policy = objects.get(kube_api, namespace, "vmprotectionpolicies", POLICY)
    policy["spec"]["retention"] = {"keepLast": 1}
    _completed_backup(kube_api, namespace, "old", locked.archive_id, "2025-01-01T00:00:00Z")
    newest = names.new_archive_id(VM_UUID, dt.datetime(2025, 1, 2, tzinfo=dt.UTC))
    _completed_backup(kube_api, namespace, "new", newest, "2025-01-02T00:00:00Z")
    said: list[tuple[str, str, bool]] = []
    retention = Retention()
    api = KubeAPI(kube_api)

    def one_pass() -> set[str]:
        backups = objects.items(kube_api, namespace, "vmguardbackups")
        now = dt.datetime.now(dt.UTC)
        return asyncio.run(retention.apply(api, policy, backups, lambda *e: said.append(e), now))

    assert one_pass() == set() and one_pass() == set()
    assert not _gone(kube_api, namespace, "old")
    assert [(r, w) for r, _, w in said] == [("RetentionBlocked", True)]  # once
    assert locked.archive_id in said[0][1]
    assert {ref.archive_id for ref in repo.list_archives()} == {locked.archive_id}
    cond = retention.condition(None, 1)[0]
    assert (cond["reason"], retention.status()["blocked"]) == ("RetentionBlocked", 1)

    # A prune that retired the archive and died before deleting the object: the next
    # pass deletes the object (an archive already gone counts as retired).
    # (Nothing can be retired in this bucket: the archive is one that is gone already.)
    objects.custom(kube_api).delete_namespaced_custom_object(
        objects.G, objects.V, namespace, "vmguardbackups", "old"
    )
    retired = names.new_archive_id(VM_UUID, dt.datetime(2024, 12, 1, tzinfo=dt.UTC))
    assert retire_archive(repo, retired) is None
    _completed_backup(kube_api, namespace, "older", retired, "2024-12-01T00:00:00Z")
    assert one_pass() == {"older"}
    assert _gone(kube_api, namespace, "older") and not _gone(kube_api, namespace, "new")
    assert said[-1][0] == "Pruned" and "older" in said[-1][1]
    assert retention.condition(None, 1)[0]["reason"] == "Applied"
