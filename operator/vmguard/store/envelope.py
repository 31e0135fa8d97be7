"""The object envelope shared by chunks, indexes and manifests (format §3).

``seal`` turns a plaintext into stored bytes: a 16-byte header (magic, version, kind,
flags, plaintext length), an optional nonce, the payload (zstd or raw, then optionally
AES-256-GCM) and a 16-byte tag. ``open`` reverses it. Invariants:

- The header and the object's *binding* (chunk id, or archive id and disk number) are
  authenticated: by the GCM tag when encrypted, by a BLAKE3 checksum otherwise. An
  object moved under another name, a flipped flag or a changed length never decodes.
- Every check fails with :class:`~vmguard.errors.CorruptObjectError` saying which
  check failed; nothing is decompressed before the tag has been verified, and never
  beyond the length the header declares (no decompression bombs).
- An unencrypted object is refused where the repository is encrypted, and vice versa.
- Instances are thread-safe: zstd contexts are per thread.
- ``seal(..., like=opened)`` stores an object another repository's envelope opened
  with the payload choice that envelope made — its zstd frame as it is, or raw — instead
  of compressing again (copies, format §11). The frame was verified when it was opened
  (tag, content size, checksum, decompressed to exactly the plaintext), so the object
  is one a fresh ``seal`` could have written: the format is the same.
"""

from __future__ import annotations

import secrets
import struct
import threading
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeAlias

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vmguard.errors import CorruptObjectError

MAGIC = b"VMGD"
VERSION = 1
FLAG_ZSTD = 0x01
FLAG_AES_GCM = 0x02
HEADER = struct.Struct(">4sBBBBQ")
NONCE_BYTES = 12
TAG_BYTES = 16
_SAMPLE = 16 * 1024
_SAMPLE_THRESHOLD = 256 * 1024


Bytes: TypeAlias = bytes | bytearray | memoryview
"""Plaintext as the data path hands it over: a transport's read buffer is passed on as it
is (a bytearray), never copied into ``bytes`` just to satisfy a signature."""


class Kind(IntEnum):
    CHUNK = 1
    INDEX = 2
    MANIFEST = 3


@dataclass(frozen=True, slots=True)
class Opened:
    """An object's plaintext and how its payload held it."""

    plaintext: bytes
    frame: Bytes | None
    """The payload's zstd frame (content size and checksum present, verified by
    decompressing it to ``plaintext``); None when stored raw or without a checksum."""
    compressed: bool
    """The payload was zstd (False: raw, zstd did not shrink the plaintext)."""


def overhead(encrypted: bool) -> int:
    """Bytes an envelope adds around its payload."""
    return HEADER.size + TAG_BYTES + (NONCE_BYTES if encrypted else 0)


def _checksum(header: bytes, binding: bytes, payload: Bytes) -> bytes:
    hasher = blake3.blake3(header)
    hasher.update(binding)
    hasher.update(payload)
    return hasher.digest()[:TAG_BYTES]


