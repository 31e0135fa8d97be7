"""GC: collects what nothing references, and never what a backup still needs.

Time is a ManualClock shared by the MemoryBackend (object timestamps) and the
repository (lease deadlines), so hours of grace pass without sleeping.
"""

from __future__ import annotations

import pytest

from tests.store.conftest import CHUNK
from tests.store.helpers import FAST_KDF_N, backup, disk_image, restore, write_disk
from vmguard.errors import GcBusyError, RepositoryError
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
from vmguard.store.backend import MemoryBackend
from vmguard.store.clock import ManualClock
from vmguard.store.gc import collect_garbage
from vmguard.store.prune import retire_archive
from vmguard.store.verify import verify

pytestmark = pytest.mark.unit
HOUR = 3600


def _repo(*, lock_days: int = 0) -> tuple[Repository, ManualClock]:
    clock = ManualClock()
    backend = MemoryBackend(object_lock=bool(lock_days), clock=clock.now)
    repo = Repository.init(
        backend,
        master_key=MasterKey(b"sixteen bytes or more"),
        chunk_size=CHUNK,
        kdf=ScryptParams(n=FAST_KDF_N),
        gc=GcPolicy(lease_ttl_seconds=600, grace_seconds=HOUR),
        object_lock=ObjectLockPolicy("GOVERNANCE", lock_days) if lock_days else None,
        clock=clock,
    )
    return repo, clock


def _gc(repo: Repository):  # type: ignore[no-untyped-def]
    return collect_garbage(repo, auto_refresh=False)


def _ids(repo: Repository, prefix: str) -> set[bytes]:
    found = {names.chunk_id_from_name(i.name) for i in repo.backend.list(prefix)}
    return {c for c in found if c is not None}


def _referenced(repo: Repository, *manifests: ArchiveManifest) -> set[bytes]:
    ids: set[bytes] = set()
    for manifest in manifests:
        for disk in manifest.disks:
            ids |= repo.load_index(manifest, disk).referenced()
    return ids


