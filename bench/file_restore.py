"""File restore from block backups: one 10 MiB file out of a 16 GiB ext4 backup and out
of an NTFS backup, on the fly versus the naive way; prints a table.

    PYTHONPATH=operator python bench/file_restore.py            # the running lab's MinIO
    PYTHONPATH=operator python bench/file_restore.py --repo s3+http://host:port/bucket/prefix

Per disk: build the factory image (cached), back it up into a fresh repository (a full
backup by the real engine, through tests/files/helpers.py), then

- **on the fly**: open the repository from nothing, ``restore_paths`` the file
  (``vmguard files get``): time, bytes read at the backend, chunks fetched;
- **naive**: restore the whole disk into a sparse local file (every stored chunk,
  4 threads), then read the same file out of it with the same library (dissect).

Both results are checked against the image factory's manifest (sha256). The target is
BRIEF §8: one 10 MiB file from a 16 GiB backup in <= 3 s, reading <= 64 MiB. Not part
of the test run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.files.helpers import back_up_image

from vmguard.files.drivers import open_filesystem
from vmguard.files.restore import DirectorySink, restore_paths
from vmguard.files.volumes import list_volumes
from vmguard.store import HOLE, Repository
from vmguard.store.backend import Backend, CountingBackend
from vmguard.store.location import open_location
from vmguard_lab import images
from vmguard_lab.images import DiskImage, DiskImageFactory, ImageSpec
from vmguard_lab.imaging.tree import BIG_FILE
from vmguard_lab.paths import LabPaths

MiB = 1 << 20
GiB = 1 << 30
SEED = 11


@dataclass
class Row:
    disk: str
    method: str
    seconds: float
    backend_bytes: int
    gets: int
    chunk_bytes: int
    """Plaintext of the chunks fetched (what the backend bytes decompress to)."""
    ok: bool


def _lab_backend() -> Backend:
    from minio import Minio

    from vmguard_lab.lab import Lab

    m = Lab().state().data["minio"]
    bucket = f"bench-{secrets.token_hex(4)}"
    client = Minio(
        m["endpoint"], access_key=m["access_key"], secret_key=m["secret_key"], secure=False
    )
    client.make_bucket(bucket)
    env = {"AWS_ACCESS_KEY_ID": m["access_key"], "AWS_SECRET_ACCESS_KEY": m["secret_key"]}
    return open_location(f"s3+http://{m['endpoint']}/{bucket}", env)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def on_the_fly(backend: CountingBackend, archive_id: str, path: str, want: str) -> Row:
    backend.reset()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        repo = Repository.open(backend)
        report = restore_paths(repo, repo.load_archive(archive_id), [path], DirectorySink(out))
        seconds = time.perf_counter() - start
        ok = report.ok and _sha256(Path(out, path).read_bytes()) == want
    counts = backend.counts
    return Row("", "on the fly", seconds, counts.bytes_read, counts.gets, report.bytes_fetched, ok)


def naive(backend: CountingBackend, archive_id: str, path: str, want: str, work: Path) -> Row:
    backend.reset()
    start = time.perf_counter()
    repo = Repository.open(backend)
    manifest = repo.load_archive(archive_id)
    index = repo.load_index(manifest, manifest.disks[0])
    disk = work / "naive-restore.img"
    fd = os.open(disk, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, index.length)

        def one(number: int) -> None:
            offset, _ = index.extent(number)
            os.pwrite(fd, repo.read_chunk(index[number]), offset)

        stored = [n for n in range(len(index)) if index[n] != HOLE]
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, stored))
    finally:
        os.close(fd)
    with open(disk, "rb") as f:
        volumes = list_volumes(f, index.length)
        volume_name, _, inner = path.partition("/")
        volume = next(v for v in volumes if v.name == volume_name)
        fs = open_filesystem(volume.fs, volume.stream)
        data = fs.open(fs.lookup(inner).node).read()
    seconds = time.perf_counter() - start
    disk.unlink()
    counts = backend.counts
    plain = sum(index.extent(n)[1] for n in stored)
    ok = _sha256(data) == want
    return Row("", "naive (whole disk)", seconds, counts.bytes_read, counts.gets, plain, ok)


def run_one(
    name: str, spec: ImageSpec, partition: int, factory: DiskImageFactory, backend: Backend
) -> list[Row]:
    counted = CountingBackend(backend)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        image: DiskImage = factory.build(spec, SEED, work / "disk.img")
        built = time.perf_counter() - start
        repo = Repository.init(counted)
        start = time.perf_counter()
        manifest = back_up_image(repo, f"bench-{name}", image.path)
        print(
            f"# {name}: {image.size / GiB:.0f} GiB disk, {image.allocated / MiB:.0f} MiB allocated;"
            f" built in {built:.1f}s, backed up in {time.perf_counter() - start:.1f}s",
            file=sys.stderr,
        )
        image.path.unlink()
        want = image.partition(partition).manifest[BIG_FILE].sha256
        path = f"p{partition}/{BIG_FILE}"
        rows = [
            on_the_fly(counted, manifest.archive_id, path, want),
            naive(counted, manifest.archive_id, path, want, work),
        ]
    for row in rows:
        row.disk = f"{name} {image.size // GiB} GiB"
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", help="repository base URL (default: a bucket on the lab)")
    parser.add_argument("--ntfs-gib", type=int, default=16, help="size of the NTFS disk")
    args = parser.parse_args()

    def backend() -> Backend:
        if args.repo:
            return open_location(args.repo.rstrip("/") + f"/bench-{secrets.token_hex(4)}")
        return _lab_backend()

    factory = DiskImageFactory(LabPaths.default().cache / "images")
    ntfs = images.mbr_ntfs(size=args.ntfs_gib * GiB)
    rows = run_one("ext4", images.large_ext4(), 1, factory, backend())
    rows += run_one("ntfs", ntfs, 1, factory, backend())

    print(
        f"{'disk':14} {'method':20} {'seconds':>8} {'MiB read':>9} {'GETs':>6} {'chunk MiB':>9}  ok"
    )
    for r in rows:
        print(
            f"{r.disk:14} {r.method:20} {r.seconds:8.2f} {r.backend_bytes / MiB:9.1f}"
            f" {r.gets:6} {r.chunk_bytes / MiB:9.1f}  {'yes' if r.ok else 'NO'}"
        )
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
