"""Seeded directory trees: generation, per-filesystem name rules, evolution, manifests.

A :class:`Tree` maps relative POSIX paths (``"docs/a b.txt"``, no leading slash, the root
itself not listed) to :class:`Entry` objects. Everything in it is a function of
``(TreeSpec, seed, generation)``:

- nested directories, files of assorted sizes and kinds (text, random, zeros, sparse), a big
  file at :data:`BIG_FILE` (10 MiB by default), empty files, symlinks (relative, to a file,
  to a directory, dangling, and one with a target longer than 60 bytes);
- awkward names: spaces, non-ASCII, a non-BMP character, a newline, quotes, characters
  Windows forbids, a trailing dot, and 255-byte names (one ASCII, one mostly 2-byte UTF-8);
- fixed modes and mtimes; mtimes are even seconds in the past of :data:`EPOCH` so FAT's
  2-second resolution keeps them exact.

A filesystem that cannot hold a name (see :class:`NamePolicy`) gets the tree through
:func:`filter_tree`, which drops such entries (and everything below a dropped directory);
the manifest of a partition always describes what is really in it.

:func:`evolve` turns generation N into N+1 (files changed, some in place, added, deleted)
and says exactly what changed, so tests can build several backup points with known
differences.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from vmguard_lab.imaging.content import CHUNK, Content, ContentKind, Patch, derive
from vmguard_lab.imaging.sparse import write_nonzero_blocks

#: the fixed "now" of every image: 2020-09-13T12:26:40Z
EPOCH = 1_600_000_000
#: path of the big file of every tree with ``big_file_size > 0``
BIG_FILE = "srv/payload/big.bin"

EntryKind = Literal["file", "dir", "symlink"]

_DIR_NAMES = ("docs", "projects", "var", "home", "logs", "build", "photos", "etc", "music")
_FILE_WORDS = ("report", "notes", "invoice", "data", "image", "config", "backup", "draft")
_EXTS = (".txt", ".bin", ".log", ".csv", ".dat", ".json")
_FILE_MODES = (0o644, 0o644, 0o644, 0o600, 0o640, 0o755, 0o444)
_DIR_MODES = (0o755, 0o755, 0o755, 0o750, 0o700, 0o555)

#: awkward file names; every filesystem keeps those its :class:`NamePolicy` allows
AWKWARD_NAMES: tuple[str, ...] = (
    "with space.txt",
    " leading-space.txt",
    "ünïcödé-名前-файл.txt",
    "emoji-\U0001f600.txt",
    "line\nbreak.txt",
    "quote\"and'apostrophe.txt",
    "semi;colon,comma=eq+plus[br]{ce}#%&.txt",
    "colon:star*question?.txt",
    "back\\slash.txt",
    "trailing-dot.",
    ".hidden",
    "x" * 251 + ".bin",  # 255 bytes, 255 UTF-16 units
    "ä" * 125 + "x.txt",  # 255 bytes, 131 UTF-16 units
)
#: the directory holding half of the awkward names (itself awkward)
AWKWARD_DIR = "with space dir"


@dataclass(frozen=True)
class TreeSpec:
    """What to generate; the seed decides names, sizes, kinds, modes and times."""

    files: int = 40
    dirs: int = 8
    max_file_size: int = 256 << 10
    big_file_size: int = 10 << 20
    empty_files: int = 3
    sparse_files: int = 1
    symlinks: int = 4
    awkward_names: bool = True


@dataclass(frozen=True)
class Entry:
    path: str
    kind: EntryKind
    mode: int
    mtime: int
    content: Content | None = None
    target: str | None = None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> str:
        return self.path.rsplit("/", 1)[0] if "/" in self.path else ""

    @property
    def size(self) -> int:
        if self.content is not None:
            return self.content.size
        return len(self.target.encode()) if self.target is not None else 0


@dataclass(frozen=True)
class ManifestEntry:
    """One line of a manifest. ``mode`` is the tree's: NTFS and FAT store no POSIX modes."""

    type: EntryKind
    size: int
    sha256: str | None
    mtime: int
    mode: int
    target: str | None


