"""Copies through the operator (issue 17, acceptance 1): a policy with copy targets in
the lab's second MinIO; after a full and two incremental backups every point is copied
by a copy Job, restores bit-exact from the copy, the incremental copies read from the
source only the chunks that changed, and no 64-byte window of the disk's random
(incompressible) regions appears in the encrypted copy's objects — while the same
check finds them in an unencrypted copy of the same points (so it can fail).

The operator runs every controller: the VMGuardBackup controller makes the backups, the
policy's scheduler (copy controller) the copies.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.controller import objects
from tests.controller.backup_helpers import (
    TINY_DISK,
    data_vm,
    disk_hashes,
    open_repo,
    restored_hashes,
    wait_done,
)
from tests.controller.conftest import OperatorProcess
from tests.controller.restore_helpers import destroy_vm
from tests.vsphere.helpers import sha256_file

from vmguard.store import HOLE, Repository
from vmguard.store.backend import S3Backend
from vmguard.store.copy import copy_archives, select_archives
from vmguard_lab.procs import eventually

# No vCenter sweeps or catalog sync: the backups are made by hand, not by the schedule.
pytestmark = [
    pytest.mark.lab,
    pytest.mark.operator_controllers("backups,policies,repositories,restores"),
]

MiB = 1 << 20
RANDOM = ((2 * MiB, 6 * MiB), (12 * MiB, 14 * MiB))  # TINY_DISK's incompressible regions
CHUNK = {"chunkSize": MiB}  # TINY_DISK in 16 chunks
WINDOWS = 48


def windows(image: Path) -> list[bytes]:
    """64-byte windows spread over the disk's random regions."""
    out = []
    with open(image, "rb") as f:
        for start, end in RANDOM:
            step = (end - start) // (WINDOWS // len(RANDOM))
            for at in range(start + 4099, end - 64, step):
                f.seek(at)
                out.append(f.read(64))
    return out


def bucket_bytes(client: Any, bucket: str, prefix: str = "") -> list[bytes]:
    out = []
    for obj in client.list_objects(bucket, prefix=prefix, recursive=True):
        resp = client.get_object(bucket, obj.object_name)
        try:
            out.append(resp.read())
        finally:
            resp.close()
            resp.release_conn()
    return out


def remove_bucket(client: Any, bucket: str) -> None:
    """Every object of ``bucket``, then the bucket itself (not versioned, not locked)."""
    from minio.deleteobjects import DeleteObject

    names = [o.object_name for o in client.list_objects(bucket, recursive=True)]
    assert names  # the primary held the backups
    assert not list(client.remove_objects(bucket, (DeleteObject(n) for n in names)))
    client.remove_bucket(bucket)


def found(wins: list[bytes], blobs: list[bytes]) -> int:
    return sum(1 for w in wins if any(w in b for b in blobs))


def copy_summaries(lab: Any, namespace: str) -> dict[str, list[dict[str, Any]]]:
    """The copy Jobs' one-line summaries (their pods' logs), by source archive."""
    out: dict[str, list[dict[str, Any]]] = {}
    for log in (lab.paths.lab / "node" / "pods").glob(f"{namespace}_vmc-*/*.log"):
        for line in log.read_text().splitlines():
            if line.startswith('{"copied"'):
                summary = json.loads(line)["copied"]
                out.setdefault(summary["source"], []).append(summary)
    return out


def changed_chunks(repo: Repository, parent: str, child: str) -> int:
    """Chunks of ``child`` (not holes) whose id differs from ``parent``'s at that position."""
    a, b = repo.load_archive(parent), repo.load_archive(child)
    count = 0
    for disk in b.disks:
        old, new = repo.load_index(a, disk.key), repo.load_index(b, disk.key)
        count += sum(
            1 for i, cid in enumerate(new) if cid != HOLE and (i >= len(old) or old[i] != cid)
        )
    return count


