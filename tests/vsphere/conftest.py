"""Fixtures for vSphere integration tests: a repository and the lab's disk locator
(``vc_endpoint`` and ``vc`` are in the root conftest: controller tests use them too)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def repo(s3_bucket: dict[str, Any]) -> Iterator[Any]:
    """A fresh, encrypted repository in a fresh bucket of the lab's MinIO."""
    from vmguard.store import MasterKey, Repository, ScryptParams
    from vmguard.store.backend import S3Backend

    backend = S3Backend(
        s3_bucket["endpoint"],
        s3_bucket["bucket"],
        access_key=s3_bucket["access_key"],
        secret_key=s3_bucket["secret_key"],
        secure=False,
    )
    yield Repository.init(
        backend, master_key=MasterKey(b"vsphere tests master key"), kdf=ScryptParams(n=2**10)
    )
    backend.close()


@pytest.fixture(scope="session")
def locator(vsim: Any) -> Any:
    """The lab's disk locator (nbdkit file plugin over the simulator's images)."""
    from vmguard_lab.vsim import LabDiskLocator

    return LabDiskLocator(vsim)
