"""The product's images and the lab's layer, built by ``images/build.py --lab`` (cached
by a hash of the inputs: a warm run only checks the stamps) into podman's local store.
The description is this session's own file (``--json``), not the shared ``images.json``
another checkout's build may rewrite meanwhile."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PODMAN = ("podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs")


@pytest.fixture(scope="session")
def built_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """name -> {ref, id, digest, size} for base, operator, proxy and proxy-lab."""
    out = tmp_path_factory.mktemp("images") / "images.json"
    build = [sys.executable, str(REPO / "images" / "build.py"), "--lab", "--json", str(out)]
    subprocess.run(build, check=True, timeout=2400)
    described: dict[str, dict[str, Any]] = json.loads(out.read_text())
    return described


# The chart's tests' helm (the lab's build cache), for the install in container mode.
from tests.charts.conftest import helm  # noqa: E402, F401
