"""Acceptance: every file of three backup points restores with that point's bytes,
mtimes and modes, on GPT+ext4 (with a FAT EFI partition), MBR+NTFS, FAT and XFS.

Each disk is built at points 0, 1 and 2 by the image factory (files changed in place,
added and deleted between points) and backed up by the real backup engine into one
repository as three archives of one VM: a full backup of point 0, then incrementals
that carry the parent's chunks and read only the areas the factory reports changed (as
CBT would). Every archive is listed and restored in full. The truth is the factory's
manifest of each point: the tree the image was built from.
"""

from __future__ import annotations

import hashlib
import os
import stat as st
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.files.helpers import back_up_image, back_up_next_point
from vmguard.files.browse import DiskFiles
from vmguard.files.restore import DirectorySink, restore_paths
from vmguard.store import Repository
from vmguard.store.backend import LocalBackend
from vmguard_lab import images
from vmguard_lab.images import DiskImage, DiskImageFactory, ImageSpec, ManifestEntry
from vmguard_lab.imaging.tree import AWKWARD_NAMES

pytestmark = pytest.mark.lab

SEED = 7031
SPECS: dict[str, Callable[[], ImageSpec]] = {
    "gpt_ext4": images.gpt_ext4,
    "mbr_ntfs": images.mbr_ntfs,
    "fat": images.fat,
    "xfs": images.xfs,
}
#: entries a filesystem creates by itself, not part of the tree
NATIVE = {"ext4": {"lost+found"}}
POSIX_MODES = {"ext4", "xfs"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _check_restored(root: Path, fs: str, manifest: dict[str, ManifestEntry]) -> None:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            found[full.relative_to(root).as_posix()] = full
    missing = set(manifest) - set(found)
    extra = {p for p in set(found) - set(manifest) if p.split("/")[0] not in NATIVE.get(fs, ())}
    assert not missing, sorted(missing)[:5]
    assert not extra, sorted(extra)[:5]
    for path, want in manifest.items():
        got = found[path]
        info = os.lstat(got)
        assert info.st_mtime_ns == want.mtime * 10**9, path
        if want.type == "file":
            assert st.S_ISREG(info.st_mode), path
            assert info.st_size == want.size, path
            assert _sha256(got) == want.sha256, path
        elif want.type == "dir":
            assert st.S_ISDIR(info.st_mode), path
        else:
            assert st.S_ISLNK(info.st_mode), path
            assert os.readlink(got) == want.target, path
        if fs in POSIX_MODES and want.type != "symlink":
            assert st.S_IMODE(info.st_mode) == want.mode, path


@pytest.fixture(scope="module", params=sorted(SPECS))
def three_points(
    request: pytest.FixtureRequest,
    disk_factory: DiskImageFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Repository, list[tuple[DiskImage, str]]]:
    name = request.param
    work = tmp_path_factory.mktemp(f"points-{name}")
    repo = Repository.init(LocalBackend(work / "repo"))
    spec: ImageSpec = SPECS[name]()
    vm = f"vm-{name}"
    points: list[tuple[DiskImage, str]] = []
    previous: DiskImage | None = None
    for step in range(3):
        image = disk_factory.build(
            spec.next_point(step) if step else spec, SEED, work / f"{step}.img"
        )
        if previous is None:
            manifest = back_up_image(repo, vm, image.path)
            assert manifest.mode == "full", manifest.mode_reason
        else:
            manifest = back_up_next_point(repo, vm, previous, image, points[-1][1])
            # the parent's chunks carried, only the changed areas read: what CBT gives
            assert (manifest.mode, manifest.mode_reason) == ("incremental", "")
            previous.path.unlink()  # the repository is the only copy from here on
        points.append((image, manifest.archive_id))
        previous = image
    assert previous is not None
    previous.path.unlink()
    return repo, points


def test_every_point_restores_its_own_tree(
    three_points: tuple[Repository, list[tuple[DiskImage, str]]], tmp_path: Path
) -> None:
    repo, points = three_points
    changed_seen = False
    for step, (image, archive_id) in enumerate(points):
        manifest = repo.load_archive(archive_id)
        target = tmp_path / f"point-{step}"
        report = restore_paths(repo, manifest, ["*"], DirectorySink(target))
        assert report.ok, report.errors[:3]
        for part in image.partitions:
            if part.fs == "raw":
                assert not (target / f"p{part.number}").exists()
                continue
            _check_restored(target / f"p{part.number}", part.fs, part.manifest)
            if step and part.changes.get("changed"):
                changed_seen = True
    assert changed_seen, "the points differ by in-place changes, so this proves point isolation"


def test_listing_matches_each_point(
    three_points: tuple[Repository, list[tuple[DiskImage, str]]],
) -> None:
    repo, points = three_points
    for image, archive_id in points:
        with DiskFiles(repo, repo.load_archive(archive_id)) as files:
            names = {v.name: v for v in files.volumes}
            for part in image.partitions:
                volume = names[f"p{part.number}"]
                assert volume.offset == part.offset and volume.size == part.length
                if part.fs == "raw":
                    continue
                listed = {loc.entry.path: loc.stat for loc in files.walk(volume.name)}
                listed.pop("")
                for native in NATIVE.get(part.fs, set()):
                    listed = {p: s for p, s in listed.items() if p.split("/")[0] != native}
                assert set(listed) == set(part.manifest)
                for path, want in part.manifest.items():
                    assert listed[path].kind == want.type, path
                    assert listed[path].mtime_ns == want.mtime * 10**9, path
                    if want.type == "file":
                        assert listed[path].size == want.size, path
                    if part.fs not in POSIX_MODES:
                        assert listed[path].mode is None, path  # none stored, none invented
                    elif want.type != "symlink":
                        assert listed[path].mode == want.mode, path


def test_awkward_names_round_trip(
    three_points: tuple[Repository, list[tuple[DiskImage, str]]], tmp_path: Path
) -> None:
    """Every awkward name a filesystem can hold restores with its bytes (and mode, where
    the filesystem stores modes); the factory lists the names each one cannot hold."""
    repo, points = three_points
    image, archive_id = points[-1]
    manifest = repo.load_archive(archive_id)
    for part in image.partitions:
        if part.fs == "raw":
            continue
        omitted = set(part.omitted)
        every = {p for p in (*part.manifest, *omitted) if _name(p) in AWKWARD_NAMES}
        assert {_name(p) for p in every} == set(AWKWARD_NAMES), "each is held or omitted"
        awkward = sorted(every - omitted)
        assert set(awkward) <= set(part.manifest)
        # the hardest names wherever the filesystem can hold them: 255 bytes (all four
        # here), a newline (ext4 only: NTFS and FAT forbid control characters, mkfs.xfs's
        # protofile cannot carry whitespace)
        longest = [p for p in awkward if len(os.fsencode(_name(p))) == 255]
        assert longest, f"{part.fs} holds no 255-byte name"
        newline = [p for p in every if "\n" in _name(p)]
        assert newline and all(p in awkward or p in omitted for p in newline)
        # one by one, by exact path: globbing characters and newlines are not special
        # once escaped, and a literal name is looked up, not matched
        sink = DirectorySink(tmp_path / part.fs)
        patterns = [f"p{part.number}/" + _escape(p) for p in awkward]
        report = restore_paths(repo, manifest, patterns, sink)
        assert report.ok, report.errors[:3]
        assert len(report.restored) == len(awkward)
        for path in awkward:
            restored = tmp_path / part.fs / f"p{part.number}" / path
            want = part.manifest[path]
            assert _sha256(restored) == want.sha256, path
            assert os.lstat(restored).st_mtime_ns == want.mtime * 10**9, path
            if part.fs in POSIX_MODES:
                assert st.S_IMODE(os.lstat(restored).st_mode) == want.mode, path
        if part.fs == "ext4":
            assert any("\n" in p for p in awkward)


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _escape(path: str) -> str:
    return "/".join(
        "".join(f"[{c}]" if c in "*?[" else c for c in part) for part in path.split("/")
    )
