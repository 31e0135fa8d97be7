"""Chunks: content-addressed blocks of disk data, and their ids (format §4.1).

A chunk's id is BLAKE3 of its plaintext, keyed with a key derived from the data key
when the repository is encrypted. Invariants:

- ``decode`` returns bytes only if they hash to the id that was asked for: whatever
  happens to the stored object (bit flips, truncation, a swapped object), a caller
  either gets the exact plaintext that was stored under that id or a
  :class:`~vmguard.errors.ChunkCorruptError`.
- The all-zero id (:data:`HOLE`) never names a stored chunk; all-zero data is never
  encoded (``encode`` refuses it: the index records a hole instead).
"""

from __future__ import annotations

import functools
from typing import NewType

import blake3

from vmguard.errors import ChunkCorruptError, CorruptObjectError
from vmguard.store.envelope import Bytes, Envelope, Kind, Opened, overhead

ChunkId = NewType("ChunkId", bytes)
ID_BYTES = 32
HOLE = ChunkId(bytes(ID_BYTES))
"""The index entry for a range that reads as zeros and is not stored."""


@functools.lru_cache(maxsize=8)
def _zeros(size: int) -> bytes:
    return bytes(size)


def is_zero(data: Bytes) -> bool:
    """True if every byte of ``data`` is zero: one memcmp, stopping at the first non-zero."""
    return data == _zeros(len(data))


def chunk_hex(chunk_id: bytes) -> str:
    return chunk_id.hex()


def parse_chunk_hex(text: str) -> ChunkId:
    raw = bytes.fromhex(text)
    if len(raw) != ID_BYTES:
        raise ValueError(f"not a chunk id: {text!r}")
    return ChunkId(raw)


class ChunkCodec:
    """Hashes, seals and opens chunks for one repository. Thread-safe."""

    def __init__(self, envelope: Envelope, id_key: bytes | None, chunk_size: int) -> None:
        self._envelope = envelope
        self._id_key = id_key
        self._chunk_size = chunk_size

    @property
    def chunk_size(self) -> int:
        return self._chunk_size

    @property
    def min_stored_size(self) -> int:
        return overhead(self._envelope.encrypted) + 1

    @property
    def max_stored_size(self) -> int:
        # A raw payload is never larger than the plaintext: writers store raw when zstd
        # does not shrink the data.
        return overhead(self._envelope.encrypted) + self._chunk_size

    def chunk_id(self, data: Bytes) -> ChunkId:
        if self._id_key is None:
            return ChunkId(blake3.blake3(data).digest())
        return ChunkId(blake3.blake3(data, key=self._id_key).digest())

    def encode(self, data: Bytes) -> tuple[ChunkId, bytes]:
        """The id and the stored bytes of one chunk of plaintext."""
        if not data or len(data) > self._chunk_size:
            raise ValueError(f"chunk of {len(data)} bytes (chunk size {self._chunk_size})")
        if is_zero(data):
            raise ValueError("all-zero chunks are recorded as holes, never stored")
        chunk_id = self.chunk_id(data)
        return chunk_id, self.seal(chunk_id, data)

    def seal(self, chunk_id: ChunkId, data: Bytes, *, like: Opened | None = None) -> bytes:
        """Stored bytes for ``data`` whose id the caller has already computed; ``like``:
        ``data`` as another repository's codec opened it (see :meth:`Envelope.seal`)."""
        return self._envelope.seal(Kind.CHUNK, data, chunk_id, like=like)

    def decode(self, chunk_id: bytes, blob: bytes) -> bytes:
        """The plaintext stored in ``blob`` under ``chunk_id``, verified against the id."""
        return self.open(chunk_id, blob).plaintext

    def open(self, chunk_id: bytes, blob: bytes) -> Opened:
        """:meth:`decode`, also handing back the verified zstd frame (copies reuse it)."""
        try:
            opened = self._envelope.open_frame(Kind.CHUNK, blob, chunk_id, self._chunk_size)
        except CorruptObjectError as exc:
            raise ChunkCorruptError(chunk_hex(chunk_id), str(exc)) from None
        if self.chunk_id(opened.plaintext) != chunk_id:
            raise ChunkCorruptError(chunk_hex(chunk_id), "content does not match its id")
        return opened
