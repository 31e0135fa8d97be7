"""Filesystem drivers over the dissect libraries: ext2/3/4, NTFS, FAT, XFS, Btrfs.

Each driver adapts one dissect reader to :class:`vmguard.files.fs.Filesystem`; the
readers parse the on-disk structures from any seekable stream (here a range of a
:class:`~vmguard.files.view.DiskView`), so nothing is mounted and nothing needs root.
What each filesystem cannot say is reported as None in :class:`Stat`, never invented.

Notes per filesystem:

- ext: modes, 32-bit owners (low and high halves), nanosecond times.
- NTFS: times from ``$STANDARD_INFORMATION`` (what Explorer shows); system metafiles
  (MFT records below 24: ``$MFT``, ``$Bitmap``…) and DOS 8.3 aliases are hidden;
  symlink targets are reparse points' print names with ``\\`` turned into ``/``.
- FAT: long names where present; no modes or owners; 2-second local times read as UTC.
- XFS and Btrfs: modes, owners, nanosecond times.
"""

from __future__ import annotations

import io
import stat as st
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from vmguard.errors import FilesystemError
from vmguard.files.fs import EntryKind, Filesystem, Stat

_NTFS_FIRST_USER_RECORD = 24
_FAT_LOWER_BASE = 0x08
_FAT_LOWER_EXT = 0x10


def _kind(mode: int) -> EntryKind:
    if st.S_ISREG(mode):
        return "file"
    if st.S_ISDIR(mode):
        return "dir"
    if st.S_ISLNK(mode):
        return "symlink"
    return "other"


class ExtFilesystem(Filesystem):
    kind = "ext4"

    def __init__(self, stream: BinaryIO) -> None:
        from dissect.extfs import ExtFS

        self._fs = ExtFS(stream)

    @property
    def label(self) -> str:
        raw = bytes(self._fs.sb.s_volume_name)
        return raw.split(b"\0", 1)[0].decode(errors="replace")

    def root(self) -> Any:
        return self._fs.root

    def children(self, node: Any) -> Iterator[tuple[str, Any]]:
        for child in node.iterdir():
            yield child.filename, child

    def stat(self, node: Any) -> Stat:
        inode = node.inode
        mode = int(inode.i_mode)
        return Stat(
            kind=_kind(mode),
            size=int(node.size),
            mtime_ns=int(node.mtime_ns),
            mode=st.S_IMODE(mode),
            uid=int(inode.i_uid) | (int(inode.i_uid_high) << 16),
            gid=int(inode.i_gid) | (int(inode.i_gid_high) << 16),
            atime_ns=int(node.atime_ns),
            ctime_ns=int(node.ctime_ns),
            inode=int(node.inum),
        )

    def open(self, node: Any) -> BinaryIO:
        return node.open()  # type: ignore[no-any-return]

    def readlink(self, node: Any) -> str:
        return str(node.link)


class XfsFilesystem(Filesystem):
    kind = "xfs"

    def __init__(self, stream: BinaryIO) -> None:
        from dissect.xfs import XFS

        self._fs = XFS(stream)

    @property
    def label(self) -> str:
        raw = bytes(self._fs.sb.sb_fname)
        return raw.split(b"\0", 1)[0].decode(errors="replace")

    def root(self) -> Any:
        return self._fs.root

    def children(self, node: Any) -> Iterator[tuple[str, Any]]:
        for child in node.iterdir():
            yield child.filename, child

    def stat(self, node: Any) -> Stat:
        inode = node.inode
        mode = int(inode.di_mode)
        return Stat(
            kind=_kind(mode),
            size=int(node.size),
            mtime_ns=int(node.mtime_ns),
            mode=st.S_IMODE(mode),
            uid=int(inode.di_uid),
            gid=int(inode.di_gid),
            atime_ns=int(node.atime_ns),
            ctime_ns=int(node.ctime_ns),
            inode=int(node.inum),
        )

    def open(self, node: Any) -> BinaryIO:
        return node.open()  # type: ignore[no-any-return]

    def readlink(self, node: Any) -> str:
        return str(node.link)


