"""Acceptance: one 10 MiB file out of a 16 GiB backup on MinIO reads at most 64 MiB
from the repository, counted at the backend (BRIEF §8; timing is the benchmark's job).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from tests.files.helpers import back_up_image
from vmguard.files.restore import DirectorySink, restore_paths
from vmguard.store import Repository
from vmguard.store.backend import CountingBackend, S3Backend
from vmguard_lab import images
from vmguard_lab.images import DiskImageFactory
from vmguard_lab.imaging.tree import BIG_FILE

pytestmark = pytest.mark.lab

BUDGET = 64 << 20


def test_one_file_from_16_gib_reads_at_most_64_mib(
    s3_bucket: dict[str, Any], disk_factory: DiskImageFactory, tmp_path: Path
) -> None:
    image = disk_factory.build(images.large_ext4(), 11, tmp_path / "large.img")
    assert image.size == 16 << 30
    backend = CountingBackend(
        S3Backend(
            s3_bucket["endpoint"],
            s3_bucket["bucket"],
            access_key=s3_bucket["access_key"],
            secret_key=s3_bucket["secret_key"],
            secure=False,
        )
    )
    repo = Repository.init(backend)
    manifest = back_up_image(repo, "vm-large", image.path)
    image.path.unlink()

    backend.reset()
    fresh = Repository.open(backend)  # a restore starts from nothing but the bucket
    report = restore_paths(
        fresh, fresh.load_archive(manifest.archive_id), [f"p1/{BIG_FILE}"], DirectorySink(tmp_path)
    )
    counts = backend.counts
    assert report.ok, report.errors
    want = image.partition(1).manifest[BIG_FILE]
    data = (tmp_path / "p1" / BIG_FILE).read_bytes()
    assert hashlib.sha256(data).hexdigest() == want.sha256
    assert counts.bytes_read <= BUDGET, counts
    # and the view fetched only what it needed: the file's chunks and a few of metadata
    assert report.bytes_fetched <= BUDGET
