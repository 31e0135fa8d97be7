"""Local files and block devices as block sources and sinks.

Hot-add reads the snapshot's disks as block devices attached to the proxy, the CLI
backs up and restores image files, and tests use both. Invariants:

- A source reports allocation from ``SEEK_DATA``/``SEEK_HOLE``: holes of a sparse file
  are never read. A block device (or a filesystem without the seeks) reports its whole
  length as allocated, which is correct, only slower.
- A sink never writes a range it is not given. ``zero`` turns a range back into
  zeros, punching a hole where the filesystem can, so a restored hole stays a hole.
- Reads and writes are positional (``pread``/``pwrite``): no shared file offset, so
  several threads may use one object. With ``in_flight > 1`` a source keeps that many
  reads in flight from a small thread pool (a hot-added SCSI device gains from it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from vmguard.errors import ConfigError
from vmguard.transport.extents import Bytes, Extent, normalise, split

REQUEST_BYTES = 4 << 20
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_ZERO_BLOCK = bytes(1 << 20)


def _device_size(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_END)


def _open(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot open {path}: {exc.strerror}") from None


class FileSource:
    """A :class:`~vmguard.transport.extents.BlockSource` over a file or block device."""

    def __init__(self, path: str | os.PathLike[str], in_flight: int = 1) -> None:
        self.path = Path(path)
        self._fd = _open(self.path, os.O_RDONLY)
        mode = os.fstat(self._fd).st_mode
        self._is_device = stat.S_ISBLK(mode)
        self._size = _device_size(self._fd) if self._is_device else os.fstat(self._fd).st_size
        self._pool = ThreadPoolExecutor(in_flight) if in_flight > 1 else None
        self.in_flight = in_flight

    @property
    def size(self) -> int:
        return self._size

    def allocated(self) -> list[Extent]:
        if self._is_device:
            return [Extent(0, self._size)] if self._size else []
        found: list[Extent] = []
        pos = 0
        while pos < self._size:
            try:
                data = os.lseek(self._fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # nothing but a hole after pos
                    break
                if exc.errno == errno.EINVAL:  # no SEEK_DATA here: all of it is data
                    return [Extent(0, self._size)]
                raise
            if data >= self._size:
                break
            hole = min(os.lseek(self._fd, data, os.SEEK_HOLE), self._size)
            found.append(Extent(data, hole - data))
            pos = hole
        return normalise(found)

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        while len(data) < length:  # short reads happen on devices and network filesystems
            more = os.pread(self._fd, length - len(data), offset + len(data))
            if not more:
                raise OSError(errno.EIO, f"{self.path}: unexpected end at {offset + len(data)}")
            data += more
        return data

    def read_many(self, extents: Iterable[Extent]) -> Iterator[tuple[int, bytes]]:
        if self._pool is None:
            for piece in split(extents, REQUEST_BYTES):
                yield piece.offset, self.read(piece.offset, piece.length)
            return
        window: deque[tuple[int, Future[bytes]]] = deque()
        for piece in split(extents, REQUEST_BYTES):
            window.append((piece.offset, self._pool.submit(self.read, piece.offset, piece.length)))
            if len(window) >= self.in_flight:
                offset, fut = window.popleft()
                yield offset, fut.result()
        while window:
            offset, fut = window.popleft()
            yield offset, fut.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileSource:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class FileSink:
    """A :class:`~vmguard.transport.extents.BlockSink` over a file or block device.

    ``create(path, size)`` makes a fresh sparse file (every range reads as zeros and is
    unallocated): restoring into it needs no zeroing of holes.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = _open(self.path, os.O_RDWR)
        mode = os.fstat(self._fd).st_mode
        self._is_device = stat.S_ISBLK(mode)
        self._size = _device_size(self._fd) if self._is_device else os.fstat(self._fd).st_size
        self._fallocate = _libc_fallocate()

    @classmethod
    def create(
        cls, path: str | os.PathLike[str], size: int, *, overwrite: bool = False
    ) -> FileSink:
        target = Path(path)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            fd = os.open(target, flags | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise ConfigError(f"{target} exists; refusing to overwrite it") from None
        except OSError as exc:
            raise ConfigError(f"cannot create {target}: {exc.strerror}") from None
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        return cls(target)

    @property
    def size(self) -> int:
        return self._size

    def write(self, offset: int, data: Bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written

    def zero(self, offset: int, length: int) -> None:
        """Make ``[offset, offset + length)`` read as zeros, as a hole where possible."""
        if not self._is_device and self._fallocate is not None:
            flags = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
            if self._fallocate(self._fd, flags, offset, length) == 0:
                return
        for piece in split([Extent(offset, length)], len(_ZERO_BLOCK)):
            self.write(piece.offset, _ZERO_BLOCK[: piece.length])

    def flush(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileSink:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _libc_fallocate() -> Callable[[int, int, int, int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    fallocate = libc.fallocate
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fallocate.restype = ctypes.c_int
    return fallocate  # type: ignore[no-any-return]
