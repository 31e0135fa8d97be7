"""The VMGuardRepository controller creates its repository from the spec and holds it to
the spec (issue 11, holes 0 and 6), against the lab's real MinIO and apiserver.

- A VMGuardRepository with ``objectLockDays: 14`` and ``chunkSize: 1048576`` gets exactly
  that lock and chunk size, read back through the S3 API and the config; deleting the
  ``config`` object (every version) leaves its locked archive restorable.
- A backup never creates a repository.
- A config that differs from its spec is ``Ready=False`` naming the field, also for an
  unencrypted repository whose config was edited in the bucket.
- A config asking for KDF parameters above the bound is ``Ready=False`` naming the
  parameter, beside a valid VMGuardRepository that becomes Ready. Resource bound check:
  the operator's peak memory (VmHWM of its process, read from /proc; the lab runs it
  without a memory limit) stays below the 512 MiB the chart gives it, and one attempt
  to open the hostile repository costs < 2 s of the operator's CPU (its checks counted
  by ``vmguard_repository_checks_total``).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from minio.error import S3Error
from tests.controller import objects, scrape
from tests.store.helpers import FAST_KDF_N, backup, disk_image, restore

from vmguard.controller.kube import access
from vmguard.errors import RepositoryNotFoundError, RepositorySpecMismatchError
from vmguard.store import MasterKey, ObjectLockPolicy, Repository, ScryptParams, names
from vmguard.store.backend import S3Backend
from vmguard_lab.procs import eventually

pytestmark = [pytest.mark.lab, pytest.mark.operator_controllers("repositories")]
MiB = 1 << 20
KEY = "the repository key of the creation test, long enough"
FAST = {"VMGUARD_REPOSITORY_INTERVAL": "2"}
FEATURES = {"authenticated-config", "lease-commit-v2", "lock-horizon"}
OPERATOR_MEMORY_LIMIT = 512 * MiB


def _backend(bucket: dict[str, Any], prefix: str = "") -> S3Backend:
    return S3Backend(
        bucket["endpoint"],
        bucket["bucket"],
        access_key=bucket["access_key"],
        secret_key=bucket["secret_key"],
        prefix=prefix,
        secure=False,
    )


def _when(kube_api: Any, ns: str, name: str, ctype: str, reason: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        obj = objects.get(kube_api, ns, "vmguardrepositories", name)
        return obj if objects.condition(obj, ctype).get("reason") == reason else None

    result: dict[str, Any] = eventually(reached, timeout=60, what=f"{name}: {ctype} {reason}")
    return result


def _spec(bucket: dict[str, Any], prefix: str = "", **extra: Any) -> dict[str, Any]:
    s3 = {"endpoint": bucket["endpoint"], "bucket": bucket["bucket"], "insecure": True}
    if prefix:
        s3["prefix"] = prefix
    return {"s3": s3, **extra}


def _creds(bucket: dict[str, Any]) -> dict[str, str]:
    return {
        "VMGUARD_S3_ACCESS_KEY": bucket["access_key"],
        "VMGUARD_S3_SECRET_KEY": bucket["secret_key"],
    }


def test_the_spec_makes_the_repository_and_a_lost_config_loses_no_locked_archive(
    kube_api: Any,
    namespace: str,
    s3_lock_bucket: dict[str, Any],
    minio_client: Any,
    start_operator: Any,
) -> None:
    bucket = s3_lock_bucket["bucket"]
    objects.create_repository(
        kube_api, namespace, "locked", s3_lock_bucket, key=KEY, objectLockDays=14, chunkSize=MiB
    )
    start_operator(extra_env=FAST)
    _when(kube_api, namespace, "locked", "Ready", "Ready")

    config = json.loads(minio_client.get_object(bucket, names.CONFIG).read())
    assert config["chunk_size"] == MiB
    assert config["object_lock"] == {"mode": "GOVERNANCE", "days": 14}
    assert set(config["features"]) == FEATURES and config["encryption"] is not None

    repo = Repository.open(_backend(s3_lock_bucket), MasterKey.from_text(KEY))
    image = disk_image(7, 3, MiB, tail=4096)
    manifest = backup(repo, "vm-a", {"d": image})
    assert manifest.retain_until is not None
    now = dt.datetime.now(dt.UTC)
    chunk = names.chunk_name(next(iter(repo.load_index(manifest, "d").referenced())))
    (copy,) = [
        o.object_name for o in minio_client.list_objects(bucket, prefix="configs/", recursive=True)
    ]
    for name in (manifest.disks[0].index, names.manifest_name(manifest.archive_id)):
        retention = minio_client.get_object_retention(bucket, name)
        assert retention.mode == "GOVERNANCE"
        assert retention.retain_until_date == manifest.retain_until
        assert dt.timedelta(days=13) < retention.retain_until_date - now <= dt.timedelta(days=14)
    # A chunk is locked one period past its archive's retain_until (format §9.1), and the
    # manifest's lock_horizon records it.
    retention = minio_client.get_object_retention(bucket, chunk)
    assert retention.mode == "GOVERNANCE"
    assert retention.retain_until_date == manifest.retain_until + dt.timedelta(days=14)
    assert manifest.lock_horizon is not None and manifest.lock_horizon >= manifest.retain_until
    copy_lock = minio_client.get_object_retention(bucket, copy)
    assert copy_lock.mode == "GOVERNANCE" and copy_lock.retain_until_date >= manifest.retain_until

    for version in minio_client.list_objects(bucket, prefix=names.CONFIG, include_version=True):
        if version.object_name == names.CONFIG:
            minio_client.remove_object(bucket, names.CONFIG, version_id=version.version_id)
    with pytest.raises(S3Error):
        minio_client.stat_object(bucket, names.CONFIG)
    for version in minio_client.list_objects(bucket, prefix=copy, include_version=True):
        with pytest.raises(S3Error, match=r"(?i)retention|WORM|locked"):
            minio_client.remove_object(bucket, copy, version_id=version.version_id)

    reopened = Repository.open(_backend(s3_lock_bucket), MasterKey.from_text(KEY))
    assert reopened.source == copy
    assert restore(reopened, reopened.load_archive(manifest.archive_id), "d") == image
    ready = _when(kube_api, namespace, "locked", "Ready", "Ready")  # still, from the copy
    eventually(
        lambda: (
            "retained copy"
            in objects.condition(
                objects.get(kube_api, namespace, "vmguardrepositories", "locked"), "Ready"
            )["message"]
        ),
        timeout=30,
        what="Ready saying it opened the retained copy",
    )
    assert ready["status"]["repositoryId"] == reopened.config.id


def test_a_backup_never_creates_a_repository(s3_bucket: dict[str, Any]) -> None:
    spec = _spec(s3_bucket, prefix="never", objectLockDays=14)
    with pytest.raises(RepositoryNotFoundError):
        access.open_repository_blocking(spec, _creds(s3_bucket), None)
    with pytest.raises(RepositoryNotFoundError):
        access.open_for_backup(spec, _creds(s3_bucket), None)
    assert list(_backend(s3_bucket, "never").list()) == []


def test_a_config_that_differs_from_its_spec_names_the_field(
    kube_api: Any,
    namespace: str,
    s3_lock_bucket: dict[str, Any],
    minio_client: Any,
    start_operator: Any,
) -> None:
    lock = ObjectLockPolicy("GOVERNANCE", 14)
    Repository.init(_backend(s3_lock_bucket, "plain"), chunk_size=MiB, object_lock=lock)
    Repository.init(_backend(s3_lock_bucket, "sized"), chunk_size=2 * MiB)
    spec = {"objectLockDays": 14, "chunkSize": MiB}
    objects.create_repository(kube_api, namespace, "plain", s3_lock_bucket, prefix="plain", **spec)
    objects.create_repository(kube_api, namespace, "sized", s3_lock_bucket, prefix="sized")
    start_operator(extra_env=FAST)
    _when(kube_api, namespace, "plain", "Ready", "Ready")
    sized = _when(kube_api, namespace, "sized", "Ready", "SpecMismatch")
    assert "chunkSize" in objects.condition(sized, "Ready")["message"]

    # An unencrypted config has no key check: editing its lock away in the bucket is
    # caught against the spec, by the controller and by a backup.
    key = "plain/config"
    doc = json.loads(minio_client.get_object(s3_lock_bucket["bucket"], key).read())
    doc["object_lock"] = None
    raw = json.dumps(doc).encode()
    minio_client.put_object(s3_lock_bucket["bucket"], key, io.BytesIO(raw), len(raw))
    plain = _when(kube_api, namespace, "plain", "Ready", "SpecMismatch")
    message = objects.condition(plain, "Ready")["message"]
    assert "objectLockDays" in message and "no Object Lock" in message
    full_spec = _spec(s3_lock_bucket, prefix="plain", **spec)
    with pytest.raises(RepositorySpecMismatchError, match="objectLockDays") as caught:
        access.open_for_backup(full_spec, _creds(s3_lock_bucket), None)
    assert caught.value.field == "objectLockDays"


def _proc(pid: int) -> tuple[int, float]:
    """(VmHWM in bytes, user + system CPU seconds) of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    hwm = next(int(line.split()[1]) * 1024 for line in status.splitlines() if "VmHWM" in line)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return hwm, (int(fields[11]) + int(fields[12])) / ticks


