"""What a backup trusts and what it locks (issue 11, holes 4 and 5; format §7.1, §8, §9).

Hole 4: deduplication must not trust what it cannot see. A chunk an incremental takes
from its parent is checked once after it entered the chain (by the next backup), a
chunk found corrupt while the backup ran stops its commit, and a parent chunk deleted
behind our back is read again from the source, never carried.

Hole 5: with Object Lock, every chunk an archive references is locked at least until
that archive's ``retain_until`` when it commits, the manifest records the guaranteed
horizon, and a chain of incrementals extends each chunk at most about once per lock
period, not once per backup.

Memory backend and a manual clock: time moves by days without sleeping. The same
rules against the lab's MinIO are in ``test_repository_s3.py``.
"""

from __future__ import annotations

import dataclasses
import random
from datetime import timedelta

import pytest

from tests.store.conftest import CHUNK
from tests.store.helpers import FAST_KDF_N, backup, disk_image, restore, write_disk
from vmguard.errors import RepositoryError
from vmguard.store import (
    ArchiveManifest,
    GcPolicy,
    MasterKey,
    ObjectLockPolicy,
    Repository,
    ScryptParams,
    VmIdentity,
    names,
)
from vmguard.store.backend import CountingBackend, MemoryBackend
from vmguard.store.clock import ManualClock

pytestmark = pytest.mark.unit
DAY = 86400.0


def _repo(*, lock_days: int | None = None) -> tuple[Repository, ManualClock, CountingBackend]:
    clock = ManualClock()
    backend = CountingBackend(MemoryBackend(object_lock=lock_days is not None, clock=clock.now))
    repo = Repository.init(
        backend,
        master_key=MasterKey(b"sixteen bytes or more"),
        chunk_size=CHUNK,
        kdf=ScryptParams(n=FAST_KDF_N),
        object_lock=ObjectLockPolicy("GOVERNANCE", lock_days) if lock_days else None,
        gc=GcPolicy(lease_ttl_seconds=600, grace_seconds=3600),
        clock=clock,
    )
    return repo, clock, backend


def _referenced(repo: Repository, manifest: ArchiveManifest) -> set[bytes]:
    found: set[bytes] = set()
    for disk in manifest.disks:
        found |= repo.load_index(manifest, disk).referenced()
    return found


def _short_locks(repo: Repository, manifest: ArchiveManifest) -> list[str]:
    """Chunks of ``manifest`` whose retention ends before the archive's retain_until."""
    assert manifest.retain_until is not None
    short = []
    for chunk_id in sorted(_referenced(repo, manifest)):
        until = repo.backend.stat(names.chunk_name(chunk_id)).retain_until
        if until is None or until < manifest.retain_until:
            short.append(f"{chunk_id.hex()[:12]} until {until}")
    return short


# -- hole 4: deduplication trusts what it cannot see ---------------------------------------


def test_an_incremental_reads_again_a_parent_chunk_deleted_behind_its_back() -> None:
    repo, _, _ = _repo()
    image = disk_image(61, 6, CHUNK)
    full = backup(repo, "vm", {"d": image})
    victim = sorted(_referenced(repo, full))[0]
    repo.backend.delete(names.chunk_name(victim))  # not GC: someone, behind our back
    incr = backup(repo, "vm", {"d": image}, parent=full.archive_id, changed={"d": set()})
    assert incr.stats.chunks_new == 1, "the lost chunk was read again and stored"
    assert restore(repo, incr, "d") == image
    assert restore(repo, full, "d") == image, "which repairs the parent too"


def test_a_full_scan_does_not_deduplicate_against_a_lost_parent_chunk() -> None:
    repo, _, _ = _repo()
    image = disk_image(62, 6, CHUNK)
    full = backup(repo, "vm", {"d": image})
    victim = sorted(_referenced(repo, full))[-1]
    repo.backend.delete(names.chunk_name(victim))
    # changed=None: every chunk is read, and dedup decides what to upload.
    scan = backup(repo, "vm", {"d": image}, parent=full.archive_id)
    assert restore(repo, scan, "d") == image


def test_a_chunk_marked_corrupt_while_the_backup_runs_stops_its_commit() -> None:
    repo, _, _ = _repo()
    image = disk_image(63, 6, CHUNK)
    full = backup(repo, "vm", {"d": image})
    victim = sorted(_referenced(repo, full))[0]
    vm = VmIdentity(id="vm")
    with repo.begin_backup(vm, parent=full.archive_id, auto_refresh=False) as writer:
        write_disk(writer, "d", image, changed=set())
        # A verify running beside the backup finds the carried chunk damaged.
        repo.backend.put(names.corrupt_name(victim), b'{"reason": "corrupt: test"}')
        with pytest.raises(RepositoryError, match="marked corrupt"):
            writer.commit(mode="incremental")
    assert [r.archive_id for r in repo.list_archives()] == [full.archive_id]
    again = backup(repo, "vm", {"d": image}, parent=full.archive_id, changed={"d": set()})
    assert again.stats.chunks_new == 1 and restore(repo, again, "d") == image