class NtfsFilesystem(Filesystem):
    kind = "ntfs"
    case_insensitive = True

    def __init__(self, stream: BinaryIO) -> None:
        from dissect.ntfs import NTFS

        self._fs = NTFS(stream)

    @property
    def label(self) -> str:
        return str(self._fs.volume_name or "")

    def root(self) -> Any:
        return self._fs.mft.get(5)

    def children(self, node: Any) -> Iterator[tuple[str, Any]]:
        parent = node.segment
        seen = set()
        for entry in node.iterdir(ignore_dos=True):
            record = entry.dereference()
            if record.segment == parent or record.segment < _NTFS_FIRST_USER_RECORD:
                continue
            name = entry.attribute.file_name
            if name in seen:
                continue  # a name in both the Win32 and the POSIX namespace
            seen.add(name)
            yield name, record

    def stat(self, node: Any) -> Stat:
        from dissect.ntfs.c_ntfs import ATTRIBUTE_TYPE_CODE

        info = node.attributes[ATTRIBUTE_TYPE_CODE.STANDARD_INFORMATION]
        kind: EntryKind
        if node.is_symlink():
            kind = "symlink"
        elif node.is_dir():
            kind = "dir"
        elif node.is_reparse_point():
            kind = "other"
        else:
            kind = "file"
        size = 0
        if kind == "file" and node.has_stream(""):
            size = int(node.size())
        elif kind == "symlink":
            size = len(self.readlink(node).encode())
        return Stat(
            kind=kind,
            size=size,
            mtime_ns=int(info.last_modification_time_ns),
            atime_ns=int(info.last_access_time_ns),
            ctime_ns=int(info.last_change_time_ns),
            inode=int(node.segment),
        )

    def open(self, node: Any) -> BinaryIO:
        if not node.has_stream(""):
            return io.BytesIO(b"")
        return node.open()  # type: ignore[no-any-return]

    def readlink(self, node: Any) -> str:
        target = str(node.reparse_point_name or node.reparse_point_substitute_name or "")
        return target.replace("\\", "/")


class FatFilesystem(Filesystem):
    kind = "fat"
    case_insensitive = True

    def __init__(self, stream: BinaryIO) -> None:
        from dissect.fat import FATFS

        self._fs = FATFS(stream)

    @property
    def label(self) -> str:
        return str(self._fs.volume_label)

    def root(self) -> Any:
        return self._fs.root

    def children(self, node: Any) -> Iterator[tuple[str, Any]]:
        for child in node.iterdir():
            if child.is_volume_id():
                continue
            yield _fat_name(child), child

    def stat(self, node: Any) -> Stat:
        from datetime import UTC

        when = node.mtime.replace(tzinfo=UTC)
        seconds = int(when.timestamp())
        return Stat(
            kind="dir" if node.is_directory() else "file",
            size=0 if node.is_directory() else int(node.size),
            mtime_ns=seconds * 1_000_000_000,
        )

    def open(self, node: Any) -> BinaryIO:
        return node.open()  # type: ignore[no-any-return]

    def readlink(self, node: Any) -> str:
        raise FilesystemError("FAT has no symbolic links")


def _fat_name(entry: Any) -> str:
    """The entry's name as Windows shows it: the long name, or the 8.3 name with the
    case flags Windows NT keeps in ``DIR_NTRes`` (mtools sets them too) applied."""
    if entry.ldirents:
        return str(entry.name)
    flags = int(entry.dirent.DIR_NTRes)
    base, dot, ext = str(entry.short_name).partition(".")
    if flags & _FAT_LOWER_BASE:
        base = base.lower()
    if flags & _FAT_LOWER_EXT:
        ext = ext.lower()
    return base + dot + ext


class BtrfsFilesystem(Filesystem):
    """Btrfs, default subvolume only (dissect.btrfs)."""

    kind = "btrfs"

    def __init__(self, stream: BinaryIO) -> None:
        from dissect.btrfs import Btrfs

        self._fs = Btrfs(stream)

    @property
    def label(self) -> str:
        return str(getattr(self._fs, "label", "") or "")

    def root(self) -> Any:
        return self._fs.get("/")

    def children(self, node: Any) -> Iterator[tuple[str, Any]]:
        yield from node.listdir().items()

    def stat(self, node: Any) -> Stat:
        inode = node.inode
        mode = int(inode.mode)
        return Stat(
            kind=_kind(mode),
            size=int(node.size),
            mtime_ns=int(node.mtime_ns),
            mode=st.S_IMODE(mode),
            uid=int(inode.uid),
            gid=int(inode.gid),
            atime_ns=int(node.atime_ns),
            ctime_ns=int(node.ctime_ns),
            inode=int(node.inum),
        )

    def open(self, node: Any) -> BinaryIO:
        return node.open()  # type: ignore[no-any-return]

    def readlink(self, node: Any) -> str:
        return str(node.link)


DRIVERS: dict[str, Callable[[BinaryIO], Filesystem]] = {
    "ext4": ExtFilesystem,
    "ntfs": NtfsFilesystem,
    "fat": FatFilesystem,
    "xfs": XfsFilesystem,
    "btrfs": BtrfsFilesystem,
}


def open_filesystem(kind: str | None, stream: BinaryIO) -> Filesystem:
    """The driver for ``kind`` (as :func:`vmguard.files.volumes.probe_fs` names it)."""
    if kind is None or kind not in DRIVERS:
        raise FilesystemError(f"no filesystem we can read (found {kind or 'none'})")
    return DRIVERS[kind](stream)
