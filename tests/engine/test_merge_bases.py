"""A merge that finds its parent chunk damaged: what the backup may still trust.

A merged chunk needs the parent's chunk (docs/cbt-chain.md, "Reading only what
changed"). When that chunk turns out missing or fails its check, the merge is refused
and the chunk is read whole from the source. These tests check what happens to the
damaged chunk's id afterwards: the backup has just seen that the stored chunk is bad, so
it must not deduplicate against it (a chunk read whole with the same bytes, as when CBT
reports a write of identical data) nor carry it into the new archive at another offset
(the same bytes elsewhere on the disk); both are read from the source and uploaded,
which repairs the stored chunk. Every archive written restores bit-exact.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.engine.helpers import sha256_file
from tests.store.helpers import FAST_KDF_N
from vmguard.engine.backup import DiskInput, DiskOutcome, back_up
from vmguard.engine.restore import restore_disk
from vmguard.store import (
    ArchiveManifest,
    GcPolicy,
    MasterKey,
    Repository,
    ScryptParams,
    VmIdentity,
    names,
)
from vmguard.store.backend import MemoryBackend
from vmguard.store.clock import ManualClock
from vmguard.store.gc import GcReport, collect_garbage
from vmguard.store.prune import retire_archive
from vmguard.store.writer import BackupWriter
from vmguard.transport.extents import Extent
from vmguard.transport.file import FileSink, FileSource

pytestmark = pytest.mark.unit
CHUNK = 64 * 1024
CHUNKS = 12
HOUR = 3600


def _repo() -> Repository:
    return Repository.init(
        MemoryBackend(),
        master_key=MasterKey(b"merge bases master key"),
        chunk_size=CHUNK,
        kdf=ScryptParams(n=FAST_KDF_N),
    )


def _backup(
    repo: Repository, disk: Path, parent: ArchiveManifest | None, changed: list[Extent] | None
) -> tuple[ArchiveManifest, DiskOutcome]:
    outcomes: list[DiskOutcome] = []
    with FileSource(disk) as source:
        manifest = back_up(
            repo,
            VmIdentity(id="vm-merge"),
            [DiskInput("d", source, changed=changed)],
            parent=parent.archive_id if parent else None,
            workers=2,
            depth=3,
            on_disk=outcomes.append,
        )
    return manifest, outcomes[0]


def _restored(repo: Repository, manifest: ArchiveManifest, tmp: Path) -> str:
    target = tmp / f"restored-{manifest.archive_id}.img"
    target.unlink(missing_ok=True)
    with FileSink.create(target, CHUNKS * CHUNK) as sink:
        restore_disk(repo, manifest, "d", sink)
    return sha256_file(target)


def _damage(repo: Repository, chunk_id: bytes, how: str) -> None:
    name = names.chunk_name(chunk_id)
    if how == "deleted":
        repo.backend.delete(name)
        return
    blob = bytearray(repo.backend.get(name))
    blob[-20] ^= 1  # same size: no existence check sees it, the merge's id check does
    repo.backend.put(name, bytes(blob))


def _chain(tmp: Path, data: bytes) -> tuple[Repository, Path, ArchiveManifest]:
    """A full and a first incremental (which looks at every chunk of the full, so the
    next one trusts them unseen: format §8.1) of a disk holding ``data``."""
    repo = _repo()
    disk = tmp / "disk.img"
    disk.write_bytes(data)
    full, _ = _backup(repo, disk, None, None)
    with open(disk, "r+b") as f:
        f.seek(CHUNK + 10)
        f.write(b"first change")
    second, _ = _backup(repo, disk, full, [Extent(CHUNK + 10, 12)])
    return repo, disk, second


@pytest.mark.parametrize("how", ["flipped", "deleted"])
def test_a_rewrite_of_the_same_bytes_over_a_damaged_base_uploads_the_chunk_again(
    how: str, tmp_path: Path
) -> None:
    """CBT reports a write; the bytes written are those already there (a database
    rewriting a page unchanged). The merge finds the parent's chunk damaged, the chunk
    is read whole, and its id is the damaged chunk's: it must be uploaded, not found."""
    repo, disk, parent = _chain(tmp_path, random.Random(1).randbytes(CHUNKS * CHUNK))
    damaged = repo.load_index(parent, "d")[5]
    _damage(repo, damaged, how)
    same = disk.read_bytes()[5 * CHUNK + 300 : 5 * CHUNK + 400]
    with open(disk, "r+b") as f:
        f.seek(5 * CHUNK + 300)
        f.write(same)
    third, outcome = _backup(repo, disk, parent, [Extent(5 * CHUNK + 300, 100)])

    assert (outcome.chunks_merged, outcome.merges_refused, outcome.chunks_read) == (0, 1, 1)
    assert repo.load_index(third, "d")[5] == damaged  # the same bytes, so the same id
    assert _restored(repo, third, tmp_path) == sha256_file(disk)
    assert repo.read_chunk(damaged)  # repaired: what the older archives need is back
    assert not list(repo.backend.list(names.CORRUPT))