@dataclass(frozen=True)
class Tree:
    entries: Mapping[str, Entry]
    root_mtime: int = EPOCH - 86400

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries[p] for p in sorted(self.entries))

    def __len__(self) -> int:
        return len(self.entries)

    def children(self, parent: str) -> list[Entry]:
        return [e for e in self if e.parent == parent]

    def manifest(self, digests: Mapping[str, str] | None = None) -> dict[str, ManifestEntry]:
        """Path -> manifest entry; file digests from ``digests`` or computed here."""
        out: dict[str, ManifestEntry] = {}
        for e in self:
            sha = None
            if e.kind == "file":
                assert e.content is not None
                sha = digests[e.path] if digests is not None else e.content.sha256()
            out[e.path] = ManifestEntry(e.kind, e.size, sha, e.mtime, e.mode, e.target)
        return out


@dataclass(frozen=True)
class TreeChange:
    """Generation N+1 of a tree and how it differs from generation N."""

    tree: Tree
    added: tuple[str, ...]
    changed: tuple[str, ...]
    deleted: tuple[str, ...]


# -- generation -------------------------------------------------------------------------


def _mtime(rng: random.Random) -> int:
    return (EPOCH - 86400 * 2 - rng.randrange(3 * 365 * 86400)) // 2 * 2


