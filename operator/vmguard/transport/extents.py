"""Byte ranges of a disk, and the block source and sink protocols the data mover uses.

An :class:`Extent` is a half-open range ``[offset, offset + length)``. Lists of extents
handed between layers are *normalised*: sorted, non-overlapping, non-adjacent and
non-empty (``normalise`` makes them so). The data mover reads through a
:class:`BlockSource` (a snapshot's disk over NBD or hot-add) and writes restores
through a :class:`BlockSink`; both are random-access and know their size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple, Protocol

# Any contiguous buffer (bytes, bytearray, memoryview): sources hand over their read
# buffers and sinks accept views, so no chunk is copied just to change its type.
from vmguard.store.envelope import Bytes

__all__ = ["BlockSink", "BlockSource", "Bytes", "Extent", "normalise", "split"]


class Extent(NamedTuple):
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


def normalise(extents: Iterable[Extent]) -> list[Extent]:
    """Sort and merge overlapping or touching extents; drop empty ones."""
    out: list[Extent] = []
    for ext in sorted(e for e in extents if e.length > 0):
        if out and ext.offset <= out[-1].end:
            last = out[-1]
            out[-1] = Extent(last.offset, max(last.end, ext.end) - last.offset)
        else:
            out.append(ext)
    return out


def clip(extents: Iterable[Extent], size: int) -> list[Extent]:
    """Cut extents to ``[0, size)``."""
    out = []
    for ext in extents:
        start, end = max(ext.offset, 0), min(ext.end, size)
        if end > start:
            out.append(Extent(start, end - start))
    return out


def align(extents: Iterable[Extent], block: int, size: int) -> list[Extent]:
    """Widen every extent to whole ``block``-sized blocks, clipped to ``size``."""
    widened = (
        Extent(e.offset // block * block, -(-e.end // block) * block - e.offset // block * block)
        for e in extents
    )
    return normalise(clip(widened, size))


def total(extents: Iterable[Extent]) -> int:
    return sum(e.length for e in extents)


def split(extents: Iterable[Extent], max_length: int) -> Iterator[Extent]:
    """Cut each extent into pieces of at most ``max_length`` bytes."""
    for ext in extents:
        pos = ext.offset
        while pos < ext.end:
            n = min(max_length, ext.end - pos)
            yield Extent(pos, n)
            pos += n


class BlockSource(Protocol):
    """A disk (or a snapshot of one) to read from."""

    @property
    def size(self) -> int: ...

    def allocated(self) -> list[Extent]:
        """Ranges that may hold data; everything else reads as zeroes (normalised)."""
        ...

    def read(self, offset: int, length: int) -> bytes: ...

    def read_many(self, extents: Iterable[Extent]) -> Iterator[tuple[int, Bytes]]:
        """Read every extent, several in flight; yields ``(offset, data)`` in order.

        ``data`` belongs to the caller (a source never reuses a buffer it yielded)."""
        ...

    def close(self) -> None: ...


class BlockSink(Protocol):
    """A disk to restore into; ranges never written stay unallocated."""

    @property
    def size(self) -> int: ...

    def write(self, offset: int, data: Bytes) -> None:
        """Write ``data`` at ``offset``. A sink may hold on to ``data`` until ``flush``
        (NBD sends it asynchronously), so the caller must not change it before then."""
        ...

    def zero(self, offset: int, length: int) -> None:
        """Make the range read as zeros, leaving it unallocated where the target can."""
        ...

    def flush(self) -> None: ...

    def close(self) -> None: ...
