"""Restoring files out of an archived disk: ``restore_paths`` and where files go.

:func:`restore_paths` is the one entry point for every file restore: ``vmguard files
get`` calls it with a :class:`DirectorySink`, and the proxy Job of a ``VMGuardRestore`` in
``files`` mode will call it with a sink that writes to a PVC (a directory) or an S3
prefix, passing a progress callback that patches the VMGuardRestore's status.

Invariants:

- Only chunks under the selected files (and the metadata that leads to them) are
  fetched: each file is read under a :meth:`DiskView.plan` of its own extents.
- One bad file does not stop a restore: a file whose chunk is corrupt or missing is
  reported as a :class:`~vmguard.errors.FileRestoreError` naming the file, the chunk and
  the archive; its partial copy is removed; every other file is restored.
- A restored file has the archived bytes, mtime and (where the filesystem keeps one)
  mode; symlinks are recreated, not followed; directories get their mtime and mode
  after their contents are written (a read-only directory is filled first). Holes in a
  file stay holes in the copy (runs of zeros are skipped, then the size is set).
- The sink never writes outside its root: paths come from :class:`Filesystem`, which
  never yields ``.``, ``..`` or a name holding ``/``; the sink also opens every path
  with ``O_NOFOLLOW`` below its root, so a restored symlink cannot redirect a later file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from vmguard.errors import (
    DiskReadError,
    FileRestoreError,
    FilesystemError,
    RepositoryError,
    VmguardError,
)
from vmguard.files.browse import DiskFiles, Located
from vmguard.files.fs import Stat
from vmguard.store import ArchiveManifest, Repository

READ_BYTES = 1 << 20
_ZERO_BLOCK = bytes(64 << 10)


@dataclass
class RestoreProgress:
    files_total: int = 0
    bytes_total: int = 0
    files_done: int = 0
    bytes_done: int = 0
    errors: int = 0


@dataclass
class RestoreReport:
    archive_id: str
    disk: str
    restored: list[str] = field(default_factory=list)
    errors: list[FileRestoreError] = field(default_factory=list)
    bytes_restored: int = 0
    bytes_fetched: int = 0
    """Plaintext bytes of the chunks fetched from the repository for this restore."""

    @property
    def ok(self) -> bool:
        return not self.errors


class FileSink(Protocol):
    """Where restored files go. Paths are relative, ``/``-separated, volume first."""

    def directory(self, path: str, stat: Stat) -> None: ...

    def file(self, path: str, chunks: Iterable[bytes], stat: Stat) -> int:
        """Write the file from ``chunks``; return the bytes written. On an exception
        from ``chunks`` the sink removes what it wrote and re-raises."""
        ...

    def symlink(self, path: str, target: str, stat: Stat) -> None: ...

    def finish(self) -> None:
        """Apply what had to wait until everything was written (directory metadata)."""
        ...


class DirectorySink:
    """Writes into a local directory (a PVC mount on the proxy, or ``--to DIR``)."""

    def __init__(self, root: str | os.PathLike[str], *, owners: bool = False) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.owners = owners
        self._dirs: list[tuple[str, Stat]] = []

    def _target(self, path: str) -> Path:
        parts = path.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise FilesystemError(f"refusing unsafe path {path!r}")
        parent = self.root
        for part in parts[:-1]:
            parent = parent / part
            if parent.is_symlink():
                raise FilesystemError(f"refusing to write through the symlink {parent}")
            parent.mkdir(exist_ok=True)
        return self.root.joinpath(*parts)

    def directory(self, path: str, stat: Stat) -> None:
        target = self._target(path)
        if target.is_symlink():
            target.unlink()
        target.mkdir(exist_ok=True)
        self._dirs.append((path, stat))

    def file(self, path: str, chunks: Iterable[bytes], stat: Stat) -> int:
        target = self._target(path)
        if target.is_symlink() or target.exists():
            target.unlink()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_BINARY", 0)
        fd = os.open(target, flags, 0o600)
        written = 0
        try:
            for data in chunks:
                for start in range(0, len(data), len(_ZERO_BLOCK)):
                    piece = data[start : start + len(_ZERO_BLOCK)]
                    if piece != _ZERO_BLOCK[: len(piece)]:
                        os.pwrite(fd, piece, written + start)
                written += len(data)
            os.ftruncate(fd, written)
        except BaseException:
            os.close(fd)
            target.unlink(missing_ok=True)
            raise
        try:
            self._apply(fd, target, stat)
        finally:
            os.close(fd)
        return written

    def symlink(self, path: str, target: str, stat: Stat) -> None:
        link = self._target(path)
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(target, link)
        if self.owners and stat.uid is not None and stat.gid is not None:
            os.lchown(link, stat.uid, stat.gid)
        os.utime(link, ns=(stat.atime_ns or stat.mtime_ns, stat.mtime_ns), follow_symlinks=False)

    def finish(self) -> None:
        # Deepest first, so setting a parent's mtime is the last change under it.
        for path, stat in sorted(self._dirs, key=lambda d: d[0].count("/"), reverse=True):
            target = self.root.joinpath(*path.split("/"))
            fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                self._apply(fd, target, stat)
            finally:
                os.close(fd)
        self._dirs.clear()

    def _apply(self, fd: int, target: Path, stat: Stat) -> None:
        if self.owners and stat.uid is not None and stat.gid is not None:
            os.fchown(fd, stat.uid, stat.gid)
        if stat.mode is not None:
            os.fchmod(fd, stat.mode)
        os.utime(fd, ns=(stat.atime_ns or stat.mtime_ns, stat.mtime_ns))


ProgressCallback = Callable[[RestoreProgress], None]


def restore_paths(
    repo: Repository,
    manifest: ArchiveManifest,
    patterns: Iterable[str],
    sink: FileSink,
    *,
    disk: str | None = None,
    progress: ProgressCallback | None = None,
    files: DiskFiles | None = None,
) -> RestoreReport:
    """Restore every entry matching ``patterns`` (globs, ``VOLUME/path``), recursively.

    A pattern that matches nothing is an error in the report, not an exception, so
    a restore of several paths restores what exists.
    """
    own = files is None
    browser = files or DiskFiles(repo, manifest, disk)
    report = RestoreReport(manifest.archive_id, browser.disk.key)
    fetched_before = browser.view.stats.bytes_fetched
    try:
        plan = _plan(browser, patterns, report)
        state = RestoreProgress(
            files_total=len(plan), bytes_total=sum(e.stat.size for e in plan if _is_file(e))
        )
        for located in plan:
            try:
                _restore_one(browser, located, sink, report)
            except (VmguardError, OSError) as exc:
                report.errors.append(FileRestoreError(located.path, exc))
                state.errors += 1
            state.files_done += 1
            state.bytes_done += located.stat.size if _is_file(located) else 0
            if progress is not None:
                progress(state)
        sink.finish()
    finally:
        report.bytes_fetched = browser.view.stats.bytes_fetched - fetched_before
        if own:
            browser.close()
    return report


def _is_file(located: Located) -> bool:
    return located.stat.kind == "file"


def _plan(browser: DiskFiles, patterns: Iterable[str], report: RestoreReport) -> list[Located]:
    seen: dict[str, Located] = {}
    for pattern in patterns:
        matched = False
        try:
            for top in browser.glob(pattern):
                matched = True
                try:
                    for located in browser.walk(top.path):
                        seen.setdefault(located.path, located)
                except (DiskReadError, FilesystemError) as exc:
                    report.errors.append(FileRestoreError(top.path, exc))
        except (DiskReadError, FilesystemError, RepositoryError) as exc:
            report.errors.append(FileRestoreError(pattern, exc))
            continue
        if not matched:
            report.errors.append(
                FileRestoreError(pattern, FilesystemError("no such file or directory"))
            )
    return [seen[p] for p in sorted(seen)]


def _restore_one(
    browser: DiskFiles, located: Located, sink: FileSink, report: RestoreReport
) -> None:
    stat = located.stat
    if stat.kind == "dir":
        sink.directory(located.path, stat)  # a volume's root is the volume's directory
        return
    if stat.kind == "symlink":
        sink.symlink(located.path, browser.readlink(located), stat)
        report.restored.append(located.path)
        return
    if stat.kind != "file":
        raise FilesystemError(f"not a regular file, directory or symlink ({stat.kind})")
    stream = browser.open(located)
    extents = browser.extents(stream)
    if extents is None:
        written = sink.file(located.path, _chunks(stream, stat.size), stat)
    else:
        with browser.view.plan(extents):
            written = sink.file(located.path, _chunks(stream, stat.size), stat)
    if written != stat.size:
        raise FilesystemError(f"read {written} bytes of a {stat.size}-byte file")
    report.restored.append(located.path)
    report.bytes_restored += written


def _chunks(stream: BinaryIO | Any, size: int) -> Iterable[bytes]:
    done = 0
    while done < size:
        data = stream.read(min(READ_BYTES, size - done))
        if not data:
            break
        done += len(data)
        yield data
