"""Filesystems inside a volume: one small interface over the dissect readers.

:class:`Filesystem` is what file restore, ``files ls``/``find`` and the acceptance tests
use; :mod:`vmguard.files.drivers` implements it for ext2/3/4, NTFS, FAT12/16/32, XFS and
Btrfs with the dissect libraries. The generic part here walks directories, resolves
paths and matches globs. Invariants:

- Paths are ``/``-separated names relative to the volume root, without a leading
  slash; ``""`` is the root. Names are exactly as stored: any bytes a filesystem
  allows except ``/`` (undecodable bytes arrive as surrogate escapes and leave through
  ``os.fsencode`` unchanged). ``.`` and ``..`` entries are never yielded, and no name
  containing ``/`` or NUL ever is (a damaged or hostile directory cannot steer a
  restore outside its target).
- Lookups are exact; on NTFS and FAT, whose names are case-insensitive, a lookup that
  finds no exact match falls back to a case-insensitive one.
- :class:`Stat` reports what the filesystem stores and ``None`` for what it does not
  (NTFS and FAT keep no POSIX mode or owner). Times are integer nanoseconds since the
  epoch, UTC; FAT stores local time without a zone, which we read as UTC.
- Symlinks are never followed: ``stat`` describes the link, ``readlink`` its target.
"""

from __future__ import annotations

import fnmatch
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

from vmguard.errors import FilesystemError

EntryKind = Literal["file", "dir", "symlink", "other"]


@dataclass(frozen=True)
class Stat:
    kind: EntryKind
    size: int
    mtime_ns: int
    mode: int | None = None
    """Permission bits (``0o7777`` mask), where the filesystem has them."""
    uid: int | None = None
    gid: int | None = None
    atime_ns: int | None = None
    ctime_ns: int | None = None
    inode: int | None = None


@dataclass(frozen=True)
class Entry:
    """A path in a filesystem, with the driver's handle for it and its stat."""

    path: str
    node: Any
    stat: Stat

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


class Filesystem(ABC):
    """A read-only filesystem; drivers implement the abstract methods."""

    kind: str = ""
    case_insensitive: bool = False

    @property
    def label(self) -> str:
        return ""

    @abstractmethod
    def root(self) -> Any: ...

    @abstractmethod
    def children(self, node: Any) -> Iterator[tuple[str, Any]]:
        """(name, node) of each entry of directory ``node``, ``.``/``..`` left out."""

    @abstractmethod
    def stat(self, node: Any) -> Stat: ...

    @abstractmethod
    def open(self, node: Any) -> BinaryIO:
        """The content of a regular file."""

    @abstractmethod
    def readlink(self, node: Any) -> str: ...

    # -- generic ------------------------------------------------------------------------

    def entries(self, node: Any) -> Iterator[tuple[str, Any]]:
        """``children`` without unsafe names (see the module's invariants)."""
        for name, child in self.children(node):
            if name in ("", ".", "..") or "/" in name or "\0" in name:
                continue
            yield name, child

    def lookup(self, path: str) -> Entry:
        """The entry at ``path``; FilesystemError if there is none."""
        path = normalize(path)
        node = self.root()
        walked: list[str] = []
        for part in path.split("/") if path else []:
            if self.stat(node).kind != "dir":
                raise FilesystemError(f"{'/'.join(walked)!r} is not a directory")
            found = None
            fallback = None
            for name, child in self.entries(node):
                if name == part:
                    found = child
                    break
                if (
                    self.case_insensitive
                    and fallback is None
                    and name.casefold() == part.casefold()
                ):
                    fallback = (name, child)
            if found is None and fallback is not None:
                part, found = fallback
            if found is None:
                raise FilesystemError(f"no such file or directory: {path!r}")
            node = found
            walked.append(part)
        return Entry("/".join(walked), node, self.stat(node))

    def listdir(self, path: str = "") -> list[Entry]:
        entry = self.lookup(path)
        if entry.stat.kind != "dir":
            return [entry]
        out = []
        for name, child in self.entries(entry.node):
            out.append(Entry(join(entry.path, name), child, self.stat(child)))
        return sorted(out, key=lambda e: e.path)

    def walk(self, path: str = "") -> Iterator[Entry]:
        """``path`` and everything below it, depth first, parents before children."""
        start = self.lookup(path)
        stack = [start]
        while stack:
            entry = stack.pop()
            yield entry
            if entry.stat.kind == "dir":
                children = [
                    Entry(join(entry.path, name), child, self.stat(child))
                    for name, child in self.entries(entry.node)
                ]
                stack.extend(sorted(children, key=lambda e: e.path, reverse=True))

    def glob(self, pattern: str) -> Iterator[Entry]:
        """Entries matching ``pattern``: ``*``, ``?`` and ``[...]`` within one name,
        ``**`` across any number of directories. Literal components are looked up, not
        listed, so ``srv/payload/*.bin`` reads three directories, not the filesystem."""
        parts = normalize(pattern).split("/") if normalize(pattern) else []
        yield from self._glob(self.lookup(""), parts)

    def _glob(self, entry: Entry, parts: list[str]) -> Iterator[Entry]:
        if not parts:
            yield entry
            return
        head, rest = parts[0], parts[1:]
        if entry.stat.kind != "dir":
            return
        if head == "**":
            yield from self._glob(entry, rest)
            for name, child in sorted(self.entries(entry.node), key=lambda c: c[0]):
                sub = Entry(join(entry.path, name), child, self.stat(child))
                if sub.stat.kind == "dir":
                    yield from self._glob(sub, parts)
                elif not rest:
                    yield sub
            return
        if not has_magic(head):
            try:
                child = self.lookup(join(entry.path, head))
            except FilesystemError:
                return
            yield from self._glob(child, rest)
            return
        regex = re.compile(fnmatch.translate(head), re.DOTALL)
        for name, node in sorted(self.entries(entry.node), key=lambda c: c[0]):
            if regex.match(name):
                yield from self._glob(Entry(join(entry.path, name), node, self.stat(node)), rest)


def normalize(path: str) -> str:
    """``path`` without leading, trailing or doubled slashes, or ``.`` components."""
    return "/".join(p for p in path.split("/") if p not in ("", "."))


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")
