"""The repository-read ceiling of a restore: what reading the repository costs by itself.

    PYTHONPATH=operator python bench/repo_read.py REPO_URL ARCHIVE_ID TARGET_URI [--workers N]

The chunk objects of the archive's first disk, from an *unencrypted* repository, are
fetched from the same S3 endpoint with the same concurrency as ``vmguard disk restore``
(its default workers), their envelope stripped (header and checksum cut off, nothing
checked) and decompressed, and written into the NBD target, each worker on its own
connection (the server must offer multi-conn, as nbdkit's file plugin does), holes left
alone (the target is new and sparse); the target is flushed at the end, as a restore
flushes. No hashing, no decryption, no ordering, no zero-run scan: what a restore needs
beyond these is ours. Equal neighbouring entries are fetched once, as the restore does.
The manifest and index are read with vmguard's store (untimed work of the same kind a
restore does first). Used by ``bench/mover.py``; S3 credentials from
``VMGUARD_S3_ACCESS_KEY``/``VMGUARD_S3_SECRET_KEY``.
"""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import nbd
import zstandard
from minio import Minio

from vmguard.engine.pipeline import default_workers
from vmguard.store import HOLE
from vmguard.store.envelope import FLAG_ZSTD, HEADER, TAG_BYTES
from vmguard.store.location import open_repository
from vmguard.store.names import chunk_name


def runs(index: object) -> Iterator[tuple[bytes, list[int]]]:
    """(chunk id, offsets) per run of equal neighbouring non-hole entries."""
    current: bytes | None = None
    offsets: list[int] = []
    for number in range(len(index)):  # type: ignore[arg-type]
        chunk_id = index[number]  # type: ignore[index]
        if chunk_id != current:
            if current is not None and current != HOLE:
                yield current, offsets
            current, offsets = chunk_id, []
        offsets.append(index.extent(number)[0])  # type: ignore[attr-defined]
    if current is not None and current != HOLE:
        yield current, offsets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("repo")
    parser.add_argument("archive")
    parser.add_argument("target")
    parser.add_argument("--workers", type=int, default=default_workers())
    args = parser.parse_args()

    repo = open_repository(args.repo, None, os.environ)
    manifest = repo.load_archive(args.archive)
    index = repo.load_index(manifest, manifest.disks[0])
    url = urlsplit(args.repo.replace("s3+", "", 1))
    bucket, _, prefix = url.path.lstrip("/").partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    client = Minio(
        url.netloc,
        access_key=os.environ["VMGUARD_S3_ACCESS_KEY"],
        secret_key=os.environ["VMGUARD_S3_SECRET_KEY"],
        secure=url.scheme == "https",
    )
    local = threading.local()
    handles: list[nbd.NBD] = []
    lock = threading.Lock()

    def handle() -> nbd.NBD:
        if not hasattr(local, "h"):
            h = nbd.NBD()
            h.connect_uri(args.target)
            local.h, local.dctx = h, zstandard.ZstdDecompressor()
            with lock:
                handles.append(h)
        return local.h  # type: ignore[no-any-return]

    def restore(run: tuple[bytes, list[int]]) -> None:
        chunk_id, offsets = run
        h = handle()
        response = client.get_object(bucket, prefix + chunk_name(chunk_id))
        try:
            blob = response.read()
        finally:
            response.close()
            response.release_conn()
        _, _, _, flags, _, length = HEADER.unpack_from(blob)
        payload = memoryview(blob)[HEADER.size : -TAG_BYTES]
        data = (
            local.dctx.decompress(payload, max_output_size=length) if flags & FLAG_ZSTD else payload
        )
        for offset in offsets:
            h.pwrite(data, offset)

    with ThreadPoolExecutor(args.workers) as pool:
        for _ in pool.map(restore, runs(index)):
            pass
    handles[0].flush()
    for h in handles:
        h.shutdown()


if __name__ == "__main__":
    main()
