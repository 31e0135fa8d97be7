"""The NBD transport: nbdkit serves a disk, libnbd reads and writes it.

In production the proxy starts nbdkit with the VDDK plugin (server, thumbprint, VM and
snapshot morefs, disk file; VDDK from a mounted volume); in the lab with the ``file``
plugin over the path the vSphere simulator reports. Either way we talk to it through
a private Unix socket, and nbdkit exits with its parent (``--exit-with-parent``), so
a killed proxy never leaves a server behind.

Reads keep several requests in flight on one connection (libnbd's asynchronous API),
which is what makes NBD fast on a high-latency link. Allocation comes from NBD block
status (``base:allocation``); a server without it reports the whole disk as data. Only
ranges the server flags zero (STATE_ZERO) are skipped: a hole without that flag is read.
Writes go over several connections at once where the server offers multi-conn
(:class:`NbdSink`), and zeros as WRITE_ZEROES requests, never as data.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import nbd

from vmguard.errors import RetryableError
from vmguard.transport.extents import Bytes, Extent, normalise, split

REQUEST_BYTES = 4 << 20  # nbdkit's and qemu's maximum request is 32 MiB; 4 MiB is plenty
IN_FLIGHT = 8
SOCKET_PATH_MAX = 107
"""Bytes of a Unix socket's path that bind() accepts (sun_path is 108 with its NUL)."""
CONNECTIONS = 4
"""A sink's connections where the server offers multi-conn (nbdcopy's default)."""
_STATUS_SPAN = 1 << 30  # ask for block status a GiB at a time
_ZERO_SPAN = 1 << 30  # NBD lengths are 32-bit; zero a GiB per request


@dataclass(frozen=True)
class VddkTarget:
    """One disk of one VM (or of one of its snapshots) as nbdkit's VDDK plugin opens it."""

    server: str
    """vCenter host name (or ESXi host)."""
    username: str
    password: str = field(repr=False)
    thumbprint: str
    """SHA-1 of vCenter's certificate, colon-separated, as VDDK wants it."""
    vm_moref: str
    file_name: str
    """``[datastore] vm/disk.vmdk`` — for a snapshot, the name in the snapshot's config."""
    snapshot_moref: str = ""
    libdir: str = "/opt/vmware-vix-disklib-distrib"
    transports: str = "nbdssl:nbd"

    def plugin_args(self, password_file: str) -> list[str]:
        args = [
            f"server={self.server}",
            f"user={self.username}",
            f"password=+{password_file}",
            f"thumbprint={self.thumbprint}",
            f"vm=moref={self.vm_moref}",
            f"file={self.file_name}",
            f"libdir={self.libdir}",
            f"transports={self.transports}",
        ]
        if self.snapshot_moref:
            args.append(f"snapshot={self.snapshot_moref}")
        return args


