"""Acceptance: a corrupt chunk costs exactly the files on it; ``vmguard mount`` serves
the archived disk bit for bit, and writes through its overlay never reach the repository;
the CLI lists, finds and restores by VM name."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import nbd
import pytest

from tests.files.helpers import back_up_image
from vmguard.errors import DiskReadError
from vmguard.files.browse import DiskFiles
from vmguard.files.mount import serve
from vmguard.files.restore import DirectorySink, restore_paths
from vmguard.store import Repository
from vmguard.store.backend import LocalBackend
from vmguard.store.names import chunk_name
from vmguard_lab import images
from vmguard_lab.images import DiskImage, DiskImageFactory
from vmguard_lab.imaging.tree import BIG_FILE

pytestmark = pytest.mark.lab

SEED = 4417


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): _sha256(p) for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def ext4_repo(
    disk_factory: DiskImageFactory, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Repository, str, DiskImage]:
    work = tmp_path_factory.mktemp("damage")
    image = disk_factory.build(images.gpt_ext4(), SEED, work / "disk.img")
    repo = Repository.init(LocalBackend(work / "repo"))
    manifest = back_up_image(repo, "vm-uuid-1", image.path, vm_name="web 01/ünï")
    return work / "repo", repo, manifest.archive_id, image


def test_a_corrupt_chunk_fails_only_the_files_on_it(
    ext4_repo: tuple[Path, Repository, str, DiskImage], tmp_path: Path
) -> None:
    root, _, archive_id, image = ext4_repo
    repo = Repository.open(LocalBackend(root))
    manifest = repo.load_archive(archive_id)
    part = image.partition(2)
    with DiskFiles(repo, manifest) as files:
        big = files.lookup(f"p2/{BIG_FILE}")
        extents = files.extents(files.open(big))
        assert extents
        size = files.view.chunk_size
        # a chunk wholly inside the big file's data, so no metadata shares it
        inside = [
            n
            for off, length in extents
            for n in range(-(-off // size), (off + length) // size)
            if files.view.index[n] != bytes(32)
        ]
        assert inside, "the 10 MiB file spans at least one whole 4 MiB chunk"
        number = inside[0]
        chunk_id = files.view.index[number]
        on_chunk = set()
        for loc in files.walk("p2"):
            if loc.stat.kind == "file" and loc.stat.size:
                spans = files.extents(files.open(loc)) or []
                if any(o < (number + 1) * size and o + n > number * size for o, n in spans):
                    on_chunk.add(loc.path)
    assert on_chunk == {f"p2/{BIG_FILE}"}

    obj = root / chunk_name(chunk_id)
    original = obj.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x40
    obj.write_bytes(bytes(damaged))
    try:
        report = restore_paths(repo, manifest, ["p2"], DirectorySink(tmp_path))
    finally:
        obj.write_bytes(original)
    assert [e.path for e in report.errors] == [f"p2/{BIG_FILE}"]
    error = report.errors[0]
    assert isinstance(error.cause, DiskReadError)
    message = str(error)
    assert BIG_FILE in message and chunk_id.hex() in message and archive_id in message
    assert not (tmp_path / "p2" / BIG_FILE).exists(), "no partial copy is left"
    for path, want in part.manifest.items():
        if path == BIG_FILE or want.type != "file":
            continue
        assert _sha256(tmp_path / "p2" / path) == want.sha256, path


def test_mount_serves_the_disk_and_the_overlay_keeps_the_repository(
    ext4_repo: tuple[Path, Repository, str, DiskImage], tmp_path: Path
) -> None:
    root, _, archive_id, image = ext4_repo
    before = _tree_digest(root)
    url = f"file://{root}"
    with serve(url, archive_id, "2000") as server:
        copy = tmp_path / "copy.img"
        subprocess.run(["nbdcopy", server.uri, str(copy)], check=True)
    assert _sha256(copy) == image.sha256
    assert os.stat(copy).st_blocks * 512 < image.size // 2, "holes stay holes"

    with serve(url, "web 01/ünï@latest", None, cow=True) as server:
        h = nbd.NBD()
        h.connect_uri(server.uri)
        assert not h.is_read_only()
        h.pwrite(b"\xa5" * 65536, 0)
        h.pwrite(b"\x5a" * 4096, image.partition(2).offset + 1024)
        assert h.pread(65536, 0) == b"\xa5" * 65536
        h.flush()
        h.shutdown()
    with serve(url, archive_id, None) as server:
        h = nbd.NBD()
        h.connect_uri(server.uri)
        assert h.is_read_only()
        with open(image.path, "rb") as f:
            assert h.pread(65536, 0) == f.read(65536)
        h.shutdown()
    assert _tree_digest(root) == before


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmguard.cli", *args], capture_output=True, text=True, check=False
    )


def test_cli_lists_finds_and_gets_by_vm_name(
    ext4_repo: tuple[Path, Repository, str, DiskImage], tmp_path: Path
) -> None:
    root, _, archive_id, image = ext4_repo
    repo = f"file://{root}"
    vm = "web 01/ünï"
    volumes = _cli("files", "ls", vm, "--repo", repo)
    assert volumes.returncode == 0, volumes.stderr
    assert archive_id in volumes.stdout
    lines = volumes.stdout.splitlines()[1:]
    assert [line.split()[:2] for line in lines] == [["p1", "fat"], ["p2", "ext4"]]

    listing = _cli("files", "ls", f"{vm}@latest", "--repo", repo, "p2/srv/payload", "-l")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split()[-1] == f"p2/{BIG_FILE}"
    assert "-rw-r--r--" in listing.stdout

    found = _cli("files", "find", vm, "--repo", repo, "-0", "*break*")
    names = [n for n in found.stdout.split("\0") if n]
    assert any("\n" in n for n in names), names

    early = _cli("files", "ls", f"{vm}@2001-01-01T00:00:00Z", "--repo", repo)
    assert early.returncode == 1 and "no archive" in early.stderr

    target = tmp_path / "out"
    got = _cli(
        "files", "get", archive_id, "--repo", repo, "p2/srv/**", "p2/nope", "--to", str(target)
    )
    assert got.returncode == 1  # one pattern matched nothing
    assert "p2/nope" in got.stderr
    restored = target / "p2" / BIG_FILE
    want = image.partition(2).manifest[BIG_FILE]
    assert _sha256(restored) == want.sha256
    assert restored.stat().st_mtime_ns == want.mtime * 10**9
