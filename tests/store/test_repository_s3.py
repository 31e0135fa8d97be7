"""The repository engine on the lab's MinIO: round trip, verify, GC and Object Lock.

The GC tests skew the client's clock (an injected :class:`SkewedClock`) an hour either
way: GC must judge ages by MinIO's clock (format §7.3), and with both clocks on one
host a GC reading its own clock would pass unnoticed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.engine.cli import Cli
from tests.store.conftest import CHUNK
from tests.store.helpers import (
    FAST_KDF_N,
    SkewedClock,
    backup,
    disk_image,
    restore,
    write_disk,
)
from vmguard.store import (
    MasterKey,
    ObjectLockPolicy,
    Repository,
    ScryptParams,
    VmIdentity,
    names,
)
from vmguard.store.backend import Backend, CountingBackend, RetryingBackend, S3Backend
from vmguard.store.clock import ManualClock
from vmguard.store.gc import collect_garbage
from vmguard.store.prune import RetentionPolicy, prune, retire_archive
from vmguard.store.verify import verify
from vmguard_lab.procs import eventually

pytestmark = pytest.mark.lab
KEY_BYTES = b"lab master key, sixteen+ bytes"
KEY = MasterKey(KEY_BYTES)


def _backend(info: dict[str, Any]) -> Backend:
    s3 = S3Backend(
        info["endpoint"],
        info["bucket"],
        access_key=info["access_key"],
        secret_key=info["secret_key"],
        secure=info["secure"],
        prefix="vmguard/prod",
    )
    return RetryingBackend(s3)


def _init(backend: Backend, **kwargs: Any) -> Repository:
    return Repository.init(
        backend, master_key=KEY, chunk_size=CHUNK, kdf=ScryptParams(n=FAST_KDF_N), **kwargs
    )


def test_round_trip_dedup_and_deep_verify_on_minio(s3_bucket: dict[str, Any]) -> None:
    backend = _backend(s3_bucket)
    repo = _init(backend)
    image = disk_image(31, 10, CHUNK, tail=999)
    first = backup(repo, VmIdentity(id="vc/vm-1", name="Ünïcødé / web 01"), {"2000": image})
    second = backup(repo, "vc/vm-2", {"2000": image})
    assert second.stats.chunks_new == 0
    reopened = Repository.open(_backend(s3_bucket), KEY)
    for manifest in (first, second):
        assert restore(reopened, manifest, "2000") == image
    assert verify(reopened, deep=True).ok


def test_damage_on_minio_is_found_and_repaired(s3_bucket: dict[str, Any]) -> None:
    repo = _init(_backend(s3_bucket))
    image = disk_image(32, 6, CHUNK)
    made = backup(repo, "vm", {"d": image})
    victim = sorted(repo.load_index(made, "d").referenced())[0]
    blob = bytearray(repo.backend.get(names.chunk_name(victim)))
    blob[40] ^= 0x80
    repo.backend.put(names.chunk_name(victim), bytes(blob))
    report = verify(repo, deep=True)
    assert [(p.chunk_id, p.archives) for p in report.chunk_problems] == [
        (victim.hex(), (made.archive_id,))
    ]
    backup(repo, "vm-again", {"d": image})
    assert verify(repo, deep=True).ok and restore(repo, made, "d") == image


def _stored_chunks(repo: Repository) -> set[bytes]:
    found = (names.chunk_id_from_name(i.name) for i in repo.backend.list(names.CHUNKS))
    return {chunk_id for chunk_id in found if chunk_id is not None}


def _until_the_server_clock_passes(repo: Repository) -> None:
    """Wait until MinIO's clock is past every chunk's timestamp (S3 times have one-second
    resolution): from then on, with no grace, they are old enough to collect."""
    newest = max(info.modified for info in repo.backend.list(names.CHUNKS))
    eventually(lambda: repo.server_now() > newest, 30, "MinIO's clock to pass the chunks")


def test_gc_on_minio_collects_old_garbage_by_the_server_clock_when_the_client_runs_slow(
    s3_bucket: dict[str, Any],
) -> None:
    # The client's clock is an hour behind MinIO's: judged by it, every chunk was written
    # an hour in the future and none is old enough to collect.
    slow = SkewedClock(-3600)
    repo = _init(_backend(s3_bucket), clock=slow)
    old = backup(repo, "vm", {"d": disk_image(33, 6, CHUNK)})
    new_image = disk_image(34, 6, CHUNK)
    new = backup(repo, "vm", {"d": new_image})
    retire_archive(repo, old.archive_id)
    kept = repo.load_index(new, "d").referenced()
    assert _stored_chunks(repo) - kept, "the retired archive left no garbage to collect"
    _until_the_server_clock_passes(repo)
    report = collect_garbage(repo, chunk_grace_seconds=0)
    assert report.deleted > 0 and report.waiting_for == []
    assert _stored_chunks(repo) == kept
    assert restore(repo, new, "d") == new_image and verify(repo, deep=True).ok


def test_gc_on_minio_keeps_fresh_garbage_by_the_server_clock_when_the_client_runs_fast(
    s3_bucket: dict[str, Any],
) -> None:
    # The client's clock is an hour ahead of MinIO's: judged by it, chunks written a
    # moment ago are an hour old, far past a ten-minute grace.
    fast = SkewedClock(+3600)
    backend = _backend(s3_bucket)
    repo = _init(backend, clock=fast)
    image = disk_image(35, 6, CHUNK)
    made = backup(repo, "vm", {"d": image})
    with repo.begin_backup(VmIdentity(id="vm"), auto_refresh=False) as writer:
        write_disk(writer, "d", disk_image(36, 6, CHUNK))  # aborted: garbage, but fresh
    kept = repo.load_index(made, "d").referenced()
    garbage = _stored_chunks(repo) - kept
    assert garbage, "the aborted backup left no chunks"
    report = collect_garbage(repo, chunk_grace_seconds=600)
    assert report.candidates == 0 and report.deleted == 0
    assert _stored_chunks(repo) == kept | garbage
    # It was kept for its age alone: the same chunks go once MinIO says they are old.
    _until_the_server_clock_passes(repo)
    report = collect_garbage(Repository.open(backend, KEY), chunk_grace_seconds=0)
    assert report.deleted == len(garbage) and _stored_chunks(repo) == kept
    assert restore(repo, made, "d") == image


def test_object_lock_on_minio_blocks_nothing_and_loses_nothing(
    s3_lock_bucket: dict[str, Any],
) -> None:
    backend = _backend(s3_lock_bucket)
    repo = _init(
        backend,
        object_lock=ObjectLockPolicy("GOVERNANCE", 1),
    )
    images = [disk_image(40 + i, 3, CHUNK) for i in range(3)]
    made = [backup(repo, "vm", {"d": image}) for image in images]
    info = backend.stat(made[0].disks[0].index)
    assert info.retain_until == made[0].retain_until
    report = prune(repo, RetentionPolicy(keep_last=1))
    assert report.pruned == [] and len(report.kept) == 1 and len(report.locked) == 2
    assert {a for a, _ in report.locked} | set(report.kept) == {m.archive_id for m in made}
    with repo.begin_backup(VmIdentity(id="vm"), auto_refresh=False) as writer:
        write_disk(writer, "d", disk_image(50, 3, CHUNK))  # aborted: locked garbage
    _until_the_server_clock_passes(repo)
    gc_report = collect_garbage(repo, chunk_grace_seconds=0)
    assert gc_report.locked > 0 and gc_report.deleted == 0
    assert sum("Object Lock" in m for m in gc_report.messages) == 1
    for manifest, image in zip(made, images, strict=True):
        assert restore(repo, manifest, "d") == image


def _boto3(info: dict[str, Any]) -> Any:
    """An S3 client that is not the one the store uses, to read retentions back."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=f"http://{info['endpoint']}",
        aws_access_key_id=info["access_key"],
        aws_secret_access_key=info["secret_key"],
        region_name="us-east-1",
    )


