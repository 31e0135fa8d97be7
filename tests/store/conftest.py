"""Fixtures for store tests: repositories on memory and local backends, and the lab's
MinIO behind a fault proxy (``faulty_s3``, see tests/store/faults.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.store.faults import FaultyS3
from tests.store.helpers import FAST_KDF_N
from vmguard.store import MasterKey, Repository, ScryptParams
from vmguard.store.backend import Backend, LocalBackend, MemoryBackend

CHUNK = 64 * 1024
"""The smallest chunk size the format allows: keeps test disks small and fast."""


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.unit),
        pytest.param("local", marks=pytest.mark.unit),
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    backend: Backend = (
        MemoryBackend() if request.param == "memory" else LocalBackend(tmp_path / "repo")
    )
    yield backend
    backend.close()


@pytest.fixture
def master_key() -> MasterKey:
    return MasterKey(b"correct horse battery staple")


@pytest.fixture
def make_repo(store: Backend, master_key: MasterKey) -> Callable[..., Repository]:
    def make(*, encrypted: bool = True, **kwargs: object) -> Repository:
        return Repository.init(
            store,
            master_key=master_key if encrypted else None,
            chunk_size=CHUNK,
            kdf=ScryptParams(n=FAST_KDF_N),
            **kwargs,  # type: ignore[arg-type]
        )

    return make


@pytest.fixture
def faulty_s3(minio_proxy: Any, s3_bucket: dict[str, Any]) -> FaultyS3:
    """A fresh bucket on the lab's MinIO, reached through a toxiproxy of its own."""
    return FaultyS3(minio_proxy, s3_bucket)
