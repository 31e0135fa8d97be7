"""FAT filesystems written with mtools (``mformat``, ``mmd``, ``mcopy``), no mount.

Determinism: ``mformat -N`` takes a serial derived from the seed; mtools reads the clock
through ``SOURCE_DATE_EPOCH``, so each ``mmd`` runs with it set to that directory's mtime
and ``mcopy -m`` keeps file mtimes; ``TZ=UTC`` because FAT stores local time. Directories
and files are created one directory at a time in sorted order (``mcopy -s`` would follow
the host's readdir order), so clusters and directory slots land in the same places.

Limits: Windows name rules, and no characters beyond U+FFFF (mtools drops them from long
names; see :data:`POLICY`); no symlinks; no POSIX modes; times have
2-second resolution (the tree's mtimes are even, so they survive exactly); 8.3 aliases are
whatever mtools generates. FAT12/16/32 is mformat's choice by size unless ``fat32``.
"""

from __future__ import annotations

from pathlib import Path

from vmguard_lab.imaging.content import derive
from vmguard_lab.imaging.table import SECTOR
from vmguard_lab.imaging.tools import run
from vmguard_lab.imaging.tree import WINDOWS, NamePolicy, Tree

POLICY: NamePolicy = NamePolicy(
    "fat",
    max_bytes=None,
    max_units=255,
    forbidden=WINDOWS.forbidden,
    forbid_control=True,
    forbid_trailing_dot_space=True,
    bmp_only=True,  # mtools 4.0.32 drops characters beyond U+FFFF from long names
    symlinks=False,
)
TOOLS = ("mformat", "mmd", "mcopy")


def _env(epoch: int) -> dict[str, str]:
    # No user config; mtools takes "now" (new directories, the label) from SOURCE_DATE_EPOCH.
    return {"MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": "/dev/null", "SOURCE_DATE_EPOCH": str(epoch)}


def build(
    fs_path: Path,
    tree: Tree,
    tree_dir: Path,
    *,
    label: str,
    seed: int,
    now: int,
    start_sector: int,
    fat32: bool = False,
) -> None:
    """Make ``fs_path`` (a file of the partition's size) a FAT filesystem holding ``tree``."""
    sectors = fs_path.stat().st_size // SECTOR
    serial = derive(seed, "fat-serial") & 0xFFFFFFFF
    argv: list[str | Path] = ["mformat", "-i", fs_path, "-T", str(sectors), "-h", "255", "-s", "63"]
    argv += ["-H", str(start_sector), "-N", f"{serial:08X}", "-v", label[:11]]
    run([*argv, *(["-F"] if fat32 else []), "::"], env=_env(now))

    dirs = [""] + [e.path for e in tree if e.kind == "dir"]
    for d in dirs:
        if d:
            run(["mmd", "-i", fs_path, f"::/{d}"], env=_env(tree.entries[d].mtime))
        files = [e for e in tree.children(d) if e.kind == "file"]
        if files:
            sources = [tree_dir / e.path for e in files]
            run(["mcopy", "-m", "-i", fs_path, *sources, f"::/{d}/"], env=_env(now))