def _retention(s3: Any, info: dict[str, Any], name: str) -> tuple[str, datetime]:
    answer = s3.get_object_retention(Bucket=info["bucket"], Key=f"vmguard/prod/{name}")
    return answer["Retention"]["Mode"], answer["Retention"]["RetainUntilDate"]


def test_every_chunk_of_every_archive_is_locked_until_its_retain_until_on_minio(
    s3_lock_bucket: dict[str, Any],
) -> None:
    """Issue 11 acceptance 2: a full, an incremental 29 days later (and one 31 days
    later, past the full's horizon) on a 30-day-lock repository; every chunk, index and
    manifest read back through the S3 API is retained at least until its archive's
    retain_until. The store's clock is a manual one: MinIO's retentions are absolute
    dates, so days pass for the writer without waiting."""
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    backend = CountingBackend(_backend(s3_lock_bucket))
    repo = _init(backend, object_lock=ObjectLockPolicy("GOVERNANCE", 30), clock=clock)
    image = bytearray(disk_image(75, 6, CHUNK))
    made = [backup(repo, "vm", {"d": bytes(image)})]
    counts = [backend.reset()]
    for days, number in ((29, 1), (2, 2)):
        clock.advance(days * 86400)
        image[number * CHUNK : number * CHUNK + 4] = b"new!"
        parent = made[-1].archive_id
        made.append(backup(repo, "vm", {"d": bytes(image)}, parent=parent, changed={"d": {number}}))
        counts.append(backend.reset())
    s3 = _boto3(s3_lock_bucket)
    for manifest in made:
        assert manifest.retain_until is not None
        objects = [names.manifest_name(manifest.archive_id), manifest.disks[0].index]
        for name in objects:
            assert _retention(s3, s3_lock_bucket, name) == ("GOVERNANCE", manifest.retain_until)
        for chunk_id in repo.load_index(manifest, "d").referenced():
            mode, until = _retention(s3, s3_lock_bucket, names.chunk_name(chunk_id))
            assert mode == "GOVERNANCE", chunk_id.hex()
            assert until >= manifest.retain_until, f"{manifest.mode}: {chunk_id.hex()} {until}"
    for manifest in made:  # and each archive's recorded horizon holds and covers it
        assert manifest.lock_horizon is not None and manifest.retain_until is not None
        assert manifest.lock_horizon >= manifest.retain_until
        for chunk_id in repo.load_index(manifest, "d").referenced():
            until = _retention(s3, s3_lock_bucket, names.chunk_name(chunk_id))[1]
            assert until >= manifest.lock_horizon
    carried = len(repo.load_index(made[1], "d").referenced())
    # Day 29: the full's horizon (day 60) covers retain_until (day 59): no request.
    # Day 31: it does not (day 61): every carried chunk is extended once, and so is the
    # config's retained copy (format §2.1; written at init until day 60), which the
    # manifest's count of chunk extensions leaves out.
    requests = [c.retentions for c in counts]
    assert requests == [0, 0, carried + 1]
    assert [m.stats.retention_requests for m in made] == [0, 0, carried]
    assert restore(repo, made[-1], "d") == bytes(image)


