"""A copy into an erasure-coded MinIO that loses one drive's data while the copy writes
to it (issue 17, acceptance 6): the copy completes, a deep verify of the target
(``vmguard repo verify --deep``) is clean and every copied archive restores bit-exact.

The MinIO is the lab's binary started here, on loopback, over 4 drive directories
(``drive{1...4}``: 2 data and 2 parity shards per object, so it reads and writes with
one drive gone). The copy is ``vmguard repo copy`` as a separate process; the target's
listing is the clock: once :data:`REMOVE_AFTER` chunks have landed (and the copy still
runs), everything in one drive directory is removed — as when a disk is swapped for a
blank one. The source is a repository in the lab's ordinary MinIO.

``make test`` runs a small fixed case; ``pytest --soak`` (``make soak``) copies more
and larger archives and removes a drive chosen by a seed at a seeded point.
"""

from __future__ import annotations

import json
import random
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Masked
from tests.engine.cli import Cli
from tests.store.helpers import restore
from tests.store.test_copy_s3 import (
    SOURCE_KEY,
    TARGET_KEY,
    _backend,
    _chain,
    _copy_argv,
    _init,
)
from vmguard.store import MasterKey, Repository, names
from vmguard.store.copy import COPIED_FROM_LABEL

pytestmark = pytest.mark.lab
DRIVES = 4
REMOVE_AFTER = 6
"""Chunks in the target before the drive's data goes (the short case)."""


@dataclass
class ErasureMinio:
    bucket: dict[str, Any]
    """A fresh bucket in it (endpoint, credentials, name) as the lab's buckets are given."""
    drives: list[Path]
    client: Any


@pytest.fixture
def erasure_minio(lab: Any, tmp_path: Path) -> Iterator[ErasureMinio]:
    """A MinIO of this test over ``DRIVES`` drive directories under ``tmp_path``, stopped
    by its name (the lab's supervisor knows its pid) when the test ends."""
    from minio import Minio

    from vmguard_lab import build
    from vmguard_lab.minio import start_minio
    from vmguard_lab.procs import free_port

    binary = build.ensure_built(lab.paths, only=("minio",))["minio"]
    name = f"minio-ec-{secrets.token_hex(4)}"
    port = free_port()
    access, secret = f"ec-{secrets.token_hex(6)}", secrets.token_urlsafe(24)
    try:
        drives = start_minio(
            lab.paths,
            lab.sup,
            binary,
            port,
            free_port(),
            access,
            secret,
            name=name,
            drives=DRIVES,
            data=tmp_path / "erasure",
        )
        endpoint = f"127.0.0.1:{port}"
        client = Minio(endpoint, access_key=access, secret_key=secret, secure=False)
        client.make_bucket("copies")
        bucket = Masked(
            endpoint=endpoint, access_key=access, secret_key=secret, bucket="copies", secure=False
        )
        yield ErasureMinio(bucket, drives, client)
    finally:
        lab.sup.stop(name)


def _clear(drive: Path) -> int:
    """Remove everything in ``drive`` (the directory stays, blank); the number of files
    that were there. MinIO may write into it meanwhile: what lands after is kept."""
    files = sum(1 for p in drive.rglob("*") if p.is_file())
    for child in list(drive.iterdir()):
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    return files


def test_a_copy_survives_a_drive_of_an_erasure_coded_target_losing_its_data(
    s3_bucket: dict[str, Any],
    erasure_minio: ErasureMinio,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    soak = bool(request.config.getoption("soak"))
    rng = random.Random(17)
    vms, chunks = (6, 48) if soak else (2, 12)
    source = _init(_backend(s3_bucket, "src"), SOURCE_KEY)
    images: dict[str, bytes] = {}
    for n in range(vms):
        images |= _chain(source, f"vm-{n}", 61 + 10 * n, chunks)
    target_info = erasure_minio.bucket
    _init(_backend(target_info, "copy"), TARGET_KEY)
    src_key, dst_key = tmp_path / "src.key", tmp_path / "dst.key"
    src_key.write_bytes(SOURCE_KEY)
    dst_key.write_bytes(TARGET_KEY)
    src_url = f"s3+http://{s3_bucket['endpoint']}/{s3_bucket['bucket']}/src"
    dst_url = f"s3+http://{target_info['endpoint']}/{target_info['bucket']}/copy"
    env = Cli.for_bucket(s3_bucket, "src", None).environ()
    env["VMGUARD_TO_S3_ACCESS_KEY"] = target_info["access_key"]
    env["VMGUARD_TO_S3_SECRET_KEY"] = target_info["secret_key"]
    argv = _copy_argv(src_url, dst_url, src_key, dst_key, "--all", "--json")

    def landed() -> int:
        listing = erasure_minio.client.list_objects(
            target_info["bucket"], prefix=f"copy/{names.CHUNKS}", recursive=True
        )
        return sum(1 for _ in listing)

    remove_after = rng.randrange(10, 60) if soak else REMOVE_AFTER
    drive = rng.choice(erasure_minio.drives) if soak else erasure_minio.drives[1]
    copy = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while copy.poll() is None and landed() < remove_after:
        pass  # the target's listing is the clock: no sleep
    running = copy.poll() is None
    removed = _clear(drive)
    out, err = copy.communicate(timeout=600)
    assert running, f"the copy ended before {remove_after} chunks had landed: {err[-2000:]!r}"
    assert removed > 0, f"{drive} held nothing to remove"
    assert copy.returncode == 0, err.decode()[-2000:]
    copies = json.loads(out)["copies"]
    assert {c["source_archive"] for c in copies} == set(images)
    assert not any(c["skipped"] for c in copies)

    verify = Cli.for_bucket(target_info, "copy", dst_key).run(
        "repo", "verify", "--deep", "--json", check=False
    )
    report = json.loads(verify.stdout)
    assert verify.returncode == 0 and report["ok"] is True, report
    assert report["archives"] == len(images) and report["chunks"] > 0
    target = Repository.open(_backend(target_info, "copy"), MasterKey(TARGET_KEY))
    for c in copies:
        manifest = target.load_archive(c["target_archive"])
        assert manifest.labels[COPIED_FROM_LABEL] == c["source_archive"]
        assert restore(target, manifest, "d0") == images[c["source_archive"]]
