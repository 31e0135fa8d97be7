"""Back up and restore one synthetic disk through the repository engine; print MiB/s.

Run against a local directory:
    PYTHONPATH=operator python bench/store_roundtrip.py --target file:///tmp/bench-repo
or a MinIO/S3 bucket (credentials from VMGUARD_S3_ACCESS_KEY / VMGUARD_S3_SECRET_KEY):
    PYTHONPATH=operator python bench/store_roundtrip.py --target s3://127.0.0.1:9000/bucket \\
        --insecure-http

The disk is a mix of random, compressible and zero chunks (--mib of it). Chunks are
stored with --threads workers calling BackupWriter.put_chunk, as a data-mover
pipeline would, and restored with the same number of workers. This measures the
store (hash, compress, encrypt, upload; download, decrypt, decompress, verify), not
a block source. Not part of the test run.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

from vmguard.store import HOLE, FixedIndex, MasterKey, Repository, ScryptParams, VmIdentity
from vmguard.store.backend import Backend, LocalBackend, RetryingBackend, S3Backend

CHUNK = 4 * 1024 * 1024


def _backend(target: str, insecure: bool) -> Backend:
    url = urlparse(target)
    if url.scheme == "file":
        return LocalBackend(url.path)
    bucket, _, prefix = url.path.lstrip("/").partition("/")
    s3 = S3Backend(
        url.netloc,
        bucket,
        access_key=os.environ["VMGUARD_S3_ACCESS_KEY"],
        secret_key=os.environ["VMGUARD_S3_SECRET_KEY"],
        secure=not insecure,
        prefix=prefix or f"bench-{secrets.token_hex(4)}",
    )
    return RetryingBackend(s3)


def _disk(mib: int) -> list[bytes]:
    rng = random.Random(7)
    chunks = []
    for n in range(mib // 4):
        kind = n % 4
        if kind == 0:
            chunks.append(bytes(CHUNK))
        elif kind == 1:
            line = f"{rng.random()} GET /index.html 200\n".encode()
            chunks.append((line * (CHUNK // len(line) + 1))[:CHUNK])
        else:
            chunks.append(rng.randbytes(CHUNK))
    return chunks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--insecure-http", action="store_true")
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plain", action="store_true", help="no encryption")
    args = parser.parse_args()
    chunks = _disk(args.mib)
    key = None if args.plain else MasterKey(b"benchmark master key 0123456789")
    repo = Repository.init(
        _backend(args.target, args.insecure_http), master_key=key, kdf=ScryptParams(n=2**14)
    )
    index = FixedIndex(CHUNK, len(chunks) * CHUNK)
    start = time.perf_counter()
    with repo.begin_backup(VmIdentity(id="bench"), auto_refresh=True) as writer:
        with ThreadPoolExecutor(args.threads) as pool:
            results = list(pool.map(writer.put_chunk, chunks))
        for number, result in enumerate(results):
            index[number] = result.chunk_id
        writer.add_disk("d", "d", index)
        manifest = writer.commit()
    backup_s = time.perf_counter() - start
    stored = sum(r.stored_bytes for r in results)

    start = time.perf_counter()
    loaded = repo.load_index(repo.load_archive(manifest.archive_id), "d")
    ids = [chunk_id for chunk_id in loaded if chunk_id != HOLE]
    with ThreadPoolExecutor(args.threads) as pool:
        restored = sum(len(data) for data in pool.map(repo.read_chunk, ids))
    restore_s = time.perf_counter() - start

    logical = len(chunks) * CHUNK / 2**20
    print(
        f"{'target':40} {'MiB':>6} {'thr':>3} {'enc':>5} {'backup MiB/s':>12} "
        f"{'restore MiB/s':>13} {'stored/logical':>14}"
    )
    print(
        f"{repo.backend.location[:40]:40} {logical:6.0f} {args.threads:3} {key is not None!s:>5}"
        f" {logical / backup_s:12.0f} {logical / restore_s:13.0f} "
        f"{stored / (len(chunks) * CHUNK):14.3f}"
    )
    if restored != len(ids) * CHUNK:
        raise SystemExit("restore returned the wrong amount of data")


if __name__ == "__main__":
    main()
