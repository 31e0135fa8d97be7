"""One volume of an archived disk as a local, writable file: nbdkit + cow + nbdfuse.

File-system checkers want a file or a block device. :class:`VolumeExport` serves the
volume's byte range of the archived disk through nbdkit (our plugin,
:mod:`vmguard.files.nbdplugin`, behind the ``offset`` filter) with the ``cow`` filter in
front, and presents the export as one file in a private FUSE mount (``nbdfuse``). A
checker opens that file like any disk image. Invariants:

- No staging copy: the file is the export; reads fetch only the chunks they touch.
- The repository is never written: writes (a journal replay) stop in the cow filter's
  overlay, a temporary file in ``workdir`` that nbdkit removes when it stops.
- :attr:`VolumeExport.overlay_bytes` is the overlay's allocated size, measured through
  nbdkit's open file descriptors (the file is unlinked), so callers can bound it;
  :attr:`VolumeExport.bytes_fetched` is what the plugin's view fetched (written by the
  plugin when nbdkit exits).
- Without a usable ``/dev/fuse`` nothing starts: :func:`fuse_problem` says why.
- Nothing outlives the export: leaving the context unmounts the FUSE file and stops
  nbdkit, and both end with the process that started them if it dies: nbdkit by
  ``--exit-with-parent``, nbdfuse by a parent-death SIGTERM (``setpriv --pdeathsig``),
  on which it unmounts. (The signal follows the starting *thread*: start exports from a
  thread that outlives them.)
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from vmguard.errors import ConfigError, RetryableError
from vmguard.files.mount import PLUGIN
from vmguard.transport.nbd import NbdkitServer

FUSE_DEVICE = Path("/dev/fuse")


def fuse_problem(device: Path = FUSE_DEVICE) -> str | None:
    """Why no FUSE file system can be mounted here, or None. libfuse opens ``device``
    itself before it mounts (or hands over to the setuid ``fusermount3``), and gives up
    when it cannot: a container without the device (a restricted pod), or one where it
    is root's alone. Said before nbdkit starts, in words a cluster's user can act on,
    rather than nbdfuse's "try 'modprobe fuse' first"."""
    try:
        os.close(os.open(device, os.O_RDWR))
    except OSError as exc:
        return (
            f"no FUSE here: {device}: {exc.strerror} (a file-system check mounts the volume "
            "with FUSE; in a cluster its pod must be privileged: docs/verification.md)"
        )
    return None


#: nbdkit is up once its embedded Python has imported vmguard and opened the repository:
#: seconds on a quiet machine, over ten on a loaded one
_START_TIMEOUT = 60.0


class VolumeExport:
    """``with VolumeExport(...) as path:`` — ``path`` is the volume as a writable file."""

    def __init__(
        self,
        repo_url: str,
        archive_id: str,
        disk: str,
        offset: int,
        size: int,
        workdir: Path,
        *,
        env: Mapping[str, str],
        cache_bytes: int = 64 << 20,
    ) -> None:
        self.repo_url = repo_url
        self.archive_id = archive_id
        self.disk = disk
        self.offset = offset
        self.size = size
        self.workdir = workdir
        self.env = env
        self.cache_bytes = cache_bytes
        self.bytes_fetched = 0
        self.overlay_bytes = 0
        self._server: NbdkitServer | None = None
        self._fuse: subprocess.Popen[bytes] | None = None
        self._mountpoint = workdir / "mnt"
        self._overlay_dir = workdir / "overlay"
        self._stats = workdir / "stats.json"

    @property
    def path(self) -> Path:
        return self._mountpoint / "volume"

    def __enter__(self) -> Path:
        problem = fuse_problem()
        if problem is not None:
            raise ConfigError(problem)
        self._mountpoint.mkdir(parents=True, exist_ok=True)
        self._overlay_dir.mkdir(parents=True, exist_ok=True)
        environ = dict(self.env)
        environ["VMGUARD_PLUGIN_PATH"] = os.pathsep.join(p for p in sys.path if p)
        # the cow filter makes its overlay with mkstemp in $TMPDIR
        environ["TMPDIR"] = str(self._overlay_dir)
        args = [
            str(PLUGIN),
            f"repo={self.repo_url}",
            f"archive={self.archive_id}",
            f"disk={self.disk}",
            f"cache_mib={max(1, self.cache_bytes >> 20)}",
            f"stats={self._stats}",
            f"offset={self.offset}",
            f"range={self.size}",
        ]
        try:
            self._server = NbdkitServer(
                "python",
                args,
                readonly=False,
                filters=["cow", "offset"],
                env=environ,
                start_timeout=_START_TIMEOUT,
            )
            self._mount()
        except BaseException:
            self._stop()
            raise
        return self.path

    def _mount(self) -> None:
        assert self._server is not None
        pidfile = self.workdir / "nbdfuse.pid"
        log = open(self.workdir / "nbdfuse.log", "wb")  # noqa: SIM115 - the child owns it
        with log:
            self._fuse = subprocess.Popen(
                # setpriv: SIGTERM when we die, on which nbdfuse unmounts and exits (by
                # itself it would stay mounted on a dead server)
                [
                    *("setpriv", "--pdeathsig", "TERM"),
                    *("nbdfuse", "-P", str(pidfile), str(self.path)),
                    *("--unix", str(self._server.socket)),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        # nbdfuse writes its pid file once the FUSE file is there to open
        deadline = time.monotonic() + _START_TIMEOUT
        while not pidfile.exists():
            if self._fuse.poll() is not None or time.monotonic() > deadline:
                why = (self.workdir / "nbdfuse.log").read_text(errors="replace")[-500:]
                raise RetryableError(f"nbdfuse did not start: {why.strip()}")
            time.sleep(0.02)

    def measure_overlay(self) -> None:
        if self._server is None:
            return
        fd_dir = Path(f"/proc/{self._server.proc.pid}/fd")
        total = 0
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            return
        for fd in fds:
            try:
                target = os.readlink(fd)
                if target.startswith(str(self._overlay_dir)):
                    total += os.stat(fd).st_blocks * 512
            except OSError:
                continue
        self.overlay_bytes = max(self.overlay_bytes, total)

    def _stop(self) -> None:
        if self._fuse is not None:
            if self._fuse.poll() is None:
                unmount = ["fusermount3", "-u", str(self._mountpoint)]
                if subprocess.run(unmount, capture_output=True, check=False).returncode:
                    # busy (a checker's child still holds the file): detach it now, the
                    # kernel finishes when the last user closes it
                    subprocess.run([*unmount, "-z"], capture_output=True, check=False)
                try:
                    self._fuse.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._fuse.kill()
                    self._fuse.wait()
            self._fuse = None
        if self._server is not None:
            self.measure_overlay()
            self._server.close()  # SIGTERM: the plugin's cleanup writes its stats
            self._server = None
        with contextlib.suppress(OSError, ValueError, KeyError):
            self.bytes_fetched = int(json.loads(self._stats.read_text())["bytes_fetched"])

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()
