"""File-system checks: each file system's own checker, run on a copy-on-write export.

Per file system, :data:`CHECKERS` names the program and how to read its verdict:

=======  ==========================================  ============================
fs       journal replay (writes go to the overlay)   check (reads only)
=======  ==========================================  ============================
ext4     ``e2fsck -E journal_only -y``               ``e2fsck -f -n``
xfs      none possible without a kernel mount        ``xfs_repair -n -f``
ntfs     none ($LogFile replay is Windows' job)      ``ntfsfix --no-action``
fat      the "dirty" state bit cleared               ``fsck.fat -n``
=======  ==========================================  ============================

Why the replay: a crash-consistent point (a snapshot of a running VM) has a journal that
still holds committed transactions; a read-only check sees metadata the journal would
fix and reports false errors. Replaying it into the overlay first, as a mount would,
leaves only real damage for the check to find. FAT has no journal, but Linux sets a
"dirty" bit in the boot sector while the file system is mounted (an EFI system partition
of a running VM), and ``fsck.fat -n`` fails on that bit alone: it is cleared in the
overlay first and noted in the findings. XFS can only replay its log in the
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmguard.verify.results import Outcome

MAX_FINDINGS = 20
DEFAULT_TIMEOUT = 3600.0

_NOISE = re.compile(
    r"^(e2fsck \d|fsck\.fat \d|Pass \d|Phase \d|        - |xfs_repair version|Mounting volume|"
    r"Processing of \$MFT and \$MFTMirr completed|No modify flag set|\s*$)"
)
_XFS_DIRTY_LOG = "log which is being ignored"


#: FAT boot sector: the 16-bit FAT size (0 on FAT32), and the state byte of each layout
_FAT_FATSZ16 = 0x16
_FAT16_STATE, _FAT32_STATE = 0x25, 0x41
_FAT_STATE_DIRTY = 0x01


def clear_fat_dirty_bit(path: Path) -> list[dict[str, str]]:
    """Clear the FAT boot sector's dirty bit in ``path`` (an overlay); say so if it was set."""
    with open(path, "r+b") as f:
        boot = bytearray(f.read(512))
        if len(boot) < 512:
            return []
        fat32 = boot[_FAT_FATSZ16] == 0 and boot[_FAT_FATSZ16 + 1] == 0
        where = _FAT32_STATE if fat32 else _FAT16_STATE
        if not boot[where] & _FAT_STATE_DIRTY:
            return []
        f.seek(where)
        f.write(bytes([boot[where] & ~_FAT_STATE_DIRTY & 0xFF]))
    note = "dirty bit set (mounted when the snapshot was taken); cleared in the overlay"
    return [{"message": note}]


@dataclass(frozen=True)
class Checker:
    fs: str
    tool: str
    check: tuple[str, ...]
    replay: tuple[str, ...] | None = None
    prepare: Callable[[Path], list[dict[str, str]]] | None = None
    """Done to the overlay before the check, in-process (what a mount would see)."""


CHECKERS: dict[str, Checker] = {
    "ext4": Checker(
        "ext4", "e2fsck", ("e2fsck", "-f", "-n"), ("e2fsck", "-E", "journal_only", "-y")
    ),
    "xfs": Checker("xfs", "xfs_repair", ("xfs_repair", "-n", "-f")),
    "ntfs": Checker("ntfs", "ntfsfix", ("ntfsfix", "--no-action")),
    "fat": Checker("fat", "fsck.fat", ("fsck.fat", "-n"), prepare=clear_fat_dirty_bit),
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
        notes = checker.prepare(path) if checker.prepare is not None else []
    except OSError as exc:  # EIO through FUSE: a chunk of the boot sector is unreadable
        return FsckVerdict(Outcome.ERROR, [{"message": f"cannot read: {exc}"}], checker.tool)
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
        return FsckVerdict(Outcome.PASSED, notes, checker.tool)
    said = _said(lines)
    if fs == "xfs" and any(_XFS_DIRTY_LOG in line for line in lines):
        note = (
            "the XFS log is dirty and only a kernel mount can replay it:"
            " inconsistencies may be spurious"
        )
        return FsckVerdict(Outcome.ERROR, [{"message": note}, *said], checker.tool)
    summary = {"message": f"{checker.tool} exited {rc}"}
    every = [summary, *said, *findings, *notes]
    return FsckVerdict(Outcome.FAILED, every[:MAX_FINDINGS], checker.tool)
