"""Unit tests of the engine's parts: the bounded pipeline, planning, restore failures,
sparse and partial restores, and what a backup reports per disk."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.engine.helpers import random_disk, sha256_file
from tests.store.helpers import FAST_KDF_N
from vmguard.engine.backup import DiskInput, DiskOutcome, back_up
from vmguard.engine.pipeline import bounded_map
from vmguard.engine.plan import MERGE_ALIGN, intersect
from vmguard.engine.restore import SPARSE_BLOCK, RestoreFailed, restore_disk
from vmguard.errors import RepositoryError
from vmguard.store import (
    ArchiveManifest,
    MasterKey,
    Repository,
    ScryptParams,
    VmIdentity,
    names,
)
from vmguard.store.backend import MemoryBackend
from vmguard.transport.extents import Extent
from vmguard.transport.file import FileSink, FileSource

pytestmark = pytest.mark.unit
CHUNK = 64 * 1024


def test_pipeline_keeps_at_most_depth_items_in_flight() -> None:
    pulled = 0
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    def items() -> object:
        nonlocal pulled
        for i in range(50):
            pulled += 1
            yield i

    def work(i: int) -> int:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.002)
        with lock:
            in_flight -= 1
        return i * 2

    seen = []
    for result in bounded_map(work, items(), workers=4, depth=6, ordered=False):  # type: ignore[arg-type]
        seen.append(result)
        assert pulled - len(seen) <= 6
    assert sorted(seen) == [i * 2 for i in range(50)] and peak <= 4
    ordered = list(bounded_map(work, range(20), workers=3, depth=3, ordered=True))
    assert ordered == [i * 2 for i in range(20)]


def test_pipeline_raises_the_first_failure_and_stops_pulling() -> None:
    pulled = 0

    def items() -> object:
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            yield i

    def work(i: int) -> int:
        if i == 5:
            raise ValueError("boom")
        return i

    with pytest.raises(ValueError, match="boom"):
        list(bounded_map(work, items(), workers=2, depth=4, ordered=True))  # type: ignore[arg-type]
    assert pulled < 20


def test_intersect() -> None:
    a = [Extent(0, 10), Extent(20, 10), Extent(40, 5)]
    b = [Extent(5, 20), Extent(29, 12)]
    assert intersect(a, b) == [Extent(5, 5), Extent(20, 5), Extent(29, 1), Extent(40, 1)]
    assert intersect([], b) == []


def _backed_up(tmp_path: Path) -> tuple[Repository, Path, object]:
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.write(random.Random(3).randbytes(8 * CHUNK + 99))
    repo = Repository.init(
        MemoryBackend(),
        master_key=MasterKey(b"x" * 20),
        chunk_size=CHUNK,
        kdf=ScryptParams(n=FAST_KDF_N),
    )
    with FileSource(disk) as source:
        manifest = back_up(repo, VmIdentity(id="vm"), [DiskInput("d", source)], workers=2)
    return repo, disk, manifest


def test_restore_stops_at_a_corrupt_chunk_and_writes_nothing_wrong(tmp_path: Path) -> None:
    repo, disk, manifest = _backed_up(tmp_path)
    index = repo.load_index(manifest, "d")  # type: ignore[arg-type]
    victim = 5
    name = names.chunk_name(index[victim])
    blob = bytearray(repo.backend.get(name))
    blob[-20] ^= 1
    repo.backend.put(name, bytes(blob))
    target = tmp_path / "out.img"
    sink = FileSink.create(target, index.length)
    with pytest.raises(RestoreFailed) as failure:
        restore_disk(repo, manifest, "d", sink, workers=4, depth=8)  # type: ignore[arg-type]
    sink.close()
    assert failure.value.chunk_id == index[victim].hex()
    assert failure.value.offset == victim * CHUNK
    assert "incomplete" in str(failure.value)
    original, restored = disk.read_bytes(), target.read_bytes()
    assert restored[: victim * CHUNK] == original[: victim * CHUNK]
    assert restored[victim * CHUNK :] == bytes(len(restored) - victim * CHUNK)


def test_restore_refuses_a_target_that_is_too_small(tmp_path: Path) -> None:
    repo, _, manifest = _backed_up(tmp_path)
    sink = FileSink.create(tmp_path / "small.img", CHUNK)
    with pytest.raises(Exception, match="needs"):
        restore_disk(repo, manifest, "d", sink)  # type: ignore[arg-type]
    sink.close()


def test_restore_zeroes_holes_in_a_used_target(tmp_path: Path) -> None:
    disk = tmp_path / "sparse.img"
    random_disk(disk, random.Random(8), 12 * CHUNK + 5)
    repo = Repository.init(MemoryBackend(), chunk_size=CHUNK)
    with FileSource(disk) as source:
        manifest = back_up(repo, VmIdentity(id="vm"), [DiskInput("d", source)])
    target = tmp_path / "used.img"
    target.write_bytes(random.Random(9).randbytes(12 * CHUNK + 5))
    with FileSink(target) as sink:
        restore_disk(repo, manifest, "d", sink, zero_holes=True)
    assert sha256_file(target) == sha256_file(disk)


BIG = 4 * SPARSE_BLOCK
"""A chunk that holds several sparse blocks, so zero runs inside it can be seen."""


def _layout_disk(path: Path) -> bytes:
    """Chunk 0: data, two zero blocks, data; chunk 1: random; chunk 2: a hole; short tail."""
    rng = random.Random(11)
    block = SPARSE_BLOCK
    image = (
        rng.randbytes(block)
        + bytes(2 * block)
        + rng.randbytes(block)
        + rng.randbytes(BIG)
        + bytes(BIG)
        + rng.randbytes(1000)
    )
    path.write_bytes(image)
    return image


def test_restore_skips_zero_runs_inside_chunks_so_a_thin_target_stays_thin(
    tmp_path: Path,
) -> None:
    image = _layout_disk(tmp_path / "disk.img")
    repo = Repository.init(MemoryBackend(), chunk_size=BIG)
    with FileSource(tmp_path / "disk.img") as source:
        manifest = back_up(repo, VmIdentity(id="vm"), [DiskInput("d", source)])
    target = tmp_path / "thin.img"
    with FileSink.create(target, len(image)) as sink:
        stats = restore_disk(repo, manifest, "d", sink)
    assert target.read_bytes() == image
    data = 2 * SPARSE_BLOCK + BIG + 1000
    assert stats.bytes_written == data
    assert (stats.chunks_written, stats.holes, stats.chunks_zeroed) == (3, 1, 0)
    assert target.stat().st_blocks * 512 <= data + 2 * 4096  # the zero blocks stay holes


def test_restore_only_writes_the_chunks_the_extents_touch_and_zeroes_old_data(
    tmp_path: Path,
) -> None:
    image = _layout_disk(tmp_path / "disk.img")
    repo = Repository.init(MemoryBackend(), chunk_size=BIG)
    with FileSource(tmp_path / "disk.img") as source:
        manifest = back_up(repo, VmIdentity(id="vm"), [DiskInput("d", source)])
    garbage = random.Random(12).randbytes(len(image))
    target = tmp_path / "used.img"
    target.write_bytes(garbage)
    only = [Extent(SPARSE_BLOCK + 7, 10), Extent(2 * BIG + 5, 1)]  # chunk 0 and the hole
    with FileSink(target) as sink:
        stats = restore_disk(repo, manifest, "d", sink, zero_holes=True, only=only)
    restored = target.read_bytes()
    assert restored[:BIG] == image[:BIG], "zero runs inside a chunk are zeroed"
    assert restored[BIG : 2 * BIG] == garbage[BIG : 2 * BIG], "untouched chunk left alone"
    assert restored[2 * BIG : 3 * BIG] == bytes(BIG), "the hole chunk is zeroed"
    assert restored[3 * BIG :] == garbage[3 * BIG :]
    assert (stats.chunks_written, stats.chunks_zeroed) == (1, 1)
    assert stats.bytes_written == 2 * SPARSE_BLOCK


def test_backup_reports_each_disk_and_takes_the_callers_mode_reason(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    random_disk(disk, random.Random(13), 16 * CHUNK)
    repo = Repository.init(MemoryBackend(), chunk_size=CHUNK)
    with FileSource(disk) as source:
        first = back_up(repo, VmIdentity(id="vm"), [DiskInput("d", source)])
    with open(disk, "r+b") as f:
        f.seek(3 * CHUNK + 100)
        f.write(b"x" * (CHUNK + 1))  # chunks 3 and 4
    outcomes: list[DiskOutcome] = []
    with FileSource(disk) as source:
        again = back_up(
            repo,
            VmIdentity(id="vm"),
            [DiskInput("d", source, changed=[Extent(3 * CHUNK + 100, CHUNK + 1)])],
            parent=first.archive_id,
            mode_reason="disk d: incremental since 52",
            on_disk=outcomes.append,
        )
    assert again.mode == "incremental" and again.mode_reason == "disk d: incremental since 52"
    [outcome] = outcomes
    # Chunk 3 changed but for its first 100 bytes: read whole. Chunk 4 changed in its
    # first 101 bytes: merged, reading one MERGE_ALIGN block of it.
    assert (outcome.key, outcome.mode) == ("d", "incremental")
    assert (outcome.chunks_read, outcome.chunks_merged, outcome.merges_refused) == (1, 1, 0)
    assert outcome.changed_bytes == CHUNK + 1
    assert outcome.stats == again.disks[0].stats
    assert outcome.stats.bytes_read == CHUNK + MERGE_ALIGN
    target = tmp_path / "out.img"
    sink = FileSink.create(target, 16 * CHUNK)
    restore_disk(repo, again, "d", sink)
    sink.close()
    assert sha256_file(target) == sha256_file(disk)


def test_an_incremental_reads_again_a_parent_chunk_lost_from_the_store(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(random.Random(14).randbytes(8 * CHUNK))
    repo = Repository.init(MemoryBackend(), chunk_size=CHUNK)
    with FileSource(disk) as source:
        first = back_up(repo, VmIdentity(id="vm"), [DiskInput("d", source)])
    lost = repo.load_index(first, "d")[5]
    repo.backend.delete(names.chunk_name(lost))  # behind our back: not GC, not prune
    outcomes: list[DiskOutcome] = []
    with FileSource(disk) as source:
        again = back_up(
            repo,
            VmIdentity(id="vm"),
            [DiskInput("d", source, changed=[])],
            parent=first.archive_id,
            on_disk=outcomes.append,
        )
    [outcome] = outcomes
    assert (outcome.mode, outcome.chunks_read) == ("incremental", 1)
    assert "1 parent chunks missing or marked corrupt are read again" in outcome.reason
    target = tmp_path / "restored.img"
    target.write_bytes(bytes(8 * CHUNK))
    with FileSink(target) as sink:
        restore_disk(repo, again, "d", sink)
    assert sha256_file(target) == sha256_file(disk)


def _write(path: Path, offset: int, data: bytes) -> Extent:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    return Extent(offset, len(data))


class _ListingBackend(MemoryBackend):
    """The in-memory backend whose listing pages (the check of a parent's chunks, format
    §8.1) wait for ``release`` and then fail with ``failure`` if set, so a test decides
    when, and how, the check that runs beside the reads ends."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.release.set()
        self.failure: Exception | None = None
        self.index_puts_before_release = 0

    def list_page(self, prefix: str, start_after: str, limit: int) -> Any:
        if not self.release.wait(30):
            raise TimeoutError("the test never released the listing")
        if self.failure is not None:
            raise self.failure
        return super().list_page(prefix, start_after, limit)

    def put(self, name: str, data: bytes, **kwargs: Any) -> None:
        if name.startswith(names.INDEXES) and not self.release.is_set():
            self.index_puts_before_release += 1
        super().put(name, data, **kwargs)


