"""The ceiling of a copy between two S3 services: the objects copied as they are.

    PYTHONPATH=operator python bench/raw_copy.py FROM_URL TO_URL [--workers N]

Every object under ``FROM_URL``'s prefix (``s3+http://host:port/bucket/prefix``) is read
whole and written under ``TO_URL``'s prefix, ``--workers`` at once (default: the
product's pipeline width, as ``vmguard repo copy`` uses), each worker on the connection
pool of one client per side — what ``mc mirror`` or ``rclone copy`` do between two
servers that cannot copy server-side: list, GET, PUT. Nothing is decoded, decrypted,
hashed, compressed or checked: what a copy needs beyond this is ours (BRIEF §8: a copy
runs at least 0.8 times as fast). Used by ``bench/mover.py``; the source's S3 credentials from
``VMGUARD_S3_ACCESS_KEY``/``VMGUARD_S3_SECRET_KEY``, the target's from
``VMGUARD_TO_S3_ACCESS_KEY``/``VMGUARD_TO_S3_SECRET_KEY`` (as ``vmguard repo copy``
reads them). Prints ``{"objects": N, "bytes": B}``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor

import urllib3
from minio import Minio

from vmguard.engine.pipeline import default_workers
from vmguard.store.location import Location, parse_location


def client(where: Location, access: str, secret: str, workers: int) -> Minio:
    # One pooled connection per worker: urllib3's default pool (10) would queue them.
    pool = urllib3.PoolManager(maxsize=workers, retries=urllib3.Retry(total=3))
    return Minio(
        where.endpoint, access_key=access, secret_key=secret, secure=where.secure, http_client=pool
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--workers", type=int, default=default_workers())
    args = parser.parse_args()
    src, dst = parse_location(args.source), parse_location(args.target)
    env = os.environ
    get = client(src, env["VMGUARD_S3_ACCESS_KEY"], env["VMGUARD_S3_SECRET_KEY"], args.workers)
    put = client(
        dst, env["VMGUARD_TO_S3_ACCESS_KEY"], env["VMGUARD_TO_S3_SECRET_KEY"], args.workers
    )
    src_prefix = src.prefix.strip("/") + "/" if src.prefix else ""
    dst_prefix = dst.prefix.strip("/") + "/" if dst.prefix else ""

    def copy(name: str) -> int:
        response = get.get_object(src.bucket, name)
        try:
            data = response.read()
        finally:
            response.close()
            response.release_conn()
        put.put_object(
            dst.bucket, dst_prefix + name[len(src_prefix) :], io.BytesIO(data), len(data)
        )
        return len(data)

    names = (o.object_name for o in get.list_objects(src.bucket, prefix=src_prefix, recursive=True))
    with ThreadPoolExecutor(args.workers) as pool:
        sizes = list(pool.map(copy, names))
    print(json.dumps({"objects": len(sizes), "bytes": sum(sizes)}))


if __name__ == "__main__":
    main()
