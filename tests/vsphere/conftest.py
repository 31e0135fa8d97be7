"""Fixtures for vSphere integration tests: an Endpoint and a session on the lab simulator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def vc_endpoint(lab_state: dict[str, Any]) -> Any:
    from vmguard.vsphere.session import Endpoint

    vs = lab_state["vsphere"]
    return Endpoint(vs["sdk_url"], vs["username"], vs["password"], ca_file=vs["ca"])


@pytest.fixture(scope="session")
def vc(vc_endpoint: Any) -> Iterator[Any]:
    """A :class:`vmguard.vsphere.session.VSphereSession` logged in to the simulator."""
    from vmguard.vsphere.session import VSphereSession

    session = VSphereSession(vc_endpoint)
    yield session
    session.close()


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
    from vmguard.lab.vsim import LabDiskLocator

    return LabDiskLocator(vsim)
