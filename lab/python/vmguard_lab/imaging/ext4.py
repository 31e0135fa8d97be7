"""ext4 filesystems populated from a directory tree, without mounting.

``mkfs.ext4 -d DIR`` copies the tree (sorted, sparse-aware: all-zero blocks become holes)
into a filesystem built in a plain file. What makes the result byte-identical:

- a pinned ``mke2fs.conf`` (``MKE2FS_CONFIG``), so the host's defaults do not leak in;
- ``-U`` and ``-E hash_seed=`` derived from the seed; ``E2FSPROGS_FAKE_TIME`` for every
  time mke2fs and debugfs take from the clock (mkfs time, lost+found, root);
- ``mkfs.ext4 -d`` copies each inode's *ctime* (and uid/gid) from the source files, which
  no one can set; afterwards ``debugfs -w`` sets ctime to the fixed build time and owner to
  0:0 on every used inode from 12 up (and the root), found from dumpe2fs' free-inode ranges.

Names: anything POSIX allows (newlines, quotes, 255-byte names). Symlinks: yes, fast and
slow. Modes and mtimes: as in the tree; atime = mtime; ctime = build time.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from vmguard_lab.errors import LabError
from vmguard_lab.imaging.content import Content, Patch
from vmguard_lab.imaging.table import guid
from vmguard_lab.imaging.tools import run
from vmguard_lab.imaging.tree import (
    POSIX,
    Entry,
    NamePolicy,
    Tree,
    TreeChange,
    in_place_patch,
)

POLICY: NamePolicy = POSIX
BLOCK = 4096
TOOLS = ("mkfs.ext4", "debugfs", "dumpe2fs")

# Debian 12's defaults, pinned. No usage types: the same features at every size.
MKE2FS_CONF = """\
[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384

[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
"""


def build(fs_path: Path, tree_dir: Path, *, label: str, seed: int, now: int, work: Path) -> None:
    """Make ``fs_path`` (a file of the partition's size) an ext4 holding ``tree_dir``."""
    conf = work / "mke2fs.conf"
    conf.write_text(MKE2FS_CONF)
    env = {"MKE2FS_CONFIG": str(conf), "E2FSPROGS_FAKE_TIME": str(now)}
    extended = f"hash_seed={guid(seed, 'ext4-hash')},root_owner=0:0"
    argv = ["mkfs.ext4", "-q", "-F", "-t", "ext4", "-L", label, "-U", guid(seed, "ext4-uuid")]
    run([*argv, "-E", extended, "-d", tree_dir, fs_path], env=env)

    lines = []
    for ino in used_inodes(fs_path):
        if ino == 2 or ino >= 12:
            lines += [f"sif <{ino}> ctime @{now}", f"sif <{ino}> ctime_extra 0"]
            lines += [f"sif <{ino}> uid 0", f"sif <{ino}> gid 0"]
    _debugfs(fs_path, lines, env, work / "fix-inodes.debugfs")


_DEBUGFS_ERROR = re.compile(r"not found|[Ee]rror|[Cc]ould ?n[o']t|[Ii]nvalid|[Uu]sage|[Ff]ailed")


def _debugfs(fs_path: Path, commands: list[str], env: dict[str, str], script: Path) -> list[str]:
    """Run ``commands`` in one ``debugfs -w``; return its output lines.

    debugfs exits 0 whatever happens, so failures are recognised by their wording.
    """
    script.write_text("\n".join(commands) + "\n")
    out = run(["debugfs", "-w", "-f", script, fs_path], env=env, merge_stderr=True)
    lines = out.decode(errors="replace").splitlines()
    errors = [ln for ln in lines if _DEBUGFS_ERROR.search(ln) and not ln.startswith("debugfs:")]
    if errors:
        raise LabError(f"debugfs failed on {fs_path.name}: {errors[:3]}")
    return lines


def apply_change(
    fs_path: Path, old: Tree, change: TreeChange, new: Tree, *, now: int, work: Path
) -> None:
    """Turn the ext4 in ``fs_path`` holding ``old`` into one holding ``new`` in place, the
    way a guest would: delete, create, rewrite small files (new blocks) and overwrite the
    patched blocks of big files where they lie. Everything else stays where it was, so
    the block-level difference is about as large as the change (what CBT would see).

    ``old`` and ``new`` are the filtered trees of two consecutive generations and
    ``change`` the :func:`~vmguard_lab.imaging.tree.evolve` step between them.
    """
    env = {"E2FSPROGS_FAKE_TIME": str(now)}
    blobs = work / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    in_place: dict[str, Patch] = {}
    for path in change.changed:
        if path in old.entries and path in new.entries:
            patch = in_place_patch(old.entries[path], new.entries[path])
            if patch is not None:
                in_place[path] = patch

    # Where the patched blocks of big files lie (before anything moves).
    queries = [
        f'bmap "/{path}" {blk}'
        for path, p in sorted(in_place.items())
        for blk in range(p.offset // BLOCK, (p.offset + p.length - 1) // BLOCK + 1)
    ]
    out = _debugfs(fs_path, queries, env, work / "bmap.debugfs") if queries else []
    answers = [int(ln) for ln in out if ln.strip().isdigit()]
    if len(answers) != len(queries) or 0 in answers:
        in_place.clear()  # a patch over a hole: rewrite those files instead (rare)
    else:
        _overwrite_blocks(fs_path, in_place, answers)

    cmds: list[str] = []
    rewritten = [p for p in change.changed if p in new.entries and p not in in_place]
    for path in [*change.deleted, *rewritten]:
        if path in old.entries:
            cmds.append(f'rm "/{path}"')
    for path in change.added:
        e = new.entries.get(path)
        if e is not None and e.kind == "dir":
            cmds.append(f'mkdir "/{path}"')
    for i, path in enumerate([*change.added, *rewritten]):
        e = new.entries.get(path)
        if e is None or e.kind != "file":
            continue
        assert e.content is not None
        blob = blobs / f"{i}"
        _write_content(blob, e)
        cmds.append(f'write "{blob}" "/{path}"')
    touched = [*change.added, *change.changed]
    touched += [e.path for e in new if e.kind == "dir" and e.mtime != _mtime(old, e.path)]
    for path in sorted(set(touched)):
        e = new.entries.get(path)
        if e is None:
            continue
        kind = {"file": 0o100000, "dir": 0o040000, "symlink": 0o120000}[e.kind]
        ref = f'"/{path}"'
        cmds += [f"sif {ref} mode 0{kind | e.mode:o}", f"sif {ref} uid 0", f"sif {ref} gid 0"]
        for field, t in (("mtime", e.mtime), ("atime", e.mtime), ("ctime", now)):
            cmds += [f"sif {ref} {field} @{t}", f"sif {ref} {field}_extra 0"]
        if path in change.added or path in rewritten:
            cmds += [f"sif {ref} crtime @{e.mtime}", f"sif {ref} crtime_extra 0"]
    if new.root_mtime != old.root_mtime:
        for field, t in (("mtime", new.root_mtime), ("atime", new.root_mtime), ("ctime", now)):
            cmds.append(f"sif <2> {field} @{t}")
    _debugfs(fs_path, cmds, env, work / "change.debugfs")


def _mtime(tree: Tree, path: str) -> int | None:
    e = tree.entries.get(path)
    return e.mtime if e is not None else None


def _overwrite_blocks(fs_path: Path, patches: dict[str, Patch], blocks: list[int]) -> None:
    fd = os.open(fs_path, os.O_WRONLY)
    try:
        it = iter(blocks)
        for _path, p in sorted(patches.items()):
            data = Content("random", p.length, p.seed).read()
            for blk in range(p.offset // BLOCK, (p.offset + p.length - 1) // BLOCK + 1):
                lo = max(p.offset, blk * BLOCK)
                hi = min(p.offset + p.length, (blk + 1) * BLOCK)
                os.pwrite(fd, data[lo - p.offset : hi - p.offset], next(it) * BLOCK + lo % BLOCK)
    finally:
        os.close(fd)


def _write_content(path: Path, e: Entry) -> None:
    assert e.content is not None
    with open(path, "wb") as f:
        for chunk in e.content.chunks():
            f.write(chunk)


def used_inodes(fs_path: Path) -> list[int]:
    """Inode numbers in use, from the free-inode ranges dumpe2fs prints per group."""
    text = run(["dumpe2fs", fs_path]).decode()
    ipg = int(_field(text, "Inodes per group"))
    count = int(_field(text, "Inode count"))
    free: set[int] = set()
    for m in re.finditer(r"^\s+Free inodes: ?(.*)$", text, re.M):
        for part in m.group(1).split(","):
            part = part.strip()
            if not part:
                continue
            lo, _, hi = part.partition("-")
            free.update(range(int(lo), int(hi or lo) + 1))
    if count % ipg:
        raise LabError(f"odd inode geometry in {fs_path}: {count} inodes, {ipg} per group")
    return [i for i in range(1, count + 1) if i not in free]


def _field(text: str, name: str) -> str:
    m = re.search(rf"^{name}:\s+(\S+)", text, re.M)
    if not m:
        raise LabError(f"dumpe2fs printed no {name!r}")
    return m.group(1)
