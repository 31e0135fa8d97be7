"""A restore into a real nbdkit target, counted request by request by nbdkit's log filter.

What reaches the server is what the test counts: zero and unallocated ranges of the
archive go as NBD WRITE_ZEROES requests (the server may punch holes) or, into a target
known to read as zeros, not at all — never as written data; data goes as writes over
several connections where the server offers multi-conn; and the target ends bit-exact.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import pytest

from tests.engine.helpers import sha256_file
from tests.store.helpers import FAST_KDF_N
from vmguard.engine.backup import DiskInput, back_up
from vmguard.engine.restore import SPARSE_BLOCK, restore_disk
from vmguard.store import MasterKey, Repository, ScryptParams, VmIdentity
from vmguard.store.backend.memory import MemoryBackend
from vmguard.transport.file import FileSource
from vmguard.transport.nbd import NbdkitServer, NbdSink

pytestmark = pytest.mark.lab

MiB = 1 << 20
CHUNK = MiB


def _sparse_image(path: Path) -> tuple[int, int]:
    """Chunks of data, whole-chunk holes, written zeros and zero runs inside data chunks;
    (bytes of data at SPARSE_BLOCK granularity, size)."""
    rng = random.Random(16)
    block = SPARSE_BLOCK
    layout: list[bytes | int] = [
        rng.randbytes(CHUNK),  # data
        2 * CHUNK,  # a hole of two chunks
        rng.randbytes(block) + bytes(CHUNK - 2 * block) + rng.randbytes(block),  # zero run
        bytes(CHUNK),  # written zeros: stored as a hole
        rng.randbytes(3 * CHUNK),
        CHUNK,
        rng.randbytes(1000),  # a short tail
    ]
    data = 0
    with open(path, "wb") as f:
        for piece in layout:
            if isinstance(piece, int):
                f.seek(piece, 1)
                continue
            f.write(piece)
            data += sum(
                min(block, len(piece) - at)
                for at in range(0, len(piece), block)
                if any(piece[at : at + block])
            )
        f.truncate()
    return data, path.stat().st_size


def _requests(log: Path) -> tuple[Counter[str], Counter[str], set[str]]:
    """(requests by kind, bytes by kind, connections that wrote) from nbdkit's log filter."""
    kinds: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    writers: set[str] = set()
    pattern = re.compile(r"connection=(\d+) (Write|Zero|Trim) id=\d+ offset=0x\w+ count=0x(\w+)")
    for match in pattern.finditer(log.read_text()):
        kinds[match[2]] += 1
        sizes[match[2]] += int(match[3], 16)
        writers.add(match[1])
    return kinds, sizes, writers


def _restore(tmp_path: Path, target: Path, zero_holes: bool) -> tuple[Path, int, int, object]:
    disk = tmp_path / "disk.img"
    data, size = _sparse_image(disk)
    repo = Repository.init(
        MemoryBackend(),
        master_key=MasterKey(b"k" * 20),
        chunk_size=CHUNK,
        kdf=ScryptParams(n=FAST_KDF_N),
    )
    with FileSource(disk) as source:
        manifest = back_up(repo, VmIdentity(id="vm"), [DiskInput("d", source)])
    log = tmp_path / "nbdkit.log"
    server = NbdkitServer(
        "file", [f"file={target}", f"logfile={log}"], readonly=False, filters=["log"]
    )
    with server:
        sink = NbdSink(server.uri)
        try:
            stats = restore_disk(repo, manifest, "d", sink, zero_holes=zero_holes, workers=3)
        finally:
            sink.close()
    assert sha256_file(target) == sha256_file(disk)
    return log, data, size, stats


def test_a_sparse_restore_sends_zero_requests_never_zeros_as_data(tmp_path: Path) -> None:
    target = tmp_path / "used.img"
    _, size = _sparse_image(tmp_path / "probe.img")
    target.write_bytes(random.Random(17).randbytes(size))  # old data everywhere

    log, data, size, stats = _restore(tmp_path, target, zero_holes=True)

    kinds, sizes, writers = _requests(log)
    assert sizes["Write"] == data == stats.bytes_written  # type: ignore[attr-defined]
    assert sizes["Write"] + sizes["Zero"] + sizes["Trim"] == size, "every byte sent once"
    # One request per zero range: the two-chunk hole, the zero run inside chunk 3, the
    # written-zeros chunk 4 (stored as a hole) and the hole of chunk 8.
    assert kinds["Zero"] + kinds["Trim"] == 4
    assert len(writers) > 1, f"nbdkit offers multi-conn, one connection wrote: {kinds}"


def test_a_restore_into_a_zeroed_target_sends_data_only(tmp_path: Path) -> None:
    target = tmp_path / "fresh.img"
    _, size = _sparse_image(tmp_path / "probe.img")
    with open(target, "wb") as f:
        f.truncate(size)

    log, data, _, _ = _restore(tmp_path, target, zero_holes=False)

    kinds, sizes, _ = _requests(log)
    assert sizes["Write"] == data
    assert kinds["Zero"] == kinds["Trim"] == 0
    assert target.stat().st_blocks * 512 <= data + 4 * 4096, "holes stay holes"
