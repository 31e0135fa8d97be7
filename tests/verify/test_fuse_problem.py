"""Without a usable /dev/fuse a file-system check says so in words a cluster's user can act
on (verify/export.py ``fuse_problem``), before nbdkit or nbdfuse start: a restricted pod
has no device (tests/images/test_verify_in_image.py shows it in the proxy image)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmguard.verify.export import FUSE_DEVICE, fuse_problem

pytestmark = pytest.mark.unit


def test_a_missing_fuse_device_is_named_with_what_the_pod_needs(tmp_path: Path) -> None:
    problem = fuse_problem(tmp_path / "fuse")
    assert problem is not None
    assert problem.startswith(f"no FUSE here: {tmp_path / 'fuse'}: No such file or directory")
    assert "pod must be privileged" in problem
    assert fuse_problem(FUSE_DEVICE) is None  # this machine's checks mount with FUSE
