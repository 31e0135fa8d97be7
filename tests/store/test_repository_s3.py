"""The repository engine on the lab's MinIO: round trip, verify, GC and Object Lock.

The GC tests skew the client's clock (an injected :class:`SkewedClock`) an hour either
way: GC must judge ages by MinIO's clock (format §7.3), and with both clocks on one
host a GC reading its own clock would pass unnoticed.
"""

from __future__ import annotations

from typing import Any

import pytest

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
from vmguard.store.backend import Backend, RetryingBackend, S3Backend
from vmguard.store.gc import collect_garbage
from vmguard.store.prune import RetentionPolicy, prune, retire_archive
from vmguard.store.verify import verify
from vmguard_lab.procs import eventually

pytestmark = pytest.mark.lab
KEY = MasterKey(b"lab master key, sixteen+ bytes")


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