def test_lock_check_repairs_a_governance_lock_lifted_with_bypass_on_minio(
    s3_lock_bucket: dict[str, Any], tmp_path: Path
) -> None:
    """Someone with s3:BypassGovernanceRetention shortens a chunk's lock; `vmguard repo
    lock-check` names it (exit 1 with --dry-run), then extends it back."""
    repo = _init(_backend(s3_lock_bucket), object_lock=ObjectLockPolicy("GOVERNANCE", 2))
    made = backup(repo, "vm", {"d": disk_image(76, 4, CHUNK)})
    assert made.lock_horizon is not None
    victim = names.chunk_name(sorted(repo.load_index(made, "d").referenced())[0])
    s3 = _boto3(s3_lock_bucket)
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    s3.put_object_retention(
        Bucket=s3_lock_bucket["bucket"],
        Key=f"vmguard/prod/{victim}",
        Retention={"Mode": "GOVERNANCE", "RetainUntilDate": soon},
        BypassGovernanceRetention=True,
    )
    assert _retention(s3, s3_lock_bucket, victim)[1] == soon
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY_BYTES)
    cli = Cli.for_bucket(s3_lock_bucket, "vmguard/prod", key_file)
    dry = cli.run("repo", "lock-check", "--dry-run", "--json", check=False)
    assert dry.returncode == 1, dry.stderr
    [short] = json.loads(dry.stdout)["shortfalls"]
    assert (short["name"], short["repaired"]) == (victim, False)
    assert short["archives"] == [made.archive_id]
    fixed = cli.run("repo", "lock-check", "--json")
    doc = json.loads(fixed.stdout)
    assert doc["ok"] and doc["retention_requests"] == 1
    assert _retention(s3, s3_lock_bucket, victim) == ("GOVERNANCE", made.lock_horizon)
    assert cli.run("repo", "lock-check").stdout.strip().endswith("OK")
