"""Property-based round trips of the backup and restore engines.

Random sparse disks (holes, written zeros, random and compressible data, lengths that
are not a multiple of the chunk size) go through random change sequences; after every
point the engine backs up incrementally with the exact changed extents (or, now and
then, with them unknown: a full-scan), and the test checks:

- every archive restores bit-exact (sha256), through a file sink and an NBD sink
  whose target starts full of garbage (holes must be zeroed);
- an incremental reads from the source exactly the chunks that intersect a changed
  extent and the allocated data — counted at the source — and of each such chunk only
  its changed areas (widened to ``MERGE_ALIGN``) when they are at most
  ``MERGE_MAX_CHANGED`` of it: the rest of a *merged* chunk comes from the parent's
  chunk (or, over a parent hole, is zeros), and the restores above prove it right;
- a full-scan reads every allocated chunk but uploads only what the repository lacks.

Each case is a seed; a failure names it, and ``CASE_SEEDS`` reproduces it.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.engine.helpers import (
    CountingSource,
    chunks_touching,
    content,
    data_extents,
    random_change,
    random_disk,
    sha256_file,
)
from tests.store.helpers import FAST_KDF_N
from vmguard.engine.backup import DiskInput, DiskOutcome, back_up
from vmguard.engine.plan import MERGE_ALIGN, MERGE_MAX_CHANGED
from vmguard.engine.restore import restore_disk
from vmguard.store import (
    HOLE,
    ArchiveManifest,
    MasterKey,
    Repository,
    ScryptParams,
    VmIdentity,
    names,
)
from vmguard.store.backend import MemoryBackend
from vmguard.transport.extents import BlockSource, Extent, normalise
from vmguard.transport.file import FileSink, FileSource

CHUNK = 64 * 1024
KEY = MasterKey(b"round trip master key 0123")
CASE_SEEDS = range(40)
POINTS = 4


def _repo() -> Repository:
    return Repository.init(
        MemoryBackend(), master_key=KEY, chunk_size=CHUNK, kdf=ScryptParams(n=FAST_KDF_N)
    )


OpenSource = Callable[[Path], BlockSource]
RestoreInto = Callable[[Repository, ArchiveManifest, Path, int], None]


def _bytes_per_chunk(extents: list[Extent], chunk_size: int) -> Counter[int]:
    """Bytes of ``extents`` (which may overlap) inside each chunk."""
    found: Counter[int] = Counter()
    for ext in extents:
        pos = ext.offset
        while pos < ext.end:
            end = min(ext.end, (pos // chunk_size + 1) * chunk_size)
            found[pos // chunk_size] += end - pos
            pos = end
    return found


def expected_reads(changed: list[Extent], chunks: set[int], size: int) -> dict[int, int]:
    """Bytes an incremental reads of each chunk it reads: its changed areas, widened to
    MERGE_ALIGN, when they are at most MERGE_MAX_CHANGED of it; else all of it."""
    widened = []
    for e in changed:
        start = e.offset // MERGE_ALIGN * MERGE_ALIGN
        widened.append(Extent(start, min(size, -(-e.end // MERGE_ALIGN) * MERGE_ALIGN) - start))
    fine = _bytes_per_chunk(normalise(widened), CHUNK)
    out = {}
    for number in chunks:
        length = min(CHUNK, size - number * CHUNK)
        out[number] = fine[number] if fine[number] <= MERGE_MAX_CHANGED * length else length
    return out


def run_case(
    seed: int, tmp: Path, open_source: OpenSource, restore_into: RestoreInto
) -> Counter[str]:
    """One seed's chain of backups, checked; returns how many chunks were merged onto a
    parent's chunk ("chunk") and onto a parent's hole ("hole")."""
    merges: Counter[str] = Counter()
    rng = random.Random(seed)
    repo = _repo()
    disk = tmp / f"disk-{seed}.img"
    size = rng.randrange(CHUNK // 2, 24 * CHUNK)
    random_disk(disk, rng, size)
    points: list[tuple[ArchiveManifest, str]] = []
    parent: str | None = None
    for point in range(POINTS):
        changed = random_change(disk, rng) if point else None
        full_scan = point > 0 and rng.random() < 0.25
        source = CountingSource(open_source(disk))
        outcomes: list[DiskOutcome] = []
        try:
            manifest = back_up(
                repo,
                VmIdentity(id=f"vm-{seed}", name="Round trip / ünïcode"),
                [DiskInput("2000", source, changed=None if full_scan else changed)],
                parent=parent,
                workers=3,
                depth=4,
                on_disk=outcomes.append,
            )
        finally:
            source.close()
        allocated = chunks_touching(data_extents(disk), CHUNK)
        stats = manifest.disks[0].stats
        where = f"seed {seed} point {point}"
        if parent is None or full_scan:
            assert manifest.mode == ("full" if parent is None else "full-scan"), where
            assert source.chunks_read(CHUNK) == allocated, where
        else:
            assert changed is not None
            assert manifest.mode == "incremental", where
            expected = chunks_touching(changed, CHUNK) & allocated
            assert source.chunks_read(CHUNK) == expected, where
            reads = expected_reads(changed, expected, size)
            assert dict(_bytes_per_chunk(source.reads, CHUNK)) == reads, where
            merged = {n for n, got in reads.items() if got < min(CHUNK, size - n * CHUNK)}
            [outcome] = outcomes
            assert (outcome.chunks_merged, outcome.merges_refused) == (len(merged), 0), where
            assert outcome.chunks_read == len(expected) - len(merged), where
            before = repo.load_index(points[-1][0], "2000")
            merges.update("hole" if before[n] == HOLE else "chunk" for n in merged)
        assert stats.bytes_read == source.bytes_read(), where
        assert stats.chunks_hole + stats.chunks_reused + stats.chunks_new == -(-size // CHUNK)
        points.append((manifest, sha256_file(disk)))
        parent = manifest.archive_id
    for number, (manifest, digest) in enumerate(points):
        target = tmp / f"restored-{seed}-{number}.img"
        restore_into(repo, manifest, target, size)
        assert sha256_file(target) == digest, f"seed {seed} point {number}"
    return merges


def _restore_to_file(repo: Repository, manifest: ArchiveManifest, target: Path, size: int) -> None:
    sink = FileSink.create(target, size)
    try:
        restore_disk(repo, manifest, manifest.disks[0].key, sink, workers=3, depth=3)
    finally:
        sink.close()


@pytest.mark.unit
@pytest.mark.parametrize("seed", CASE_SEEDS)
def test_round_trip_through_files(seed: int, tmp_path: Path) -> None:
    run_case(seed, tmp_path, FileSource, _restore_to_file)


@pytest.mark.unit
def test_round_trips_merge_onto_parent_chunks_and_holes(tmp_path: Path) -> None:
    """The cases above do reach merged chunks of both kinds, and restore them."""
    merges: Counter[str] = Counter()
    for seed in range(8):
        merges += run_case(seed, tmp_path, FileSource, _restore_to_file)
    assert merges["chunk"] >= 5 and merges["hole"] >= 1, merges


# -- scattered small changes over damaged parent chunks ----------------------------------

BLOCK = 4096
"""The scattered changes' granularity: CBT's 64 KiB is 1/64 of a 4 MiB chunk; at the
tests' 64 KiB chunk that would be 1 KiB, finer than ``MERGE_ALIGN``, so the tests write
whole ``MERGE_ALIGN`` blocks (1/16 of a chunk) and the bytes read can be compared with the
bytes changed exactly."""
DAMAGES = ("flipped", "deleted", "marked")


def _scattered_change(path: Path, rng: random.Random) -> list[Extent]:
    """Rewrite a few random ``BLOCK``s: random bytes, text, zeros, or the bytes already
    there (CBT reports a write whatever it wrote). Returns the blocks, as CBT would."""
    size = path.stat().st_size
    blocks = rng.sample(range(size // BLOCK), rng.randint(1, max(1, size // BLOCK // 12)))
    with open(path, "r+b") as f:
        for block in blocks:
            kind = rng.choice(("random", "text", "zeros", "same"))
            if kind != "same":
                f.seek(block * BLOCK)
                f.write(content(rng, kind, BLOCK))
    return normalise([Extent(block * BLOCK, BLOCK) for block in blocks])


def _damage(repo: Repository, chunk_id: bytes, how: str) -> None:
    """Damage a stored chunk behind the chain's back, as a disk or a person might."""
    name = names.chunk_name(chunk_id)
    if how == "deleted":
        repo.backend.delete(name)
    elif how == "flipped":  # same size: only a read that checks the id sees it
        blob = bytearray(repo.backend.get(name))
        blob[len(blob) // 2] ^= 0x10
        repo.backend.put(name, bytes(blob))
    else:
        repo.backend.put(names.corrupt_name(chunk_id), b'{"reason": "test"}')


def run_scattered_case(seed: int, tmp: Path) -> Counter[str]:
    """A full, then incrementals of scattered ``BLOCK`` changes; before each, some parent
    chunks are damaged: deleted or bit-flipped where a planned merge will fetch them
    (elsewhere no backup looks at their bytes: format §8.1's bound), marked corrupt
    anywhere. Checks per incremental: exactly the planned merges over a sound base are
    merged, the others refused and read whole, chunks the plan knows bad (marked) read
    whole, unchanged ones deleted where the writer's check of the parent's new chunks
    looks read again, bytes
    read at most twice the bytes changed when nothing is damaged, and the archive
    restores bit-exact."""
    rng = random.Random(seed)
    repo = _repo()
    disk = tmp / f"scattered-{seed}.img"
    size = rng.randrange(4 * CHUNK, 20 * CHUNK) // BLOCK * BLOCK
    random_disk(disk, rng, size)
    seen: Counter[str] = Counter()
    with FileSource(disk) as source:
        parent = back_up(repo, VmIdentity(id=f"vm-s{seed}"), [DiskInput("d", source)])
    grandparent: ArchiveManifest | None = None
    for point in range(1, POINTS):
        changed = _scattered_change(disk, rng)
        before = repo.load_index(parent, "d")
        # The writer looks at the chunks its parent added (format §8.1, rule 2).
        looked_at = before.referenced() - (
            repo.load_index(grandparent, "d").referenced() if grandparent else set()
        )
        touched = chunks_touching(changed, CHUNK) & chunks_touching(data_extents(disk), CHUNK)
        reads = expected_reads(changed, touched, size)
        merges = {n for n in touched if reads[n] < min(CHUNK, size - n * CHUNK)}
        fetched = {before[n] for n in merges} - {HOLE}
        damage: dict[bytes, str] = {}
        for chunk_id in sorted(before.referenced()):
            how = rng.choice(DAMAGES)
            if rng.random() < 0.3 and (how == "marked" or chunk_id in fetched):
                damage[chunk_id] = how
                _damage(repo, chunk_id, how)
        source = CountingSource(FileSource(disk))
        outcomes: list[DiskOutcome] = []
        try:
            manifest = back_up(
                repo,
                VmIdentity(id=f"vm-s{seed}"),
                [DiskInput("d", source, changed=changed)],
                parent=parent.archive_id,
                workers=1,  # one worker: a base shared by two merges is refused by both
                depth=2,
                on_disk=outcomes.append,
            )
        finally:
            source.close()
        [outcome] = outcomes
        where = f"seed {seed} point {point}"
        # The plan knows the marks; what the writer's check finds missing (it runs beside
        # the reads) refuses a merge when its fetch fails, or is read in the second pass.
        known_bad = {c for c, how in damage.items() if how == "marked"}
        marked = {n for n, c in enumerate(before) if c in known_bad}
        lost = {
            n
            for n, c in enumerate(before)
            if n not in touched and c in looked_at and damage.get(c) == "deleted"
        }
        planned = merges - marked
        refused = {n for n in planned if damage.get(before[n]) in ("flipped", "deleted")}
        assert manifest.mode == "incremental", where
        assert (outcome.chunks_merged, outcome.merges_refused) == (
            len(planned) - len(refused),
            len(refused),
        ), where
        assert outcome.stats.bytes_read == source.bytes_read(), where
        assert outcome.carried_reread >= len(lost), where  # found missing: read again
        if not damage:
            assert outcome.stats.bytes_read <= 2 * sum(e.length for e in changed), where
        target = tmp / f"scattered-{seed}-{point}.img"
        _restore_to_file(repo, manifest, target, size)
        assert sha256_file(target) == sha256_file(disk), where
        seen.update(
            merged=len(planned) - len(refused),
            refused=len(refused),
            marked=len(marked),
            reread=outcome.carried_reread,
        )
        grandparent, parent = parent, manifest
    return seen


@pytest.mark.unit
@pytest.mark.parametrize("seed", range(200, 224))
def test_scattered_changes_over_damaged_parents_restore_bit_exact(
    seed: int, tmp_path: Path
) -> None:
    run_scattered_case(seed, tmp_path)


@pytest.mark.unit
def test_scattered_cases_merge_refuse_and_repair(tmp_path: Path) -> None:
    """The cases above do reach every path: merges, refusals of a damaged base, marked
    chunks read whole."""
    seen: Counter[str] = Counter()
    for seed in range(200, 212):
        seen += run_scattered_case(seed, tmp_path)
    assert seen["merged"] >= 20 and seen["refused"] >= 5 and seen["marked"] >= 5, seen


@pytest.mark.unit
def test_full_scan_uploads_only_what_the_repository_lacks(tmp_path: Path) -> None:
    rng = random.Random(99)
    disk = tmp_path / "disk.img"
    random_disk(disk, rng, 20 * CHUNK + 123)
    repo = _repo()
    with FileSource(disk) as source:
        first = back_up(repo, VmIdentity(id="vm"), [DiskInput("d", source)])
    touched = random_change(disk, rng, max_extents=2) or []
    with FileSource(disk) as source:
        again = back_up(
            repo, VmIdentity(id="vm"), [DiskInput("d", source)], parent=first.archive_id
        )
    assert again.mode == "full-scan" and again.mode_reason == "d: changed areas unknown"
    new_ids = repo.load_index(again, "d").referenced() - repo.load_index(first, "d").referenced()
    assert again.stats.chunks_new == len(new_ids) <= len(chunks_touching(touched, CHUNK))
    assert again.stats.bytes_read == sum(
        min(CHUNK, 20 * CHUNK + 123 - n * CHUNK) for n in chunks_touching(data_extents(disk), CHUNK)
    )


@pytest.mark.unit
def test_resized_disk_is_a_full_scan_and_restores(tmp_path: Path) -> None:
    rng = random.Random(5)
    disk = tmp_path / "disk.img"
    random_disk(disk, rng, 10 * CHUNK)
    repo = _repo()
    with FileSource(disk) as source:
        first = back_up(repo, VmIdentity(id="vm"), [DiskInput("d", source)])
    with open(disk, "ab") as f:
        f.write(rng.randbytes(CHUNK + 17))
    with FileSource(disk) as source:
        grown = back_up(
            repo, VmIdentity(id="vm"), [DiskInput("d", source, changed=[])], parent=first.archive_id
        )
    assert grown.mode == "full-scan" and "size changed" in grown.mode_reason
    target = tmp_path / "out.img"
    _restore_to_file(repo, grown, target, disk.stat().st_size)
    assert sha256_file(target) == sha256_file(disk)


# -- through NBD: nbdkit's file plugin serves the disk and the restore target -----------


class _ServedSource:
    """An NbdSource that also stops the nbdkit serving it when closed."""

    def __init__(self, path: Path) -> None:
        from vmguard.transport.nbd import NbdkitServer, NbdSource

        self._server = NbdkitServer.file(path)
        self._source = NbdSource(self._server.uri, in_flight=4)

    def __getattr__(self, name: str) -> object:
        return getattr(self._source, name)

    @property
    def size(self) -> int:
        return self._source.size

    def close(self) -> None:
        self._source.close()
        self._server.close()


@contextmanager
def _served_target(target: Path, size: int) -> Iterator[str]:
    from vmguard.transport.nbd import NbdkitServer

    with open(target, "wb") as f:  # a used disk: old data everywhere, holes must be zeroed
        f.write(os.urandom(size))
    with NbdkitServer.file(target, readonly=False) as server:
        yield server.uri


def _restore_through_nbd(
    repo: Repository, manifest: ArchiveManifest, target: Path, size: int
) -> None:
    from vmguard.transport.nbd import NbdSink

    with _served_target(target, size) as uri:
        sink = NbdSink(uri, in_flight=4)
        try:
            restore_disk(repo, manifest, manifest.disks[0].key, sink, zero_holes=True, workers=3)
        finally:
            sink.close()


@pytest.mark.lab
@pytest.mark.parametrize("seed", range(100, 106))
def test_round_trip_through_nbd(seed: int, tmp_path: Path) -> None:
    run_case(seed, tmp_path, _ServedSource, _restore_through_nbd)  # type: ignore[arg-type]
