"""Verify finds flipped, truncated and deleted chunks, names every affected archive,
and the next backup repairs them."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.store.conftest import CHUNK
from tests.store.helpers import backup, disk_image, restore
from vmguard.errors import ChunkCorruptError, ChunkMissingError
from vmguard.store import ArchiveManifest, Repository, names
from vmguard.store.verify import verify

MakeRepo = Callable[..., Repository]


def _three_archives(repo: Repository) -> tuple[bytes, list[ArchiveManifest]]:
    image = disk_image(21, 8, CHUNK, tail=5000)
    made = [backup(repo, f"vm-{i}", {"d": image}) for i in range(3)]
    return image, made


def _damage(repo: Repository, manifest: ArchiveManifest) -> dict[str, bytes]:
    ids = sorted(repo.load_index(manifest, "d").referenced())
    flipped, truncated, deleted = ids[0], ids[1], ids[2]
    blob = bytearray(repo.backend.get(names.chunk_name(flipped)))
    blob[len(blob) // 3] ^= 0x01
    repo.backend.put(names.chunk_name(flipped), bytes(blob))
    repo.backend.put(
        names.chunk_name(truncated), repo.backend.get(names.chunk_name(truncated))[:20]
    )
    repo.backend.delete(names.chunk_name(deleted))
    return {"flipped": flipped, "truncated": truncated, "deleted": deleted}


@pytest.mark.parametrize("encrypted", [True, False])
def test_a_clean_repository_verifies_clean_at_both_depths(
    make_repo: MakeRepo, encrypted: bool
) -> None:
    repo = make_repo(encrypted=encrypted)
    image, made = _three_archives(repo)
    for deep in (False, True):
        report = verify(repo, deep=deep)
        assert report.ok, report
        assert report.archives == 3 and report.chunks > 0
    assert verify(repo, deep=True).bytes_read > 0
    assert list(repo.backend.list(names.CORRUPT)) == []
    assert all(restore(repo, m, "d") == image for m in made)


def test_deep_verify_names_each_bad_chunk_and_every_archive(make_repo: MakeRepo) -> None:
    repo = make_repo()
    _, made = _three_archives(repo)
    damaged = _damage(repo, made[0])
    report = verify(repo, deep=True)
    assert not report.ok
    found = {bytes.fromhex(p.chunk_id): p for p in report.chunk_problems}
    assert set(found) == set(damaged.values())
    assert found[damaged["flipped"]].kind == "corrupt"
    assert found[damaged["truncated"]].kind == "corrupt"
    assert found[damaged["deleted"]].kind == "missing"
    every = tuple(sorted(m.archive_id for m in made))
    assert all(p.archives == every for p in report.chunk_problems)
    assert report.affected_archives() == set(every)
    marks = {i.name.rpartition("/")[2] for i in repo.backend.list(names.CORRUPT)}
    assert marks == {c.hex() for c in damaged.values()}


def test_quick_verify_finds_missing_and_truncated_chunks(make_repo: MakeRepo) -> None:
    repo = make_repo()
    _, made = _three_archives(repo)
    damaged = _damage(repo, made[0])
    report = verify(repo)
    kinds = {bytes.fromhex(p.chunk_id): p.kind for p in report.chunk_problems}
    assert kinds == {damaged["truncated"]: "implausible-size", damaged["deleted"]: "missing"}


def test_damaged_indexes_and_manifests_are_archive_problems(make_repo: MakeRepo) -> None:
    repo = make_repo()
    _, made = _three_archives(repo)
    repo.backend.put(made[1].disks[0].index, b"rubbish")
    repo.backend.put(names.manifest_name(made[2].archive_id), b"more rubbish")
    report = verify(repo)
    assert {p.archive_id for p in report.archive_problems} == {
        made[1].archive_id,
        made[2].archive_id,
    }


def test_the_next_backup_repairs_what_verify_found(make_repo: MakeRepo) -> None:
    repo = make_repo()
    image, made = _three_archives(repo)
    _damage(repo, made[0])
    assert not verify(repo, deep=True).ok
    with pytest.raises((ChunkCorruptError, ChunkMissingError)):
        restore(repo, made[0], "d")
    repaired = backup(repo, "vm-new", {"d": image})
    assert repaired.stats.chunks_new == 3
    report = verify(repo, deep=True)
    assert report.ok and list(repo.backend.list(names.CORRUPT)) == []
    for manifest in [*made, repaired]:
        assert restore(repo, manifest, "d") == image


def test_deep_verify_clears_marks_of_healthy_chunks(make_repo: MakeRepo) -> None:
    repo = make_repo()
    _, made = _three_archives(repo)
    chunk_id = sorted(repo.load_index(made[0], "d").referenced())[0]
    repo.backend.put(names.corrupt_name(chunk_id), b"{}")
    report = verify(repo, deep=True)
    assert report.ok and report.marks_cleared == 1
    assert list(repo.backend.list(names.CORRUPT)) == []