def copies_done(kube_api: Any, ns: str, name: str, targets: set[str]) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        obj = objects.get(kube_api, ns, "vmguardbackups", name)
        copies = {c["repository"]: c for c in obj.get("status", {}).get("copies", [])}
        states = {t: copies.get(t, {}).get("state") for t in targets}
        if "Failed" in states.values():
            raise AssertionError(f"{name}: a copy failed: {copies}")
        return copies if all(s == "Completed" for s in states.values()) else None

    result: dict[str, Any] = eventually(done, timeout=120, what=f"{name} copied to {targets}")
    return result


def test_every_point_is_copied_encrypted_incrementally_and_restores_bit_exact(
    lab: Any,
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    s3_bucket: dict[str, Any],
    s3_lock_bucket2: dict[str, Any],
    minio_client: Any,
    minio2_client: Any,
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    primary_key, copy_key = os.urandom(32).hex(), os.urandom(32).hex()
    objects.create_repository(kube_api, namespace, "repo", s3_bucket, key=primary_key, **CHUNK)
    # The copy: another MinIO, another key, Object Lock on.
    objects.create_repository(
        kube_api,
        namespace,
        "offsite",
        s3_lock_bucket2,
        key=copy_key,
        prefix="enc",
        objectLockDays=1,
        **CHUNK,
    )
    copies = [{"repositoryRef": {"name": "offsite"}, "retention": {"keepDaily": 7}}]
    objects.create_policy(
        kube_api, namespace, "gold", selector={"names": ["nothing-*"]}, copies=copies
    )
    start_operator()
    targets = {"offsite"}
    expected: dict[str, dict[str, str]] = {}
    with data_vm(vc, vsim, image_factory, tmp_path, spec=TINY_DISK) as vm:
        wins = windows(Path(vm.disks[0].path))
        disk = vm.disks[0]
        for n, writes in enumerate(
            ([], [(3 * MiB + 5, 20_000)], [(9 * MiB + 100, 5000), (disk.capacity - 8192, 8192)])
        ):
            for off, data in ((off, os.urandom(size)) for off, size in writes):
                vsim.write(vm.moref, disk.key, off, data)
            expected[f"b{n}"] = disk_hashes(vsim, vm.moref)
            # Labelled as the policy's own runs label theirs (what its scheduler lists).
            objects.create(
                kube_api,
                namespace,
                "vmguardbackups",
                "VMGuardBackup",
                f"b{n}",
                {"vm": {"moref": vm.moref}, "policyRef": {"name": "gold"}},
                labels={"vmguard.io/policy": "gold", "vmguard.io/vm": vm.instance_uuid.lower()},
            )
            status = wait_done(kube_api, namespace, f"b{n}")["status"]
            assert status["phase"] == "Completed", status
        copied = {name: copies_done(kube_api, namespace, name, targets) for name in expected}

    primary = open_repo(s3_bucket, primary_key)
    enc = open_repo(s3_lock_bucket2, copy_key, prefix="enc")
    assert enc.encrypted
    sources = {name: objects.get(kube_api, namespace, "vmguardbackups", name) for name in expected}
    archive = {name: obj["status"]["archiveId"] for name, obj in sources.items()}
    summaries = copy_summaries(lab, namespace)
    for name, hashes in expected.items():
        entry = copied[name]["offsite"]
        assert entry["bytes"] > 0
        manifest = enc.load_archive(entry["archiveId"])
        assert manifest.labels["vmguard.io/copied-from"] == archive[name]
        assert restored_hashes(enc, entry["archiveId"], tmp_path) == hashes, name
    # One copy Job per point, each ran once. Incremental copies read from the source only
    # what changed since the previous point (counted by the copy; the expectation from
    # the source's own indexes).
    assert {a: len(s) for a, s in summaries.items()} == {a: 1 for a in archive.values()}
    for parent, child in (("b0", "b1"), ("b1", "b2")):
        changed = changed_chunks(primary, archive[parent], archive[child])
        for summary in summaries[archive[child]]:
            assert 0 < summary["chunksRead"] == changed < summary["chunksTotal"], summary
            assert summary["basedOn"] is not None and not summary["skipped"]
    for summary in summaries[archive["b0"]]:
        assert summary["basedOn"] is None
        assert summary["chunksMapped"] == 0 and summary["chunksRead"] > 0
    # Encrypted under its own key: the disk's random bytes appear nowhere in the copy's
    # objects. The same points copied (by the same engine, in-process) into an
    # unencrypted repository next to it: there the check finds them (so it can fail).
    assert found(wins, bucket_bytes(minio2_client, s3_lock_bucket2["bucket"], "enc/")) == 0
    plain = Repository.init(
        S3Backend(
            s3_lock_bucket2["endpoint"],
            s3_lock_bucket2["bucket"],
            access_key=s3_lock_bucket2["access_key"],
            secret_key=s3_lock_bucket2["secret_key"],
            prefix="plain",
            secure=False,
        ),
        chunk_size=MiB,
    )
    copy_archives(primary, plain, select_archives(primary))
    in_plain = found(wins, bucket_bytes(minio2_client, s3_lock_bucket2["bucket"], "plain/"))
    assert in_plain >= len(wins) * 9 // 10

    # Acceptance 3: the primary bucket deleted entirely. A restore of a copied point
    # completes from the copy and says so; a restore can also name the copy itself.
    remove_bucket(minio_client, s3_bucket["bucket"])
    assert not minio_client.bucket_exists(s3_bucket["bucket"])
    new_vm = {"datastore": "LocalDS_0", "folder": "/DC0/vm"}
    objects.create(
        kube_api,
        namespace,
        "vmguardrestores",
        "VMGuardRestore",
        "after-loss",
        {"source": {"backupRef": {"name": "b2"}}, "target": {"newVM": {"name": "cp-b2", **new_vm}}},
    )
    objects.create(
        kube_api,
        namespace,
        "vmguardrestores",
        "VMGuardRestore",
        "named",
        {
            "source": {"backupRef": {"name": "b1"}, "repositoryRef": {"name": "offsite"}},
            "target": {"newVM": {"name": "cp-b1", **new_vm}},
        },
    )
    # By point: the ProtectedVM's entry of b0 holds its copy too (written with the run's),
    # and a restore of that point falls back to it the same way.
    (held,) = objects.items(kube_api, namespace, "protectedvms")

    def point_copies() -> list[dict[str, Any]] | None:
        obj = objects.get(kube_api, namespace, "protectedvms", held["metadata"]["name"])
        entry = next(p for p in obj["status"]["points"] if p["archiveId"] == archive["b0"])
        found = entry.get("copies") or []
        return found if [c.get("state") for c in found] == ["Completed"] else None

    (point_copy,) = eventually(point_copies, timeout=30, what="b0's copy in its point")
    assert point_copy["archiveId"] == copied["b0"]["offsite"]["archiveId"]
    assert point_copy["repository"] == "offsite" and "message" not in point_copy
    objects.create(
        kube_api,
        namespace,
        "vmguardrestores",
        "VMGuardRestore",
        "by-point",
        {
            "source": {"protectedVM": held["metadata"]["name"], "archiveId": archive["b0"]},
            "target": {"newVM": {"name": "cp-b0", **new_vm}},
        },
    )
    for restore, point in (("after-loss", "b2"), ("named", "b1"), ("by-point", "b0")):
        done = objects.wait_phase(
            kube_api, namespace, "vmguardrestores", restore, {"Completed", "Failed"}, 180
        )
        status = done["status"]
        assert status["phase"] == "Completed", status
        assert status["repository"] == "offsite"
        assert status["archiveId"] == copied[point]["offsite"]["archiveId"]
        moref = status["result"]["vm"]["moref"]
        try:
            restored = {
                str(d["sourceKey"]): sha256_file(vsim.disk(moref, d["key"]).path)
                for d in status["result"]["disks"]
            }
        finally:
            destroy_vm(vc, moref)
        assert restored == expected[point], restore
    for restore in ("after-loss", "by-point"):
        source = objects.condition(
            objects.get(kube_api, namespace, "vmguardrestores", restore), "SourceReady"
        )
        assert "from copy target offsite (repository repo: " in source["message"], restore
