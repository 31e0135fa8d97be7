"""Fixtures for file-restore tests: factory disk images and repositories holding them.

Images come from the lab's disk image factory (real ext4/NTFS/FAT/XFS made by the
Debian tools, no root), cached where the lab caches them; archives are written by the
real backup engine (``tests/files/helpers.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vmguard_lab.images import DiskImageFactory
from vmguard_lab.paths import LabPaths


@pytest.fixture(scope="session")
def disk_factory() -> DiskImageFactory:
    return DiskImageFactory(LabPaths.default().cache / "images")


@pytest.fixture(scope="session")
def images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("file-restore-images")
