"""A backend on a local directory (or any POSIX file system, e.g. NFS or a mounted PVC).

Object ``a/b/c`` is the file ``<root>/a/b/c``. Invariants, beyond the protocol's:

- Writes go to a temporary file in the target directory, are fsynced, then renamed
  into place (``put``) or hard-linked into place (``put_if_absent``: ``link(2)`` fails
  if the target exists, which makes create-if-absent atomic); the directory is fsynced
  after. A crash leaves either the old object or the new one, plus perhaps a stray
  temporary file, never a partial object.
- Temporary files start with ``.tmp-``; valid object names never start with a dot, so
  listings skip them and no name can collide with one.
- Listing walks directories depth-first with entries sorted so that names come out in
  the same order as S3 lists them (plain byte order of the full name).
- Empty directories left behind by deletes are kept; they cost nothing and removing
  them would race with concurrent writers creating files in them.

There is no Object Lock on a file system: ``capabilities.object_lock`` is false.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from vmguard.errors import ConfigError, ObjectNotFoundError
from vmguard.store.backend.base import (
    Capabilities,
    ObjectInfo,
    Retention,
    check_name,
    check_prefix,
    check_range,
)

_TMP_PREFIX = ".tmp-"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBackend:
    """Objects as files under one root directory."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self._root = Path(root).absolute()
        self._root.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync

    @property
    def location(self) -> str:
        return f"file://{self._root}"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(atomic_create=True, object_lock=False)

    def _path(self, name: str) -> Path:
        return self._root / check_name(name)

    def _write_temp(self, directory: Path, data: bytes) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        temp = directory / f"{_TMP_PREFIX}{secrets.token_hex(8)}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self._fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            temp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return temp

    @staticmethod
    def _refuse_retention(retention: Retention | None) -> None:
        if retention is not None:
            raise ConfigError("a local directory repository cannot use object lock")

    def put(self, name: str, data: bytes, *, retention: Retention | None = None) -> None:
        self._refuse_retention(retention)
        path = self._path(name)
        temp = self._write_temp(path.parent, data)
        try:
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        if self._fsync:
            _fsync_dir(path.parent)

    def put_if_absent(self, name: str, data: bytes, *, retention: Retention | None = None) -> bool:
        self._refuse_retention(retention)
        path = self._path(name)
        temp = self._write_temp(path.parent, data)
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        finally:
            temp.unlink(missing_ok=True)
        if self._fsync:
            _fsync_dir(path.parent)
        return True

    def get(self, name: str) -> bytes:
        path = self._path(name)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(name) from None

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        check_range(offset, length)
        path = self._path(name)
        try:
            with path.open("rb") as f:
                f.seek(offset)
                return f.read(length)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(name) from None

    def stat(self, name: str) -> ObjectInfo:
        path = self._path(name)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFoundError(name) from None
        if not path.is_file():
            raise ObjectNotFoundError(name)
        return ObjectInfo(name, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        # Start the walk at the deepest directory the prefix names completely.
        base = prefix.rpartition("/")[0]
        start = self._root / base if base else self._root
        yield from self._walk(start, base + "/" if base else "", prefix)

    def list_page(self, prefix: str, start_after: str, limit: int) -> Sequence[ObjectInfo]:
        return list(itertools.islice((i for i in self.list(prefix) if i.name > start_after), limit))

    def _walk(self, directory: Path, relative: str, prefix: str) -> Iterator[ObjectInfo]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        # Sort as S3 does: by full name, where a directory's entries follow "name/".
        keyed = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            is_dir = entry.is_dir(follow_symlinks=False)
            keyed.append((entry.name + ("/" if is_dir else ""), entry, is_dir))
        keyed.sort(key=lambda item: item[0])
        for sort_name, entry, is_dir in keyed:
            full = relative + sort_name
            if is_dir:
                if full.startswith(prefix) or prefix.startswith(full):
                    yield from self._walk(Path(entry.path), full, prefix)
            elif full.startswith(prefix):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted while we listed
                modified = datetime.fromtimestamp(st.st_mtime, UTC)
                yield ObjectInfo(full, st.st_size, modified)

    def delete(self, name: str) -> None:
        path = self._path(name)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            path.unlink()

    def copy(self, source: str, target: str) -> None:
        self.put(target, self.get(source))

    def set_retention(self, name: str, retention: Retention) -> None:
        self._refuse_retention(retention)

    def close(self) -> None:
        pass
