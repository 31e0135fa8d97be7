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