def _content(rng: random.Random, seed: int, path: str, max_size: int) -> Content:
    r = rng.random()
    if r < 0.5:
        size = rng.randint(1, 4096)
    elif r < 0.85:
        size = rng.randint(4097, max(4097, max_size // 8))
    else:
        size = rng.randint(1, max(1, max_size))
    kinds: tuple[ContentKind, ...] = ("text", "text", "text", "random", "random", "zeros")
    return Content(rng.choice(kinds), size, derive(seed, "content", path))


def generate_tree(spec: TreeSpec, seed: int, generation: int = 0) -> Tree:
    """The tree of ``spec`` and ``seed`` after ``generation`` calls of :func:`evolve`."""
    tree = _generate(spec, seed)
    for step in range(1, generation + 1):
        tree = evolve(tree, seed, step).tree
    return tree


def _generate(spec: TreeSpec, seed: int) -> Tree:
    rng = random.Random(derive(seed, "tree"))
    entries: dict[str, Entry] = {}

    def add_dir(path: str) -> None:
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p not in entries:
                entries[p] = Entry(p, "dir", rng.choice(_DIR_MODES[:3]), _mtime(rng))

    dirs = [""]
    for i in range(spec.dirs):
        parent = rng.choice([d for d in dirs if d.count("/") < 3])
        path = f"{parent}/{rng.choice(_DIR_NAMES)}-{i}".lstrip("/")
        entries[path] = Entry(path, "dir", rng.choice(_DIR_MODES), _mtime(rng))
        dirs.append(path)

    def add_file(path: str, content: Content, mode: int | None = None) -> None:
        if "/" in path:
            add_dir(path.rsplit("/", 1)[0])
        m = rng.choice(_FILE_MODES) if mode is None else mode
        entries[path] = Entry(path, "file", m, _mtime(rng), content)

    for i in range(spec.files):
        d = rng.choice(dirs)
        name = f"{rng.choice(_FILE_WORDS)}-{i:04d}{rng.choice(_EXTS)}"
        path = f"{d}/{name}".lstrip("/")
        add_file(path, _content(rng, seed, path, spec.max_file_size))
    for i in range(spec.empty_files):
        path = f"{rng.choice(dirs)}/empty-{i}.txt".lstrip("/")
        add_file(path, Content("zeros", 0, 0))
    for i in range(spec.sparse_files):
        path = f"{rng.choice(dirs)}/sparse-{i}.img".lstrip("/")
        add_file(path, Content("sparse", 4 << 20, derive(seed, "sparse", i)))
    if spec.big_file_size:
        add_file(BIG_FILE, Content("random", spec.big_file_size, derive(seed, "big")), 0o644)
    if spec.awkward_names:
        add_dir(AWKWARD_DIR)
        for i, name in enumerate(AWKWARD_NAMES):
            path = name if i % 2 == 0 else f"{AWKWARD_DIR}/{name}"
            add_file(path, Content("text", 100 + 37 * i, derive(seed, "awkward", i)), 0o644)
        add_dir("ünïcödé-dir")
        add_file("ünïcödé-dir/nested file.txt", Content("text", 999, derive(seed, "uni")))

    files = sorted(p for p, e in entries.items() if e.kind == "file")
    dir_paths = sorted(p for p, e in entries.items() if e.kind == "dir")
    for i in range(spec.symlinks):
        path = f"{rng.choice(dirs)}/link-{i}".lstrip("/")
        far_dirs = [d for d in dir_paths if not path.startswith(d + "/")]
        if i == 0 and far_dirs:
            target_path = rng.choice(far_dirs)
        elif i == 1:
            target_path = "no/such/target"
        elif i == 2 and spec.awkward_names:
            target_path = "x" * 251 + ".bin"
        else:
            target_path = rng.choice(files)
        entries[path] = Entry(
            path, "symlink", 0o777, _mtime(rng), target=_relative(path, target_path)
        )
    _check_unique_casefold(entries)
    return Tree(dict(sorted(entries.items())))


def _relative(link: str, target: str) -> str:
    return os.path.relpath(target, os.path.dirname(link) or ".")


def _check_unique_casefold(entries: Mapping[str, Entry]) -> None:
    # FAT and Windows compare names without case: two names differing only in case
    # would silently become one file there.
    seen: dict[str, str] = {}
    for p in entries:
        key = p.casefold()
        if key in seen:
            raise AssertionError(f"names differ only in case: {seen[key]!r} {p!r}")
        seen[key] = p


# -- evolution ----------------------------------------------------------------------------


def evolve(tree: Tree, seed: int, step: int) -> TreeChange:
    """Generation ``step`` from generation ``step - 1``: ~10% files changed, ~5% deleted,
    ~5% added plus one new directory. Files of 1 MiB or more change in place (a 64 KiB
    patch, same size); the big file always does. Awkward names are left alone."""
    rng = random.Random(derive(seed, "evolve", step))
    now = EPOCH + step * 86400
    entries = dict(tree.entries)
    plain = [e.path for e in tree if e.kind == "file" and e.path.isascii() and " " not in e.path]
    plain = [p for p in plain if not any(p.endswith(n) for n in AWKWARD_NAMES)]
    n_change = max(1, len(plain) // 10)
    n_delete = max(1, len(plain) // 20)
    n_add = max(1, len(plain) // 20)

    changed = set(rng.sample(plain, min(n_change, len(plain))))
    if BIG_FILE in entries:
        changed.add(BIG_FILE)
    for p in sorted(changed):
        e = entries[p]
        assert e.content is not None
        c = e.content
        if c.size >= CHUNK:
            off = rng.randrange(0, c.size - (64 << 10)) // 4096 * 4096
            patch = Patch(off, 64 << 10, derive(seed, "patch", step, p))
            c = replace(c, patches=(*c.patches, patch))
        else:
            c = Content(c.kind, max(1, c.size + rng.randint(-512, 4096)), derive(seed, p, step))
        entries[p] = replace(e, content=c, mtime=now)

    deletable = sorted(set(plain) - changed - {BIG_FILE})
    deleted = set(rng.sample(deletable, min(n_delete, len(deletable))))
    for p in deleted:
        del entries[p]

    dirs = ["", *sorted(p for p, e in entries.items() if e.kind == "dir" and p.isascii())]
    new_dir = f"added-dir-g{step}"
    entries[new_dir] = Entry(new_dir, "dir", 0o755, now)
    added = [new_dir]
    for i in range(n_add + 1):
        d = new_dir if i == 0 else rng.choice(dirs)
        path = f"{d}/added-g{step}-{i}.txt".lstrip("/")
        size = rng.randint(1, 64 << 10)
        entries[path] = Entry(path, "file", 0o644, now, Content("text", size, derive(seed, path)))
        added.append(path)

    # Adding or removing an entry changes the directory's mtime, as it would on a live fs.
    touched = {p.rsplit("/", 1)[0] for p in [*added, *deleted] if "/" in p}
    for d in touched:
        if d in entries:
            entries[d] = replace(entries[d], mtime=now)
    root_touched = any("/" not in p for p in [*added, *deleted])
    new_tree = Tree(dict(sorted(entries.items())), now if root_touched else tree.root_mtime)
    return TreeChange(
        new_tree, tuple(sorted(added)), tuple(sorted(changed)), tuple(sorted(deleted))
    )


def in_place_patch(old: Entry, new: Entry) -> Patch | None:
    """The one patch that turns ``old``'s content into ``new``'s, if that is the change."""
    a, b = old.content, new.content
    if a is None or b is None or len(b.patches) != len(a.patches) + 1:
        return None
    if b.patches[:-1] != a.patches or (a.kind, a.size, a.seed) != (b.kind, b.size, b.seed):
        return None
    return b.patches[-1]


# -- per-filesystem name rules ------------------------------------------------------------


@dataclass(frozen=True)
class NamePolicy:
    """Which names (and whether symlinks) a filesystem, as written by its tool, can hold."""

    name: str
    max_bytes: int | None = 255  # UTF-8 bytes per name (POSIX filesystems)
    max_units: int | None = None  # UTF-16 code units per name (Windows filesystems)
    forbidden: frozenset[str] = frozenset("/\0")
    forbid_control: bool = False
    forbid_trailing_dot_space: bool = False
    forbid_leading: str = ""
    reserved: frozenset[str] = frozenset()
    bmp_only: bool = False  # no characters beyond U+FFFF (surrogate pairs in UTF-16)
    symlinks: bool = True

    def allows(self, name: str) -> bool:
        if not name or name in (".", "..") or name in self.reserved:
            return False
        if any(c in self.forbidden for c in name):
            return False
        if self.forbid_control and any(ord(c) < 32 or ord(c) == 127 for c in name):
            return False
        if self.forbid_trailing_dot_space and name[-1] in ". ":
            return False
        if self.forbid_leading and name[0] in self.forbid_leading:
            return False
        if self.bmp_only and any(ord(c) > 0xFFFF for c in name):
            return False
        if self.max_bytes is not None and len(name.encode()) > self.max_bytes:
            return False
        return self.max_units is None or len(name.encode("utf-16-le")) // 2 <= self.max_units

    def allows_path(self, path: str) -> bool:
        return all(self.allows(part) for part in path.split("/"))


POSIX = NamePolicy("posix")
WINDOWS = NamePolicy(
    "windows",
    max_bytes=None,
    max_units=255,
    forbidden=frozenset('/\\:*?"<>|\0'),
    forbid_control=True,
    forbid_trailing_dot_space=True,
)


def filter_tree(tree: Tree, policy: NamePolicy) -> Tree:
    """The part of ``tree`` that a filesystem with ``policy`` can hold."""
    kept: dict[str, Entry] = {}
    for e in tree:
        if not policy.allows_path(e.path):
            continue
        if e.kind == "symlink":
            assert e.target is not None
            parts = [p for p in e.target.split("/") if p not in ("", ".", "..")]
            if not policy.symlinks or not all(policy.allows(p) for p in parts):
                continue
        kept[e.path] = e
    return Tree(kept, tree.root_mtime)


# -- materialization ----------------------------------------------------------------------


def materialize(tree: Tree, root: Path) -> dict[str, str]:
    """Write ``tree`` under ``root`` (which must not exist); return path -> sha256.

    Files keep their holes (all-zero 4 KiB blocks are skipped), modes and mtimes (atime =
    mtime) are set, directories last so writing their children does not disturb them.
    """
    root.mkdir(parents=True)
    digests: dict[str, str] = {}
    for e in tree:
        p = root / e.path
        if e.kind == "dir":
            p.mkdir()
        elif e.kind == "symlink":
            assert e.target is not None
            os.symlink(e.target, p)
        else:
            assert e.content is not None
            h = hashlib.sha256()
            with open(p, "wb") as f:
                pos = 0
                for chunk in e.content.chunks():
                    h.update(chunk)
                    write_nonzero_blocks(f.fileno(), memoryview(chunk), pos)
                    pos += len(chunk)
                f.truncate(e.content.size)
            digests[e.path] = h.hexdigest()
    for e in reversed(list(tree)):  # children before their directories
        p = root / e.path
        if e.kind != "symlink":
            os.chmod(p, e.mode)
        os.utime(p, ns=(e.mtime * 10**9,) * 2, follow_symlinks=False)
    os.utime(root, ns=(tree.root_mtime * 10**9,) * 2)
    return digests
