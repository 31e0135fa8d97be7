"""Copying archives between repositories with different keys (vmguard.store.copy).

On memory backends: restores are bit-exact from the target, an incremental copy reads
only the chunks that changed (counted), a re-run is a no-op, and a target that is the
source, overlaps it or has another chunk size is refused before anything is written.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.store.conftest import CHUNK
from tests.store.helpers import FAST_KDF_N, backup, disk_image, restore
from vmguard.errors import ConfigError
from vmguard.store import HOLE, FixedIndex, MasterKey, Repository, ScryptParams, names
from vmguard.store.backend import LocalBackend, MemoryBackend
from vmguard.store.copy import (
    COPIED_FROM_LABEL,
    check_distinct,
    copy_archive,
    copy_archives,
    select_archives,
)
from vmguard.store.verify import verify

pytestmark = pytest.mark.unit
SOURCE_KEY = MasterKey(b"source master key, long enough")
TARGET_KEY = MasterKey(b"target master key, long enough")
CHANGED = {1, 4, 6}


def _repo(key: MasterKey | None, chunk_size: int = CHUNK, level: int = 3) -> Repository:
    return Repository.init(
        MemoryBackend(),
        master_key=key,
        chunk_size=chunk_size,
        compression_level=level,
        kdf=ScryptParams(n=FAST_KDF_N),
    )


def _changed(image: bytes, numbers: set[int], seed: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray(image)
    for n in numbers:
        out[n * CHUNK : (n + 1) * CHUNK] = rng.randbytes(CHUNK)
    return bytes(out)


def _chain(source: Repository) -> tuple[list[str], list[bytes]]:
    """A full and two incremental backups of one VM; their ids and disk images."""
    images = [disk_image(7, 10, CHUNK, tail=1000)]
    images.append(_changed(images[0], CHANGED, 8))
    images.append(_changed(images[1], CHANGED, 9))
    ids: list[str] = []
    for image in images:
        parent = ids[-1] if ids else None
        changed = {"d0": CHANGED} if parent else None
        ids.append(backup(source, "vm-1", {"d0": image}, parent=parent, changed=changed).archive_id)
    return ids, images


@pytest.mark.parametrize("workers", [1, 4])
def test_copies_restore_bit_exact_and_incrementals_read_only_changed_chunks(workers: int) -> None:
    source, target = _repo(SOURCE_KEY), _repo(TARGET_KEY)
    ids, images = _chain(source)
    first = source.load_index(source.load_archive(ids[0]), "d0")
    stored = len({c for c in first if c != HOLE})

    report = copy_archives(source, target, select_archives(source, vm_id="vm-1"), workers=workers)

    full, inc1, inc2 = report.copies
    assert (full.chunks_read, full.chunks_mapped, full.based_on) == (stored, 0, None)
    for inc, base in ((inc1, full), (inc2, inc1)):
        assert inc.based_on == base.target_archive
        assert inc.chunks_read == len(CHANGED)
        assert inc.chunks_uploaded == len(CHANGED)
        assert inc.chunks_mapped == stored - len(CHANGED - _holes(first))
    for result, image in zip(report.copies, images, strict=True):
        manifest = target.load_archive(result.target_archive)
        assert manifest.labels[COPIED_FROM_LABEL] == result.source_archive
        assert restore(target, manifest, "d0") == image
    # Different keys: no chunk id of the source names a chunk of the target.
    src_ids = {c for c in first if c != HOLE}
    tgt = target.load_index(target.load_archive(full.target_archive), "d0")
    assert src_ids.isdisjoint(set(tgt))
    assert verify(target, deep=True).ok


def _payloads(repo: Repository, archive_id: str) -> list[bytes | None]:
    """Per position of disk d0: the chunk's stored zstd frame (None: hole or raw)."""
    index = repo.load_index(repo.load_archive(archive_id), "d0")
    frames: list[bytes | None] = []
    for chunk_id in index:
        frame = None if chunk_id == HOLE else repo.open_chunk(chunk_id).frame
        frames.append(None if frame is None else bytes(frame))
    return frames


