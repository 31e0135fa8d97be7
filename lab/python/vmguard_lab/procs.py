"""Start, find and stop the lab's long-running processes by pid file.

Invariants:

- every process the lab starts is recorded in ``<lab>/run/<name>.pid`` together with
  its start time read from ``/proc``, so a recycled pid is never mistaken for ours
  and ``down`` never signals a process it did not start;
- each process leads its own session (``start_new_session``), so stopping it also
  stops the children it spawned (the node agent's pods, for instance);
- output goes to ``<lab>/logs/<name>.log``, appended across restarts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from vmguard_lab.errors import LabError

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _start_time(pid: int) -> int | None:
    """The start time of a live process, or None if it is gone or a zombie."""
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None  # exited; its parent (perhaps another process) has not reaped it yet
    return int(fields[19])


def _reap(pid: int) -> None:
    """Collect the exit status of a child of ours that has exited (no zombie left)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


@dataclass(frozen=True)
class Tracked:
    name: str
    pid: int
    started: int

    def alive(self) -> bool:
        return _start_time(self.pid) == self.started


class Supervisor:
    """The set of processes of one lab directory."""

    def __init__(self, run_dir: Path, log_dir: Path) -> None:
        self.run_dir = run_dir
        self.log_dir = log_dir

    def _pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def get(self, name: str) -> Tracked | None:
        try:
            pid_s, started_s = self._pidfile(name).read_text().split()
        except (OSError, ValueError):
            return None
        tracked = Tracked(name, int(pid_s), int(started_s))
        return tracked if tracked.alive() else None

    def all(self) -> list[Tracked]:
        out = []
        for pidfile in sorted(self.run_dir.glob("*.pid")):
            tracked = self.get(pidfile.stem)
            if tracked:
                out.append(tracked)
        return out

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Tracked:
        """Start ``argv`` unless a live process of that name is already recorded."""
        existing = self.get(name)
        if existing:
            return existing
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        with log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        started = _start_time(proc.pid)
        if started is None:
            raise LabError(f"{name} exited at once; see {self.log_dir / (name + '.log')}")
        self._pidfile(name).write_text(f"{proc.pid} {started}\n")
        return Tracked(name, proc.pid, started)

    def stop(self, name: str, timeout: float = 10.0) -> bool:
        """Stop the named process and its session; True if something was stopped."""
        tracked = self.get(name)
        self._pidfile(name).unlink(missing_ok=True)
        if not tracked:
            return False
        _signal_group(tracked, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and tracked.alive():
            time.sleep(0.1)
        if tracked.alive():
            _signal_group(tracked, signal.SIGKILL)
            while tracked.alive():
                time.sleep(0.05)
        return True

    def log_tail(self, name: str, lines: int = 20) -> str:
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _signal_group(tracked: Tracked, sig: signal.Signals) -> None:
    # The process leads its own session and process group (start_new_session).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(tracked.pid, sig)
    with contextlib.suppress(ProcessLookupError):
        os.kill(tracked.pid, sig)


def eventually(fn: Callable[[], T | None], timeout: float = 60, what: str = "") -> T:
    """Poll ``fn`` until it returns something truthy, and return that (tests use it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or fn}")
        time.sleep(0.25)


def wait_until(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    alive: Callable[[], bool] | None = None,
    diagnose: Callable[[], str] | None = None,
) -> None:
    """Poll ``check`` until it holds; fail early if ``alive`` says the process died."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            if check():
                return
        except Exception:
            pass
        if alive is not None and not alive():
            detail = diagnose() if diagnose else ""
            raise LabError(f"{what}: the process exited\n{detail}")
        if time.monotonic() > deadline:
            detail = diagnose() if diagnose else ""
            raise LabError(f"{what}: not ready after {timeout:.0f}s\n{detail}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
