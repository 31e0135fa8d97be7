"""The NBD transport against real nbdkit and libnbd: bytes, holes, and writes that keep holes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import nbd
import pytest

from vmguard.transport.extents import Extent
from vmguard.transport.nbd import NbdkitServer, NbdSink, NbdSource, sparse_file

pytestmark = pytest.mark.lab

MiB = 1 << 20


def _image(path: Path) -> dict[int, bytes]:
    """A 64 MiB sparse file with data at known places."""
    sparse_file(path, 64 * MiB)
    chunks = {0: os.urandom(MiB), 10 * MiB: b"x" * (3 * MiB), 63 * MiB: os.urandom(MiB)}
    with open(path, "r+b") as f:
        for off, data in chunks.items():
            f.seek(off)
            f.write(data)
    return chunks


def test_source_reads_bytes_and_reports_holes(tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    chunks = _image(img)
    with NbdkitServer.file(img) as server:
        src = NbdSource(server.uri, in_flight=4)
        try:
            assert src.size == 64 * MiB
            assert src.allocated() == [
                Extent(0, MiB),
                Extent(10 * MiB, 3 * MiB),
                Extent(63 * MiB, MiB),
            ]
            whole = b"".join(data for _, data in src.read_many([Extent(0, src.size)]))
            assert hashlib.sha256(whole).digest() == hashlib.sha256(img.read_bytes()).digest()
            got = dict(src.read_many(src.allocated()))
            assert got[10 * MiB][: 3 * MiB] == chunks[10 * MiB]
            assert src.read(63 * MiB, MiB) == chunks[63 * MiB]
        finally:
            src.close()


def test_sink_writes_only_what_it_is_given(tmp_path: Path) -> None:
    target = tmp_path / "target.img"
    sparse_file(target, 64 * MiB)
    payload = {MiB: os.urandom(2 * MiB), 40 * MiB: os.urandom(MiB)}
    with NbdkitServer.file(target, readonly=False) as server:
        sink = NbdSink(server.uri, in_flight=4)
        for off, data in payload.items():
            sink.write(off, data)
        sink.close()
    with open(target, "rb") as f:
        for off, data in payload.items():
            f.seek(off)
            assert f.read(len(data)) == data
    # Only the written ranges are allocated: holes stay holes.
    assert os.stat(target).st_blocks * 512 == 3 * MiB


@pytest.mark.parametrize("connections", [1, 4])
def test_sink_sends_views_and_large_buffers_as_they_are(tmp_path: Path, connections: int) -> None:
    """The restore hands the sink memoryview slices of a chunk and whole chunks larger
    than one NBD request; each lands exactly where it was sent, and nothing else does —
    over one connection and over several (nbdkit's file plugin offers multi-conn)."""
    target = tmp_path / "target.img"
    sparse_file(target, 64 * MiB)
    chunk = os.urandom(4 * MiB)
    view = memoryview(chunk)
    big = bytearray(os.urandom(9 * MiB))  # more than REQUEST_BYTES: split by the sink
    with NbdkitServer.file(target, readonly=False) as server:
        sink = NbdSink(server.uri, in_flight=2, connections=connections)
        assert sink.connections == connections
        sink.write(8 * MiB, view[MiB : 2 * MiB])
        sink.write(9 * MiB + 4096, view[3 * MiB :])
        sink.write(20 * MiB, big)
        sink.close()
    with open(target, "rb") as f:
        data = f.read()
    assert data[8 * MiB : 9 * MiB] == chunk[MiB : 2 * MiB]
    assert data[9 * MiB + 4096 : 10 * MiB + 4096] == chunk[3 * MiB :]
    assert data[20 * MiB : 29 * MiB] == big
    assert os.stat(target).st_blocks * 512 == 11 * MiB


def test_holes_not_flagged_zero_are_read(tmp_path: Path) -> None:
    """NBD's ``base:allocation`` promises zeros only for STATE_ZERO: a hole without it (a
    thin delta whose unallocated areas read through to its parent, an extent list taken
    from another source) may hold data. nbdkit's extentlist filter reports exactly that
    over real bytes; a disk rebuilt from ``allocated()`` must equal the image."""
    img = tmp_path / "disk.img"
    sparse_file(img, 8 * MiB)
    data = {0: os.urandom(MiB), 2 * MiB: os.urandom(MiB), 5 * MiB: os.urandom(MiB)}
    with open(img, "r+b") as f:
        for off, chunk in data.items():
            f.seek(off)
            f.write(chunk)
    extents = tmp_path / "extents"
    # 0: data; 1M: a true hole; 2M: "hole" over data; 5M: data; the rest hole,zero.
    extents.write_text("0 1M\n1M 1M hole,zero\n2M 1M hole\n3M 2M hole,zero\n5M 1M\n")
    with NbdkitServer(
        "file", [f"file={img}", f"extentlist={extents}"], filters=["extentlist"]
    ) as server:
        src = NbdSource(server.uri, in_flight=4)
        try:
            allocated = src.allocated()
            rebuilt = bytearray(src.size)
            for off, buf in src.read_many(allocated):
                rebuilt[off : off + len(buf)] = buf
        finally:
            src.close()
    assert Extent(2 * MiB, MiB) in allocated, allocated
    assert hashlib.sha256(rebuilt).digest() == hashlib.sha256(img.read_bytes()).digest()
    assert allocated == [Extent(0, MiB), Extent(2 * MiB, MiB), Extent(5 * MiB, MiB)]


def test_a_write_the_server_refuses_is_raised_by_the_sink(tmp_path: Path) -> None:
    """A request that fails on one of the sink's connections (here: past the export's
    end) is raised to the caller, at the latest by the flush; it is never lost."""
    target = tmp_path / "target.img"
    sparse_file(target, 8 * MiB)
    with NbdkitServer.file(target, readonly=False) as server:
        sink = NbdSink(server.uri, in_flight=4, connections=4)
        assert sink.connections == 4
        with pytest.raises(nbd.Error):
            for n in range(4):
                sink.write(n * MiB, bytes(MiB))
            sink.write(8 * MiB - 4096, bytes(8192))  # crosses the end of the export
            sink.flush()
        with pytest.raises(nbd.Error):
            sink.close()


def test_a_server_starts_under_a_temporary_directory_too_long_for_a_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # bind() takes at most 107 bytes of path; `vmguard verify` under a deep $TMPDIR (a
    # pytest worker's tmp_path) could not start its export
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setenv("TMPDIR", str(deep))
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile caches $TMPDIR
    disk = tmp_path / "disk.img"
    disk.write_bytes(os.urandom(1 << 16))
    with NbdkitServer.file(disk) as server:
        source = NbdSource(server.uri)
        try:
            assert source.size == 1 << 16
            assert bytes(source.read(0, 1 << 16)) == disk.read_bytes()
        finally:
            source.close()
    assert not server.socket.parent.exists()
