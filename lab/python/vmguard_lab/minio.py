"""The lab's MinIO servers: the real S3 implementation our repositories are written to.

Each is a single-drive MinIO (``xl-single``) on 127.0.0.1, built from its Go module. It
supports versioning and object lock, so immutable repositories are tested for real.
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
) -> None:
    """Start the MinIO called ``name`` (its process name and data directory) unless it
    runs already, and wait until it is ready."""
    data = paths.lab / name
    data.mkdir(parents=True, exist_ok=True)
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
            str(data),
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
