"""Chunk codec and object envelope: round trips, and every kind of damage is detected."""

from __future__ import annotations

import os
import random

import pytest

from vmguard.errors import ChunkCorruptError, CorruptObjectError
from vmguard.store.chunk import HOLE, ChunkCodec, is_zero
from vmguard.store.crypto import DataKeys
from vmguard.store.envelope import FLAG_AES_GCM, FLAG_ZSTD, HEADER, Envelope, Kind

pytestmark = pytest.mark.unit

SIZE = 1024 * 1024


def _codec(encrypted: bool) -> ChunkCodec:
    if not encrypted:
        return ChunkCodec(Envelope(None), None, SIZE)
    keys = DataKeys(bytes(range(32)))
    return ChunkCodec(Envelope(keys.aead), keys.id_key, SIZE)


def _flags(blob: bytes) -> int:
    return int(HEADER.unpack_from(blob)[3])


@pytest.fixture(params=[True, False], ids=["encrypted", "plain"])
def codec(request: pytest.FixtureRequest) -> ChunkCodec:
    return _codec(request.param)


def test_round_trip_of_compressible_and_random_data(codec: ChunkCodec) -> None:
    text = b"the same sentence again and again. " * 30000
    noise = os.urandom(SIZE)
    for data in (text[:SIZE], noise, b"x", noise[:12345]):
        chunk_id, blob = codec.encode(data)
        assert codec.decode(chunk_id, blob) == data
    text_id, text_blob = codec.encode(text[:SIZE])
    assert _flags(text_blob) & FLAG_ZSTD and len(text_blob) < SIZE // 10
    _, noise_blob = codec.encode(noise)
    assert not _flags(noise_blob) & FLAG_ZSTD  # stored raw: zstd could not shrink it
    assert len(noise_blob) <= codec.max_stored_size
    assert bool(_flags(text_blob) & FLAG_AES_GCM) == (codec.chunk_id(b"k") != _plain(b"k"))
    assert text_id == codec.chunk_id(text[:SIZE])


def _plain(data: bytes) -> bytes:
    return _codec(False).chunk_id(data)


def test_encrypted_ids_are_keyed_and_plain_ids_are_blake3() -> None:
    data = b"some disk block"
    assert _codec(False).chunk_id(data) == _plain(data)
    assert _codec(True).chunk_id(data) != _plain(data)
    other = DataKeys(bytes(32 * [7]))
    assert ChunkCodec(Envelope(other.aead), other.id_key, SIZE).chunk_id(data) != _codec(
        True
    ).chunk_id(data)


def test_every_single_bit_flip_is_detected(codec: ChunkCodec) -> None:
    data = (b"compressible " * 1000) + os.urandom(2000)
    chunk_id, blob = codec.encode(data)
    rng = random.Random(7)
    positions = list(range(0, 40)) + [len(blob) - 1 - i for i in range(20)]
    positions += rng.sample(range(len(blob)), 60)
    for position in positions:
        damaged = bytearray(blob)
        damaged[position] ^= 1 << rng.randrange(8)
        with pytest.raises(ChunkCorruptError) as caught:
            codec.decode(chunk_id, bytes(damaged))
        assert caught.value.chunk_id_hex == chunk_id.hex()


