"""The VMGuardRepository controller in the lab: status from a real MinIO bucket (stats as
`vmguard repo stats` computes them, conditions with reasons for what is wrong, no secret
anywhere) and a scheduled deep verify that finds a bit-flipped chunk.

The repositories are written with the store API directly (tests/store/helpers.py), so no
VM is backed up here; the operator runs only its repository controller.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from kubernetes import client
from tests.controller import objects
from tests.controller.scrape import scrape, value
from tests.store.helpers import FAST_KDF_N, backup, disk_image

from vmguard.api import parse_time
from vmguard.store import MasterKey, ObjectLockPolicy, Repository, ScryptParams, names
from vmguard.store.backend import S3Backend
from vmguard_lab.procs import eventually

pytestmark = [pytest.mark.lab, pytest.mark.operator_controllers("repositories")]
CHUNK = 1 << 20  # the smallest chunkSize a VMGuardRepository may declare
KEY = "the repository key of this test, long enough"
WRONG_KEY = "a different key that opens nothing at all"
FAST = {"VMGUARD_REPOSITORY_INTERVAL": "2"}


def _backend(bucket: dict[str, Any], prefix: str = "") -> S3Backend:
    return S3Backend(
        bucket["endpoint"],
        bucket["bucket"],
        access_key=bucket["access_key"],
        secret_key=bucket["secret_key"],
        prefix=prefix,
        secure=False,
    )


def _status(kube_api: Any, ns: str, name: str) -> dict[str, Any]:
    return dict(objects.get(kube_api, ns, "vmguardrepositories", name).get("status") or {})


def _when(kube_api: Any, ns: str, name: str, ctype: str, reason: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        obj = objects.get(kube_api, ns, "vmguardrepositories", name)
        return obj if objects.condition(obj, ctype).get("reason") == reason else None

    result: dict[str, Any] = eventually(reached, timeout=60, what=f"{name}: {ctype} {reason}")
    return result


def _events(kube_api: Any, ns: str) -> list[str]:
    items = client.CoreV1Api(kube_api).list_namespaced_event(ns).items
    return [f"{e.reason}: {e.message}" for e in items]


def test_status_matches_repo_stats_and_names_what_is_wrong(
    kube_api: Any, namespace: str, s3_bucket: dict[str, Any], start_operator: Any
) -> None:
    repo = Repository.init(
        _backend(s3_bucket),
        master_key=MasterKey.from_text(KEY),
        chunk_size=CHUNK,
        kdf=ScryptParams(n=FAST_KDF_N),
    )
    shared = disk_image(1, 6, CHUNK)
    backup(repo, "vm-a", {"d": shared})
    backup(repo, "vm-b", {"d": shared, "e": disk_image(2, 3, CHUNK)})  # dedups against vm-a
    objects.create_repository(kube_api, namespace, "good", s3_bucket, key=KEY, chunkSize=CHUNK)
    objects.create_repository(
        kube_api, namespace, "wrong-key", s3_bucket, key=WRONG_KEY, chunkSize=CHUNK
    )
    bad_secret = "not-the-secret-key-of-minio"
    objects.create_repository(
        kube_api, namespace, "bad-creds", {**s3_bucket, "secret_key": bad_secret}, key=KEY
    )
    objects.create_repository(
        kube_api, namespace, "no-bucket", {**s3_bucket, "bucket": f"{s3_bucket['bucket']}-gone"}
    )
    objects.create_repository(kube_api, namespace, "empty", s3_bucket, prefix="nothing-yet")
    op = start_operator(extra_env=FAST)

    good = _when(kube_api, namespace, "good", "Ready", "Ready")["status"]
    cli = subprocess.run(
        [sys.executable, "-m", "vmguard.cli", "repo", "stats", "--json", "--insecure-http"],
        env=dict(
            os.environ,
            VMGUARD_REPO=f"s3://{s3_bucket['endpoint']}/{s3_bucket['bucket']}",
            VMGUARD_S3_ACCESS_KEY=s3_bucket["access_key"],
            VMGUARD_S3_SECRET_KEY=s3_bucket["secret_key"],
            VMGUARD_KEY=KEY,
        ),
        capture_output=True,
        text=True,
        check=True,
    )
    stats = json.loads(cli.stdout)
    assert stats["archives"] == 2
    assert good["reachable"] is True and good["encrypted"] is True
    assert good["repositoryId"] == repo.config.id and good["formatVersion"] == 1
    assert (good["archives"], good["chunks"]) == (stats["archives"], stats["chunks"])
    assert (good["storedBytes"], good["logicalBytes"]) == (
        stats["stored_bytes"],
        stats["logical_bytes"],
    )
    assert good["dedupRatio"] == pytest.approx(stats["dedup_ratio"], rel=1e-3)
    assert stats["dedup_ratio"] > 1.0

    wrong = _when(kube_api, namespace, "wrong-key", "Ready", "WrongKey")
    assert objects.condition(wrong, "Reachable")["status"] == "True"
    creds = _when(kube_api, namespace, "bad-creds", "Ready", "CredentialsRefused")
    assert objects.condition(creds, "Reachable")["status"] == "False"
    assert creds["status"]["reachable"] is False
    gone = _when(kube_api, namespace, "no-bucket", "Reachable", "BucketNotFound")
    assert objects.condition(gone, "Ready")["reason"] == "BucketNotFound"
    # An empty prefix: the controller creates the repository the spec describes.
    empty = _when(kube_api, namespace, "empty", "Ready", "Ready")["status"]
    created = Repository.open(_backend(s3_bucket, "nothing-yet"))
    assert empty["repositoryId"] == created.config.id and empty["archives"] == 0
    assert created.config.chunk_size == 4 << 20 and created.config.object_lock is None

    labels = {"namespace": namespace}
    samples = eventually(
        lambda: (
            (s := scrape(op.metrics_port))
            and value(s, "vmguard_repository_reachable", repository="bad-creds", **labels) == 0
            and s
        ),
        timeout=30,
        what="repository metrics",
    )
    assert value(samples, "vmguard_repository_reachable", repository="good", **labels) == 1
    stored = value(samples, "vmguard_repository_stored_bytes", repository="good", **labels)
    assert stored == stats["stored_bytes"]

    everything = json.dumps(
        [objects.items(kube_api, namespace, "vmguardrepositories"), _events(kube_api, namespace)]
    )
    for secret in (KEY, WRONG_KEY, bad_secret, s3_bucket["secret_key"]):
        assert secret not in everything
        assert secret not in op.text()


def test_scheduled_deep_verify_finds_a_flipped_chunk(
    kube_api: Any,
    namespace: str,
    s3_bucket: dict[str, Any],
    minio_client: Any,
    start_operator: Any,
) -> None:
    repo = Repository.init(_backend(s3_bucket), chunk_size=CHUNK)
    manifest = backup(repo, "vm-a", {"d": disk_image(3, 6, CHUNK)})
    victim = next(iter(repo.load_index(manifest, "d").referenced()))
    key = names.chunk_name(victim)
    data = bytearray(minio_client.get_object(s3_bucket["bucket"], key).read())
    data[len(data) // 2] ^= 0xFF
    minio_client.put_object(s3_bucket["bucket"], key, io.BytesIO(bytes(data)), len(data))
    objects.create_repository(
        kube_api,
        namespace,
        "repo",
        s3_bucket,
        chunkSize=CHUNK,
        verify={"schedule": "* * * * *", "depth": "full"},
    )
    # Twelve times faster (docs/lab.md, "Lab time"): the verify's cron minute lasts 5 s.
    port = start_operator(extra_env=FAST, speedup=12).metrics_port

    def verified() -> dict[str, Any] | None:
        status = _status(kube_api, namespace, "repo")
        return status if status.get("lastVerify") else None

    status = eventually(verified, timeout=150, what="a scheduled verify")
    last = status["lastVerify"]
    assert (last["depth"], last["errors"]) == ("full", 1)
    assert last["chunksChecked"] == len(repo.load_index(manifest, "d").referenced())
    cond = objects.condition({"status": status}, "Verified")
    assert (cond["status"], cond["reason"]) == ("False", "DamageFound")
    assert "1 error" in cond["message"]
    damage = eventually(
        lambda: [e for e in _events(kube_api, namespace) if e.startswith("DamageFound")],
        timeout=30,
        what="the DamageFound event",
    )
    assert victim.hex() in damage[0] and manifest.archive_id in damage[0]
    assert objects.condition({"status": status}, "Ready")["status"] == "True"
    # /metrics says the same (VmguardRepositoryDamaged fires on it).
    labels = {"namespace": namespace, "repository": "repo"}

    def exported() -> Any:
        samples = scrape(port)
        return samples if value(samples, "vmguard_repository_verify_errors", **labels) else None

    samples = eventually(exported, timeout=30, what="the verify's errors in /metrics")
    assert value(samples, "vmguard_repository_verify_errors", **labels) == 1
    verified_at = parse_time(last["time"])
    assert verified_at is not None
    when = value(samples, "vmguard_repository_last_verify_timestamp_seconds", **labels)
    assert when is not None and when >= verified_at.timestamp()


def test_scheduled_verify_extends_an_object_lock_lifted_behind_our_back(
    kube_api: Any,
    namespace: str,
    s3_lock_bucket: dict[str, Any],
    start_operator: Any,
) -> None:
    """Issue 11 hole 5: someone with s3:BypassGovernanceRetention shortens a chunk's
    lock; the operator's scheduled verify runs lock-check, extends it back to the
    archive's lock horizon and says so in a LockRepaired event."""
    import boto3

    repo = Repository.init(
        _backend(s3_lock_bucket),
        chunk_size=CHUNK,
        object_lock=ObjectLockPolicy("GOVERNANCE", 2),
    )
    manifest = backup(repo, "vm-a", {"d": disk_image(4, 4, CHUNK)})
    victim = names.chunk_name(sorted(repo.load_index(manifest, "d").referenced())[0])
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://{s3_lock_bucket['endpoint']}",
        aws_access_key_id=s3_lock_bucket["access_key"],
        aws_secret_access_key=s3_lock_bucket["secret_key"],
        region_name="us-east-1",
    )
    soon = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)
    s3.put_object_retention(
        Bucket=s3_lock_bucket["bucket"],
        Key=victim,
        Retention={"Mode": "GOVERNANCE", "RetainUntilDate": soon},
        BypassGovernanceRetention=True,
    )
    objects.create_repository(
        kube_api,
        namespace,
        "locked",
        s3_lock_bucket,
        chunkSize=CHUNK,  # as the repository was made: a mismatch would be Ready=False
        objectLockDays=2,
        verify={"schedule": "* * * * *"},
    )
    # Twelve times faster (docs/lab.md, "Lab time"): the verify's cron minute lasts 5 s;
    # the lock horizon it extends to is the manifest's, real time.
    start_operator(extra_env=FAST, speedup=12)
    repaired = eventually(
        lambda: [e for e in _events(kube_api, namespace) if e.startswith("LockRepaired")],
        timeout=150,
        what="the LockRepaired event of a scheduled verify",
    )
    assert "extended 1 Object Lock retention" in repaired[0]
    until = s3.get_object_retention(Bucket=s3_lock_bucket["bucket"], Key=victim)["Retention"]
    assert until["RetainUntilDate"] == manifest.lock_horizon
    verified = _when(kube_api, namespace, "locked", "Verified", "NoDamage")
    assert objects.condition(verified, "Verified")["status"] == "True"
