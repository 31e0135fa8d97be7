"""The product's images and the lab's layer, built by ``images/build.py --lab`` (cached
by a hash of the inputs: a warm run only checks the stamps) into podman's local store."""

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
def built_images() -> dict[str, dict[str, Any]]:
    """name -> {ref, id, digest, size} for base, operator, proxy and proxy-lab."""
    subprocess.run(
        [sys.executable, str(REPO / "images" / "build.py"), "--lab"], check=True, timeout=2400
    )
    sys.path.insert(0, str(REPO / "images"))
    try:
        import build  # images/build.py: where it keeps images.json
    finally:
        sys.path.pop(0)
    described: dict[str, dict[str, Any]] = json.loads(
        (build.cache_dir() / "images.json").read_text()
    )
    return described


# The chart's tests' helm (the lab's build cache), for the install in container mode.
from tests.charts.conftest import helm  # noqa: E402, F401