class Envelope:
    """Seals and opens objects for one repository (one key, one compression level)."""

    def __init__(self, aead: AESGCM | None, level: int = 3) -> None:
        self._aead = aead
        self._level = level
        self._local = threading.local()

    @property
    def encrypted(self) -> bool:
        return self._aead is not None

    def _compressor(self) -> zstandard.ZstdCompressor:
        compressor: zstandard.ZstdCompressor | None = getattr(self._local, "c", None)
        if compressor is None:
            compressor = zstandard.ZstdCompressor(
                level=self._level, write_checksum=True, write_content_size=True
            )
            self._local.c = compressor
        return compressor

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        decompressor: zstandard.ZstdDecompressor | None = getattr(self._local, "d", None)
        if decompressor is None:
            decompressor = zstandard.ZstdDecompressor()
            self._local.d = decompressor
        return decompressor

    def _looks_incompressible(self, plaintext: Bytes) -> bool:
        """True if four spread-out 16 KiB samples do not compress at all.

        Costs about 1.5% of compressing the whole input and saves all of it for
        random data (compressed or encrypted guest files, and ransomware).
        """
        size = len(plaintext)
        if size < _SAMPLE_THRESHOLD:
            return False
        step = (size - _SAMPLE) // 3
        compressor = self._compressor()
        sampled = sum(
            len(compressor.compress(plaintext[i * step : i * step + _SAMPLE])) for i in range(4)
        )
        return sampled >= 4 * _SAMPLE * 0.98

    def seal(
        self, kind: Kind, plaintext: Bytes, binding: bytes, *, like: Opened | None = None
    ) -> bytes:
        """Stored bytes for ``plaintext``; raw payload when zstd would not shrink it.

        ``like``: ``plaintext`` as an envelope of the same compression level opened it
        (a copy's source); its frame is stored as it is, or the payload raw as there,
        instead of compressing again. The caller vouches that ``like.plaintext`` is
        ``plaintext``.
        """
        if like is not None and len(like.plaintext) != len(plaintext):
            raise ValueError("seal(like=...) of another plaintext")
        flags = 0
        payload: Bytes = plaintext
        if like is not None and like.frame is not None:
            payload, flags = like.frame, FLAG_ZSTD
        elif like is not None and not like.compressed:
            pass  # zstd did not shrink it there, at the same level: raw again
        elif not self._looks_incompressible(plaintext):
            compressed = self._compressor().compress(plaintext)
            if len(compressed) < len(plaintext):
                payload, flags = compressed, FLAG_ZSTD
        if self._aead is not None:
            flags |= FLAG_AES_GCM
        header = HEADER.pack(MAGIC, VERSION, kind, flags, 0, len(plaintext))
        if self._aead is None:
            return b"".join((header, payload, _checksum(header, binding, payload)))
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, payload, header + binding)
        return b"".join((header, nonce, sealed))

    def open(self, kind: Kind, blob: bytes, binding: bytes, limit: int) -> bytes:
        """The plaintext of ``blob``, or CorruptObjectError naming the failed check."""
        return self.open_frame(kind, blob, binding, limit).plaintext

    def open_frame(self, kind: Kind, blob: bytes, binding: bytes, limit: int) -> Opened:
        """:meth:`open`, also handing back the verified zstd frame (for ``seal(like=)``)."""
        if len(blob) < overhead(self.encrypted):
            raise CorruptObjectError(f"truncated: {len(blob)} bytes")
        magic, version, got_kind, flags, reserved, length = HEADER.unpack_from(blob)
        if magic != MAGIC:
            raise CorruptObjectError("bad magic")
        if version != VERSION:
            raise CorruptObjectError(f"unsupported envelope version {version}")
        if got_kind != kind:
            raise CorruptObjectError(f"object is of kind {got_kind}, expected {int(kind)}")
        if reserved or flags & ~(FLAG_ZSTD | FLAG_AES_GCM):
            raise CorruptObjectError("reserved header bits set")
        if bool(flags & FLAG_AES_GCM) != self.encrypted:
            state = "encrypted" if flags & FLAG_AES_GCM else "unencrypted"
            raise CorruptObjectError(f"{state} object does not match the repository")
        if length > limit:
            raise CorruptObjectError(f"declared length {length} exceeds limit {limit}")
        header = blob[: HEADER.size]
        # The payload is a view: slicing a chunk-sized blob would copy it, holding the GIL.
        view = memoryview(blob)
        payload: Bytes
        if self._aead is None:
            payload = view[HEADER.size : -TAG_BYTES]
            if not secrets.compare_digest(_checksum(header, binding, payload), blob[-TAG_BYTES:]):
                raise CorruptObjectError("checksum mismatch")
        else:
            nonce = blob[HEADER.size : HEADER.size + NONCE_BYTES]
            try:
                payload = self._aead.decrypt(
                    nonce, view[HEADER.size + NONCE_BYTES :], header + binding
                )
            except InvalidTag:
                raise CorruptObjectError("authentication failed") from None
        if not flags & FLAG_ZSTD:
            if len(payload) != length:
                raise CorruptObjectError(f"length {len(payload)} != declared {length}")
            return Opened(bytes(payload), None, compressed=False)
        plaintext = self._decompress(payload, length)
        # A frame without its checksum (none of ours; the format asks for it) is not
        # handed on: sealing it elsewhere would store an object the format does not allow.
        has_checksum = zstandard.get_frame_parameters(payload).has_checksum
        return Opened(plaintext, payload if has_checksum else None, compressed=True)

    def _decompress(self, payload: Bytes, length: int) -> bytes:
        try:
            declared = zstandard.frame_content_size(payload)
        except zstandard.ZstdError as exc:
            raise CorruptObjectError(f"bad zstd frame: {exc}") from None
        if declared != length:
            raise CorruptObjectError(f"zstd content size {declared} != declared {length}")
        try:
            plaintext = self._decompressor().decompress(payload, max_output_size=length)
        except zstandard.ZstdError as exc:
            raise CorruptObjectError(f"zstd: {exc}") from None
        if len(plaintext) != length:
            raise CorruptObjectError(f"length {len(plaintext)} != declared {length}")
        return plaintext
