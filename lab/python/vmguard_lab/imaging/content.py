"""Seeded byte streams: the content of generated files and raw disk regions.

A :class:`Content` is a recipe, not bytes: ``(kind, size, seed, patches)`` always expands
to the same bytes, on any machine and Python >= 3.11 (``random.Random`` seeded with an int
is stable across versions). Kinds:

- ``random``: incompressible, never deduplicates with anything else;
- ``text``: English-like words, zstd shrinks it several times, every 4 KiB block unique;
- ``repeat``: one 64 KiB random unit over and over (compresses and deduplicates at any
  chunk size that is a multiple of 64 KiB);
- ``zeros``: all zero (a file of zeros, or a raw region written as allocated zeros);
- ``sparse``: zeros with 64 KiB of text at the start, the middle and the end.

``patches`` overwrite ranges with fresh random bytes: that is how a later backup point
changes a few blocks of a big file or a raw region in place.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

ContentKind = Literal["random", "text", "repeat", "zeros", "sparse"]

CHUNK = 1 << 20
_BLOCK = 4096
_UNIT = 64 << 10
_VOCABULARY = (
    "backup restore snapshot disk block chunk change vmware vsphere datastore cluster "
    "host guest volume sector extent journal inode cache index archive policy retention "
    "the a of and to in is that for on with as by at from it be this which or are an "
    "system file data server network storage virtual machine kernel process memory "
    "report invoice customer order quarter revenue growth project meeting schedule team"
)
_WORDS = _VOCABULARY.split()


def derive(seed: int, *labels: object) -> int:
    """A 64-bit integer derived from ``seed`` and ``labels`` (stable, collision-free)."""
    text = ":".join([str(seed), *map(str, labels)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def derive_bytes(seed: int, n: int, *labels: object) -> bytes:
    text = ":".join([str(seed), *map(str, labels)])
    return hashlib.shake_256(text.encode()).digest(n)


@dataclass(frozen=True)
class Patch:
    """``length`` random bytes (from ``seed``) written over the content at ``offset``."""

    offset: int
    length: int
    seed: int


@dataclass(frozen=True)
class Content:
    kind: ContentKind
    size: int
    seed: int
    patches: tuple[Patch, ...] = ()

    def chunks(self) -> Iterator[bytes]:
        """The content in pieces of at most 1 MiB, in order."""
        pos = 0
        for chunk in _base_chunks(self):
            end = pos + len(chunk)
            hits = [p for p in self.patches if p.offset < end and p.offset + p.length > pos]
            if hits:
                buf = bytearray(chunk)
                for p in hits:
                    data = _patch_bytes(p)
                    lo, hi = max(pos, p.offset), min(end, p.offset + p.length)
                    buf[lo - pos : hi - pos] = data[lo - p.offset : hi - p.offset]
                chunk = bytes(buf)
            yield chunk
            pos = end

    def sha256(self) -> str:
        h = hashlib.sha256()
        for chunk in self.chunks():
            h.update(chunk)
        return h.hexdigest()

    def read(self) -> bytes:
        """The whole content (for small contents and tests)."""
        return b"".join(self.chunks())


def _patch_bytes(p: Patch) -> bytes:
    return random.Random(p.seed).randbytes(p.length)


def _base_chunks(c: Content) -> Iterator[bytes]:
    rng = random.Random(c.seed)
    left = c.size
    if c.kind == "random":
        while left > 0:
            n = min(CHUNK, left)
            yield rng.randbytes(n)
            left -= n
    elif c.kind == "zeros":
        zeros = bytes(CHUNK)
        while left > 0:
            n = min(CHUNK, left)
            yield zeros[:n]
            left -= n
    elif c.kind == "repeat":
        unit = rng.randbytes(_UNIT)
        pos = 0
        while left > 0:
            n = min(CHUNK, left)
            start = pos % _UNIT
            yield (unit[start:] + unit * (n // _UNIT + 1))[:n]
            pos += n
            left -= n
    elif c.kind == "text":
        yield from _text_chunks(rng, c.size)
    elif c.kind == "sparse":
        yield from _sparse_chunks(rng, c.size)
    else:  # pragma: no cover - Literal exhausts the kinds
        raise ValueError(f"unknown content kind {c.kind!r}")


def _text_pool(rng: random.Random) -> bytes:
    words: list[str] = []
    size = 0
    while size < _UNIT:
        w = rng.choice(_WORDS)
        if rng.random() < 0.08:
            w = w.capitalize() + "."
        words.append(w)
        size += len(w) + 1
    return " ".join(words).encode()[:_UNIT]


def _text_chunks(rng: random.Random, size: int) -> Iterator[bytes]:
    pool = _text_pool(rng)
    left = size
    while left > 0:
        n = min(CHUNK, left)
        out = bytearray()
        while len(out) < n:
            o = rng.randrange(len(pool) - _BLOCK)
            block = bytearray(pool[o : o + _BLOCK])
            # A few digits per block keep every block unique (no accidental dedup) while
            # the text stays highly compressible.
            p = rng.randrange(_BLOCK - 12)
            block[p : p + 12] = b"%012d" % rng.randrange(10**12)
            out += block
        yield bytes(out[:n])
        left -= n


def _sparse_chunks(rng: random.Random, size: int) -> Iterator[bytes]:
    islands = sorted({0, (size // 2) // _BLOCK * _BLOCK, max(0, size - _UNIT) // _BLOCK * _BLOCK})
    text = b"".join(_text_chunks(rng, _UNIT))
    buf = bytearray(size)
    for at in islands:
        n = min(_UNIT, size - at)
        buf[at : at + n] = text[:n]
    for i in range(0, size, CHUNK):
        yield bytes(buf[i : i + CHUNK])