def _chain_over(backend: _ListingBackend, disk: Path) -> tuple[Repository, str]:
    """A repository on ``backend`` holding a full backup of ``disk`` of more than 64
    chunks (so its first incremental lists pages rather than HEADing each chunk)."""
    repo = Repository.init(backend, chunk_size=CHUNK)
    with FileSource(disk) as source:
        first = back_up(repo, VmIdentity(id="vm"), [DiskInput("d", source)])
    return repo, first.archive_id


def test_the_check_of_the_parents_chunks_ends_before_the_index_and_repairs_what_it_found(
    tmp_path: Path,
) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(random.Random(31).randbytes(80 * CHUNK))
    backend = _ListingBackend()
    repo, parent = _chain_over(backend, disk)
    lost = repo.load_index(repo.load_archive(parent), "d")[40]
    backend.delete(names.chunk_name(lost))  # behind the chain's back
    changed = _write(disk, 3 * CHUNK, random.Random(32).randbytes(CHUNK))
    backend.release.clear()  # the check waits: the changed chunk is read meanwhile
    outcomes: list[DiskOutcome] = []
    result: list[ArchiveManifest] = []

    def run() -> None:
        with FileSource(disk) as source:
            result.append(
                back_up(
                    repo,
                    VmIdentity(id="vm"),
                    [DiskInput("d", source, changed=[changed])],
                    parent=parent,
                    on_disk=outcomes.append,
                )
            )

    worker = threading.Thread(target=run)
    worker.start()
    # The changed chunk is stored while the listing still waits ...
    deadline = time.monotonic() + 30
    while len(list(backend.list(names.CHUNKS))) < 80 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(list(backend.list(names.CHUNKS))) == 80, "the changed chunk was not stored"
    backend.release.set()  # ... and only then does the check end
    worker.join(30)
    assert backend.index_puts_before_release == 0  # no index before the check ended
    [outcome] = outcomes
    [again] = result
    assert (outcome.chunks_read, outcome.carried_reread) == (2, 1)
    assert outcome.reason == "1 parent chunks missing or marked corrupt are read again"
    target = tmp_path / "restored.img"
    target.write_bytes(bytes(80 * CHUNK))
    with FileSink(target) as sink:
        restore_disk(repo, again, "d", sink)
    assert sha256_file(target) == sha256_file(disk)


