"""Hole-preserving copies and extent maps of sparse files.

Invariants: a copy reads back byte-identical to its source; a hole in the source stays a
hole; :func:`copy_range` with ``skip_zero_blocks`` additionally turns 4 KiB blocks that are
all zero into holes (they read back as zeros, so the content is unchanged). Extent maps
come from ``SEEK_DATA``/``SEEK_HOLE``, i.e. from what the kernel reports for the file,
rounded to the host filesystem's block size.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from vmguard.transport.extents import Extent

__all__ = ["Extent", "data_extents"]

BLOCK = 4096
_IO = 8 << 20
_ZEROS = bytes(_IO)
_FICLONE = 0x40049409


def data_extents(path: Path, start: int = 0, end: int | None = None) -> list[Extent]:
    """Ranges of ``path`` within ``[start, end)`` that hold data (everything but holes)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return list(_data_extents_fd(fd, start, end))
    finally:
        os.close(fd)


def _data_extents_fd(fd: int, start: int = 0, end: int | None = None) -> Iterator[Extent]:
    size = os.fstat(fd).st_size if end is None else end
    pos = start
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after pos
                return
            raise
        if data >= size:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
        yield Extent(data, hole - data)
        pos = hole


def allocated_bytes(path: Path) -> int:
    """Bytes the host filesystem has allocated for ``path``."""
    return os.stat(path).st_blocks * 512


def _is_zero(buf: memoryview) -> bool:
    return buf == _ZEROS[: len(buf)]


def copy_range(
    src: Path,
    dst: Path,
    dst_offset: int,
    *,
    src_offset: int = 0,
    length: int | None = None,
    skip_zero_blocks: bool = True,
) -> None:
    """Copy ``length`` bytes of ``src`` from ``src_offset`` (default: all of it) into ``dst``
    at ``dst_offset``.

    Only data extents of ``src`` are read; with ``skip_zero_blocks`` all-zero 4 KiB blocks
    inside them are not written either. ``dst`` must already be at least as large as the
    range (it is a preallocated sparse image); nothing outside the range is touched.
    """
    sfd = os.open(src, os.O_RDONLY)
    dfd = os.open(dst, os.O_WRONLY)
    try:
        end = os.fstat(sfd).st_size if length is None else src_offset + length
        shift = dst_offset - src_offset
        for ext in _data_extents_fd(sfd, src_offset, end):
            pos = ext.offset
            while pos < ext.end:
                n = min(_IO, ext.end - pos)
                buf = memoryview(os.pread(sfd, n, pos))
                if not skip_zero_blocks:
                    os.pwrite(dfd, buf, pos + shift)
                else:
                    write_nonzero_blocks(dfd, buf, pos + shift)
                pos += n
    finally:
        os.close(sfd)
        os.close(dfd)


def write_nonzero_blocks(fd: int, buf: memoryview, offset: int) -> None:
    """Write the runs of non-zero 4 KiB blocks of ``buf`` at ``offset`` (few, big writes)."""
    if _is_zero(buf):
        return
    run_start: int | None = None
    for i in range(0, len(buf), BLOCK):
        zero = _is_zero(buf[i : i + BLOCK])
        if not zero and run_start is None:
            run_start = i
        elif zero and run_start is not None:
            os.pwrite(fd, buf[run_start:i], offset + run_start)
            run_start = None
    if run_start is not None:
        os.pwrite(fd, buf[run_start:], offset + run_start)


def clone(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of ``src``: a reflink where the host allows, else a sparse copy.

    The sparse copy keeps the source's allocation exactly (allocated zeros stay allocated,
    holes stay holes), so a clone reports the same extents as its source.
    """
    tmp = dst.with_name(f".{dst.name}.part")
    with open(src, "rb") as s, open(tmp, "wb") as d:
        try:
            fcntl.ioctl(d.fileno(), _FICLONE, s.fileno())
        except OSError:
            size = os.fstat(s.fileno()).st_size
            d.truncate(size)
            for ext in _data_extents_fd(s.fileno()):
                pos = ext.offset
                while pos < ext.end:
                    n = os.copy_file_range(s.fileno(), d.fileno(), ext.end - pos, pos, pos)
                    if n <= 0:
                        raise OSError(f"copy_file_range stalled at {pos} of {src}") from None
                    pos += n
    os.replace(tmp, dst)


def sha256_sparse(path: Path) -> str:
    """sha256 of the whole content of ``path``; holes are hashed without being read."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        for ext in _data_extents_fd(fd):
            _hash_zeros(h, ext.offset - pos)
            p = ext.offset
            while p < ext.end:
                buf = os.pread(fd, min(_IO, ext.end - p), p)
                h.update(buf)
                p += len(buf)
            pos = ext.end
        _hash_zeros(h, size - pos)
    finally:
        os.close(fd)
    return h.hexdigest()


class _Hasher(Protocol):
    def update(self, data: memoryview, /) -> None: ...


def _hash_zeros(h: _Hasher, n: int) -> None:
    zeros = memoryview(_ZEROS)
    while n > 0:
        k = min(n, _IO)
        h.update(zeros[:k])
        n -= k


def changed_ranges(a: Path, b: Path, block: int = 64 << 10) -> list[Extent]:
    """Block-aligned ranges where ``a`` and ``b`` differ (ground truth for CBT tests).

    Ranges that are holes in both files are not read. Files of different sizes differ
    over the tail of the longer one.
    """
    fa, fb = os.open(a, os.O_RDONLY), os.open(b, os.O_RDONLY)
    out: list[Extent] = []
    try:
        sa, sb = os.fstat(fa).st_size, os.fstat(fb).st_size
        size = max(sa, sb)
        ranges = sorted([*_data_extents_fd(fa), *_data_extents_fd(fb)])
        if sa != sb:
            ranges.append(Extent(min(sa, sb), size - min(sa, sb)))
        checked = 0
        for r in ranges:
            pos = max(checked, r.offset - r.offset % block)
            stop = min(size, -(-r.end // block) * block)
            while pos < stop:
                n = min(_IO, stop - pos)
                ba, bb = os.pread(fa, n, pos), os.pread(fb, n, pos)
                if ba != bb:
                    ba, bb = ba.ljust(n, b"\0"), bb.ljust(n, b"\0")
                    for i in range(0, n, block):
                        if ba[i : i + block] != bb[i : i + block]:
                            _add(out, Extent(pos + i, min(block, size - pos - i)))
                pos += n
            checked = max(checked, pos)
    finally:
        os.close(fa)
        os.close(fb)
    return out


def _add(out: list[Extent], ext: Extent) -> None:
    if out and out[-1].end == ext.offset:
        out[-1] = Extent(out[-1].offset, out[-1].length + ext.length)
    else:
        out.append(ext)
