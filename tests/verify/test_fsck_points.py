"""Acceptance (issue 18, item 1): the file-system checks of a point, run on factory
images backed up by the real engine, through the real nbdkit (cow + offset filters),
nbdfuse and each file system's own checker.

A clean point passes every check; a crash-consistent ext4 point (committed journal,
partial checkpoint) passes after the journal replay into the overlay; damaged ext4 and
NTFS volumes fail, naming the volume and the checker's message. Each check fetches no
more than the disk's allocated bytes + 10% and writes no file over 64 MiB.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.files.helpers import DISK_KEY, back_up_image
from vmguard.engine.backup import DiskInput, back_up
from vmguard.store import Repository, VmIdentity
from vmguard.store.backend import LocalBackend
from vmguard.transport.file import FileSource
from vmguard.verify.results import Check, Outcome, PointVerification
from vmguard.verify.runner import VerifyOptions, verify_point
from vmguard_lab import images
from vmguard_lab.images import DiskImage, DiskImageFactory, ImageSpec
from vmguard_lab.imaging import damage

pytestmark = pytest.mark.lab

SEED = 1818
#: small chunks, so that "fetched" measures what the checker read, not chunk rounding
CHUNK = 1 << 20
FILE_BOUND = 64 << 20


def _verify(repo_dir: Path, repo: Repository, archive_id: str, work: Path) -> PointVerification:
    work.mkdir()
    options = VerifyOptions(workdir=work)
    manifest = repo.load_archive(archive_id)
    point = verify_point(repo, manifest, options, repo_url=str(repo_dir), env=os.environ)
    assert list(work.iterdir()) == [], "the check left files behind"
    return point


def _point(tmp_path: Path, image: DiskImage) -> tuple[Path, Repository, str]:
    repo_dir = tmp_path / "repo"
    repo = Repository.init(LocalBackend(repo_dir), chunk_size=CHUNK)
    return repo_dir, repo, back_up_image(repo, "vm-verify", image.path).archive_id


@pytest.mark.parametrize(
    ("spec", "filesystems"),
    [
        (images.gpt_ext4(), {"p1": "fat", "p2": "ext4"}),
        (images.mbr_ntfs(), {"p1": "ntfs"}),
        (images.xfs(), {"p1": "xfs"}),
        (images.fat(), {"p1": "fat"}),
    ],
    ids=["gpt-ext4", "mbr-ntfs", "xfs", "fat"],
)
def test_a_clean_point_passes_every_file_system_check(
    spec: ImageSpec,
    filesystems: dict[str, str],
    disk_factory: DiskImageFactory,
    tmp_path: Path,
) -> None:
    image = disk_factory.build(spec, SEED, tmp_path / "disk.img")
    repo_dir, repo, archive_id = _point(tmp_path, image)

    point = _verify(repo_dir, repo, archive_id, tmp_path / "work")

    checked = {r.volume: r for r in point.results if r.check == Check.FSCK and r.fs}
    assert {v: r.fs for v, r in checked.items()} == filesystems
    for result in checked.values():
        assert result.result == Outcome.PASSED, result
        assert result.tool is not None
        assert result.overlay_bytes <= FILE_BOUND
    assert point.clean
    fetched = sum(r.bytes_fetched for r in point.results)
    assert 0 < fetched <= image.allocated * 1.1, (fetched, image.allocated)


def _raw_volume(image: DiskImage, number: int, out: Path) -> Path:
    part = image.partition(number)
    with open(image.path, "rb") as src, open(out, "wb") as dst:
        src.seek(part.offset)
        dst.write(src.read(part.length))
    return out


def test_a_crash_consistent_point_passes_after_journal_replay(
    disk_factory: DiskImageFactory, tmp_path: Path
) -> None:
    """A running Linux VM's disk: ext4 with a committed, partly checkpointed journal, and
    its EFI partition (FAT) mounted, so marked dirty."""
    image = disk_factory.build(images.gpt_ext4(), SEED, tmp_path / "disk.img")
    part = image.partition(2)
    damage.dirty_ext4_journal(image.path, part.offset, part.length, tmp_path)
    damage.set_fat_dirty_bit(image.path, image.partition(1).offset)
    # the premise: without the replay, the read-only checks fail on this point
    raw = _raw_volume(image, 2, tmp_path / "p2.ext4")
    premise = subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True, text=True)
    assert premise.returncode == 4, premise.stdout
    header = subprocess.run(["dumpe2fs", "-h", str(raw)], capture_output=True, text=True)
    assert "needs_recovery" in header.stdout
    raw.unlink()
    raw = _raw_volume(image, 1, tmp_path / "p1.fat")
    premise = subprocess.run(["fsck.fat", "-n", str(raw)], capture_output=True, text=True)
    assert premise.returncode == 1 and "Dirty bit is set" in premise.stdout, premise.stdout
    raw.unlink()
    repo_dir, repo, archive_id = _point(tmp_path, image)

    point = _verify(repo_dir, repo, archive_id, tmp_path / "work")

    esp = next(r for r in point.results if r.volume == "p1")
    assert (esp.fs, esp.result) == ("fat", Outcome.PASSED), esp.findings
    assert "dirty bit set" in esp.findings[0]["message"]
    ext4 = next(r for r in point.results if r.volume == "p2")
    assert ext4.fs == "ext4"
    assert ext4.result == Outcome.PASSED, ext4.findings
    assert 0 < ext4.overlay_bytes <= FILE_BOUND  # the replay wrote, into the overlay only
    assert point.clean
    assert sum(r.bytes_fetched for r in point.results) <= image.allocated * 1.1
    # the archive itself still holds the dirty journal: a second check replays it again
    again = _verify(repo_dir, repo, archive_id, tmp_path / "again")
    assert next(r for r in again.results if r.volume == "p2").overlay_bytes > 0


def test_damaged_ext4_superblock_and_ntfs_mft_fail_naming_volume_and_message(
    disk_factory: DiskImageFactory, tmp_path: Path
) -> None:
    ext4 = disk_factory.build(images.gpt_ext4(), SEED, tmp_path / "ext4.img")
    ntfs = disk_factory.build(images.mbr_ntfs(), SEED, tmp_path / "ntfs.img")
    damage.damage_ext4_superblock(ext4.path, ext4.partition(2).offset)
    damage.damage_ntfs_mft(ntfs.path, ntfs.partition(1).offset)
    repo_dir = tmp_path / "repo"
    repo = Repository.init(LocalBackend(repo_dir), chunk_size=CHUNK)
    with FileSource(ext4.path) as first, FileSource(ntfs.path) as second:
        manifest = back_up(
            repo,
            VmIdentity(id="vm-damaged", name="damaged"),
            [DiskInput(DISK_KEY, first, label="Hard disk 1"), DiskInput("2001", second)],
        )

    point = _verify(repo_dir, repo, manifest.archive_id, tmp_path / "work")

    by_volume = {(r.disk, r.volume): r for r in point.results}
    assert by_volume[(DISK_KEY, "p1")].result == Outcome.PASSED  # the ESP is intact
    broken_ext4 = by_volume[(DISK_KEY, "p2")]
    assert (broken_ext4.fs, broken_ext4.result) == ("ext4", Outcome.FAILED)
    messages = [f["message"] for f in broken_ext4.findings]
    assert messages[0] == "e2fsck exited 8"
    assert any("Superblock" in m for m in messages), messages
    broken_ntfs = by_volume[("2001", "p1")]
    assert (broken_ntfs.fs, broken_ntfs.result) == ("ntfs", Outcome.FAILED)
    messages = [f["message"] for f in broken_ntfs.findings]
    assert any("$MFT" in m for m in messages), messages
    assert not point.clean
    assert all(r.overlay_bytes <= FILE_BOUND for r in point.results)
