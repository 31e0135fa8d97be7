"""XFS filesystems populated by ``mkfs.xfs -p protofile``, without mounting.

xfsprogs (6.1 here) populates a new filesystem from a protofile: a whitespace-separated
list of names, modes, owners and source files. mkfs stamps every inode with the current
time, so afterwards ``xfs_db -x`` rewrites atime/mtime/ctime/crtime of every inode (found
with ``ncheck`` plus the root and realtime inodes) and recomputes the inode CRCs; ``-m
uuid=`` comes from the seed. With that, the filesystem is byte-identical per seed.

Limits: the protofile cannot express names with whitespace, names starting with ``:``
(a comment there) or the name ``$`` (end of directory), nor symlink targets with
whitespace: such entries are left out (see :data:`POLICY`). mkfs.xfs refuses
filesystems under 300 MiB. Files are written in one extent each.
"""

from __future__ import annotations

import re
from pathlib import Path

from vmguard.errors import ConfigError
from vmguard_lab.errors import LabError
from vmguard_lab.imaging.table import guid
from vmguard_lab.imaging.tools import run
from vmguard_lab.imaging.tree import NamePolicy, Tree

POLICY: NamePolicy = NamePolicy(
    "xfs-protofile",
    forbidden=frozenset("/\0 \t\n"),
    forbid_leading=":",
    reserved=frozenset({"$"}),
)
TOOLS = ("mkfs.xfs", "xfs_db")
MIN_SIZE = 300 << 20


def protofile(tree: Tree) -> str:
    """The protofile for ``tree``; source paths are relative to the materialized tree."""
    lines = ["/dev/null", "0 0", "d--755 0 0"]

    def walk(parent: str, depth: int) -> None:
        pad = " " * depth
        for e in tree.children(parent):
            perm = f"{e.mode & 0o777:03o}"
            if e.kind == "dir":
                lines.append(f"{pad}{e.name} d--{perm} 0 0")
                walk(e.path, depth + 1)
                lines.append(f"{pad} $")
            elif e.kind == "symlink":
                lines.append(f"{pad}{e.name} l--777 0 0 {e.target}")
            else:
                lines.append(f"{pad}{e.name} ---{perm} 0 0 {e.path}")

    walk("", 1)
    lines.append("$")
    return "\n".join(lines) + "\n"


def build(
    fs_path: Path, tree: Tree, tree_dir: Path, *, label: str, seed: int, now: int, work: Path
) -> None:
    """Make ``fs_path`` (a file of the partition's size) an XFS holding ``tree``."""
    if fs_path.stat().st_size < MIN_SIZE:
        raise ConfigError(f"mkfs.xfs needs at least 300 MiB; partition is {fs_path.stat().st_size}")
    proto = work / "xfs.proto"
    proto.write_bytes(protofile(tree).encode())
    argv = ["mkfs.xfs", "-q", "-f", "-m", f"uuid={guid(seed, 'xfs-uuid')}", "-L", label[:12]]
    # cwd: the protofile names source files relative to the tree (they hold no whitespace).
    run([*argv, "-p", proto, fs_path], cwd=tree_dir)
    _fix_times(fs_path, tree, now)


def _db(fs_path: Path, *commands: str) -> str:
    argv: list[str | Path] = ["xfs_db", "-r", "-f"]
    for c in commands:
        argv += ["-c", c]
    return run([*argv, fs_path]).decode()


def inode_paths(fs_path: Path) -> dict[str, int]:
    """Path (as in the tree; root is ``""``) -> inode number, from ``ncheck``."""
    sb = _db(fs_path, "sb 0", "print rootino")
    out = {"": int(sb.split("=")[1])}
    for line in _db(fs_path, "blockget -n", "ncheck").splitlines():
        ino, _, path = line.strip().partition(" ")
        if ino.isdigit():
            out[path.removesuffix("/.")] = int(ino)
    return out


def _fix_times(fs_path: Path, tree: Tree, now: int) -> None:
    bigtime = "BIGTIME" in _db(fs_path, "version")
    sb = _db(fs_path, "sb 0", "print rbmino rsumino")
    meta = [int(v) for v in re.findall(r"=\s*(\d+)", sb)]

    def stamp(sec: int) -> list[str]:
        # bigtime inodes hold nanoseconds since 1901-12-13 in one 64-bit field, which
        # xfs_db writes raw through the ".sec" name.
        return [f"{(sec + 2**31) * 10**9}"] if bigtime else [str(sec), "0"]

    cmds: list[str] = []

    def set_inode(ino: int, mtime: int) -> None:
        cmds.append(f"inode {ino}")
        times = {"core.atime": mtime, "core.mtime": mtime, "core.ctime": now, "v3.crtime": mtime}
        for field, sec in times.items():
            value = stamp(sec)
            cmds.append(f"write {field}.sec {value[0]}")
            if len(value) > 1:
                cmds.append(f"write {field}.nsec {value[1]}")

    for ino in meta:
        set_inode(ino, now)
    paths = inode_paths(fs_path)
    for path, ino in sorted(paths.items(), key=lambda kv: kv[1]):
        entry = tree.entries.get(path)
        if path and entry is None:
            raise LabError(f"xfs holds {path!r}, which the tree does not")
        set_inode(ino, tree.root_mtime if entry is None else entry.mtime)
    if len(paths) != len(tree) + 1:
        raise LabError(f"xfs holds {len(paths) - 1} entries, the tree {len(tree)}")
    out = run(
        ["xfs_db", "-x", "-f", fs_path], stdin=("\n".join(cmds) + "\n").encode(), merge_stderr=True
    )
    bad = [
        ln for ln in out.decode(errors="replace").splitlines() if "error" in ln or "not found" in ln
    ]
    if bad:
        raise LabError(f"xfs_db could not set inode times: {bad[:3]}")
