"""The hot-add transport's data side: a disk attached to this (proxy) VM, read locally.

Attaching and detaching is vSphere's business (:mod:`vmguard.vsphere.hotadd`); what
arrives here is a device path. :class:`DeviceSource` reads it with ``pread`` from a
small thread pool (a local SCSI device gains from a few requests in flight) and asks
the kernel for allocation with ``SEEK_DATA``/``SEEK_HOLE`` where the device supports it
(files and some block devices); elsewhere the whole device counts as data. The same
class serves the lab, where the "device" is the simulator's image file.
:class:`DeviceSink` writes a device the same way and leaves unwritten ranges alone.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from vmguard.transport.extents import Extent, normalise, split

REQUEST_BYTES = 4 << 20
IN_FLIGHT = 4


def _size(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_END)


class DeviceSource:
    """A :class:`~vmguard.transport.extents.BlockSource` over a local device or file."""

    def __init__(self, path: str, in_flight: int = IN_FLIGHT) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._size = _size(self._fd)
        self.in_flight = in_flight
        self._pool = ThreadPoolExecutor(in_flight, thread_name_prefix="hotadd-read")

    @property
    def size(self) -> int:
        return self._size

    def allocated(self) -> list[Extent]:
        found, pos = [], 0
        try:
            while pos < self._size:
                try:
                    start = os.lseek(self._fd, pos, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:  # no data after pos
                        break
                    raise
                end = os.lseek(self._fd, start, os.SEEK_HOLE)
                found.append(Extent(start, min(end, self._size) - start))
                pos = end
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return [Extent(0, self._size)]
            raise
        return normalise(found)

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise OSError(errno.EIO, f"short read of {self.path} at {offset}")
        return data

    def read_many(self, extents: Iterable[Extent]) -> Iterator[tuple[int, bytes]]:
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
        self._pool.shutdown(wait=True)
        os.close(self._fd)


class DeviceSink:
    """A :class:`~vmguard.transport.extents.BlockSink` over a local device or file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
        self._size = _size(self._fd)

    @property
    def size(self) -> int:
        return self._size

    def write(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n

    def zero(self, offset: int, length: int) -> None:
        """Make a range read as zeroes, deallocating it where the device can."""
        try:
            _punch_hole(self._fd, offset, length)
        except OSError:
            for piece in split([Extent(offset, length)], REQUEST_BYTES):
                self.write(piece.offset, bytes(piece.length))

    def flush(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        self.flush()
        os.close(self._fd)


def _punch_hole(fd: int, offset: int, length: int) -> None:
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    falloc_fl_keep_size, falloc_fl_punch_hole = 0x01, 0x02
    rc = libc.fallocate(
        fd,
        falloc_fl_keep_size | falloc_fl_punch_hole,
        ctypes.c_longlong(offset),
        ctypes.c_longlong(length),
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
