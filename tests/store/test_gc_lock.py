"""The GC lock: one GC at a time, takeover only of a lock that is gone, and fencing (format §7.3).

A second GC that starts while the first still holds the lock (or whose lock is past
its ttl but not gone) must be refused; one that takes over a gone lock must be the only
one that acts from then on, even if the first GC wakes up again (its host was suspended,
so its own monotonic clock saw no time pass). Each test interleaves the second GC at a
named store call of the first through :class:`tests.store.interleave.FaultyBackend`.
"""

from __future__ import annotations

import json

import pytest

from tests.store.conftest import CHUNK
from tests.store.helpers import backup, disk_image, restore, write_disk
from tests.store.interleave import FaultyBackend, PausedClock
from vmguard.errors import ConfigError, GcBusyError, LeaseLostError
from vmguard.store import GcPolicy, Repository, VmIdentity, names
from vmguard.store.backend import MemoryBackend
from vmguard.store.clock import ManualClock
from vmguard.store.gc import collect_garbage
from vmguard.store.prune import retire_archive
from vmguard.store.verify import verify

pytestmark = pytest.mark.unit
TTL = 600
GRACE = 3600


def _repo() -> tuple[Repository, ManualClock, FaultyBackend]:
    clock = ManualClock()
    faulty = FaultyBackend(MemoryBackend(clock=clock.now))
    repo = Repository.init(
        faulty,
        chunk_size=CHUNK,
        gc=GcPolicy(lease_ttl_seconds=TTL, grace_seconds=GRACE),
        clock=clock,
    )
    return repo, clock, faulty


def _gc(repo: Repository, **kwargs: bool) -> object:
    return collect_garbage(repo, auto_refresh=False, chunk_grace_seconds=60, **kwargs)


def _garbage(repo: Repository, clock: ManualClock, seed: int) -> bytes:
    """An archive, pruned, whose chunks are old enough to collect; returns its disk."""
    image = disk_image(seed, 6, CHUNK)
    retire_archive(repo, backup(repo, "vm", {"d": image}).archive_id)
    clock.advance(3600)
    return image


def test_a_second_gc_waits_ttl_plus_grace_before_taking_the_lock_over() -> None:
    repo, clock, faulty = _repo()
    _garbage(repo, clock, 1)
    second: dict[str, BaseException] = {}

    def second_gc_after_the_ttl() -> None:
        clock.advance(TTL + 1)  # the first GC's lock is past its ttl, far from gone
        try:
            _gc(repo)
        except GcBusyError as exc:
            second["refused"] = exc

    faulty.on("list", names.CHUNKS, before=second_gc_after_the_ttl)
    with pytest.raises(LeaseLostError):  # the first GC's own deadline stops it
        _gc(repo)
    assert "refused" in second, "a second GC took over a lock that was not gone"


def test_a_lock_whose_holder_died_is_taken_over_after_ttl_plus_grace() -> None:
    repo, clock, faulty = _repo()
    _garbage(repo, clock, 2)
    # The first GC dies before it can release its lock (the release never arrives).
    faulty.on("put", "gc/lock", outcome="lost", times=5)
    faulty.on("delete", "gc/lock", outcome="lost", times=5)
    _gc(repo)
    faulty.faults.clear()
    clock.advance(TTL + GRACE - 1)
    with pytest.raises(GcBusyError):
        _gc(repo)
    clock.advance(2)
    _gc(repo)


def test_a_gc_whose_lock_was_taken_over_stops_before_its_next_delete() -> None:
    repo, clock, faulty = _repo()
    image = _garbage(repo, clock, 3)
    paused = PausedClock(clock)
    first = Repository.open(faulty, clock=paused)
    later: dict[str, object] = {}

    def suspended_then_overtaken() -> None:
        # The first GC has copied one chunk to fossils/ and is about to delete it from
        # chunks/, when its host is suspended until its lock is gone.
        paused.pause()
        clock.advance(TTL + GRACE + 1)
        _gc(repo)  # a second GC takes over and collects everything
        later["manifest"] = backup(repo, "vm", {"d": image})  # which a backup then uploads again

    faulty.on("copy", names.FOSSILS, after=suspended_then_overtaken)
    stopped: LeaseLostError | None = None
    try:
        _gc(first)
    except LeaseLostError as exc:
        stopped = exc
    manifest = later["manifest"]
    assert restore(repo, manifest, "d") == image  # type: ignore[arg-type]
    assert verify(repo, deep=True).ok
    assert stopped is not None, "the overtaken GC went on acting"


def test_settling_a_collection_leaves_the_fossils_of_another_alone() -> None:
    repo, clock, _ = _repo()
    image = _garbage(repo, clock, 4)
    with repo.begin_backup(VmIdentity(id="vm"), auto_refresh=False) as writer:
        write_disk(writer, "d", image)  # every chunk found by existence check
        _gc(repo)  # fossilises them all; the collection waits for this backup
        # An older collection, as a second GC (one that was taken over) left it, after
        # recording that no backup was running.
        stray = names.new_stamped_id(clock.now().replace(year=2024))
        repo.backend.put(names.collection_fossils_name(stray), json.dumps({"fossils": []}).encode())
        repo.backend.put(names.collection_leases_name(stray), json.dumps({"leases": []}).encode())
        _gc(repo)
        manifest = writer.commit()
    clock.advance(TTL + GRACE + 1)
    _gc(repo)
    _gc(repo)
    assert restore(repo, manifest, "d") == image
    assert verify(repo, deep=True).ok


def test_gc_refuses_a_store_without_atomic_create_unless_told_it_runs_alone() -> None:
    repo, clock, faulty = _repo()
    _garbage(repo, clock, 5)
    faulty.atomic_create = False
    with pytest.raises(ConfigError, match="create-if-absent"):
        _gc(repo)
    assert list(repo.backend.list(names.FOSSILS)) == []
    _gc(repo, assume_sole_gc=True)
    assert list(repo.backend.list(names.CHUNKS)) == []