def test_kdf_parameters_above_the_bound_are_refused_within_bounded_memory_and_cpu(
    kube_api: Any,
    namespace: str,
    s3_bucket: dict[str, Any],
    minio_client: Any,
    start_operator: Any,
) -> None:
    key = MasterKey.from_text(KEY)
    for prefix in ("good", "hostile"):
        Repository.init(_backend(s3_bucket, prefix), master_key=key, kdf=ScryptParams(FAST_KDF_N))
    name = "hostile/config"
    doc = json.loads(minio_client.get_object(s3_bucket["bucket"], name).read())
    doc["encryption"]["wrapped_keys"][0]["kdf"]["n"] = 2**20  # 1 GiB of scrypt memory
    raw = json.dumps(doc).encode()
    minio_client.put_object(s3_bucket["bucket"], name, io.BytesIO(raw), len(raw))
    objects.create_repository(kube_api, namespace, "good", s3_bucket, key=KEY, prefix="good")
    objects.create_repository(kube_api, namespace, "hostile", s3_bucket, key=KEY, prefix="hostile")
    op = start_operator(extra_env=FAST)

    _when(kube_api, namespace, "good", "Ready", "Ready")

    def refused() -> dict[str, Any] | None:
        obj = objects.get(kube_api, namespace, "vmguardrepositories", "hostile")
        return obj if objects.condition(obj, "Ready").get("status") == "False" else None

    hostile = eventually(refused, timeout=60, what="hostile: Ready False")
    peak, cpu = _proc(op.pid)  # after at least one attempt on each repository
    assert peak < OPERATOR_MEMORY_LIMIT, f"operator VmHWM {peak // MiB} MiB, {cpu:.1f} s CPU"
    condition = objects.condition(hostile, "Ready")
    assert condition["reason"] == "KdfParameterOutOfBounds"
    assert "kdf.n=1048576" in condition["message"] and "1024 MiB" in condition["message"]

    # CPU per attempt, in the operator: its checks of the hostile repository counted by
    # its own metric, its CPU read from /proc over the same window (which also holds the
    # good repository's checks and kopf's own work: an upper bound).
    def checks() -> float:
        samples = scrape.scrape(op.metrics_port)
        found = scrape.value(
            samples,
            "vmguard_repository_checks_total",
            namespace=namespace,
            repository="hostile",
            reason="KdfParameterOutOfBounds",
        )
        return found or 0.0

    eventually(checks, timeout=30, what="a counted check of hostile")
    # CPU read before the first count and after the last: a check in between adds CPU
    # and no count, so the measure errs on the high side.
    _, cpu_before = _proc(op.pid)
    first = checks()
    last = eventually(
        lambda: (n := checks()) >= first + 3 and n, timeout=60, what="three more checks"
    )
    _, cpu_after = _proc(op.pid)
    per_attempt = (cpu_after - cpu_before) / (last - first)
    assert per_attempt < 2.0, f"{per_attempt:.2f} s of operator CPU per attempt"
