"""Browsing one archived disk: its volumes, their filesystems, paths across both.

:class:`DiskFiles` ties a :class:`~vmguard.files.view.DiskView` to the volumes on it and
the filesystems in them. A path on a disk is ``VOLUME/path/in/filesystem``: ``p2/etc``
is ``/etc`` of partition 2 (volume names: :mod:`vmguard.files.volumes`); ``""`` lists
the volumes. Invariants:

- Opening a :class:`DiskFiles` reads the disk's index and nothing else; a volume's
  filesystem is opened the first time a path in it is used, and only then are its
  superblock and root directory read.
- :meth:`DiskFiles.extents` maps a file to the disk ranges that hold its data by
  following dissect's streams down to the view (runlists, ranges); when it cannot (an
  LVM mapping, a compressed NTFS file) it says None and reading falls back to plain
  sequential read-ahead. It never affects what is read, only what is prefetched.
"""

from __future__ import annotations

import fnmatch
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dissect.util.stream import RangeStream, RunlistStream

from vmguard.errors import ConfigError, FilesystemError
from vmguard.files.drivers import open_filesystem
from vmguard.files.fs import Entry, Filesystem, Stat, has_magic, join, normalize
from vmguard.files.view import DEFAULT_CACHE_BYTES, DEFAULT_READAHEAD_CHUNKS, DiskView
from vmguard.files.volumes import Volume, list_volumes
from vmguard.store import ArchiveManifest, DiskRecord, Repository


def pick_disk(manifest: ArchiveManifest, disk: str | None) -> DiskRecord:
    """A disk of the archive by key (``2000``), label (``Hard disk 1``) or position
    (``0``); the first disk when ``disk`` is None."""
    if not manifest.disks:
        raise ConfigError(f"archive {manifest.archive_id} has no disks")
    if disk is None:
        return manifest.disks[0]
    for record in manifest.disks:
        if disk in (record.key, record.label):
            return record
    if disk.isdigit() and int(disk) < len(manifest.disks):
        return manifest.disks[int(disk)]
    known = ", ".join(f"{d.key} ({d.label})" for d in manifest.disks)
    raise ConfigError(f"archive {manifest.archive_id} has no disk {disk!r}; it has {known}")


@dataclass(frozen=True)
class Located:
    """An entry of a filesystem on a volume; ``path`` includes the volume name."""

    volume: str
    entry: Entry

    @property
    def path(self) -> str:
        return join(self.volume, self.entry.path) if self.entry.path else self.volume

    @property
    def stat(self) -> Stat:
        return self.entry.stat


class DiskFiles:
    """The files on one disk of one archive."""

    def __init__(
        self,
        repo: Repository,
        manifest: ArchiveManifest,
        disk: str | DiskRecord | None = None,
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        readahead_chunks: int = DEFAULT_READAHEAD_CHUNKS,
    ) -> None:
        record = disk if isinstance(disk, DiskRecord) else pick_disk(manifest, disk)
        self.manifest = manifest
        self.disk = record
        self.view = DiskView(
            repo, manifest, record, cache_bytes=cache_bytes, readahead_chunks=readahead_chunks
        )
        self._volumes: list[Volume] | None = None
        self._filesystems: dict[str, Filesystem] = {}

    def close(self) -> None:
        self.view.close()

    def __enter__(self) -> DiskFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- volumes ----------------------------------------------------------------------------

    @property
    def volumes(self) -> list[Volume]:
        if self._volumes is None:
            self._volumes = list_volumes(self.view, self.view.size)
        return self._volumes

    def volume(self, name: str) -> Volume:
        for volume in self.volumes:
            if volume.name == name:
                return volume
        known = ", ".join(v.name for v in self.volumes) or "none"
        raise FilesystemError(f"disk {self.disk.key!r} has no volume {name!r} (it has {known})")

    def filesystem(self, name: str) -> Filesystem:
        if name not in self._filesystems:
            volume = self.volume(name)
            self._filesystems[name] = open_filesystem(volume.fs, volume.stream)
        return self._filesystems[name]

    def readable_volumes(self) -> list[Volume]:
        return [v for v in self.volumes if v.fs not in (None, "lvm")]

    # -- paths ------------------------------------------------------------------------------

    @staticmethod
    def split(path: str) -> tuple[str, str]:
        path = normalize(path)
        volume, _, inner = path.partition("/")
        return volume, inner

    def lookup(self, path: str) -> Located:
        volume, inner = self.split(path)
        if not volume:
            raise FilesystemError("a path starts with its volume, e.g. p1/etc/hostname")
        return Located(volume, self.filesystem(volume).lookup(inner))

    def listdir(self, path: str) -> list[Located]:
        volume, inner = self.split(path)
        return [Located(volume, e) for e in self.filesystem(volume).listdir(inner)]

    def walk(self, path: str) -> Iterator[Located]:
        volume, inner = self.split(path)
        for entry in self.filesystem(volume).walk(inner):
            yield Located(volume, entry)

    def glob(self, pattern: str) -> Iterator[Located]:
        """Entries matching ``VOLUME-GLOB/PATH-GLOB`` (see :meth:`Filesystem.glob`)."""
        volume_pattern, inner = self.split(pattern)
        if not has_magic(volume_pattern):
            names = [volume_pattern]
        else:
            regex = re.compile(fnmatch.translate(volume_pattern))
            names = [v.name for v in self.readable_volumes() if regex.match(v.name)]
        for name in names:
            for entry in self.filesystem(name).glob(inner):
                yield Located(name, entry)

    def find(self, pattern: str) -> Iterator[Located]:
        """With a ``/`` in ``pattern``, :meth:`glob`; otherwise every entry of every
        readable volume whose name matches it (``find -name``)."""
        if "/" in normalize(pattern):
            yield from self.glob(pattern)
            return
        regex = re.compile(fnmatch.translate(pattern), re.DOTALL)
        for volume in self.readable_volumes():
            for entry in self.filesystem(volume.name).walk(""):
                if entry.path and regex.match(entry.name):
                    yield Located(volume.name, entry)

    # -- data -------------------------------------------------------------------------------

    def open(self, located: Located) -> Any:
        return self.filesystem(located.volume).open(located.entry.node)

    def readlink(self, located: Located) -> str:
        return self.filesystem(located.volume).readlink(located.entry.node)

    def extents(self, stream: Any) -> list[tuple[int, int]] | None:
        """Disk ranges holding the data of an opened file (see the module docstring)."""
        size = getattr(stream, "size", None)
        if not isinstance(size, int):
            return None
        return _map(stream, 0, size, self.view)


def _map(stream: Any, offset: int, length: int, view: DiskView) -> list[tuple[int, int]] | None:
    if length <= 0:
        return []
    if stream is view:
        return [(offset, length)]
    if isinstance(stream, io.BytesIO):
        return []  # resident or inline data: already read with the metadata
    if isinstance(stream, RunlistStream):
        out: list[tuple[int, int]] = []
        block_size = stream.block_size
        pos, end = 0, offset + length
        for block, count in stream.runlist:
            run = count * block_size
            lo, hi = max(offset, pos), min(end, pos + run)
            if lo < hi and block is not None:
                inner = _map(stream._fh, block * block_size + lo - pos, hi - lo, view)
                if inner is None:
                    return None
                out += inner
            pos += run
            if pos >= end:
                break
        return out
    if isinstance(stream, RangeStream):
        return _map(stream._fh, stream.offset + offset, length, view)
    return None
