"""The disk image factory against the real Debian tools (no lab servers needed).

Each ready-made image is built once per module; assertions read it back with tools that
are not the ones that wrote it where possible: sfdisk --json for the table, debugfs,
ntfscat, mcopy and xfs_db for file content, e2fsck/ntfsfix/xfs_repair for consistency.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import random
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from vmguard_lab import images
from vmguard_lab.errors import LabError
from vmguard_lab.images import DiskImage, DiskImageFactory, ImageSpec
from vmguard_lab.imaging import tools
from vmguard_lab.imaging.sparse import copy_range
from vmguard_lab.imaging.tree import AWKWARD_NAMES, BIG_FILE

pytestmark = pytest.mark.lab

SEED = 20240611
SPECS: dict[str, Callable[[], ImageSpec]] = {
    "small_mixed": images.small_mixed,
    "gpt_ext4": images.gpt_ext4,
    "mbr_ntfs": images.mbr_ntfs,
    "fat": images.fat,
    "xfs": images.xfs,
    "gpt_ext4_point2": lambda: images.gpt_ext4().next_point(2),
    "mbr_ntfs_point1": lambda: images.mbr_ntfs().next_point(1),
}
FS_SPECS = ["gpt_ext4", "mbr_ntfs", "fat", "xfs"]
#: images whose filesystem changes in place between backup points: spec, partition, fsck
IN_PLACE = [("gpt_ext4", 2, ["e2fsck", "-fn"]), ("mbr_ntfs", 1, ["ntfsfix", "-n"])]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DiskImage]:
    out = tmp_path_factory.mktemp("images")
    factory = DiskImageFactory(None)
    return {name: factory.build(spec(), SEED, out / f"{name}.img") for name, spec in SPECS.items()}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def _extract(img: DiskImage, number: int, out: Path) -> Path:
    p = img.partition(number)
    with open(out, "wb") as f:
        f.truncate(p.length)
    copy_range(img.path, out, 0, src_offset=p.offset, length=p.length, skip_zero_blocks=False)
    return out


# -- determinism ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SPECS))
def test_same_spec_and_seed_build_byte_identical_images(
    name: str, built: dict[str, DiskImage], tmp_path: Path
) -> None:
    # Start the second build in a later second, so any timestamp taken from the clock
    # would show up as a difference.
    time.sleep(1.0 - time.time() % 1.0 + 0.05)
    again = DiskImageFactory(None).build(SPECS[name](), SEED, tmp_path / "again.img")
    first = built[name]
    assert again.sha256 == first.sha256
    assert _sha256_file(first.path) == first.sha256  # the recorded digest is the content's
    assert [p.manifest for p in again.partitions] == [p.manifest for p in first.partitions]


def test_another_seed_builds_another_image(tmp_path: Path, built: dict[str, DiskImage]) -> None:
    other = DiskImageFactory(None).build(images.small_mixed(), SEED + 1, tmp_path / "o.img")
    assert other.sha256 != built["small_mixed"].sha256


# -- sparseness -----------------------------------------------------------------------------


def _is_hole(fd: int, offset: int, length: int) -> bool:
    try:
        return os.lseek(fd, offset, os.SEEK_DATA) >= offset + length
    except OSError as e:
        return e.errno == errno.ENXIO


def test_raw_holes_are_holes_and_data_regions_are_allocated(built: dict[str, DiskImage]) -> None:
    img = built["small_mixed"]
    layout = img.partitions[0].layout
    holes = [r for r in layout if r.kind == "hole"]
    assert sum(r.length for r in holes) >= 24 << 20
    # st_blocks also counts the file system's own blocks for the file (ext4's extent
    # tree grows a 4 KiB block once a file has more than four extents): allow 64 KiB.
    slack = 64 << 10
    assert os.stat(img.path).st_blocks * 512 <= img.size - sum(r.length for r in holes) + slack
    fd = os.open(img.path, os.O_RDONLY)
    try:
        for r in layout:
            if r.kind == "hole":
                assert _is_hole(fd, r.offset, r.length), r
            else:
                assert os.lseek(fd, r.offset, os.SEEK_DATA) == r.offset, r
                assert os.lseek(fd, r.offset, os.SEEK_HOLE) >= r.offset + r.length, r
        zeros = next(r for r in layout if r.kind == "zeros")
        assert os.pread(fd, zeros.length, zeros.offset) == bytes(zeros.length)
    finally:
        os.close(fd)
    assert img.allocated == sum(r.length for r in layout if r.kind != "hole")


def test_raw_regions_compress_as_their_kind_says(built: dict[str, DiskImage]) -> None:
    img = built["small_mixed"]
    ratios = {}
    with open(img.path, "rb") as f:
        for r in img.partitions[0].layout:
            if r.kind in ("compressible", "random", "repeat"):
                f.seek(r.offset)
                data = f.read(4 << 20)
                ratios[r.kind] = len(data) / len(zstandard.ZstdCompressor(level=1).compress(data))
    assert ratios["compressible"] > 3
    assert ratios["random"] < 1.01
    assert ratios["repeat"] > 50


def test_large_disk_is_sparse(tmp_path: Path) -> None:
    spec = images.large_ext4(size=4 << 30, files=40)
    img = DiskImageFactory(None).build(spec, SEED, tmp_path / "large.img")
    assert img.size == 4 << 30
    assert os.stat(img.path).st_blocks * 512 < 64 << 20
    assert img.allocated < 64 << 20
    big = img.partitions[0].manifest[BIG_FILE]
    with img.reader(1) as r:
        assert hashlib.sha256(r.read(BIG_FILE)).hexdigest() == big.sha256


# -- partition tables -----------------------------------------------------------------------


@pytest.mark.parametrize("name", FS_SPECS)
def test_partition_table_lists_partitions_at_their_offsets(
    name: str, built: dict[str, DiskImage]
) -> None:
    img = built[name]
    out = subprocess.run(["sfdisk", "--json", str(img.path)], capture_output=True, check=True)
    pt = json.loads(out.stdout)["partitiontable"]
    assert pt["label"] == {"gpt": "gpt", "mbr": "dos"}[img.table or ""]
    assert pt.get("sectorsize", 512) == 512
    got = [(p["start"] * 512, p["size"] * 512) for p in pt["partitions"]]
    assert got == [(p.offset, p.length) for p in img.partitions]
    assert all(p.offset % (1 << 20) == 0 for p in img.partitions)


def test_disk_without_table_has_none(built: dict[str, DiskImage]) -> None:
    img = built["small_mixed"]
    res = subprocess.run(["sfdisk", "--json", str(img.path)], capture_output=True)
    assert res.returncode != 0 or not res.stdout.strip()
    assert [(p.number, p.offset, p.length) for p in img.partitions] == [(0, 0, img.size)]


# -- filesystem content ---------------------------------------------------------------------


def _sample(manifest: dict[str, images.ManifestEntry], k: int = 12) -> list[str]:
    files = sorted(p for p, m in manifest.items() if m.type == "file")
    awkward = [p for p in files if p.rsplit("/", 1)[-1] in AWKWARD_NAMES]
    rest = [p for p in files if p not in awkward]
    return awkward + random.Random(SEED).sample(rest, min(k, len(rest)))


@pytest.mark.parametrize("name", FS_SPECS)
def test_files_in_each_filesystem_match_the_manifest(
    name: str, built: dict[str, DiskImage]
) -> None:
    img = built[name]
    for part in img.partitions:
        if part.fs == "raw":
            continue
        sample = _sample(part.manifest)
        assert len(sample) >= 8
        with img.reader(part.number) as r:
            for path in sample:
                data = r.read(path)
                assert len(data) == part.manifest[path].size, path
                assert hashlib.sha256(data).hexdigest() == part.manifest[path].sha256, path
            for path, m in part.manifest.items():
                if m.type == "symlink":
                    assert r.readlink(path) == m.target, path


def test_big_file_is_in_every_filesystem(built: dict[str, DiskImage]) -> None:
    for name in FS_SPECS:
        img = built[name]
        part = next(p for p in img.partitions if BIG_FILE in p.manifest)
        assert part.manifest[BIG_FILE].size == 10 << 20
        with img.reader(part.number) as r:
            assert hashlib.sha256(r.read(BIG_FILE)).hexdigest() == part.manifest[BIG_FILE].sha256


def test_each_filesystem_keeps_the_names_it_can(built: dict[str, DiskImage]) -> None:
    ext4 = built["gpt_ext4"].partition(2)
    ntfs = built["mbr_ntfs"].partition(1)
    fat = built["fat"].partition(1)
    xfs = built["xfs"].partition(1)
    newline, emoji, long_ascii = "line\nbreak.txt", "emoji-\U0001f600.txt", "x" * 251 + ".bin"
    assert newline in ext4.manifest and ext4.omitted == []
    assert f"with space dir/{emoji}" in ntfs.manifest and newline in ntfs.omitted
    assert f"with space dir/{emoji}" in fat.omitted
    assert "with space.txt" in fat.manifest and "with space.txt" in xfs.omitted
    assert f"with space dir/{long_ascii}" in fat.manifest and len(long_ascii.encode()) == 255
    assert not any(m.type == "symlink" for m in fat.manifest.values())
    assert sum(m.type == "symlink" for m in xfs.manifest.values()) == 4
    assert sum(m.type == "symlink" for m in ntfs.manifest.values()) == 4
    for part in (ext4, ntfs, fat, xfs):
        assert not set(part.omitted) & set(part.manifest)
        assert sum(m.size == 0 and m.type == "file" for m in part.manifest.values()) >= 3


def test_filesystem_checkers_find_no_errors(built: dict[str, DiskImage], tmp_path: Path) -> None:
    ext4 = _extract(built["gpt_ext4"], 2, tmp_path / "ext4")
    res = subprocess.run(["e2fsck", "-fn", str(ext4)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    ntfs = _extract(built["mbr_ntfs"], 1, tmp_path / "ntfs")
    res = subprocess.run(["ntfsfix", "-n", str(ntfs)], capture_output=True, text=True)
    assert res.returncode == 0 and "processed successfully" in res.stdout, res.stdout
    xfs = _extract(built["xfs"], 1, tmp_path / "xfs")
    res = subprocess.run(["xfs_repair", "-n", "-f", str(xfs)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# -- backup points ----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "number", "checker"), IN_PLACE)
def test_next_points_differ_exactly_as_reported(
    name: str, number: int, checker: list[str], tmp_path: Path
) -> None:
    factory = DiskImageFactory(tmp_path / "cache")
    spec = SPECS[name]()
    points = [factory.build(spec.next_point(g), SEED, tmp_path / f"p{g}.img") for g in range(3)]
    assert len({p.sha256 for p in points}) == 3
    for before, after in itertools.pairwise(points):
        old, new = before.partition(number), after.partition(number)
        ch = new.changes
        assert ch["added"] and ch["changed"] and ch["deleted"]
        assert BIG_FILE in ch["changed"]
        assert set(new.manifest) == (set(old.manifest) - set(ch["deleted"])) | set(ch["added"])
        with after.reader(number) as r:
            for path in ch["changed"] + ch["added"]:
                if new.manifest[path].type != "file":
                    continue
                if path in ch["changed"]:
                    assert new.manifest[path].sha256 != old.manifest[path].sha256
                assert hashlib.sha256(r.read(path)).hexdigest() == new.manifest[path].sha256
            for path in ch["deleted"]:
                with pytest.raises(LabError):
                    r.read(path)
    # The filesystem changes in place: the big file keeps its size and clusters (one
    # 64 KiB patch per point), so between points only a small part of the partition
    # differs, as CBT would report.
    a, b = (p.partition(number).manifest[BIG_FILE] for p in points[:2])
    assert a.size == b.size
    part = points[1].partition(number)
    end = part.offset + part.length
    in_part = [
        d for d in images.changed_ranges(points[1], points[2]) if part.offset <= d.offset < end
    ]
    allocated = sum(e.length for e in points[1].extents if part.offset <= e.offset < end)
    assert 64 << 10 <= sum(d.length for d in in_part) < allocated // 4
    fs = _extract(points[2], number, tmp_path / "fs")
    res = subprocess.run([*checker, str(fs)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_raw_next_point_rewrites_one_percent_of_blocks(tmp_path: Path) -> None:
    factory = DiskImageFactory(None)
    g0 = factory.build(images.small_mixed(), SEED, tmp_path / "g0.img")
    g1 = factory.build(images.small_mixed().next_point(), SEED, tmp_path / "g1.img")
    diff = images.changed_ranges(g0, g1)
    rewritten = [r for r in g1.partitions[0].layout if r.kind == "rewritten"]
    assert sum(r.length for r in rewritten) == (g0.size // (64 << 10) // 100) * (64 << 10)
    assert sum(d.length for d in diff) == sum(r.length for r in rewritten)
    covered = {r.offset // (64 << 10) for r in rewritten}
    assert {off // (64 << 10) for d in diff for off in range(d.offset, d.end, 64 << 10)} == covered


# -- cache and tool checks ------------------------------------------------------------------


def test_second_build_is_a_copy_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory = DiskImageFactory(tmp_path / "cache")
    first = factory.build(images.fat(), SEED, tmp_path / "a.img")

    def no_rebuild(*args: object) -> None:
        raise AssertionError("the cached image was rebuilt")

    monkeypatch.setattr(images, "_build", no_rebuild)
    second = factory.build(images.fat(), SEED, tmp_path / "b.img")
    assert second.sha256 == first.sha256 == _sha256_file(tmp_path / "b.img")
    assert os.stat(first.path).st_ino != os.stat(second.path).st_ino
    assert second.extents == first.extents
    assert len(list((tmp_path / "cache").glob("*.img"))) == 1


def test_missing_tool_is_named_with_its_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find = tools.find
    monkeypatch.setattr(tools, "find", lambda t: None if t == "mkntfs" else real_find(t))
    with pytest.raises(tools.MissingToolError, match="apt-get install ntfs-3g"):
        DiskImageFactory(None).build(images.mbr_ntfs(), SEED, tmp_path / "x.img")
    assert not (tmp_path / "x.img").exists()
