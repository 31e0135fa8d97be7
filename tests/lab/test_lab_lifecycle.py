"""``vmguard-lab up`` is idempotent and ``vmguard-lab down`` leaves nothing of ours behind.

Runs a second, private lab in a temporary directory (builds come from the shared
cache), so the session's lab used by the other tests is not disturbed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmguard_lab.lab import PROCESSES

pytestmark = pytest.mark.lab


def _vmguard_lab(lab_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VMGUARD_LAB_DIR=str(lab_dir))
    return subprocess.run(
        [sys.executable, "-m", "vmguard_lab.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _running(pid: int) -> bool:
    """True while the process exists and has not exited (a zombie has exited: only its
    parent's bookkeeping remains, and the parent may be any process that adopted it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _pids(lab_dir: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text().split()[0]) for p in (lab_dir / "run").glob("*.pid")}


def test_up_twice_then_down_leaves_no_process(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    first = _vmguard_lab(lab_dir, "up", "--vms", "4")
    assert first.returncode == 0, first.stderr
    pids = _pids(lab_dir)
    assert set(pids) == set(PROCESSES)
    ports = json.loads((lab_dir / "lab.json").read_text())["ports"]

    started = time.monotonic()
    second = _vmguard_lab(lab_dir, "up", "--vms", "4")
    took = time.monotonic() - started
    assert second.returncode == 0, second.stderr
    assert _pids(lab_dir) == pids, "a second `up` must keep the running processes"
    assert json.loads((lab_dir / "lab.json").read_text())["ports"] == ports
    status = _vmguard_lab(lab_dir, "status", "--json")
    assert json.loads(status.stdout) == {name: True for name in PROCESSES}
    print(f"second `lab up` took {took:.1f}s")

    # Every pod process the node agent started is in its session; collect the whole
    # session of each lab process to check that none survives.
    sessions = {pid: os.getsid(pid) for pid in pids.values()}
    down = _vmguard_lab(lab_dir, "down")
    assert down.returncode == 0, down.stderr
    for name, pid in pids.items():
        assert not _running(pid), f"{name} (pid {pid}) still runs"
    survivors = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.getsid(int(proc.name)) in sessions.values() and _running(int(proc.name)):
                    survivors.append(proc.name)
            except ProcessLookupError:
                pass
    assert survivors == []
    assert list((lab_dir / "run").glob("*.pid")) == []
