"""A backup's lease and commit against slow and ambiguous writes, with GC and prune in between.

Format §7.1 and §7.5: a lease must never look gone to GC while its writer can still
commit, and a manifest PUT whose outcome is unknown must keep the lease until it runs
out. Each test puts a GC (and a prune of the parent) inside the window a slow or
ambiguous PUT opens, using :class:`tests.store.interleave.FaultyBackend` on a memory
backend and a manual clock, and then checks what a user would: every committed
archive restores bit-exact.
"""

from __future__ import annotations

import pytest

from tests.store.conftest import CHUNK
from tests.store.helpers import backup, disk_image, restore, write_disk
from tests.store.interleave import FaultyBackend
from vmguard.errors import BackendUnavailableError, LeaseLostError, ObjectNotFoundError
from vmguard.store import ArchiveManifest, GcPolicy, Repository, VmIdentity, names
from vmguard.store.backend import MemoryBackend
from vmguard.store.clock import ManualClock
from vmguard.store.gc import collect_garbage
from vmguard.store.prune import retire_archive
from vmguard.store.verify import verify

pytestmark = pytest.mark.unit
TTL = 600
GRACE = 3600
VM = VmIdentity(id="vm")


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


def _gc(repo: Repository) -> None:
    # The shortest chunk grace an operator may ask for (format §7.5): old chunks are
    # candidates at once, so only the lease rules stand between them and deletion.
    collect_garbage(repo, auto_refresh=False, chunk_grace_seconds=60)


def _exists(repo: Repository, name: str) -> bool:
    try:
        repo.backend.stat(name)
    except ObjectNotFoundError:
        return False
    return True


def _chunks(repo: Repository, manifest: ArchiveManifest) -> set[bytes]:
    return repo.load_index(manifest, "d").referenced()


def test_a_refresh_that_lands_after_the_ttl_loses_the_lease() -> None:
    """Hole 1, writer side: the refresh starts at 590 s of a 600 s ttl and lands at 620 s."""
    repo, clock, faulty = _repo()
    image = disk_image(1, 6, CHUNK)
    parent = backup(repo, "vm", {"d": image})

    def prune_and_collect_while_the_refresh_is_in_flight() -> None:
        clock.advance(15)  # 605 s: past the ttl, the refresh not landed yet
        retire_archive(repo, parent.archive_id)
        _gc(repo)
        clock.advance(15)  # it lands at 620 s

    with repo.begin_backup(VM, parent=parent.archive_id, auto_refresh=False) as writer:
        write_disk(writer, "d", image, changed=set())  # every chunk carried from the parent
        clock.advance(590)
        faulty.on("put", writer.lease.name, before=prune_and_collect_while_the_refresh_is_in_flight)
        with pytest.raises(LeaseLostError, match="landed"):
            writer.lease.refresh()
        with pytest.raises(LeaseLostError):
            writer.commit(mode="incremental")
    assert repo.list_archives() == []


def test_gc_and_prune_count_a_lease_past_its_ttl_as_running() -> None:
    """Hole 1, GC side: a lease 5 s past its ttl is not gone; its backup is still running.

    The backup carries disk ``d`` from its parent (pruned meanwhile) and found disk
    ``e``'s chunks by existence check in a pruned archive of another VM.
    """
    repo, clock, _ = _repo()
    image, other = disk_image(2, 6, CHUNK), disk_image(12, 6, CHUNK)
    parent = backup(repo, "vm", {"d": image})
    stranger = backup(repo, "vm-2", {"d": other})
    needed = _chunks(repo, parent) | _chunks(repo, stranger)
    retire_archive(repo, stranger.archive_id)
    clock.advance(1000)  # the chunks are older than the backup below: the cutoff spares none
    with repo.begin_backup(VM, parent=parent.archive_id, auto_refresh=False) as writer:
        write_disk(writer, "d", image, changed=set())
        write_disk(writer, "e", other)
        clock.advance(TTL + 5)
        retire_archive(repo, parent.archive_id)
        report = collect_garbage(repo, auto_refresh=False, chunk_grace_seconds=60)
        assert report.waiting_for == [writer.lease.name]
        leases = repo.backend.get(names.trash_leases_name(parent.archive_id)).decode()
        assert writer.lease.name in leases
        for chunk_id in needed:
            repo.read_chunk(chunk_id)  # ChunkMissingError if GC deleted it


