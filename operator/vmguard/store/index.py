"""The fixed index: the chunk id of every chunk-size-aligned range of one disk (format §5).

One index per disk per archive makes every archive a synthetic full: restoring any
range of any disk needs only this index and the chunks it names, never another
archive. Invariants:

- ``len(index) == ceil(length / chunk_size)``; entry ``i`` covers
  ``[i * chunk_size, min((i + 1) * chunk_size, length))``.
- An entry is :data:`~vmguard.store.chunk.HOLE` (reads as zeros, not stored) or the id
  of a chunk whose plaintext is exactly as long as the entry's range.
- Entries live in one ``bytearray`` of 32 bytes each: a 2 TiB disk costs 16 MiB of
  memory, not millions of Python objects.
- ``from_bytes`` accepts only well-formed plaintext; it checks the header against the
  repository's chunk size and the entry count against the length.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from vmguard.errors import CorruptObjectError
from vmguard.store.chunk import HOLE, ID_BYTES, ChunkId

_HEADER = struct.Struct(">IIQQ")


class FixedIndex:
    """Chunk ids of one disk, by chunk number."""

    __slots__ = ("_entries", "chunk_size", "length")

    def __init__(self, chunk_size: int, length: int, entries: bytearray | None = None) -> None:
        if chunk_size <= 0 or length < 0:
            raise ValueError(f"bad index geometry: chunk_size={chunk_size} length={length}")
        self.chunk_size = chunk_size
        self.length = length
        count = -(-length // chunk_size)
        if entries is None:
            entries = bytearray(count * ID_BYTES)  # all holes
        elif len(entries) != count * ID_BYTES:
            raise ValueError(f"{len(entries)} entry bytes for {count} chunks")
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries) // ID_BYTES

    def __getitem__(self, number: int) -> ChunkId:
        if not 0 <= number < len(self):
            raise IndexError(number)
        start = number * ID_BYTES
        return ChunkId(bytes(self._entries[start : start + ID_BYTES]))

    def __setitem__(self, number: int, chunk_id: bytes) -> None:
        if not 0 <= number < len(self):
            raise IndexError(number)
        if len(chunk_id) != ID_BYTES:
            raise ValueError("a chunk id is 32 bytes")
        start = number * ID_BYTES
        self._entries[start : start + ID_BYTES] = chunk_id

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FixedIndex):
            return NotImplemented
        return (self.chunk_size, self.length, self._entries) == (
            other.chunk_size,
            other.length,
            other._entries,
        )

    __hash__ = None  # type: ignore[assignment]

    def extent(self, number: int) -> tuple[int, int]:
        """(offset, size) of the range entry ``number`` covers."""
        if not 0 <= number < len(self):
            raise IndexError(number)
        offset = number * self.chunk_size
        return offset, min(self.chunk_size, self.length - offset)

    def chunk_number(self, offset: int) -> int:
        return offset // self.chunk_size

    def __iter__(self) -> Iterator[ChunkId]:
        entries = bytes(self._entries)
        for start in range(0, len(entries), ID_BYTES):
            yield ChunkId(entries[start : start + ID_BYTES])

    def is_hole(self, number: int) -> bool:
        return self[number] == HOLE

    def referenced(self) -> set[bytes]:
        """Distinct ids of stored chunks (holes excluded)."""
        ids: set[bytes] = set(iter(self))
        ids.discard(HOLE)
        return ids

    def copy(self) -> FixedIndex:
        return FixedIndex(self.chunk_size, self.length, bytearray(self._entries))

    def to_bytes(self) -> bytes:
        header = _HEADER.pack(self.chunk_size, 0, self.length, len(self))
        return header + bytes(self._entries)

    @classmethod
    def from_bytes(cls, raw: bytes, chunk_size: int) -> FixedIndex:
        if len(raw) < _HEADER.size:
            raise CorruptObjectError("index shorter than its header")
        got_size, reserved, length, count = _HEADER.unpack_from(raw)
        if got_size != chunk_size:
            raise CorruptObjectError(f"index chunk size {got_size} != repository {chunk_size}")
        if reserved:
            raise CorruptObjectError("index reserved field is not zero")
        if count != -(-length // chunk_size) or len(raw) != _HEADER.size + count * ID_BYTES:
            raise CorruptObjectError("index entry count does not match its length")
        return cls(chunk_size, length, bytearray(raw[_HEADER.size :]))
