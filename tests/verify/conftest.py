"""Fixtures for verification tests: the lab's disk image factory (as tests/files uses it)."""

from __future__ import annotations

import pytest

from vmguard_lab.images import DiskImageFactory
from vmguard_lab.paths import LabPaths


@pytest.fixture(scope="session")
def disk_factory() -> DiskImageFactory:
    return DiskImageFactory(LabPaths.default().cache / "images")
