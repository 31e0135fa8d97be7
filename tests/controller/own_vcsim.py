"""A vSphere simulator of a test's (or a bench's) own, beside the lab's: for estates the
lab's small inventory does not hold (``test_admission_lab``, ``bench/backup_rate.py``)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vmguard_lab import build
from vmguard_lab.paths import LabPaths
from vmguard_lab.procs import eventually, free_port
from vmguard_lab.vsim import PASSWORD_ENV, USERNAME_ENV, vsim_command


@contextlib.contextmanager
def own_vcsim(
    tmp_path: Path, user: str, vms: int, hosts: int, disk_bytes: int, ready_timeout: float = 60
) -> Iterator[dict[str, Any]]:
    """A simulator with ``vms`` VMs (and the template the inventory starts with) on
    ``hosts`` hosts, disks of ``disk_bytes``: its ready file's endpoint, CA and control
    URL, with ``user``, a fresh password and its ``pid``; stopped on exit."""
    binary = build.ensure_built(LabPaths.default(), only=("vsphere",))["vmguard-vcsim"]
    password = secrets.token_urlsafe(12)
    state = tmp_path / "vcsim"
    state.mkdir()
    env = dict(os.environ, **{USERNAME_ENV: user, PASSWORD_ENV: password})
    # One more VM than asked for: the inventory's first is a template.
    argv = vsim_command(binary, state, free_port(), free_port(), vms + 1, hosts, disk_bytes)
    with open(state / "vcsim.log", "wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        ready = state / "ready.json"

        def started() -> bool | None:
            # A simulator that exits (a port taken between free_port and its bind, say)
            # fails the test now, with its log, not after the whole timeout.
            if proc.poll() is not None:
                log_tail = (state / "vcsim.log").read_text(errors="replace")[-2000:]
                raise AssertionError(f"the simulator exited ({proc.returncode}): {log_tail}")
            return ready.exists() or None

        eventually(started, timeout=ready_timeout, what="the simulator")
        info = json.loads(ready.read_text())
        info.update(user=user, password=password, pid=proc.pid)
        yield info
    finally:
        proc.terminate()
        proc.wait(timeout=30)
