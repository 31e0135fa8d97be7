"""The Debian tools the image factory runs, checked before any work starts.

Every external program is named here with the Debian package that ships it, so a missing
tool fails the build up front with ``apt-get install <package>`` in the message instead
of half-way through with a bare ``FileNotFoundError``. Commands run with a fixed locale
and time zone so their output (and what they write) does not depend on the caller's.
"""

from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from vmguard_lab.errors import LabError

#: program (or shared library) -> Debian package that provides it
PACKAGES: dict[str, str] = {
    "sfdisk": "fdisk",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "dumpe2fs": "e2fsprogs",
    "mkntfs": "ntfs-3g",
    "ntfslabel": "ntfs-3g",
    "ntfscat": "ntfs-3g",
    "ntfsls": "ntfs-3g",
    "ntfsinfo": "ntfs-3g",
    "libntfs-3g.so.89": "libntfs-3g89",
    "libfaketime.so.1": "libfaketime",
    "mformat": "mtools",
    "mmd": "mtools",
    "mcopy": "mtools",
    "mkfs.xfs": "xfsprogs",
    "xfs_db": "xfsprogs",
}

#: where Debian puts libfaketime (it is not on the linker path: it is meant for LD_PRELOAD)
FAKETIME_DIRS = ("/usr/lib/x86_64-linux-gnu/faketime", "/usr/lib/aarch64-linux-gnu/faketime")

#: environment every tool runs with: output and on-disk names must not follow the caller
BASE_ENV = {"LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "TZ": "UTC"}


class MissingToolError(LabError):
    """A program the requested image needs is not installed."""


def _search_path() -> str:
    # mkfs.* and friends live in /sbin, which is not on every user's PATH.
    extra = ["/usr/sbin", "/sbin"]
    return os.pathsep.join([os.environ.get("PATH", ""), *extra])


def find(tool: str) -> str | None:
    """Absolute path of ``tool`` (program or shared library), or None."""
    if tool == "libfaketime.so.1":
        for d in FAKETIME_DIRS:
            if (Path(d) / tool).exists():
                return str(Path(d) / tool)
        return None
    if tool.startswith("lib"):
        name = tool.removeprefix("lib").split(".so")[0]
        return ctypes.util.find_library(name)
    return shutil.which(tool, path=_search_path())


def require(tools: Iterable[str]) -> dict[str, str]:
    """Paths of all ``tools``; raise one error naming every missing package."""
    found: dict[str, str] = {}
    missing: list[str] = []
    for tool in sorted(set(tools)):
        path = find(tool)
        if path is None:
            missing.append(tool)
        else:
            found[tool] = path
    if missing:
        pkgs = sorted({PACKAGES.get(t, t) for t in missing})
        raise MissingToolError(
            f"missing {', '.join(missing)}: install with `apt-get install {' '.join(pkgs)}`"
        )
    return found


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: bytes | None = None,
    merge_stderr: bool = False,
) -> bytes:
    """Run a tool; return stdout (and stderr after it with ``merge_stderr``); raise
    :class:`LabError` with its stderr on failure."""
    out, err = run_capture(argv, env=env, cwd=cwd, stdin=stdin)
    return out + err if merge_stderr else out


def run_capture(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: bytes | None = None,
) -> tuple[bytes, bytes]:
    """Like :func:`run`, but return stdout and stderr apart."""
    full_env = {**os.environ, **BASE_ENV, "PATH": _search_path(), **(env or {})}
    cmd = [os.fspath(a) for a in argv]
    proc = subprocess.run(
        cmd,
        input=stdin if stdin is not None else b"",
        capture_output=True,
        env=full_env,
        cwd=cwd,
        check=False,
    )
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-2000:]
        raise LabError(f"{cmd[0]} failed (exit {proc.returncode}): {err}")
    return proc.stdout, proc.stderr