@pytest.mark.parametrize(("source_level", "target_level"), [(19, 19), (19, 1)])
def test_the_source_frame_is_kept_at_the_same_level_and_compressed_again_at_another(
    source_level: int, target_level: int
) -> None:
    """Same compression level: each chunk's zstd frame goes into the target as it is
    (only re-encrypted, under the target's keyed id); another level: compressed again
    at the target's. Either way the copy restores bit-exact and verifies deep."""
    source = _repo(SOURCE_KEY, level=source_level)
    target = _repo(TARGET_KEY, level=target_level)
    ids, images = _chain(source)
    result = copy_archive(source, target, ids[0], workers=2)
    src, dst = _payloads(source, ids[0]), _payloads(target, result.target_archive)
    frames = [(a, b) for a, b in zip(src, dst, strict=True) if a is not None]
    assert frames, "the image has compressible chunks"
    same = [a == b for a, b in frames]
    assert all(same) if source_level == target_level else not any(same)
    # Raw (incompressible) and hole positions stay what they were.
    assert [a is None for a in src] == [b is None for b in dst]
    assert restore(target, target.load_archive(result.target_archive), "d0") == images[0]
    assert verify(target, deep=True).ok


def _holes(index: FixedIndex) -> set[int]:
    return {n for n, c in enumerate(index) if c == HOLE}


def test_a_second_run_copies_nothing_and_a_lone_archive_maps_through_an_earlier_copy() -> None:
    source, target = _repo(SOURCE_KEY), _repo(TARGET_KEY)
    ids, images = _chain(source)
    copy_archive(source, target, ids[0])
    # The middle archive is skipped: the last one maps through the full's copy.
    last = copy_archive(source, target, ids[2])
    assert last.based_on is not None and not last.skipped
    assert restore(target, target.load_archive(last.target_archive), "d0") == images[2]
    before = len(target.list_archives())
    again = copy_archives(source, target, [ids[0], ids[2]])
    assert [c.skipped for c in again.copies] == [True, True]
    assert again.chunks_read == 0
    assert len(target.list_archives()) == before


def test_a_chunk_at_several_positions_is_read_once_by_parallel_workers() -> None:
    source, target = _repo(SOURCE_KEY), _repo(TARGET_KEY)
    rng = random.Random(5)
    a, b = rng.randbytes(CHUNK), rng.randbytes(CHUNK)
    image = a + b + a + bytes(CHUNK) + a + rng.randbytes(CHUNK) + b
    archive = backup(source, "vm-1", {"d0": image}).archive_id

    result = copy_archive(source, target, archive, workers=4)

    assert (result.chunks_read, result.chunks_uploaded, result.chunks_hole) == (3, 3, 1)
    manifest = target.load_archive(result.target_archive)
    assert restore(target, manifest, "d0") == image
    stats = manifest.disks[0].stats
    assert stats is not None and (stats.chunks_new, stats.chunks_reused) == (3, 3)
    assert verify(target, deep=True).ok


def test_unencrypted_target_and_source_work_both_ways() -> None:
    source, target = _repo(None), _repo(TARGET_KEY)
    ids, images = _chain(source)
    report = copy_archives(source, target, ids)
    back = _repo(None)
    again = copy_archives(target, back, [c.target_archive for c in report.copies])
    for copy, image in zip(again.copies, images, strict=True):
        assert restore(back, back.load_archive(copy.target_archive), "d0") == image


def test_target_with_another_chunk_size_is_refused_before_writing() -> None:
    source, target = _repo(SOURCE_KEY), _repo(TARGET_KEY, chunk_size=2 * CHUNK)
    ids, _ = _chain(source)
    before = {i.name for i in target.backend.list()}
    with pytest.raises(ConfigError, match="chunk size 131072 differs from the source's 65536"):
        copy_archives(source, target, ids)
    assert {i.name for i in target.backend.list()} == before