def test_truncation_is_detected(codec: ChunkCodec) -> None:
    chunk_id, blob = codec.encode(os.urandom(5000))
    for length in (0, 10, 16, len(blob) // 2, len(blob) - 1):
        with pytest.raises(ChunkCorruptError):
            codec.decode(chunk_id, blob[:length])
    with pytest.raises(ChunkCorruptError):
        codec.decode(chunk_id, blob + b"\0")


def test_a_valid_chunk_under_another_id_is_rejected(codec: ChunkCodec) -> None:
    id_a, blob_a = codec.encode(b"chunk A" * 100)
    id_b, _ = codec.encode(b"chunk B" * 100)
    with pytest.raises(ChunkCorruptError):
        codec.decode(id_b, blob_a)
    assert codec.decode(id_a, blob_a) == b"chunk A" * 100


def test_zero_chunks_are_holes_never_stored(codec: ChunkCodec) -> None:
    assert is_zero(bytes(SIZE)) and not is_zero(bytes(SIZE - 1) + b"\1")
    with pytest.raises(ValueError, match="holes"):
        codec.encode(bytes(4096))
    assert bytes(32) == HOLE


def test_oversized_chunks_are_refused(codec: ChunkCodec) -> None:
    with pytest.raises(ValueError):
        codec.encode(b"x" * (SIZE + 1))
    with pytest.raises(ValueError):
        codec.encode(b"")


def test_encryption_state_must_match_the_repository() -> None:
    plain, encrypted = _codec(False), _codec(True)
    data = b"block" * 50
    chunk_id, plain_blob = plain.encode(data)
    with pytest.raises(ChunkCorruptError, match="does not match the repository"):
        encrypted.decode(chunk_id, plain_blob)
    enc_id, enc_blob = encrypted.encode(data)
    with pytest.raises(ChunkCorruptError, match="does not match the repository"):
        plain.decode(enc_id, enc_blob)


def test_the_wrong_data_key_cannot_read_chunks() -> None:
    chunk_id, blob = _codec(True).encode(b"secret data " * 10)
    other = DataKeys(bytes(32 * [9]))
    with pytest.raises(ChunkCorruptError, match="authentication failed"):
        ChunkCodec(Envelope(other.aead), other.id_key, SIZE).decode(chunk_id, blob)


def test_envelope_kind_binding_and_length_limit_are_enforced() -> None:
    envelope = Envelope(DataKeys(bytes(32)).aead)
    sealed = envelope.seal(Kind.MANIFEST, b'{"x": 1}', b"archive-1")
    assert envelope.open(Kind.MANIFEST, sealed, b"archive-1", 100) == b'{"x": 1}'
    with pytest.raises(CorruptObjectError, match="kind"):
        envelope.open(Kind.INDEX, sealed, b"archive-1", 100)
    with pytest.raises(CorruptObjectError, match="authentication"):
        envelope.open(Kind.MANIFEST, sealed, b"archive-2", 100)
    with pytest.raises(CorruptObjectError, match="exceeds limit"):
        envelope.open(Kind.MANIFEST, sealed, b"archive-1", 4)


def test_no_plaintext_window_survives_encryption() -> None:
    codec = _codec(True)
    data = b"".join(f"record {i:08d} of a very recognisable file\n".encode() for i in range(400))
    _, blob = codec.encode(data)
    windows = {data[i : i + 64] for i in range(0, len(data) - 64, 7)}
    assert not any(window in blob for window in windows)


def test_partly_random_chunks_are_still_compressed(codec: ChunkCodec) -> None:
    data = os.urandom(SIZE // 2) + bytes(SIZE // 4) + b"ab" * (SIZE // 8)
    chunk_id, blob = codec.encode(data)
    assert _flags(blob) & FLAG_ZSTD and len(blob) < 0.6 * SIZE
    assert codec.decode(chunk_id, blob) == data


def _payload(envelope: Envelope, kind: Kind, blob: bytes, binding: bytes) -> bytes:
    """The payload inside ``blob`` (the zstd frame, or the raw plaintext)."""
    opened = envelope.open_frame(kind, blob, binding, SIZE)
    return bytes(opened.frame) if opened.frame is not None else opened.plaintext


def test_sealing_like_another_envelope_keeps_its_frame_under_the_new_key() -> None:
    """A copy re-encrypts the source's zstd frame as it is: here a level-19 frame, which
    the target's level-3 compressor would not have made, comes out of the target's
    object unchanged; a raw payload stays raw; the plaintext round-trips."""
    source = Envelope(DataKeys(bytes(range(32))).aead, level=19)
    target = Envelope(DataKeys(bytes(range(1, 33))).aead, level=3)
    text = (b"the same sentence again and again, with some variation %d. " * 20000)[:SIZE]
    noise = os.urandom(SIZE)
    binding = bytes(32)
    frame19 = _payload(source, Kind.CHUNK, source.seal(Kind.CHUNK, text, binding), binding)
    assert frame19 != _payload(target, Kind.CHUNK, target.seal(Kind.CHUNK, text, binding), binding)
    for data in (text, noise):
        opened = source.open_frame(
            Kind.CHUNK, source.seal(Kind.CHUNK, data, binding), binding, SIZE
        )
        blob = target.seal(Kind.CHUNK, opened.plaintext, binding, like=opened)
        assert target.open(Kind.CHUNK, blob, binding, SIZE) == data
        again = target.open_frame(Kind.CHUNK, blob, binding, SIZE)
        if data is text:
            assert bytes(again.frame or b"") == frame19 and _flags(blob) & FLAG_ZSTD
        else:
            assert again.frame is None and not again.compressed and not _flags(blob) & FLAG_ZSTD
    other = source.open_frame(Kind.CHUNK, source.seal(Kind.CHUNK, text, binding), binding, SIZE)
    with pytest.raises(ValueError, match="another plaintext"):
        target.seal(Kind.CHUNK, text[:-1], binding, like=other)
