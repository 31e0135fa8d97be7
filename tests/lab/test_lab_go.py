"""The lab's own Go code (``lab/vsphere``, the simulator's additions: guest programs and
files, VMware Tools, faults, CBT) passes its Go tests, in the run every change goes
through. The module is the one ``vmguard-lab build`` compiles, so the Go module cache
it filled serves it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vmguard_lab.build import go_command, go_env

pytestmark = pytest.mark.unit

LAB = Path(__file__).resolve().parents[2] / "lab"


def test_the_lab_vcenters_go_tests_pass() -> None:
    ran = subprocess.run(
        [go_command(), "test", "-count=1", "./..."],
        cwd=LAB / "vsphere",
        env=go_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stdout[-4000:] + ran.stderr[-2000:]
    assert "FAIL" not in ran.stdout
