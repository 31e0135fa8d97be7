"""DiskView against real repositories (memory and local backends): exact bytes, holes,
bounded cache, read-ahead that only follows evidence, corrupt chunks named precisely."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

from tests.store.helpers import FAST_KDF_N, backup
from vmguard.errors import DiskReadError
from vmguard.files.view import DiskView
from vmguard.store import Repository, ScryptParams
from vmguard.store.backend import Backend, CountingBackend, LocalBackend, MemoryBackend
from vmguard.store.names import chunk_name

pytestmark = pytest.mark.unit

CHUNK = 64 * 1024


def _disk(seed: int, chunks: int, tail: int = 1000) -> bytes:
    rng = random.Random(seed)
    parts = []
    for n in range(chunks):
        parts.append(bytes(CHUNK) if n % 5 == 2 else rng.randbytes(CHUNK))
    return b"".join(parts) + rng.randbytes(tail)


@pytest.fixture(params=["memory", "local"])
def counted(request: pytest.FixtureRequest, tmp_path: Path) -> CountingBackend:
    inner: Backend = MemoryBackend() if request.param == "memory" else LocalBackend(tmp_path)
    return CountingBackend(inner)


def _repo(backend: Backend) -> Repository:
    return Repository.init(backend, chunk_size=CHUNK, kdf=ScryptParams(n=FAST_KDF_N))


def test_reads_equal_the_disk_at_any_offset(counted: CountingBackend) -> None:
    data = _disk(1, 20)
    repo = _repo(counted)
    manifest = backup(repo, "vm-a", {"2000": data})
    view = DiskView(repo, manifest, "2000", cache_bytes=3 * CHUNK, readahead_chunks=0)
    assert view.size == len(data)
    rng = random.Random(2)
    for _ in range(300):
        offset = rng.randrange(0, len(data) + 10)
        length = rng.choice([0, 1, 511, CHUNK - 1, CHUNK, 3 * CHUNK + 7, rng.randrange(9000)])
        assert view.pread(offset, length) == data[offset : offset + length]
    view.seek(-100, io.SEEK_END)
    assert view.read() == data[-100:]
    view.seek(5)
    buffered = io.BufferedReader(view, 4096)
    assert buffered.read(CHUNK * 2) == data[5 : 5 + CHUNK * 2]


def test_holes_cost_nothing_and_read_as_zeros(counted: CountingBackend) -> None:
    data = _disk(3, 10)
    repo = _repo(counted)
    manifest = backup(repo, "vm-a", {"2000": data})
    counted.reset()
    view = DiskView(repo, manifest, "2000", readahead_chunks=0)
    counts = counted.reset()  # the index
    assert view.pread(2 * CHUNK, CHUNK) == bytes(CHUNK)
    assert view.pread(7 * CHUNK + 10, 100) == bytes(100)
    assert counted.counts.gets == 0
    assert view.stats.hole_reads == 2
    assert counts.gets == 1


def test_each_chunk_is_fetched_once_while_cached(counted: CountingBackend) -> None:
    data = _disk(4, 12)
    repo = _repo(counted)
    manifest = backup(repo, "vm-a", {"2000": data})
    view = DiskView(repo, manifest, "2000", cache_bytes=4 * CHUNK, readahead_chunks=0)
    counted.reset()
    for _ in range(5):
        for offset in range(0, CHUNK, 4096):
            view.pread(offset, 4096)
    assert counted.counts.gets == 1
    assert view.stats.chunks_fetched == 1


def test_cache_is_bounded(counted: CountingBackend) -> None:
    data = _disk(5, 16)
    repo = _repo(counted)
    manifest = backup(repo, "vm-a", {"2000": data})
    view = DiskView(repo, manifest, "2000", cache_bytes=3 * CHUNK, readahead_chunks=0)
    for number in (0, 1, 3, 4, 5, 6):
        view.pread(number * CHUNK, 10)
    assert len(view._cache) == 3
    counted.reset()
    view.pread(0, 10)  # evicted: fetched again
    assert counted.counts.gets == 1


def test_random_reads_do_no_read_ahead(counted: CountingBackend) -> None:
    data = _disk(6, 30)
    repo = _repo(counted)
    manifest = backup(repo, "vm-a", {"2000": data})
    view = DiskView(repo, manifest, "2000", readahead_chunks=8)
    for number in (20, 3, 11, 26, 0):  # none is a hole
        view.pread(number * CHUNK + 100, 200)
    assert view.stats.chunks_fetched == 5


def test_sequential_reads_read_ahead_within_the_window(counted: CountingBackend) -> None:
    data = _disk(7, 40)
    repo = _repo(counted)
    manifest = backup(repo, "vm-a", {"2000": data})
    view = DiskView(repo, manifest, "2000", readahead_chunks=4, cache_bytes=32 * CHUNK)
    out = bytearray()
    for offset in range(0, 10 * CHUNK, 16384):
        out += view.pread(offset, 16384)
    assert bytes(out) == data[: 10 * CHUNK]
    view.close()
    # the window never runs more than 4 chunks past the last one read
    assert view.stats.chunks_fetched <= 10 + 4


def test_a_plan_fetches_exactly_its_chunks(counted: CountingBackend) -> None:
    data = _disk(8, 40)
    repo = _repo(counted)
    manifest = backup(repo, "vm-a", {"2000": data})
    view = DiskView(repo, manifest, "2000", readahead_chunks=4)
    extents = [(5 * CHUNK + 10, 2 * CHUNK), (30 * CHUNK, CHUNK + 5)]
    with view.plan(extents):
        got = b"".join(view.pread(o, n) for o, n in extents)
    view.close()
    assert got == b"".join(data[o : o + n] for o, n in extents)
    # chunks 5, 6, 7, 30, 31 — and 7 is a hole (n % 5 == 2): never fetched
    assert view.stats.chunks_fetched == 4


def test_a_corrupt_chunk_is_named_and_remembered(tmp_path: Path) -> None:
    data = _disk(9, 8)
    backend = CountingBackend(LocalBackend(tmp_path))
    repo = _repo(backend)
    manifest = backup(repo, "vm-a", {"2000": data})
    index = repo.load_index(manifest, "2000")
    bad = index[3]
    path = tmp_path / chunk_name(bad)
    raw = bytearray(path.read_bytes())
    raw[40] ^= 0x01
    path.write_bytes(bytes(raw))
    view = DiskView(repo, manifest, "2000", readahead_chunks=0)
    assert view.pread(0, 3 * CHUNK) == data[: 3 * CHUNK]
    with pytest.raises(DiskReadError) as caught:
        view.pread(3 * CHUNK + 7, 10)
    err = caught.value
    assert err.chunk_id_hex == bad.hex()
    assert err.archive_id == manifest.archive_id
    assert err.chunk_number == 3
    assert bad.hex() in str(err) and manifest.archive_id in str(err)
    backend.reset()
    with pytest.raises(DiskReadError):
        view.pread(3 * CHUNK, 1)
    assert backend.counts.gets == 0  # remembered, not fetched again
    assert view.pread(4 * CHUNK, CHUNK) == data[4 * CHUNK : 5 * CHUNK]
