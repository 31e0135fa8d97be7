"""The lab's MinIO servers: the real S3 implementation our repositories are written to.

Each is a single-drive MinIO (``xl-single``) on 127.0.0.1, built from its Go module. It
supports versioning and object lock, so immutable repositories are tested for real.
:func:`start_minio` can also start one erasure-coded over several drive directories
(MinIO's ``dir{1...N}``: what users outgrow one disk with, issue 17); the soak test of
copies (tests/store/test_copy_erasure.py) starts one of its own and removes a drive's
data while a copy writes to it.
The lab runs two independent ones (``minio`` and ``minio2``: own data directory, own
port, own root credentials), the second being the place copies go (issue 17: a copy in
another S3 with other credentials). The root credentials are generated per lab and per
server, passed to the server through its environment (never its command line, which
any user can read) and kept in the lab's 0600 state file.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from vmguard_lab.paths import LabPaths
from vmguard_lab.procs import Supervisor, wait_until

MINIO_MODULE_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"


def start_minio(
    paths: LabPaths,
    sup: Supervisor,
    binary: Path,
    port: int,
    console_port: int,
    access_key: str,
    secret_key: str,
    name: str = "minio",
    *,
    drives: int = 1,
    data: Path | None = None,
) -> list[Path]:
    """Start the MinIO called ``name`` (its process name, and its data directory unless
    ``data`` is given) unless it runs already, and wait until it is ready. With
    ``drives`` > 1 it is erasure-coded over ``data/drive1`` … ``data/driveN`` (4 drives:
    2 parity shards, so it reads and writes with one drive lost). Returns the drive
    directories."""
    data = data or paths.lab / name
    data.mkdir(parents=True, exist_ok=True)
    disks = [data] if drives == 1 else [data / f"drive{n}" for n in range(1, drives + 1)]
    for disk in disks:
        disk.mkdir(exist_ok=True)
    # MinIO expands the ellipsis itself: one argument names every drive of the set.
    where = str(data) if drives == 1 else str(data / f"drive{{1...{drives}}}")
    env = dict(os.environ)
    env.update(
        {
            "MINIO_ROOT_USER": access_key,
            "MINIO_ROOT_PASSWORD": secret_key,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
            "MINIO_CI_CD": "1",
        }
    )
    proc = sup.start(
        name,
        [
            str(binary),
            "server",
            "--quiet",
            "--anonymous",
            "--address",
            f"127.0.0.1:{port}",
            "--console-address",
            f"127.0.0.1:{console_port}",
            where,
        ],
        env=env,
    )
    wait_until(
        name,
        lambda: _ready(port),
        timeout=60,
        alive=proc.alive,
        diagnose=lambda: sup.log_tail(name),
    )
    return disks


def ensure_bucket(endpoint: str, access_key: str, secret_key: str, name: str) -> None:
    """Create the lab's default repository bucket (versioned, object lock possible)."""
    from minio import Minio

    s3 = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=False)
    if not s3.bucket_exists(name):
        s3.make_bucket(name, object_lock=True)


def _ready(port: int) -> bool:
    url = f"http://127.0.0.1:{port}/minio/health/ready"
    with urllib.request.urlopen(url, timeout=2) as resp:
        return bool(resp.status == 200)
