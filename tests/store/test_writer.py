"""BackupWriter: the lease discipline, corrupt-chunk repair, and Object Lock retention."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from tests.store.conftest import CHUNK
from tests.store.helpers import FAST_KDF_N, backup, disk_image, restore, write_disk
from vmguard.errors import LeaseLostError, RepositoryError
from vmguard.store import (
    GcPolicy,
    MasterKey,
    ObjectLockPolicy,
    Repository,
    ScryptParams,
    VmIdentity,
    names,
)
from vmguard.store.backend import MemoryBackend, Retention
from vmguard.store.clock import ManualClock
from vmguard.store.lease import Lease
from vmguard_lab.procs import eventually

pytestmark = pytest.mark.unit


def _repo(*, lock: bool = False) -> tuple[Repository, ManualClock]:
    clock = ManualClock()
    backend = MemoryBackend(object_lock=lock, clock=clock.now)
    repo = Repository.init(
        backend,
        master_key=MasterKey(b"sixteen bytes or more"),
        chunk_size=CHUNK,
        kdf=ScryptParams(n=FAST_KDF_N),
        object_lock=ObjectLockPolicy("GOVERNANCE", 30) if lock else None,
        gc=GcPolicy(lease_ttl_seconds=600, grace_seconds=3600),
        clock=clock,
    )
    return repo, clock


def _lease_names(repo: Repository) -> list[str]:
    return [i.name for i in repo.backend.list(names.LEASES)]


def test_the_lease_exists_while_the_backup_runs_and_goes_with_it() -> None:
    repo, _ = _repo()
    with repo.begin_backup(VmIdentity(id="vm"), auto_refresh=False) as writer:
        assert _lease_names(repo) == [writer.lease.name]
        write_disk(writer, "d", disk_image(1, 2, CHUNK))
        writer.commit()
    assert _lease_names(repo) == []
    with repo.begin_backup(VmIdentity(id="vm"), auto_refresh=False) as writer:
        writer.put_chunk(b"abandoned")
    assert _lease_names(repo) == [] and len(repo.list_archives()) == 1


def test_a_lapsed_lease_refuses_to_commit_and_no_archive_appears() -> None:
    repo, clock = _repo()
    with repo.begin_backup(VmIdentity(id="vm"), auto_refresh=False) as writer:
        write_disk(writer, "d", disk_image(2, 2, CHUNK))
        clock.advance(601)
        with pytest.raises(LeaseLostError):
            writer.commit()
        with pytest.raises(LeaseLostError):
            writer.lease.refresh()
    assert repo.list_archives() == []


def test_commit_needs_the_margin_not_just_an_unexpired_lease() -> None:
    repo, clock = _repo()
    with repo.begin_backup(VmIdentity(id="vm"), auto_refresh=False) as writer:
        write_disk(writer, "d", disk_image(3, 2, CHUNK))
        clock.advance(301)  # within ttl 600, but less than the 300 s margin left
        with pytest.raises(LeaseLostError):
            writer.commit()


def test_a_long_backup_that_refreshes_its_lease_commits() -> None:
    repo, clock = _repo()
    image = disk_image(4, 3, CHUNK)
    with repo.begin_backup(VmIdentity(id="vm"), auto_refresh=False) as writer:
        for _ in range(30):  # five hours of work, refreshed every two minutes
            clock.advance(120)
            writer.lease.refresh()
            age = clock.now() - repo.backend.stat(writer.lease.name).modified
            assert age == timedelta(0)
        write_disk(writer, "d", image)
        manifest = writer.commit()
    assert restore(repo, manifest, "d") == image


class _WatchedBackend(MemoryBackend):
    """A MemoryBackend that records writes and deletes, so a test can wait for the lease
    thread's next write instead of sleeping. It stores exactly as MemoryBackend does."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock.now)
        self.ops: list[tuple[str, str]] = []
        self._changed = threading.Condition()

    def put(self, name: str, data: bytes, *, retention: Retention | None = None) -> None:
        super().put(name, data, retention=retention)
        with self._changed:
            self.ops.append(("put", name))
            self._changed.notify_all()

    def delete(self, name: str) -> None:
        super().delete(name)
        with self._changed:
            self.ops.append(("delete", name))

    def wait_for_puts(self, count: int) -> bool:
        with self._changed:
            return self._changed.wait_for(
                lambda: sum(op == "put" for op, _ in self.ops) >= count, timeout=60
            )


