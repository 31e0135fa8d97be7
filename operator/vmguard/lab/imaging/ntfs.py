"""NTFS volumes with real content, made by mkntfs and libntfs-3g without FUSE or mount.

Steps: ``mkntfs -T`` (times zero, and its random numbers seeded from that zero time, so the
volume is byte-identical), ``ntfslabel --new-serial`` (a serial derived from the seed),
then :mod:`vmguard.lab.imaging.ntfs_writer` creates directories, files and symlinks with
libntfs-3g's own calls (what ``ntfscp`` uses, plus the directory and symlink creation
ntfscp lacks) under libfaketime, whose frozen clock pins the MFT-change times libntfs-3g
takes from ``clock_gettime()``.

Limits: names follow Windows rules (no ``\\ : * ? " < > |``, no control characters, no
trailing dot or space, at most 255 UTF-16 units); names are POSIX-namespace only (no 8.3
alias); no POSIX modes (every file gets the default security descriptor ntfs-3g writes);
creation, change and access times all equal the tree's mtime. Symlinks are relative
Windows symlink reparse points. Needs libfaketime (``apt-get install libfaketime``).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import vmguard
from vmguard.lab.imaging.content import derive
from vmguard.lab.imaging.tools import find, run
from vmguard.lab.imaging.tree import WINDOWS, NamePolicy, Tree

POLICY: NamePolicy = WINDOWS
TOOLS = ("mkntfs", "ntfslabel", "libntfs-3g.so.89", "libfaketime.so.1")


def frozen_clock_env(now: int) -> dict[str, str]:
    """Environment that freezes the wall clock of a child process at ``now``."""
    lib = find("libfaketime.so.1")
    assert lib is not None, "checked by tools.require"
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%S")
    # An absolute FAKETIME without '@' stands still; monotonic clocks stay real so
    # timeouts inside Python and the library keep working.
    return {"LD_PRELOAD": lib, "FAKETIME": stamp, "DONT_FAKE_MONOTONIC": "1", "TZ": "UTC"}


def build(
    fs_path: Path,
    tree: Tree,
    tree_dir: Path,
    *,
    label: str,
    seed: int,
    now: int,
    start_sector: int,
    work: Path,
) -> None:
    """Make ``fs_path`` (a file of the partition's size) an NTFS volume holding ``tree``.

    ``tree_dir`` is ``tree`` materialized; ``start_sector`` goes into the boot sector's
    hidden-sectors field, as Windows expects for a volume inside a partition.
    """
    env = frozen_clock_env(now)
    geometry = ["-s", "512", "-c", "4096", "-p", str(start_sector), "-H", "255", "-S", "63"]
    run(["mkntfs", "-F", "-Q", "-T", "-q", *geometry, "-L", label, fs_path], env=env)
    serial = derive(seed, "ntfs-serial") or 1
    run(["ntfslabel", "-q", f"--new-serial={serial:016x}", fs_path], env=env)

    entries = []
    for e in tree:
        item: dict[str, object] = {"path": e.path, "kind": e.kind, "mtime": e.mtime}
        if e.kind == "file":
            item["source"] = str(tree_dir / e.path)
        elif e.kind == "symlink":
            assert e.target is not None
            target = os.path.normpath(os.path.join(os.path.dirname(e.path), e.target))
            item["target"] = e.target
            item["target_is_dir"] = tree.entries.get(target) is not None and (
                tree.entries[target].kind == "dir"
            )
        entries.append(item)
    plan = work / "ntfs-plan.json"
    plan.write_text(json.dumps({"root_mtime": tree.root_mtime, "entries": entries}))
    package_root = str(Path(vmguard.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])
    run([sys.executable, "-m", "vmguard.lab.imaging.ntfs_writer", fs_path, plan], env=env)