def test_chunks_checked_once_are_trusted_so_a_chain_checks_only_what_changed() -> None:
    repo, _, backend = _repo()
    image = bytearray(disk_image(64, 16, CHUNK))
    full = parent = backup(repo, "vm", {"d": bytes(image)})
    checks = []
    for step in range(4):
        image[step * CHUNK : step * CHUNK + 10] = b"x" * 10  # one chunk changes
        backend.reset()
        parent = backup(
            repo, "vm", {"d": bytes(image)}, parent=parent.archive_id, changed={"d": {step}}
        )
        checks.append(backend.reset().stats)
    new_in_full = len(_referenced(repo, full))
    # The first incremental checks every chunk the full uploaded; each later one checks
    # the one chunk its parent added (plus the one it uploads and looks at itself).
    assert checks[0] >= new_in_full
    assert all(c <= 3 for c in checks[1:]), checks
    assert restore(repo, parent, "d") == bytes(image)


def test_a_large_parent_is_checked_by_listing_pages_and_a_lost_chunk_read_again() -> None:
    repo, _, backend = _repo()
    image = random.Random(68).randbytes(90 * CHUNK)  # 90 distinct chunks, no hole
    full = backup(repo, "vm", {"d": image})
    assert len(_referenced(repo, full)) == 90  # over HEAD_BELOW: listed, not HEADed
    victim = sorted(_referenced(repo, full))[40]
    repo.backend.delete(names.chunk_name(victim))
    backend.reset()
    incr = backup(repo, "vm", {"d": image}, parent=full.archive_id, changed={"d": set()})
    counts = backend.reset()
    assert incr.stats.chunks_new == 1 and restore(repo, incr, "d") == image
    # 90 chunks in one page each way: a few listings and the repair's own HEADs.
    assert counts.lists <= 3 and counts.stats <= 3, counts


# -- hole 5: Object Lock is overstated -----------------------------------------------------


def test_an_incremental_29_days_later_locks_every_chunk_until_its_retain_until() -> None:
    repo, clock, _ = _repo(lock_days=30)
    image = bytearray(disk_image(65, 8, CHUNK))
    full = backup(repo, "vm", {"d": bytes(image)})
    clock.advance(29 * DAY)
    image[:10] = b"y" * 10
    incr = backup(repo, "vm", {"d": bytes(image)}, parent=full.archive_id, changed={"d": {0}})
    assert incr.retain_until is not None and full.retain_until is not None
    assert incr.retain_until == full.retain_until + timedelta(days=29)
    assert _short_locks(repo, full) == []
    assert _short_locks(repo, incr) == []
    for manifest in (full, incr):
        horizon = manifest.lock_horizon
        assert horizon is not None and horizon >= manifest.retain_until
        assert all(
            repo.backend.stat(names.chunk_name(c)).retain_until >= horizon  # type: ignore[operator]
            for c in _referenced(repo, manifest)
        )


def test_daily_incrementals_extend_each_chunk_about_once_per_lock_period() -> None:
    repo, clock, backend = _repo(lock_days=10)
    image = bytearray(disk_image(66, 12, CHUNK))
    parent = backup(repo, "vm", {"d": bytes(image)})
    chunks = len(_referenced(repo, parent))
    backend.reset()
    for day in range(1, 31):
        clock.advance(DAY)
        number = day % 12
        image[number * CHUNK : number * CHUNK + 8] = day.to_bytes(8, "big")
        parent = backup(
            repo, "vm", {"d": bytes(image)}, parent=parent.archive_id, changed={"d": {number}}
        )
        assert _short_locks(repo, parent) == [], f"day {day}"
    requests = backend.reset().retentions
    # 30 days of a 10-day lock: each chunk is extended at most once per period (plus
    # the changed chunks' own uploads, which need no retention request at all).
    assert requests <= chunks * (30 // 10 + 1), requests
    assert parent.stats.retention_requests >= 0


def test_an_archive_without_a_lock_horizon_is_lock_checked_by_the_next_backup() -> None:
    repo, clock, backend = _repo(lock_days=30)
    image = disk_image(67, 6, CHUNK)
    full = backup(repo, "vm", {"d": image})
    # An archive written by an earlier release: same manifest without the horizon.
    old = dataclasses.replace(full, lock_horizon=None)
    name = names.manifest_name(full.archive_id)
    memory = backend.inner
    assert isinstance(memory, MemoryBackend)
    memory.bypass_retention(name, None)  # what s3:BypassGovernanceRetention allows
    repo.backend.put(name, repo.encode_manifest(old))
    assert repo.load_archive(full.archive_id).lock_horizon is None
    assert restore(repo, repo.load_archive(full.archive_id), "d") == image
    clock.advance(DAY)
    incr = backup(repo, "vm", {"d": image}, parent=full.archive_id, changed={"d": set()})
    assert incr.stats.retention_requests == len(_referenced(repo, full))
    assert _short_locks(repo, incr) == []