class NbdkitServer:
    """One nbdkit process serving one disk on a private Unix socket."""

    def __init__(
        self,
        plugin: str,
        plugin_args: Sequence[str],
        readonly: bool = True,
        filters: Sequence[str] = (),
        env: dict[str, str] | None = None,
        workdir: tempfile.TemporaryDirectory[str] | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self._dir = workdir or tempfile.TemporaryDirectory(prefix="vmguard-nbd-")
        self.socket = Path(self._dir.name) / "nbd.sock"
        self._socket_dir: tempfile.TemporaryDirectory[str] | None = None
        if len(os.fsencode(self.socket)) > SOCKET_PATH_MAX:
            # A long $TMPDIR would make bind() fail: the socket alone goes to /tmp.
            self._socket_dir = tempfile.TemporaryDirectory(prefix="vmguard-nbd-", dir="/tmp")
            self.socket = Path(self._socket_dir.name) / "nbd.sock"
        # nbdkit writes the pid file only once it accepts connections on the socket; the
        # socket file itself appears at bind(), a moment before listen().
        self._pidfile = Path(self._dir.name) / "nbdkit.pid"
        argv = [
            "nbdkit",
            "--foreground",
            "--exit-with-parent",
            "--unix",
            str(self.socket),
            "--pidfile",
            str(self._pidfile),
        ]
        argv += [f"--filter={f}" for f in filters]
        if readonly:
            argv.append("--readonly")
        argv += [plugin, *plugin_args]
        self._log = Path(self._dir.name) / "nbdkit.log"
        with open(self._log, "wb") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + start_timeout
        while not self._pidfile.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = self._log.read_text(errors="replace")[-500:]
                self.close()
                raise RetryableError(f"nbdkit did not start: {why}")
            time.sleep(0.01)

    @classmethod
    def file(cls, path: Path, readonly: bool = True) -> NbdkitServer:
        """The lab's server: nbdkit's file plugin over a local disk image."""
        return cls("file", [f"file={path}"], readonly=readonly)

    @classmethod
    def vddk(cls, target: VddkTarget, readonly: bool = True) -> NbdkitServer:
        """The production server: nbdkit's VDDK plugin over one disk of one snapshot.

        See docs/transports.md for VDDK itself (licence, where to mount it). The
        password reaches nbdkit as ``password=+FILE`` from a private file, never on a
        command line that ``ps`` would show.
        """
        server = cls.__new__(cls)
        server._dir = tempfile.TemporaryDirectory(prefix="vmguard-vddk-")
        secret = Path(server._dir.name) / "password"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(target.password)
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = f"{target.libdir}/lib64:" + env.get("LD_LIBRARY_PATH", "")
        args = target.plugin_args(password_file=str(secret))
        cls.__init__(server, "vddk", args, readonly=readonly, env=env, workdir=server._dir)
        return server

    @property
    def uri(self) -> str:
        return f"nbd+unix:///?socket={self.socket}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._dir.cleanup()
        if self._socket_dir is not None:
            self._socket_dir.cleanup()

    def __enter__(self) -> NbdkitServer:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _connect(uri: str) -> nbd.NBD:
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(uri)
    return h


def _collect(
    into: list[tuple[int, int]], context: str, offset: int, entries: list[int], err: int
) -> int:
    if context == nbd.CONTEXT_BASE_ALLOCATION:
        into.extend(zip(entries[0::2], entries[1::2], strict=True))
    return 0


class NbdSource:
    """A :class:`~vmguard.transport.extents.BlockSource` over an NBD export."""

    def __init__(self, uri: str, in_flight: int = IN_FLIGHT) -> None:
        self._h = _connect(uri)
        # libnbd zeroes every read buffer first, so a failed read cannot expose old heap
        # memory; ours are fresh bytearrays, zero already, and a failed read raises.
        self._h.set_pread_initialize(False)
        self._size = int(self._h.get_size())
        self.in_flight = in_flight

    @property
    def size(self) -> int:
        return self._size

    def allocated(self) -> list[Extent]:
        """Data ranges per ``base:allocation``: only ranges flagged STATE_ZERO are left out.

        The NBD spec promises zeros for STATE_ZERO alone; a STATE_HOLE without it says
        "not allocated here", which may still read as data (a thin delta's unallocated
        areas read through to its parent; an extent list from another source). Such
        holes are read like data, at the cost of one more read of them.
        """
        if not self._h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION):
            return [Extent(0, self._size)]
        found: list[Extent] = []
        pos = 0
        while pos < self._size:
            seen: list[tuple[int, int]] = []
            self._h.block_status(
                min(_STATUS_SPAN, self._size - pos), pos, functools.partial(_collect, seen)
            )
            if not seen:
                raise RetryableError(f"NBD server returned no block status at offset {pos}")
            for length, flags in seen:
                length = min(length, self._size - pos)
                if not flags & nbd.STATE_ZERO:
                    found.append(Extent(pos, length))
                pos += length
                if pos >= self._size:
                    break
        return normalise(found)

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self._h.pread(length, offset))

    def read_many(self, extents: Iterable[Extent]) -> Iterator[tuple[int, Bytes]]:
        """Reads land in a fresh bytearray that is yielded as it is: no copy, and the page
        faults of filling it are taken by the kernel while libnbd has released the GIL."""
        pending: deque[tuple[int, bytearray, int]] = deque()
        pieces = split(extents, REQUEST_BYTES)
        exhausted = False
        while True:
            while not exhausted and len(pending) < self.in_flight:
                piece = next(pieces, None)
                if piece is None:
                    exhausted = True
                    break
                buf = bytearray(piece.length)
                cookie = self._h.aio_pread(buf, piece.offset)
                pending.append((piece.offset, buf, cookie))
            if not pending:
                return
            offset, buf, cookie = pending[0]
            while not self._h.aio_command_completed(cookie):
                self._h.poll(-1)
            pending.popleft()
            yield offset, buf

    def close(self) -> None:
        _close(self._h)


