"""Lock-check finds every retention shorter than an archive promises and repairs it
(format §9.2, issue 11 hole 5). Memory backend; ``bypass_retention`` stands for a caller
with ``s3:BypassGovernanceRetention`` (the same on MinIO is in test_repository_s3.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.store.conftest import CHUNK
from tests.store.helpers import FAST_KDF_N, backup, disk_image
from vmguard.store import MasterKey, ObjectLockPolicy, Repository, ScryptParams, names
from vmguard.store.backend import MemoryBackend, Retention
from vmguard.store.clock import ManualClock
from vmguard.store.lockcheck import lock_check

pytestmark = pytest.mark.unit
DAY = 86400.0


def _repo(lock: bool = True) -> tuple[Repository, ManualClock, MemoryBackend]:
    clock = ManualClock()
    backend = MemoryBackend(object_lock=lock, clock=clock.now)
    repo = Repository.init(
        backend,
        master_key=MasterKey(b"sixteen bytes or more"),
        chunk_size=CHUNK,
        kdf=ScryptParams(n=FAST_KDF_N),
        object_lock=ObjectLockPolicy("GOVERNANCE", 30) if lock else None,
        clock=clock,
    )
    return repo, clock, backend


def test_lock_check_finds_and_repairs_retentions_lifted_behind_our_back() -> None:
    repo, clock, memory = _repo()
    image = bytearray(disk_image(71, 6, CHUNK))
    full = backup(repo, "vm", {"d": bytes(image)})
    clock.advance(29 * DAY)
    image[:4] = b"new!"
    incr = backup(repo, "vm", {"d": bytes(image)}, parent=full.archive_id, changed={"d": {0}})
    assert incr.lock_horizon is not None and incr.retain_until is not None
    shared = sorted(
        repo.load_index(full, "d").referenced() & repo.load_index(incr, "d").referenced()
    )[0]
    chunk = names.chunk_name(shared)
    memory.bypass_retention(chunk, Retention("GOVERNANCE", clock.now() + timedelta(days=1)))
    memory.bypass_retention(incr.disks[0].index, None)

    found = lock_check(repo, repair=False)
    assert not found.ok and found.archives == 2
    short = {s.name: s for s in found.shortfalls}
    assert set(short) == {chunk, incr.disks[0].index}
    assert short[chunk].needed == incr.lock_horizon
    assert short[chunk].archives == tuple(sorted((full.archive_id, incr.archive_id)))
    assert short[incr.disks[0].index].until is None
    assert short[incr.disks[0].index].needed == incr.retain_until
    assert memory.stat(chunk).retain_until == clock.now() + timedelta(days=1), "dry run"

    fixed = lock_check(repo)
    assert fixed.ok and fixed.repaired == 2 and fixed.retention_requests == 2
    assert memory.stat(chunk).retain_until == incr.lock_horizon
    assert memory.stat(incr.disks[0].index).retain_until == incr.retain_until
    again = lock_check(repo)
    assert again.ok and again.shortfalls == [] and again.objects == found.objects


def test_lock_check_reports_what_it_cannot_lock_and_skips_expired_archives() -> None:
    repo, clock, memory = _repo()
    old = backup(repo, "vm-old", {"d": disk_image(72, 3, CHUNK)})
    clock.advance(61 * DAY)  # past its retain_until and its horizon: promises nothing
    made = backup(repo, "vm", {"d": disk_image(73, 3, CHUNK)})
    lost = names.chunk_name(sorted(repo.load_index(made, "d").referenced())[0])
    memory.bypass_retention(lost, None)
    memory.delete(lost)
    report = lock_check(repo)
    assert report.archives == 1 and not report.ok
    [shortfall] = report.shortfalls
    assert (shortfall.name, shortfall.repaired, shortfall.detail) == (lost, False, "missing")
    assert shortfall.archives == (made.archive_id,)
    assert old.archive_id not in {a for s in report.shortfalls for a in s.archives}


def test_lock_check_of_a_repository_without_object_lock_checks_nothing() -> None:
    repo, _, _ = _repo(lock=False)
    backup(repo, "vm", {"d": disk_image(74, 2, CHUNK)})
    report = lock_check(repo)
    assert (report.object_lock, report.objects, report.ok) == (False, 0, True)
