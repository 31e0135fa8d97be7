"""Disks for data-mover tests: random sparse layouts, change sequences, a counting source.

A layout is a list of regions (hole, written zeros, random, compressible text) laid
out in a sparse file; a change rewrites, zeroes or punches random ranges and returns
the exact extents it touched, as CBT would report them.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

from vmguard.transport.extents import BlockSource, Extent, normalise
from vmguard.transport.file import FileSink

KINDS = ("hole", "zeros", "random", "text")


def content(rng: random.Random, kind: str, length: int) -> bytes:
    if kind == "zeros":
        return bytes(length)
    if kind == "random":
        return rng.randbytes(length)
    line = f"{rng.random():.6f} GET /srv/app/index.html HTTP/1.1 200\n".encode()
    return (line * (length // len(line) + 1))[:length]


def random_disk(path: Path, rng: random.Random, size: int) -> None:
    """A sparse file of ``size`` bytes made of random regions of every kind."""
    with open(path, "wb") as f:
        f.truncate(size)
        pos = 0
        while pos < size:
            length = min(size - pos, rng.choice((1, 7, 4096, 50_000, 65_536, 200_000)))
            kind = rng.choice(KINDS)
            if kind != "hole":
                f.seek(pos)
                f.write(content(rng, kind, length))
            pos += length


def random_change(path: Path, rng: random.Random, *, max_extents: int = 4) -> list[Extent]:
    """Rewrite, zero or punch a few random ranges; return what was touched (normalised)."""
    size = path.stat().st_size
    touched = []
    sink = FileSink(path)
    try:
        for _ in range(rng.randint(0, max_extents)):
            length = rng.choice((1, 100, 4096, 70_000, 300_000))
            offset = rng.randrange(0, max(1, size - 1))
            length = min(length, size - offset)
            kind = rng.choice(("random", "random", "text", "zeros", "hole"))
            if kind == "hole":
                sink.zero(offset, length)
            else:
                sink.write(offset, content(rng, kind, length))
            touched.append(Extent(offset, length))
    finally:
        sink.close()
    return normalise(touched)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def chunks_touching(extents: Iterable[Extent], chunk_size: int) -> set[int]:
    return {
        n
        for e in extents
        if e.length
        for n in range(e.offset // chunk_size, (e.end - 1) // chunk_size + 1)
    }


def data_extents(path: Path) -> list[Extent]:
    """Allocation by SEEK_DATA/SEEK_HOLE, independently of the transport's code."""
    out, fd = [], os.open(path, os.O_RDONLY)
    try:
        size, pos = os.fstat(fd).st_size, 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            out.append(Extent(data, min(hole, size) - data))
            pos = hole
    finally:
        os.close(fd)
    return out


class CountingSource:
    """Wraps a real source and records every byte range read through it."""

    def __init__(self, inner: BlockSource) -> None:
        self.inner = inner
        self.reads: list[Extent] = []

    @property
    def size(self) -> int:
        return self.inner.size

    def allocated(self) -> list[Extent]:
        return self.inner.allocated()

    def read(self, offset: int, length: int) -> bytes:
        self.reads.append(Extent(offset, length))
        return self.inner.read(offset, length)

    def read_many(self, extents: Iterable[Extent]) -> Iterator[tuple[int, bytes]]:
        for offset, data in self.inner.read_many(extents):
            self.reads.append(Extent(offset, len(data)))
            yield offset, data

    def close(self) -> None:
        self.inner.close()

    def chunks_read(self, chunk_size: int) -> set[int]:
        return chunks_touching(self.reads, chunk_size)

    def bytes_read(self) -> int:
        return sum(e.length for e in self.reads)
