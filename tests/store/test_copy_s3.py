"""Copies between two repositories on the lab's MinIO, with different keys.

The target is an Object Lock bucket (versioned, so every PUT of a chunk leaves a
version: "no chunk uploaded twice" is read from the version listing). The kill test
SIGKILLs ``vmguard repo copy`` processes at points read from the target's listing
(a chunk more, a manifest more) and re-runs them until the copy completes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.engine.cli import Cli
from tests.store.conftest import CHUNK
from tests.store.helpers import FAST_KDF_N, backup, disk_image, restore
from tests.store.test_copy import _changed
from vmguard.store import MasterKey, ObjectLockPolicy, Repository, ScryptParams, names
from vmguard.store.backend import Backend, RetryingBackend, S3Backend
from vmguard.store.copy import COPIED_FROM_LABEL, copy_archives, select_archives
from vmguard.store.verify import verify

pytestmark = pytest.mark.lab
SOURCE_KEY = b"source master key, long enough"
TARGET_KEY = b"target master key, long enough"
CHANGED = {2, 5, 9}


def _backend(info: dict[str, Any], prefix: str) -> Backend:
    return RetryingBackend(
        S3Backend(
            info["endpoint"],
            info["bucket"],
            access_key=info["access_key"],
            secret_key=info["secret_key"],
            secure=info["secure"],
            prefix=prefix,
        )
    )


def _init(backend: Backend, key: bytes | None, **kwargs: Any) -> Repository:
    return Repository.init(
        backend,
        master_key=MasterKey(key) if key else None,
        chunk_size=CHUNK,
        kdf=ScryptParams(n=FAST_KDF_N),
        **kwargs,
    )


def _chain(source: Repository, vm: str, seed: int, chunks: int) -> dict[str, bytes]:
    """A full and two incremental backups of ``vm``: archive id -> disk image."""
    images = [disk_image(seed, chunks, CHUNK, tail=777)]
    images.append(_changed(images[0], CHANGED, seed + 1))
    images.append(_changed(images[1], CHANGED, seed + 2))
    out: dict[str, bytes] = {}
    parent = None
    for image in images:
        changed = {"d0": CHANGED} if parent else None
        parent = backup(source, vm, {"d0": image}, parent=parent, changed=changed).archive_id
        out[parent] = image
    return out


def _incompressible_windows(images: list[bytes]) -> set[bytes]:
    """32-byte aligned blocks of the chunks zlib cannot shrink: any 64-byte window of
    such a region contains one."""
    windows = set()
    for image in images:
        for start in range(0, len(image), CHUNK):
            chunk = image[start : start + CHUNK]
            if len(zlib.compress(chunk)) >= 0.95 * len(chunk):
                windows |= {chunk[i : i + 32] for i in range(0, len(chunk) - 31, 32)}
    return windows


def _leaks(minio_client: Any, bucket: str, prefix: str, windows: set[bytes]) -> int:
    """Objects under ``prefix`` holding any of ``windows`` at any offset."""
    hits = 0
    for obj in minio_client.list_objects(bucket, prefix=prefix, recursive=True):
        blob = minio_client.get_object(bucket, obj.object_name).read()
        hits += any(blob[i : i + 32] in windows for i in range(len(blob) - 31))
    return hits


def test_copies_restore_bit_exact_leak_nothing_and_incrementals_read_only_changes(
    s3_bucket: dict[str, Any], s3_lock_bucket: dict[str, Any], minio_client: Any
) -> None:
    source = _init(_backend(s3_bucket, "src"), SOURCE_KEY)
    target = _init(
        _backend(s3_lock_bucket, "copy"),
        TARGET_KEY,
        object_lock=ObjectLockPolicy("GOVERNANCE", 1),
    )
    images = _chain(source, "vm-1", 11, 12)

    report = copy_archives(source, target, select_archives(source))

    full, *incs = report.copies
    assert full.chunks_mapped == 0 and full.chunks_read == full.chunks_uploaded
    assert [(c.chunks_read, c.chunks_uploaded) for c in incs] == [(len(CHANGED),) * 2] * 2
    for copy in report.copies:
        manifest = target.load_archive(copy.target_archive)
        assert manifest.labels[COPIED_FROM_LABEL] == copy.source_archive
        assert manifest.retain_until is not None  # written under the target's lock
        assert restore(target, manifest, "d0") == images[copy.source_archive]
    assert verify(target, deep=True).ok

    windows = _incompressible_windows(list(images.values()))
    assert windows
    assert _leaks(minio_client, s3_lock_bucket["bucket"], "copy/", windows) == 0
    # The same check finds the data in an unencrypted copy: it can fail.
    plain = _init(_backend(s3_bucket, "plain"), None)
    copy_archives(source, plain, select_archives(source))
    assert _leaks(minio_client, s3_bucket["bucket"], "plain/", windows) > 0


def _copy_argv(src: str, dst: str, src_key: Path, dst_key: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vmguard.cli",
        "repo",
        "copy",
        "--from",
        src,
        "--to",
        dst,
        "--from-key-file",
        str(src_key),
        "--to-key-file",
        str(dst_key),
        *extra,
    ]


def test_killed_copies_resume_and_upload_no_chunk_twice(
    s3_bucket: dict[str, Any], s3_lock_bucket: dict[str, Any], minio_client: Any, tmp_path: Path
) -> None:
    source = _init(_backend(s3_bucket, "src"), SOURCE_KEY)
    _init(
        _backend(s3_lock_bucket, "copy"), TARGET_KEY, object_lock=ObjectLockPolicy("GOVERNANCE", 1)
    )
    images = _chain(source, "vm-a", 21, 12) | _chain(source, "vm-b", 31, 12)
    src_key, dst_key = tmp_path / "src.key", tmp_path / "dst.key"
    src_key.write_bytes(SOURCE_KEY)
    dst_key.write_bytes(TARGET_KEY)
    env = Cli.for_bucket(s3_bucket, "src", None).environ()
    src = f"s3+http://{s3_bucket['endpoint']}/{s3_bucket['bucket']}/src"
    dst = f"s3+http://{s3_lock_bucket['endpoint']}/{s3_lock_bucket['bucket']}/copy"
    argv = _copy_argv(src, dst, src_key, dst_key, "--all", "-o", "json")
    bucket = s3_lock_bucket["bucket"]

    def count(kind: str) -> int:
        return sum(
            1 for _ in minio_client.list_objects(bucket, prefix=f"copy/{kind}", recursive=True)
        )

    def more(kind: str, n: int) -> Callable[[], Callable[[], bool]]:
        def arm() -> Callable[[], bool]:
            start = count(kind)
            return lambda: count(kind) >= start + n

        return arm

    points = [
        more(names.CHUNKS, 1),  # in the first archive's chunks
        more(names.INDEXES, 1),  # between an index and its manifest, or just after
        more(names.ARCHIVES, 1),  # after a commit
        more(names.CHUNKS, 2),  # in an incremental
        more(names.ARCHIVES, 1),
        more(names.CHUNKS, 2),  # in the second VM
    ]
    killed = 0
    for arm in points:
        reached = arm()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        while proc.poll() is None and not reached():
            pass  # the target's listing is the clock: no sleep
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.communicate()
    assert killed >= 4

    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    target = Repository.open(_backend(s3_lock_bucket, "copy"), MasterKey(TARGET_KEY))
    copies = json.loads(done.stdout)["copies"]
    assert {c["source_archive"] for c in copies} == set(images)
    for copy in copies:
        manifest = target.load_archive(copy["target_archive"])
        assert restore(target, manifest, "d0") == images[copy["source_archive"]]
    assert len(target.list_archives()) == len(images)  # each archive copied exactly once
    versions = Counter(
        v.object_name
        for v in minio_client.list_objects(
            bucket, prefix=f"copy/{names.CHUNKS}", recursive=True, include_version=True
        )
    )
    assert versions and max(versions.values()) == 1
    assert verify(target, deep=True).ok

    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert [c["skipped"] for c in json.loads(again.stdout)["copies"]] == [True] * len(images)


def test_cli_refuses_overlap_and_other_chunk_size(
    s3_bucket: dict[str, Any], tmp_path: Path
) -> None:
    _init(_backend(s3_bucket, "src"), SOURCE_KEY)
    Repository.init(
        _backend(s3_bucket, "big"),
        master_key=MasterKey(TARGET_KEY),
        chunk_size=2 * CHUNK,
        kdf=ScryptParams(n=FAST_KDF_N),
    )
    src_key, dst_key = tmp_path / "src.key", tmp_path / "dst.key"
    src_key.write_bytes(SOURCE_KEY)
    dst_key.write_bytes(TARGET_KEY)
    env = Cli.for_bucket(s3_bucket, "src", None).environ()
    base = f"s3+http://{s3_bucket['endpoint']}/{s3_bucket['bucket']}"
    nested = subprocess.run(
        _copy_argv(f"{base}/src", f"{base}/src/copy", src_key, dst_key, "--all"),
        env=env,
        capture_output=True,
        text=True,
    )
    assert nested.returncode == 1 and "overlaps the source" in nested.stderr
    other = subprocess.run(
        _copy_argv(f"{base}/src", f"{base}/big", src_key, dst_key, "--all"),
        env=env,
        capture_output=True,
        text=True,
    )
    assert other.returncode == 1
    assert "chunk size 131072 differs from the source's 65536" in other.stderr


def test_the_target_is_opened_with_its_own_credentials_when_given(
    s3_bucket: dict[str, Any], tmp_path: Path
) -> None:
    source = _init(_backend(s3_bucket, "src"), SOURCE_KEY)
    backup(source, "vm-c", {"d0": disk_image(41, 3, CHUNK)})
    _init(_backend(s3_bucket, "dst"), TARGET_KEY)
    src_key, dst_key = tmp_path / "src.key", tmp_path / "dst.key"
    src_key.write_bytes(SOURCE_KEY)
    dst_key.write_bytes(TARGET_KEY)
    base = f"s3+http://{s3_bucket['endpoint']}/{s3_bucket['bucket']}"
    argv = _copy_argv(f"{base}/src", f"{base}/dst", src_key, dst_key, "--all")
    env = Cli.for_bucket(s3_bucket, "src", None).environ()
    bogus = "not-the-secret-of-anyone"
    wrong = {**env, "VMGUARD_TO_S3_ACCESS_KEY": "nobody", "VMGUARD_TO_S3_SECRET_KEY": bogus}
    denied = subprocess.run(argv, env=wrong, capture_output=True, text=True, timeout=300)
    assert denied.returncode == 1, denied.stderr
    assert bogus not in denied.stderr and s3_bucket["secret_key"] not in denied.stderr
    right = {
        **env,
        "VMGUARD_TO_S3_ACCESS_KEY": s3_bucket["access_key"],
        "VMGUARD_TO_S3_SECRET_KEY": s3_bucket["secret_key"],
    }
    done = subprocess.run(argv, env=right, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    target = Repository.open(_backend(s3_bucket, "dst"), MasterKey(TARGET_KEY))
    assert len(target.list_archives()) == 1
