"""NTFS volumes with real content, made by mkntfs and libntfs-3g without FUSE or mount.

Steps: ``mkntfs -T`` (times zero, and its random numbers seeded from that zero time, so the
volume is byte-identical), ``ntfslabel --new-serial`` (a serial derived from the seed),
then :mod:`vmguard_lab.imaging.ntfs_writer` creates directories, files and symlinks with
libntfs-3g's own calls (what ``ntfscp`` uses, plus the directory and symlink creation
ntfscp lacks) under libfaketime, whose frozen clock pins the MFT-change times libntfs-3g
takes from ``clock_gettime()``. Later backup points are applied in place by the same
writer (:func:`apply_change`).

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

import vmguard_lab
from vmguard_lab.imaging.content import Content, derive
from vmguard_lab.imaging.tools import find, run
from vmguard_lab.imaging.tree import WINDOWS, Entry, NamePolicy, Tree, TreeChange, in_place_patch

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

    plan = {
        "root_mtime": tree.root_mtime,
        "entries": [_plan_entry(tree, e, tree_dir) for e in tree],
    }
    _run_writer(fs_path, plan, env, work)


def apply_change(
    fs_path: Path, old: Tree, change: TreeChange, new: Tree, *, now: int, work: Path
) -> None:
    """Turn the NTFS in ``fs_path`` holding ``old`` into one holding ``new`` in place:
    delete, create, rewrite small files and write the patched ranges of big files into
    their existing clusters, so little but the change differs between backup points."""
    work.mkdir(parents=True, exist_ok=True)
    blobs = work / "blobs"
    blobs.mkdir(exist_ok=True)
    modify: list[dict[str, object]] = []
    for i, path in enumerate(change.changed):
        if path not in new.entries or path not in old.entries:
            continue
        e = new.entries[path]
        assert e.content is not None
        blob = blobs / f"m{i}"
        patch = in_place_patch(old.entries[path], e)
        if patch is not None:
            blob.write_bytes(Content("random", patch.length, patch.seed).read())
            offset, truncate = patch.offset, False
        else:
            blob.write_bytes(e.content.read())
            offset, truncate = 0, True
        item = {"path": path, "source": str(blob), "offset": offset, "truncate": truncate}
        modify.append({**item, "mtime": e.mtime})
    entries = []
    for i, path in enumerate(change.added):
        added = new.entries.get(path)
        if added is None:
            continue
        if added.content is not None:
            (blobs / f"a{i}").write_bytes(added.content.read())
        entries.append(_plan_entry(new, added, blobs / f"a{i}", direct=True))
    dir_times = {
        e.path: e.mtime
        for e in new
        if e.kind == "dir" and e.path in old.entries and old.entries[e.path].mtime != e.mtime
    }
    plan = {
        "root_mtime": new.root_mtime,
        "delete": [p for p in change.deleted if p in old.entries],
        "modify": modify,
        "entries": entries,
        "dir_times": dir_times,
    }
    _run_writer(fs_path, plan, frozen_clock_env(now), work)


def _plan_entry(tree: Tree, e: Entry, source: Path, direct: bool = False) -> dict[str, object]:
    """One entry to create; ``source`` is the tree's root, or the file itself if ``direct``."""
    item: dict[str, object] = {"path": e.path, "kind": e.kind, "mtime": e.mtime}
    if e.kind == "file":
        item["source"] = str(source if direct else source / e.path)
    elif e.kind == "symlink":
        assert e.target is not None
        target = os.path.normpath(os.path.join(os.path.dirname(e.path), e.target))
        item["target"] = e.target
        item["target_is_dir"] = target in tree.entries and tree.entries[target].kind == "dir"
    return item


def _run_writer(fs_path: Path, plan: dict[str, object], env: dict[str, str], work: Path) -> None:
    plan_file = work / "ntfs-plan.json"
    plan_file.write_text(json.dumps(plan))
    package_root = str(Path(vmguard_lab.__file__).resolve().parent.parent)
    env = {**env, "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
    run([sys.executable, "-m", "vmguard_lab.imaging.ntfs_writer", fs_path, plan_file], env=env)
