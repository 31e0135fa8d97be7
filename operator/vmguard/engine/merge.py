"""Reading a disk for a backup: whole chunks, and chunks merged from the parent's.

:func:`read_items` turns what a plan reads (:class:`~vmguard.engine.plan.DiskPlan`'s
``read`` and ``merge``) into a stream of items in disk order, read through one
``source.read_many`` call so the transport keeps its requests in flight: a
:class:`WholeChunk` for every chunk read whole, a :class:`MergeChunk` holding the bytes
of the changed areas of every chunk to merge. :func:`merged` then builds a merge's new
chunk from the parent's chunk (docs/cbt-chain.md, "Reading only what changed").

Invariants:

- A merged chunk is the parent's chunk's *verified* plaintext (zeros for a parent hole)
  with every changed area overwritten by the bytes the source returned for it. The
  changed areas cover every byte written since the parent's snapshot (CBT's promise,
  the same one that lets an incremental carry unchanged chunks), and the parent's chunk
  holds the disk's bytes at that snapshot (the parent restores bit-exact), so the merged
  chunk holds the disk's bytes at this snapshot.
- No merge on a base that cannot be had: a parent chunk that is missing, fails its
  envelope or id check, or has another length than its range makes :func:`merged`
  return None, and the caller reads the chunk whole from the source instead. Nothing
  is guessed and no partial chunk is ever stored.
- A whole chunk that the transport returns as one aligned piece is passed on without a
  copy; a merge item holds only its changed areas until a worker merges it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from vmguard.errors import ChunkCorruptError, ChunkMissingError
from vmguard.store import HOLE
from vmguard.transport.extents import BlockSource, Bytes, Extent

ReadChunk = Callable[[bytes], bytes]
"""The repository's verified chunk read (:meth:`vmguard.store.Repository.read_chunk`)."""


@dataclass(frozen=True)
class WholeChunk:
    number: int
    data: Bytes


@dataclass(frozen=True)
class MergeChunk:
    number: int
    pieces: tuple[tuple[Extent, Bytes], ...]
    """The changed areas inside the chunk (absolute offsets) and their bytes, in order."""

    @property
    def read_bytes(self) -> int:
        return sum(len(data) for _, data in self.pieces)


Item = WholeChunk | MergeChunk


def read_items(
    source: BlockSource,
    whole: list[Extent],
    merge: dict[int, list[Extent]],
    chunk_size: int,
) -> Iterator[Item]:
    """Items for the chunk-aligned ``whole`` ranges and the chunks of ``merge``, in disk
    order (see the module docstring)."""
    units = sorted(
        [(ext, -1) for ext in whole]
        + [(piece, number) for number, pieces in merge.items() for piece in pieces]
    )
    left = {number: len(pieces) for number, pieces in merge.items()}
    reads = iter(source.read_many([ext for ext, _ in units]))
    gathered: list[tuple[Extent, Bytes]] = []
    for ext, number in units:
        if number < 0:
            yield from _whole(reads, ext, chunk_size)
            continue
        gathered.append((ext, _gather(reads, ext)))
        left[number] -= 1
        if not left[number]:  # a chunk's pieces are consecutive units: it is complete
            yield MergeChunk(number, tuple(gathered))
            gathered = []


def _next(reads: Iterator[tuple[int, Bytes]], expected: int) -> tuple[int, Bytes]:
    got = next(reads, None)
    if got is None:
        raise RuntimeError(f"source ended before offset {expected}")
    if got[0] != expected:
        raise RuntimeError(f"source skipped from {expected} to {got[0]}")
    return got


def _gather(reads: Iterator[tuple[int, Bytes]], ext: Extent) -> Bytes:
    """The bytes of ``ext``: one piece as it is, several joined."""
    parts: list[Bytes] = []
    pos = ext.offset
    while pos < ext.end:
        _, data = _next(reads, pos)
        parts.append(data)
        pos += len(data)
    if pos != ext.end:
        raise RuntimeError(f"source read past {ext.end} (to {pos})")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _whole(reads: Iterator[tuple[int, Bytes]], ext: Extent, chunk_size: int) -> Iterator[Item]:
    """Whole chunks of the chunk-aligned ``ext`` (only the disk's last chunk is short).

    The transport yields pieces of its own request size; a piece that is exactly one
    chunk is passed on without a copy, anything else is cut or joined.
    """
    pending = bytearray()
    start = pos = ext.offset
    while pos < ext.end:
        offset, data = _next(reads, pos)
        pos += len(data)
        if pos > ext.end:
            raise RuntimeError(f"source read past {ext.end} (to {pos})")
        if not pending and offset % chunk_size == 0 and len(data) == chunk_size:
            yield WholeChunk(offset // chunk_size, data)
            start = pos
            continue
        pending += data
        while len(pending) >= chunk_size:
            yield WholeChunk(start // chunk_size, bytes(pending[:chunk_size]))
            del pending[:chunk_size]
            start += chunk_size
    if pending:
        yield WholeChunk(start // chunk_size, bytes(pending))


def merged(
    read_chunk: ReadChunk, base: bytes, extent: Extent, pieces: Iterable[tuple[Extent, Bytes]]
) -> bytearray | None:
    """The chunk at ``extent`` whose parent entry is ``base``, with ``pieces`` written
    over it; None when the parent's chunk cannot be had (read the chunk whole then)."""
    if base == HOLE:
        data = bytearray(extent.length)  # a hole read as zeros at the parent's snapshot
    else:
        try:
            plain = read_chunk(base)  # verified against its id: exactly what was stored
        except (ChunkMissingError, ChunkCorruptError):
            return None
        if len(plain) != extent.length:
            return None
        data = bytearray(plain)
    for piece, bytes_ in pieces:
        if piece.offset < extent.offset or piece.end > extent.end:
            raise ValueError(f"changed area {piece} is outside chunk {extent}")
        data[piece.offset - extent.offset : piece.end - extent.offset] = bytes_
    return data