def test_a_check_of_the_parents_chunks_that_fails_commits_nothing(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(random.Random(33).randbytes(80 * CHUNK))
    backend = _ListingBackend()
    repo, parent = _chain_over(backend, disk)
    backend.failure = RepositoryError("listing refused")
    with FileSource(disk) as source, pytest.raises(RepositoryError, match="listing refused"):
        back_up(repo, VmIdentity(id="vm"), [DiskInput("d", source, changed=[])], parent=parent)
    assert [a.archive_id for a in repo.list_archives()] == [parent]
    assert list(backend.list(names.LEASES)) == []  # released: GC is not held up by it


def test_a_merge_without_a_sound_parent_chunk_reads_the_chunk_whole(tmp_path: Path) -> None:
    """Merges need the parent's chunk: one that fails its check when fetched (a bit flip
    no existence check sees), one gone from the store since the chain last looked at it
    (format §8.1's bound), and one marked corrupt are each read whole from the source;
    the archive restores bit-exact."""
    rng = random.Random(15)
    disk = tmp_path / "disk.img"
    disk.write_bytes(rng.randbytes(16 * CHUNK))
    repo = Repository.init(
        MemoryBackend(),
        master_key=MasterKey(b"m" * 20),
        chunk_size=CHUNK,
        kdf=ScryptParams(n=FAST_KDF_N),
    )
    with FileSource(disk) as source:
        full = back_up(repo, VmIdentity(id="vm"), [DiskInput("d", source)])
    changed = [_write(disk, 2 * CHUNK + 10, b"first")]
    with FileSource(disk) as source:
        second = back_up(
            repo,
            VmIdentity(id="vm"),
            [DiskInput("d", source, changed=changed)],
            parent=full.archive_id,
        )
    # The second backup looked at every chunk of the full (its first incremental); the
    # third looks only at the one chunk the second added. Damage three of the full's.
    base = repo.load_index(second, "d")
    flipped = names.chunk_name(base[5])
    blob = bytearray(repo.backend.get(flipped))
    blob[-20] ^= 1
    repo.backend.put(flipped, bytes(blob))  # same size: looks fine until it is read
    repo.backend.delete(names.chunk_name(base[9]))
    repo.backend.put(names.corrupt_name(base[11]), b'{"reason": "test"}')
    changed = [_write(disk, number * CHUNK + 100, rng.randbytes(300)) for number in (5, 9, 11, 13)]
    outcomes: list[DiskOutcome] = []
    with FileSource(disk) as source:
        third = back_up(
            repo,
            VmIdentity(id="vm"),
            [DiskInput("d", source, changed=changed)],
            parent=second.archive_id,
            on_disk=outcomes.append,
        )
    [outcome] = outcomes
    assert third.mode == "incremental"
    # 13 merged; 5 and 9 tried (one aligned block each), then read whole; 11 read whole.
    assert (outcome.chunks_merged, outcome.merges_refused, outcome.chunks_read) == (1, 2, 3)
    assert outcome.stats.bytes_read == 3 * MERGE_ALIGN + 3 * CHUNK
    target = tmp_path / "restored.img"
    with FileSink.create(target, 16 * CHUNK) as sink:
        restore_disk(repo, third, "d", sink)
    assert sha256_file(target) == sha256_file(disk)