def test_a_damaged_base_carried_at_another_offset_is_read_again(tmp_path: Path) -> None:
    """Chunks 5 and 6 hold the same bytes, so one stored chunk. A change in 5 finds it
    damaged; 6, unchanged, would carry the damaged chunk into the new archive."""
    rng = random.Random(2)
    blocks = [rng.randbytes(CHUNK) for _ in range(CHUNKS)]
    blocks[6] = blocks[5]
    repo, disk, parent = _chain(tmp_path, b"".join(blocks))
    damaged = repo.load_index(parent, "d")[5]
    assert repo.load_index(parent, "d")[6] == damaged
    _damage(repo, damaged, "flipped")
    with open(disk, "r+b") as f:
        f.seek(5 * CHUNK + 1000)
        f.write(b"a real change")
    third, outcome = _backup(repo, disk, parent, [Extent(5 * CHUNK + 1000, 13)])

    assert (outcome.chunks_merged, outcome.merges_refused) == (0, 1)
    assert outcome.chunks_read == 2  # 5 (refused) and 6 (carried a damaged chunk)
    assert outcome.stats.bytes_read == 4096 + 2 * CHUNK
    assert _restored(repo, third, tmp_path) == sha256_file(disk)
    assert repo.read_chunk(damaged)  # 6's upload repaired it for the older archives
    assert not list(repo.backend.list(names.CORRUPT))


def test_a_damaged_base_nothing_repairs_is_marked_corrupt(tmp_path: Path) -> None:
    """The merge's finding is recorded where verify records its own (format §8): the
    older archives that need the chunk are damaged, and every writer stops trusting it."""
    repo, disk, parent = _chain(tmp_path, random.Random(3).randbytes(CHUNKS * CHUNK))
    damaged = repo.load_index(parent, "d")[7]
    _damage(repo, damaged, "deleted")
    with open(disk, "r+b") as f:
        f.seek(7 * CHUNK)
        f.write(b"new bytes")
    third, outcome = _backup(repo, disk, parent, [Extent(7 * CHUNK, 9)])

    assert outcome.merges_refused == 1
    assert _restored(repo, third, tmp_path) == sha256_file(disk)
    marked = {names.chunk_id_from_name(info.name) for info in repo.backend.list(names.CORRUPT)}
    assert marked == {damaged}


def test_merge_bases_are_held_against_gc_while_the_backup_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Format §8.2 rule 3: the parent's chunks a merge fetches are held by the backup's
    lease as the chunks it carries are (§7.5). The parent is pruned and GC runs, hours
    later, after the plan and before any merge: nothing is collected, every merge finds
    its base. Once the backup has committed, GC collects the bases nothing needs now."""
    clock = ManualClock()
    repo = Repository.init(
        MemoryBackend(clock=clock.now),
        master_key=MasterKey(b"merge bases master key"),
        chunk_size=CHUNK,
        kdf=ScryptParams(n=FAST_KDF_N),
        gc=GcPolicy(lease_ttl_seconds=600, grace_seconds=HOUR),
        clock=clock,
    )
    disk = tmp_path / "disk.img"
    disk.write_bytes(random.Random(4).randbytes(CHUNKS * CHUNK))
    full, _ = _backup(repo, disk, None, None)
    clock.advance(2 * HOUR)  # the full's chunks are older than any cutoff
    changed = []
    with open(disk, "r+b") as f:
        for number in (2, 5, 8):
            f.seek(number * CHUNK + 512)
            f.write(b"changed")
            changed.append(Extent(number * CHUNK + 512, 7))
    writers: list[BackupWriter] = []
    begin = repo.begin_backup

    def begin_held(vm: VmIdentity, *, parent: str | None = None) -> BackupWriter:
        writers.append(begin(vm, parent=parent, auto_refresh=False))  # refreshed below
        return writers[-1]

    monkeypatch.setattr(repo, "begin_backup", begin_held)
    reports: list[GcReport] = []

    def prune_and_collect(done: int, goal: int) -> None:
        if reports:
            return
        [writer] = writers  # planned (the parent's index is loaded), nothing fetched yet
        assert retire_archive(repo, full.archive_id) is None
        for _ in range(3 * HOUR // 120):  # hours pass; the backup refreshes its lease
            clock.advance(120)
            writer.lease.refresh()
        reports.append(collect_garbage(repo, auto_refresh=False))

    outcomes: list[DiskOutcome] = []
    with FileSource(disk) as source:
        manifest = back_up(
            repo,
            VmIdentity(id="vm-merge"),
            [DiskInput("d", source, changed=changed)],
            parent=full.archive_id,
            progress=prune_and_collect,
            on_disk=outcomes.append,
        )
    [report] = reports
    assert (report.candidates, report.fossilised, report.trash_emptied) == (0, 0, 0)
    assert (outcomes[0].chunks_merged, outcomes[0].merges_refused) == (3, 0)
    assert _restored(repo, manifest, tmp_path) == sha256_file(disk)

    bases = {repo.load_index(full, "d")[n] for n in (2, 5, 8)}
    clock.advance(2 * HOUR)
    collect_garbage(repo, auto_refresh=False)  # empties the trash, fossilises the bases
    clock.advance(2 * HOUR)
    collect_garbage(repo, auto_refresh=False)  # deletes the fossils
    stored = {names.chunk_id_from_name(i.name) for i in repo.backend.list(names.CHUNKS)}
    assert not bases & stored
    assert not list(repo.backend.list(names.FOSSILS))
    assert _restored(repo, manifest, tmp_path) == sha256_file(disk)
