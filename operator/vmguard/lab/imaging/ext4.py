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

import re
from pathlib import Path

from vmguard.errors import LabError
from vmguard.lab.imaging.table import guid
from vmguard.lab.imaging.tools import run
from vmguard.lab.imaging.tree import POSIX, NamePolicy

POLICY: NamePolicy = POSIX
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
    script = work / "fix-inodes.debugfs"
    script.write_text("\n".join(lines) + "\n")
    out = run(["debugfs", "-w", "-f", script, fs_path], env=env, merge_stderr=True)
    # debugfs echoes each command as "debugfs: ..." and reports failures as "cmd: reason"
    # while still exiting 0.
    lines = out.decode(errors="replace").splitlines()
    errors = [ln for ln in lines if ": " in ln and not ln.startswith("debugfs")]
    if errors:
        raise LabError(f"debugfs could not fix inode times: {errors[:3]}")


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