def test_the_source_itself_is_refused_as_target() -> None:
    source = _repo(SOURCE_KEY)
    ids, _ = _chain(source)
    with pytest.raises(ConfigError, match="same repository"):
        copy_archive(source, source, ids[0])


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("s3://h:9000/bucket/p", "s3://h:9000/bucket/p"),
        ("s3://h:9000/bucket/p", "s3://H:9000/bucket/p/q"),
        ("s3://h:9000/bucket", "s3+http://h:9000/bucket/copies"),
        ("s3://h:9000/bucket/p/q/", "s3://h:9000/bucket/p"),
        ("file:///srv/repo", "/srv/repo/copy"),
        ("s3://h/bucket/p", "s3://h.:443/bucket/p/q"),  # the default port, the root's dot
    ],
)
def test_overlapping_locations_are_refused(a: str, b: str) -> None:
    with pytest.raises(ConfigError, match="overlaps the source"):
        check_distinct(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("s3://h:9000/bucket/p", "s3://h:9000/bucket/pq"),
        ("s3://h:9000/bucket/p", "s3://h:9000/other/p"),
        ("s3://h:9000/bucket/p", "s3://g:9000/bucket/p"),
        ("file:///srv/repo", "file:///srv/repo2"),
        ("s3://h/bucket/p", "s3+http://h/bucket/p"),  # ports 443 and 80: two services
    ],
)
def test_disjoint_locations_are_accepted(a: str, b: str) -> None:
    check_distinct(a, b)


def test_a_chunk_the_earlier_copy_lost_is_read_from_the_source_again() -> None:
    source, target = _repo(SOURCE_KEY), _repo(TARGET_KEY)
    ids, images = _chain(source)
    full = copy_archive(source, target, ids[0])
    index = target.load_index(target.load_archive(full.target_archive), "d0")
    lost = next(n for n, c in enumerate(index) if c != HOLE and n not in CHANGED)
    target.backend.delete(names.chunk_name(index[lost]))

    inc = copy_archive(source, target, ids[1])

    assert inc.chunks_read == len(CHANGED) + 1
    assert restore(target, target.load_archive(inc.target_archive), "d0") == images[1]
    assert verify(target, archive_ids=[inc.target_archive], deep=True).ok


def test_repo_copy_without_a_selection_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vmguard.cli.main import main

    argv = ["repo", "copy", "--from", str(tmp_path / "a"), "--to", str(tmp_path / "b")]
    assert main(argv) == 2
    assert "name the archives to copy, or use --vm VM or --all" in capsys.readouterr().err
    assert main([*argv, "--all", "--vm", "x"]) == 2
    assert main(["repo", "copy", "--from", "/srv/r", "--to", "/srv/r/c", "--all"]) == 1
    assert "overlaps the source" in capsys.readouterr().err


def test_the_engine_refuses_a_target_nested_in_the_source(tmp_path: Path) -> None:
    outer = Repository.init(
        LocalBackend(tmp_path / "repo"), chunk_size=CHUNK, kdf=ScryptParams(n=FAST_KDF_N)
    )
    ids, _ = _chain(outer)
    inner = Repository.init(
        LocalBackend(tmp_path / "repo" / "copies"),
        master_key=TARGET_KEY,
        chunk_size=CHUNK,
        kdf=ScryptParams(n=FAST_KDF_N),
    )
    with pytest.raises(ConfigError, match="overlaps the source"):
        copy_archives(outer, inner, ids)
    assert inner.list_archives() == []


def test_repo_copy_with_a_bandwidth_limit_copies_and_a_limit_of_zero_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vmguard.cli.main import main

    source = Repository.init(
        LocalBackend(tmp_path / "a"), chunk_size=CHUNK, kdf=ScryptParams(n=FAST_KDF_N)
    )
    ids, images = _chain(source)
    Repository.init(LocalBackend(tmp_path / "b"), chunk_size=CHUNK, kdf=ScryptParams(n=FAST_KDF_N))
    argv = ["repo", "copy", "--from", str(tmp_path / "a"), "--to", str(tmp_path / "b"), ids[0]]
    assert main([*argv, "--bandwidth-limit", "0"]) == 2
    assert "--bandwidth-limit is in MiB per second and must be positive" in capsys.readouterr().err
    assert main([*argv, "--bandwidth-limit", "1000", "--json"]) == 0
    target = Repository.open(LocalBackend(tmp_path / "b"), None)
    (copy,) = target.list_archives()
    assert restore(target, target.load_archive(copy.archive_id), "d0") == images[0]