def test_an_ambiguous_manifest_put_keeps_the_lease_until_it_runs_out() -> None:
    """Hole 2: the manifest PUT times out on the client but the server stores it later."""
    repo, clock, faulty = _repo()
    image = disk_image(3, 6, CHUNK)
    parent = backup(repo, "vm", {"d": image})
    new_image = b"\x01" * CHUNK + image[CHUNK:]
    clock.advance(1000)  # the parent's chunks are older than the backup: the cutoff spares none
    faulty.on("put", names.ARCHIVES, outcome="held")
    with pytest.raises(BackendUnavailableError):  # noqa: SIM117 - the with is the subject
        with repo.begin_backup(VM, parent=parent.archive_id, auto_refresh=False) as writer:
            write_disk(writer, "d", new_image, changed={0})
            lease, archive_id = writer.lease.name, writer.archive_id
            writer.commit(mode="incremental")
    lease_kept = _exists(repo, lease)

    clock.advance(120)
    retire_archive(repo, parent.archive_id)
    _gc(repo)
    assert faulty.land_held() == 1  # the manifest becomes visible
    committed = repo.load_archive(archive_id)
    clock.advance(TTL + GRACE + 1)
    _gc(repo)
    _gc(repo)
    assert restore(repo, committed, "d") == new_image
    assert verify(repo, deep=True).ok
    assert lease_kept, "abort after a manifest PUT was sent deleted the lease"


def test_read_chunk_sees_a_chunk_that_gc_resurrects_between_its_two_reads() -> None:
    """Hole 8: GC copies the fossil back and deletes it between the reader's two GETs."""
    repo, _, faulty = _repo()
    image = disk_image(4, 2, CHUNK)
    manifest = backup(repo, "vm", {"d": image})
    chunk_id = sorted(_chunks(repo, manifest))[0]
    chunk, fossil = names.chunk_name(chunk_id), names.fossil_name(chunk_id)
    repo.backend.copy(chunk, fossil)  # fossilised by a collection
    repo.backend.delete(chunk)

    def resurrect() -> None:
        repo.backend.copy(fossil, chunk)
        repo.backend.delete(fossil)

    faulty.on("get", chunk, after=resurrect)
    pieces = {image[n : n + CHUNK] for n in range(0, len(image), CHUNK)}
    assert repo.read_chunk(chunk_id) in pieces  # ChunkMissingError on a reader that gives up
    assert restore(repo, manifest, "d") == image


def test_a_trash_copy_that_lands_after_its_entry_was_emptied_does_not_stop_gc() -> None:
    """A prune's trash copy is answered after the client gave up, and lands only after
    the operator's retry pruned the archive and GC emptied the trash entry."""
    repo, clock, faulty = _repo()
    kept = backup(repo, "vm", {"d": disk_image(5, 4, CHUNK)})
    pruned = backup(repo, "vm", {"d": disk_image(6, 4, CHUNK)})
    faulty.on("put", names.TRASH, outcome="held")
    with pytest.raises(BackendUnavailableError):
        retire_archive(repo, pruned.archive_id)
    retire_archive(repo, pruned.archive_id)  # the retry
    clock.advance(120)
    _gc(repo)  # no backup runs: the trash entry is emptied at once
    assert faulty.land_held() == 1  # the first copy lands: a trash manifest, no indexes
    clock.advance(GRACE + 1)
    _gc(repo)
    _gc(repo)
    assert restore(repo, kept, "d") == disk_image(5, 4, CHUNK)
    assert list(repo.backend.list(names.TRASH)) == []


def test_verify_beside_gc_and_prune_reports_no_false_problem() -> None:
    """GC resurrects a chunk between verify's two listings, and a prune removes an
    archive verify has listed: neither is damage, and neither may be reported as such."""
    repo, _, faulty = _repo()
    image = disk_image(7, 4, CHUNK)
    kept = backup(repo, "vm", {"d": image})
    pruned = backup(repo, "vm", {"d": disk_image(8, 4, CHUNK)})
    chunk_id = sorted(_chunks(repo, kept))[0]
    chunk, fossil = names.chunk_name(chunk_id), names.fossil_name(chunk_id)
    repo.backend.copy(chunk, fossil)  # fossilised by a collection
    repo.backend.delete(chunk)

    def resurrect() -> None:
        repo.backend.copy(fossil, chunk)
        repo.backend.delete(fossil)

    faulty.on(
        "get",
        names.manifest_name(pruned.archive_id),
        before=lambda: retire_archive(repo, pruned.archive_id),
    )
    faulty.on("list", names.CHUNKS, after=resurrect)
    report = verify(repo)
    assert report.ok, report
    assert report.archives == 1