def test_the_refresh_thread_rewrites_the_lease_until_released() -> None:
    clock = ManualClock()
    backend = _WatchedBackend(clock)
    # ttl 0.5 s: the thread wakes every 0.1 s of real time; validity is judged on the
    # manual clock, which moves only here, so no refresh can lapse by chance.
    lease = Lease(backend, "leases/x", {"purpose": "test"}, ttl=0.5, clock=clock)
    lease.acquire()
    first = backend.stat("leases/x").modified
    clock.advance(0.2)
    lease.start_refreshing()
    assert backend.wait_for_puts(3), "the refresh thread did not rewrite the lease twice"
    # Stamped at the store's time of the refresh, not left at the acquisition's.
    assert backend.stat("leases/x").modified == first + timedelta(seconds=0.2)
    lease.ensure_valid()
    lease.release()
    # The thread was stopped before the delete: nothing rewrites a released lease.
    assert not [t for t in threading.enumerate() if t.name == "lease-leases/x" and t.is_alive()]
    assert backend.ops[-1] == ("delete", "leases/x")
    assert list(backend.list("leases/")) == []


def test_the_refresh_thread_never_rewrites_a_lapsed_lease(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    backend = _WatchedBackend(clock)
    lease = Lease(backend, "leases/x", {"purpose": "test"}, ttl=0.5, clock=clock)
    lease.acquire()
    first = backend.stat("leases/x").modified
    clock.advance(0.6)  # past the ttl: GC may already have judged this lease expired
    lease.start_refreshing()
    # Wait until the thread has decided: given up (logged), or rewritten the lease.
    eventually(
        lambda: "lease leases/x lost" in caplog.text or len(backend.ops) > 1,
        60,
        "the refresh thread's first decision",
    )
    # Rewriting it now would make a lease GC saw expired look live again.
    assert backend.ops == [("put", "leases/x")]
    assert backend.stat("leases/x").modified == first
    with pytest.raises(LeaseLostError):
        lease.ensure_valid()
    lease.release()


def test_a_committed_writer_cannot_be_used_again() -> None:
    repo, _ = _repo()
    with repo.begin_backup(VmIdentity(id="vm"), auto_refresh=False) as writer:
        writer.commit()
        with pytest.raises(RepositoryError, match="already committed"):
            writer.put_chunk(b"late")


def test_chunks_marked_corrupt_are_uploaded_again_and_unmarked() -> None:
    repo, _ = _repo()
    image = disk_image(5, 4, CHUNK)
    first = backup(repo, "vm", {"d": image})
    victim = sorted(repo.load_index(first, "d").referenced())[0]
    repo.backend.put(names.chunk_name(victim), b"garbage that is long enough to look plausible")
    repo.backend.put(names.corrupt_name(victim), b"{}")
    again = backup(repo, "vm-2", {"d": image})
    assert again.stats.chunks_new == 1
    assert list(repo.backend.list(names.CORRUPT)) == []
    assert restore(repo, first, "d") == image  # the old archive is repaired too


def test_incrementals_do_not_carry_corrupt_chunks_forward() -> None:
    repo, _ = _repo()
    image = disk_image(6, 4, CHUNK)
    first = backup(repo, "vm", {"d": image})
    victim = sorted(repo.load_index(first, "d").referenced())[0]
    repo.backend.put(names.corrupt_name(victim), b"{}")
    incr = backup(repo, "vm", {"d": image}, parent=first.archive_id, changed={"d": set()})
    assert incr.stats.chunks_new == 1
    assert restore(repo, incr, "d") == image


def test_object_lock_retains_everything_a_backup_writes() -> None:
    repo, clock = _repo(lock=True)
    manifest = backup(repo, "vm", {"d": disk_image(7, 3, CHUNK)})
    assert manifest.retain_until == clock.now() + timedelta(days=30)
    # Chunks one period longer (format §9), so the next backups need not extend them.
    assert manifest.lock_horizon == manifest.retain_until + timedelta(days=30)
    written = [
        i.name
        for i in repo.backend.list()
        if i.name.split("/")[0] in ("chunks", "indexes", "archives")
    ]
    assert any(n.startswith("chunks/") for n in written)
    for name in written:
        want = manifest.lock_horizon if name.startswith("chunks/") else manifest.retain_until
        assert repo.backend.stat(name).retain_until == want


def test_reused_chunks_get_their_lock_extended_when_it_runs_short() -> None:
    repo, clock = _repo(lock=True)
    image = disk_image(8, 3, CHUNK)
    first = backup(repo, "vm-a", {"d": image})
    chunk = names.chunk_name(sorted(repo.load_index(first, "d").referenced())[0])
    assert repo.backend.stat(chunk).retain_until == first.lock_horizon  # day 60
    clock.advance(10 * 86400)
    second = backup(repo, "vm-b", {"d": image})  # needs day 40; 60 >= 40 + 15: kept
    assert repo.backend.stat(chunk).retain_until == first.lock_horizon
    assert second.stats.retention_requests == 0
    clock.advance(10 * 86400)
    third = backup(repo, "vm-c", {"d": image})  # needs day 50; 60 < 50 + 15: extended
    assert third.retain_until is not None
    assert repo.backend.stat(chunk).retain_until == third.retain_until + timedelta(days=30)
    assert third.stats.retention_requests == len(repo.load_index(first, "d").referenced())