def _wait(clock: ManualClock, seconds: int, *writers: object) -> None:
    """Let time pass in steps, each running writer refreshing its lease as it would."""
    for _ in range(seconds // 120):
        clock.advance(120)
        for writer in writers:
            writer.lease.refresh()  # type: ignore[attr-defined]


def test_an_idle_repository_is_cleaned_in_one_run_after_the_grace_period() -> None:
    repo, clock = _repo()
    old = backup(repo, "vm", {"d": disk_image(1, 6, CHUNK)})
    new_image = disk_image(2, 6, CHUNK)
    new = backup(repo, "vm", {"d": new_image})
    assert retire_archive(repo, old.archive_id) is None
    garbage = _referenced(repo, old) - _referenced(repo, new)
    assert garbage and _gc(repo).candidates == 0  # too young: inside the grace period
    clock.advance(2 * HOUR)
    report = _gc(repo)
    assert report.deleted == len(garbage) and report.resurrected == 0
    assert _ids(repo, names.CHUNKS) == _referenced(repo, new)
    assert _ids(repo, names.FOSSILS) == set()
    assert list(repo.backend.list(names.GC_COLLECTIONS)) == []
    assert list(repo.backend.list(names.TRASH)) == []
    assert list(repo.backend.list(f"{names.INDEXES}{old.archive_id}/")) == []
    assert restore(repo, new, "d") == new_image
    assert verify(repo, deep=True).ok


def test_fresh_uploads_of_a_running_backup_are_not_collected() -> None:
    repo, clock = _repo()
    image = disk_image(3, 6, CHUNK)
    with repo.begin_backup(VmIdentity(id="vm"), auto_refresh=False) as writer:
        write_disk(writer, "d", image)  # chunks and index uploaded, nothing committed
        _wait(clock, 3 * HOUR, writer)
        report = _gc(repo)
        assert report.candidates == 0 and report.orphan_indexes == 0
        manifest = writer.commit()
    assert restore(repo, manifest, "d") == image


def test_a_crashed_backup_leaves_nothing_behind_after_ttl_and_grace() -> None:
    repo, clock = _repo()
    writer = repo.begin_backup(VmIdentity(id="vm"), auto_refresh=False)
    write_disk(writer, "d", disk_image(4, 4, CHUNK))  # then the process is killed
    clock.advance(HOUR)
    assert _gc(repo).deleted == 0  # lease expired, but not yet gone (ttl + grace)
    clock.advance(HOUR)
    report = _gc(repo)
    assert report.deleted > 0 and report.orphan_indexes == 1 and report.stale_leases == 1
    # What stays: the config and its retained copy, GC's clock probe and the last GC's
    # released lock generation (generations only grow, format §7.3).
    names_left = [i.name for i in repo.backend.list()]
    copy = names.config_copy_name(repo.backend.get("config"), authenticated=True)
    assert names_left == ["config", copy, "gc/clock", "gc/locks/00000000000000000002"]


def test_a_chunk_reused_by_existence_check_survives_gc_racing_the_backup() -> None:
    repo, clock = _repo()
    image = disk_image(15, 6, CHUNK)
    old = backup(repo, "vm-a", {"d": image})
    old_chunks = _referenced(repo, old)
    retire_archive(repo, old.archive_id)
    clock.advance(2 * HOUR)
    with repo.begin_backup(VmIdentity(id="vm-b"), auto_refresh=False) as writer:
        write_disk(writer, "d", image)  # every chunk exists: nothing uploaded
        assert _ids(repo, names.CHUNKS) == old_chunks
        report = _gc(repo)  # the chunks look like garbage: fossilised, not deleted
        assert report.fossilised == len(old_chunks) and report.deleted == 0
        assert report.waiting_for == [writer.lease.name]
        manifest = writer.commit()
    assert restore(repo, manifest, "d") == image  # read through the fossils
    assert verify(repo).fossils_referenced == len(old_chunks) > 1
    assert verify(repo, deep=True).ok
    report = _gc(repo)
    assert report.resurrected == len(_referenced(repo, manifest)) and report.deleted == 0
    assert _ids(repo, names.FOSSILS) == set()
    assert restore(repo, manifest, "d") == image
    assert verify(repo, deep=True).ok


def test_parent_chunks_survive_when_the_parent_is_pruned_mid_backup() -> None:
    repo, clock = _repo()
    image = disk_image(6, 8, CHUNK)
    parent = backup(repo, "vm", {"d": image})
    clock.advance(2 * HOUR)  # the parent's chunks are older than any cutoff
    with repo.begin_backup(VmIdentity(id="vm"), parent=parent.archive_id, auto_refresh=False) as w:
        write_disk(w, "d", image, changed=set())  # everything carried from the parent
        retire_archive(repo, parent.archive_id)  # prune races the backup
        _wait(clock, 3 * HOUR, w)
        report = _gc(repo)
        assert report.candidates == 0 and report.trash_emptied == 0  # the trash is a root
        manifest = w.commit()
    clock.advance(2 * HOUR)
    report = _gc(repo)
    assert report.trash_emptied == 1 and report.deleted == 0
    assert restore(repo, manifest, "d") == image
    assert verify(repo, deep=True).ok


def test_a_gc_of_an_older_release_keeps_a_new_gc_out_until_its_lock_is_gone() -> None:
    repo, clock = _repo()
    repo.backend.put(names.GC_LOCK, b"{}")  # the lock object an older release's GC writes
    with pytest.raises(GcBusyError, match="older vmguard release"):
        _gc(repo)
    clock.advance(600 + HOUR)  # past its ttl, not gone: a refresh may still land
    with pytest.raises(GcBusyError):
        _gc(repo)
    clock.advance(1)  # the holder died: its lock is gone like a lease (ttl + grace)
    _gc(repo)
    assert [i.name for i in repo.backend.list("gc/")] == [
        "gc/clock",
        "gc/locks/00000000000000000001",
    ]


def test_gc_deletes_nothing_if_an_archive_cannot_be_read() -> None:
    repo, clock = _repo()
    old = backup(repo, "vm", {"d": disk_image(7, 4, CHUNK)})
    kept = backup(repo, "vm", {"d": disk_image(8, 4, CHUNK)})
    retire_archive(repo, old.archive_id)
    repo.backend.put(kept.disks[0].index, b"damaged")
    clock.advance(2 * HOUR)
    before = {i.name for i in repo.backend.list(names.CHUNKS)}
    with pytest.raises(RepositoryError, match="GC stopped before deleting anything"):
        _gc(repo)
    assert {i.name for i in repo.backend.list(names.CHUNKS)} == before


def test_locked_chunks_are_skipped_and_reported_once_then_collected() -> None:
    repo, clock = _repo(lock_days=1)
    with repo.begin_backup(VmIdentity(id="vm"), auto_refresh=False) as writer:
        write_disk(writer, "d", disk_image(9, 5, CHUNK))  # aborted: chunks are garbage
    stored = _ids(repo, names.CHUNKS)
    clock.advance(2 * HOUR)
    report = _gc(repo)
    assert report.locked == len(stored) + 1 and report.deleted == 0  # chunks and the index
    assert len(report.messages) == 1 and "Object Lock" in report.messages[0]
    assert _ids(repo, names.CHUNKS) == stored
    clock.advance(48 * HOUR)  # chunks are locked one period past retain_until (§9)
    report = _gc(repo)
    assert report.locked == 0 and report.deleted == len(stored)


def test_a_dry_run_changes_nothing() -> None:
    repo, clock = _repo()
    old = backup(repo, "vm", {"d": disk_image(10, 4, CHUNK)})
    retire_archive(repo, old.archive_id)
    clock.advance(2 * HOUR)
    before = sorted(i.name for i in repo.backend.list() if i.name != names.GC_CLOCK)
    report = collect_garbage(repo, dry_run=True)
    assert report.candidates > 0 and report.deleted == 0
    assert sorted(i.name for i in repo.backend.list() if i.name != names.GC_CLOCK) == before


def test_a_shorter_chunk_grace_collects_sooner() -> None:
    repo, clock = _repo()
    old = backup(repo, "vm", {"d": disk_image(11, 6, CHUNK)})
    new = backup(repo, "vm", {"d": disk_image(12, 6, CHUNK)})
    assert retire_archive(repo, old.archive_id) is None
    garbage = _referenced(repo, old) - _referenced(repo, new)
    clock.advance(120)
    assert _gc(repo).candidates == 0  # the repository's grace: one hour
    report = collect_garbage(repo, auto_refresh=False, chunk_grace_seconds=60)
    assert report.deleted == len(garbage) > 0
    assert _ids(repo, names.CHUNKS) == _referenced(repo, new)


def test_a_shorter_chunk_grace_still_judges_leases_with_the_repository_grace() -> None:
    """A crashed backup's lease holds a collection for ttl + the repository's grace
    (format §7.1), however short the chunk grace."""
    repo, clock = _repo()
    old = backup(repo, "vm", {"d": disk_image(13, 6, CHUNK)})
    assert retire_archive(repo, old.archive_id) is None
    garbage = _referenced(repo, old)
    clock.advance(120)
    writer = repo.begin_backup(VmIdentity(id="other"), auto_refresh=False)
    write_disk(writer, "d", disk_image(14, 2, CHUNK))  # then it dies: its lease stays
    report = collect_garbage(repo, auto_refresh=False, chunk_grace_seconds=60)
    assert report.fossilised == len(garbage) and report.deleted == 0
    clock.advance(600 + 300)  # lease expired, but not gone: ttl + grace (1 h) not passed
    assert collect_garbage(repo, auto_refresh=False, chunk_grace_seconds=60).deleted == 0
    clock.advance(HOUR)
    report = collect_garbage(repo, auto_refresh=False, chunk_grace_seconds=60)
    assert report.deleted == len(garbage) + 2  # and the dead backup's two chunks
    assert _ids(repo, names.CHUNKS) == set() and _ids(repo, names.FOSSILS) == set()
