"""File-system checks: each file system's own checker, run on a copy-on-write export.

Per file system, :data:`CHECKERS` names the program and how to read its verdict:

=======  ==========================================  ============================
fs       journal replay (writes go to the overlay)   check (reads only)
=======  ==========================================  ============================
ext4     ``e2fsck -E journal_only -y``               ``e2fsck -f -n``
xfs      none possible without a kernel mount        ``xfs_repair -n -f``
ntfs     none ($LogFile replay is Windows' job)      ``ntfsfix --no-action``
fat      none (FAT has no journal)                   ``fsck.fat -n``
=======  ==========================================  ============================

Why the replay: a crash-consistent point (a snapshot of a running VM) has a journal that
still holds committed transactions; a read-only check sees metadata the journal would
fix and reports false errors. Replaying it into the overlay first, as a mount would,
leaves only real damage for the check to find. XFS can only replay its log in the
kernel: a dirty XFS log with inconsistencies gives ``error`` (no verdict), not
``failed``. Invariants:

- The verdict is the checker's exit status (0 passes); findings are the lines of its
  output that say something (banners and pass headers dropped), at most
  :data:`MAX_FINDINGS`, so the result names the tool's own message.
- A checker that is missing or runs past its timeout is an ``error``, never a pass.
- Checkers run with ``LC_ALL=C`` so their messages do not depend on the host's locale.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vmguard.verify.results import Outcome

MAX_FINDINGS = 20
DEFAULT_TIMEOUT = 3600.0

_NOISE = re.compile(
    r"^(e2fsck \d|Pass \d|Phase \d|        - |xfs_repair version|Mounting volume|"
    r"Processing of \$MFT and \$MFTMirr completed|No modify flag set|\s*$)"
)
_XFS_DIRTY_LOG = "log which is being ignored"


@dataclass(frozen=True)
class Checker:
    fs: str
    tool: str
    check: tuple[str, ...]
    replay: tuple[str, ...] | None = None


CHECKERS: dict[str, Checker] = {
    "ext4": Checker(
        "ext4", "e2fsck", ("e2fsck", "-f", "-n"), ("e2fsck", "-E", "journal_only", "-y")
    ),
    "xfs": Checker("xfs", "xfs_repair", ("xfs_repair", "-n", "-f")),
    "ntfs": Checker("ntfs", "ntfsfix", ("ntfsfix", "--no-action")),
    "fat": Checker("fat", "fsck.fat", ("fsck.fat", "-n")),
}


@dataclass
class FsckVerdict:
    result: Outcome
    findings: list[dict[str, str]]
    tool: str | None


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["LC_ALL"] = "C"
    env["PATH"] = os.pathsep.join([env.get("PATH", ""), "/usr/sbin", "/sbin"])
    return env


def _run(argv: Sequence[str], path: Path, timeout: float) -> tuple[int, list[str]]:
    proc = subprocess.run(
        [*argv, str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=_env(),
        timeout=timeout,
        check=False,
    )
    text = proc.stdout.decode("utf-8", errors="replace").replace(str(path), "<volume>")
    return proc.returncode, text.splitlines()


def _said(lines: Sequence[str]) -> list[dict[str, str]]:
    kept = [line.rstrip() for line in lines if not _NOISE.match(line)]
    return [{"message": line} for line in kept[:MAX_FINDINGS]]


def check_filesystem(fs: str, path: Path, *, timeout: float = DEFAULT_TIMEOUT) -> FsckVerdict:
    """Replay the journal of the file system at ``path`` (a writable overlay), then check it."""
    checker = CHECKERS.get(fs)
    if checker is None:
        return FsckVerdict(
            Outcome.SKIPPED, [{"message": f"no checker for {fs} file systems"}], None
        )
    if shutil.which(checker.tool, path=_env()["PATH"]) is None:
        return FsckVerdict(
            Outcome.ERROR, [{"message": f"{checker.tool} is not installed"}], checker.tool
        )
    findings: list[dict[str, str]] = []
    try:
        if checker.replay is not None:
            rc, lines = _run(checker.replay, path, timeout)
            if rc not in (0, 1):  # 1: the replay changed the (overlay) file system
                # what stopped it, the check below says again in full
                findings.append({"message": f"journal replay exited {rc}"})
        rc, lines = _run(checker.check, path, timeout)
    except subprocess.TimeoutExpired:
        return FsckVerdict(
            Outcome.ERROR,
            [{"message": f"{checker.tool} ran longer than {timeout:.0f}s"}],
            checker.tool,
        )
    if rc == 0:
        return FsckVerdict(Outcome.PASSED, [], checker.tool)
    said = _said(lines)
    if fs == "xfs" and any(_XFS_DIRTY_LOG in line for line in lines):
        note = (
            "the XFS log is dirty and only a kernel mount can replay it:"
            " inconsistencies may be spurious"
        )
        return FsckVerdict(Outcome.ERROR, [{"message": note}, *said], checker.tool)
    summary = {"message": f"{checker.tool} exited {rc}"}
    return FsckVerdict(Outcome.FAILED, [summary, *said, *findings][:MAX_FINDINGS], checker.tool)
