"""Acceptance: the ``vmguard mount`` command itself, run as a user runs it.

A factory disk is backed up by the real engine into a repository on the lab's MinIO;
``vmguard mount ARCHIVE --disk D --repo URL [--cow]`` runs as a subprocess with the S3
credentials in its environment (docs/instant-access.md). For each mode and each stop
signal: the export read with ``nbdcopy`` equals the archived disk (sha256); with
``--cow`` writes are accepted and read back, without it the export is read-only; the
bucket's objects (names, sizes, ETags) are the same afterwards; SIGINT and SIGTERM stop
the command with status 0 and leave no nbdkit process, socket or overlay behind; and
the secret key is in no command line and no output.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbd
import pytest

from tests.files.helpers import DISK_KEY, back_up_image
from vmguard.config import S3_ACCESS_ENV, S3_SECRET_ENV
from vmguard.store import Repository
from vmguard.store.location import open_location
from vmguard_lab import images
from vmguard_lab.images import DiskImage, DiskImageFactory

pytestmark = pytest.mark.lab

SEED = 5209
SERVING = re.compile(r" at (nbd\+unix:///\?socket=(\S+))$")


@dataclass(frozen=True)
class MountedRepo:
    bucket: str
    url: str
    credentials: dict[str, str]
    archive_id: str
    image: DiskImage


@pytest.fixture(scope="module")
def s3_repo(
    minio_client: Any,
    lab_state: dict[str, Any],
    disk_factory: DiskImageFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> MountedRepo:
    minio = lab_state["minio"]
    bucket = f"test-mount-{secrets.token_hex(6)}"
    minio_client.make_bucket(bucket)
    url = f"s3+http://{minio['endpoint']}/{bucket}/repo"
    credentials = {S3_ACCESS_ENV: minio["access_key"], S3_SECRET_ENV: minio["secret_key"]}
    repo = Repository.init(open_location(url, credentials, create=True))
    image = disk_factory.build(images.gpt_ext4(), SEED, tmp_path_factory.mktemp("mount") / "d.img")
    manifest = back_up_image(repo, "vm-mount", image.path, vm_name="mount me")
    image.path.unlink()  # the repository is the only copy
    return MountedRepo(bucket, url, credentials, manifest.archive_id, image)


def _objects(minio_client: Any, bucket: str) -> dict[str, tuple[str, int]]:
    return {
        o.object_name: (o.etag, o.size) for o in minio_client.list_objects(bucket, recursive=True)
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _children(pid: int) -> dict[int, str]:
    """Live child processes of ``pid`` by pid, with their command names."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if int(fields["PPid"]) == pid and not fields["State"].startswith("Z"):
            found[int(entry.name)] = fields["Name"].strip()
    return found


def _cmdline(pid: int) -> str:
    return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("cow", [False, True], ids=["read-only", "cow"])
def test_mount_command_serves_the_archived_disk_and_stops_cleanly(
    s3_repo: MountedRepo, minio_client: Any, cow: bool, stop: signal.Signals, tmp_path: Path
) -> None:
    before = _objects(minio_client, s3_repo.bucket)
    assert before, "the repository is in the bucket"
    private_tmp = tmp_path / "tmp"  # nbdkit's socket directory and cow overlay go here
    private_tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(private_tmp), **s3_repo.credentials)
    argv = [sys.executable, "-m", "vmguard.cli", "mount", s3_repo.archive_id]
    argv += ["--disk", DISK_KEY, "--repo", s3_repo.url, *(["--cow"] if cow else [])]
    stderr_path = tmp_path / "mount.stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, env=env
        )
    assert proc.stdout is not None
    try:
        first = proc.stdout.readline().decode()
        serving = SERVING.search(first.rstrip("\n"))
        assert serving, (first, stderr_path.read_text())
        uri, socket = serving.group(1), Path(serving.group(2))
        assert socket.is_socket() and socket.is_relative_to(private_tmp)
        children = _children(proc.pid)
        assert list(children.values()) == ["nbdkit"], children
        (nbdkit_pid,) = children
        secret = s3_repo.credentials[S3_SECRET_ENV]
        assert secret not in _cmdline(proc.pid) and secret not in _cmdline(nbdkit_pid)

        copy = tmp_path / "copy.img"
        subprocess.run(["nbdcopy", uri, str(copy)], check=True)
        assert _sha256(copy) == s3_repo.image.sha256
        assert os.stat(copy).st_blocks * 512 < s3_repo.image.size // 2, "holes stay holes"

        h = nbd.NBD()
        h.connect_uri(uri)
        assert h.is_read_only() is not cow
        root = s3_repo.image.partition(2).offset
        if cow:
            h.pwrite(b"\xa5" * 65536, 0)
            h.pwrite(b"\x5a" * 4096, root + 1024)  # ext4's superblock
            h.flush()
            assert h.pread(65536, 0) == b"\xa5" * 65536
            assert h.pread(4096, root + 1024) == b"\x5a" * 4096
        h.shutdown()

        proc.send_signal(stop)
        returncode = proc.wait(timeout=30)
        rest = proc.stdout.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    output = first + rest + stderr_path.read_text()
    assert returncode == 0, output
    assert not Path(f"/proc/{nbdkit_pid}").exists(), "nbdkit outlived vmguard mount"
    assert not socket.exists()
    assert sorted(private_tmp.iterdir()) == [], "no socket, log or overlay is left behind"
    assert secret not in output
    assert _objects(minio_client, s3_repo.bucket) == before
