"""Small drivers of the store API for tests: back up and restore byte strings as disks.

They do what the data mover will do, in the simplest way: split a disk into
chunk-size pieces, store each through a BackupWriter, write the index, commit; and read
it back through the index. Tests use them to check round trips end to end.
:class:`SkewedClock` is a client whose wall clock is off by a fixed offset.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from vmguard.store import (
    HOLE,
    ArchiveManifest,
    FixedIndex,
    Repository,
    TransferStats,
    VmIdentity,
)
from vmguard.store.writer import BackupWriter

FAST_KDF_N = 2**10


def write_disk(
    writer: BackupWriter,
    key: str,
    data: bytes,
    *,
    changed: set[int] | None = None,
    label: str = "",
    between_chunks: Callable[[], None] | None = None,
) -> None:
    """Store ``data`` as disk ``key``.

    With ``changed`` (chunk numbers, as CBT would report them) and a parent, every
    other chunk is taken from the parent's index without reading ``data``, as an
    incremental backup does; chunks the repository marked corrupt are read anyway.
    ``between_chunks`` runs before each chunk (a test's stand-in for the lease thread).
    """
    size = writer.repo.chunk_size
    index = FixedIndex(size, len(data))
    parent = writer.parent_index(key)
    carry = parent is not None and changed is not None and parent.length == len(data)
    new = reused = holes = stored = 0
    for number in range(len(index)):
        offset, length = index.extent(number)
        if carry and parent is not None and changed is not None and number not in changed:
            candidate = parent[number]
            if not writer.needs_upload(candidate):
                index[number] = candidate
                reused += 1
                continue
        if between_chunks is not None:
            between_chunks()
        result = writer.put_chunk(data[offset : offset + length])
        index[number] = result.chunk_id
        if result.chunk_id == HOLE:
            holes += 1
        elif result.was_new:
            new += 1
            stored += result.stored_bytes
        else:
            reused += 1
    stats = TransferStats(
        logical_bytes=len(data),
        bytes_read=len(data),
        bytes_stored=stored,
        chunks_new=new,
        chunks_reused=reused,
        chunks_hole=holes,
    )
    writer.add_disk(key, label or key, index, stats=stats)


def backup(
    repo: Repository,
    vm: VmIdentity | str,
    disks: dict[str, bytes],
    *,
    parent: str | None = None,
    changed: dict[str, set[int]] | None = None,
) -> ArchiveManifest:
    identity = vm if isinstance(vm, VmIdentity) else VmIdentity(id=vm, name=vm)
    with repo.begin_backup(identity, parent=parent, auto_refresh=False) as writer:
        for key, data in disks.items():
            write_disk(writer, key, data, changed=(changed or {}).get(key))
        return writer.commit(mode="incremental" if parent else "full")


def restore(repo: Repository, manifest: ArchiveManifest, key: str) -> bytes:
    index = repo.load_index(manifest, key)
    out = bytearray(index.length)
    for number, chunk_id in enumerate(index):
        if chunk_id == HOLE:
            continue
        offset, length = index.extent(number)
        data = repo.read_chunk(chunk_id)
        assert len(data) == length
        out[offset : offset + length] = data
    return bytes(out)


def disk_image(seed: int, chunks: int, chunk_size: int, *, tail: int = 0) -> bytes:
    """A disk mixing random, compressible and zero chunks, optionally with a short tail."""
    rng = random.Random(seed)
    parts = []
    for _ in range(chunks):
        kind = rng.choice(("random", "text", "zero"))
        if kind == "random":
            parts.append(rng.randbytes(chunk_size))
        elif kind == "text":
            line = f"line {rng.random()} of a fairly compressible log file\n".encode()
            parts.append((line * (chunk_size // len(line) + 1))[:chunk_size])
        else:
            parts.append(bytes(chunk_size))
    parts.append(rng.randbytes(tail))
    return b"".join(parts)


class SkewedClock:
    """The system's wall clock moved by a fixed offset: a client whose clock is wrong.

    Injected as a Repository's clock, it moves every time the client stamps (lease
    bodies, archive ids, Object Lock dates) while the store's own timestamps stay real.
    The monotonic clock is left alone: skew is about wall time.
    """

    def __init__(self, offset_seconds: float) -> None:
        self.offset = timedelta(seconds=offset_seconds)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def monotonic(self) -> float:
        return time.monotonic()