class NbdSink:
    """A :class:`~vmguard.transport.extents.BlockSink` over a writable NBD export.

    Where the server offers multi-conn (``can_multi_conn``: a flush on one connection
    covers writes completed on every other), the sink opens ``connections`` connections
    and sends each request on the next one, from one thread per connection: the server
    then receives and writes several requests at once (nbdkit receives each connection's
    requests, payloads included, on one thread), and our thread
    that submits returns at once. Without multi-conn, one connection with
    ``in_flight`` asynchronous requests. Requests are at most :data:`REQUEST_BYTES`, or
    the server's maximum block size when it states a smaller one.

    Invariants: every byte handed to :meth:`write` or :meth:`zero` is acknowledged by
    the server before :meth:`flush` returns, and :meth:`flush` then flushes the
    export; a failed request is raised by the next :meth:`write`, :meth:`zero` or
    :meth:`flush`. At most ``in_flight`` requests are queued or in flight in all (with
    multi-conn, plus the one each connection's thread is sending), so the buffers the
    sink holds on to are bounded. Requests to ranges that overlap may land
    in any order before a flush (the restore never sends two to one range).
    """

    def __init__(
        self, uri: str, in_flight: int = IN_FLIGHT, connections: int = CONNECTIONS
    ) -> None:
        self._h = _connect(uri)
        self._size = int(self._h.get_size())
        self.in_flight = in_flight
        self.request_bytes = _request_bytes(self._h)
        # (cookie, buffer): the buffer must outlive its command.
        self._pending: deque[tuple[int, memoryview | None]] = deque()
        self._lanes: list[_Lane] = []
        if connections > 1 and self._h.can_multi_conn():
            handles = [self._h] + [_connect(uri) for _ in range(connections - 1)]
            depth = max(1, in_flight // connections)
            self._lanes = [_Lane(h, depth, n) for n, h in enumerate(handles)]
        self._turn = 0
        self.requests = {"write": 0, "zero": 0}
        """Requests sent, by kind (written zeros, where the server cannot zero, are writes)."""

    @property
    def size(self) -> int:
        return self._size

    @property
    def connections(self) -> int:
        return len(self._lanes) or 1

    def write(self, offset: int, data: Bytes) -> None:
        """Queue a write of ``data`` at ``offset``; ``data`` must not change until flush.

        libnbd sends straight from ``data`` (any buffer: bytes, a memoryview slice), so
        a chunk is never copied on its way to the socket; the reference kept in the
        queue keeps it alive until the server has acknowledged it.
        """
        view = memoryview(data)
        for start in range(0, len(view), self.request_bytes):
            piece = view[start : start + self.request_bytes]
            self._send(_WRITE, offset + start, piece)

    def zero(self, offset: int, length: int) -> None:
        """NBD WRITE_ZEROES without NO_HOLE: the server may punch a hole (nbdkit's file
        plugin does). A server without it gets zeros written."""
        if not self._h.can_zero():
            for piece in split([Extent(offset, length)], self.request_bytes):
                self.write(piece.offset, bytes(piece.length))
            return
        for piece in split([Extent(offset, length)], _ZERO_SPAN):
            self._send(_ZERO, piece.offset, piece.length)

    def _send(self, kind: str, offset: int, what: memoryview | int) -> None:
        self.requests[kind] += 1
        if self._lanes:
            lane = self._lanes[self._turn]
            self._turn = (self._turn + 1) % len(self._lanes)
            lane.put(offset, what)
            return
        while len(self._pending) >= self.in_flight:
            self._wait_oldest()
        if isinstance(what, int):
            self._pending.append((self._h.aio_zero(what, offset), None))
        else:
            self._pending.append((self._h.aio_pwrite(what, offset), what))

    def _wait_oldest(self) -> None:
        cookie, _ = self._pending[0]
        while not self._h.aio_command_completed(cookie):
            self._h.poll(-1)
        self._pending.popleft()

    def flush(self) -> None:
        while self._pending:
            self._wait_oldest()
        for lane in self._lanes:
            lane.drain()
        if self._h.can_flush():
            self._h.flush()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            for lane in self._lanes:
                lane.stop()
            for lane in self._lanes[1:]:
                _close(lane.handle)
            _close(self._h)


_WRITE, _ZERO = "write", "zero"


class _Lane:
    """One connection of a multi-conn sink and the thread that sends its requests.

    The thread runs libnbd's synchronous calls, which release the GIL while the request
    is sent and acknowledged. Its queue holds at most ``depth`` requests; the first
    failure is kept, the requests after it are dropped, and it is raised to the sink's
    caller by :meth:`put` or :meth:`drain`.
    """

    def __init__(self, handle: nbd.NBD, depth: int, number: int) -> None:
        self.handle = handle
        self._queue: queue.Queue[tuple[int, memoryview | int] | None] = queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"nbd-sink_{number}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                offset, what = item
                if self._error is None:
                    if isinstance(what, int):
                        self.handle.zero(what, offset)
                    else:
                        self.handle.pwrite(what, offset)
            except BaseException as exc:  # raised to the caller by put() or drain()
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, offset: int, what: memoryview | int) -> None:
        """Queue a write of ``what`` (a buffer) or a zero request of ``what`` bytes."""
        self._raise()
        self._queue.put((offset, what))

    def drain(self) -> None:
        self._queue.join()
        self._raise()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


def _request_bytes(h: nbd.NBD) -> int:
    """:data:`REQUEST_BYTES`, or less where the server states a smaller maximum."""
    maximum = int(h.get_block_size(nbd.SIZE_MAXIMUM))
    return min(REQUEST_BYTES, maximum) if maximum > 0 else REQUEST_BYTES


def _close(h: nbd.NBD) -> None:
    with contextlib.suppress(nbd.Error):
        h.shutdown()
    # libnbd < 1.16 has no close(): the handle is released when garbage collected.
    if hasattr(h, "close"):
        h.close()


def sparse_file(path: Path, size: int) -> None:
    """Create (or extend) a sparse file of ``size`` bytes, e.g. a restore target in the lab."""
    with open(path, "ab") as f:
        os.ftruncate(f.fileno(), size)
