"""GC racing backups, prunes and readers on the lab's MinIO through a real fault proxy.

The memory-backend suite (test_gc_races.py) reaches every interleaving of single store
calls, with a manual clock; this one runs the same kind of seeded schedule against a
real MinIO reached through toxiproxy, whose faults are a real network's: latency,
connection resets (nothing reaches MinIO) and ambiguous writes (MinIO applies the
request, the client's response is cut off or stalled past its 2 s timeout). A network
thread of the schedule switches a toxic on for the next one to three store calls, so
which requests a fault hits is decided by the seed (the replay is exact up to MinIO's own
answers, e.g. listing order of same-second objects).

Threads: two backup threads (chains of incrementals with CBT-like changed sets sharing
content, refreshing their leases between chunks), a prune thread (prune and retire of a
random archive), two GC threads with a chunk grace of 0 (the GC lock lets one run at a
time; the other meets GcBusyError), a reader, and the network thread.

Time is MinIO's real clock: a schedule lasts seconds, far below the lease ttl and the
grace (≥ 300 s), so leases do not lapse here and fossils are not deleted — expiry races
are the memory suite's and test_commit_races_s3.py's. What this suite adds is that the
store's rules hold when the faults are a real server's and network's.

After each schedule, with the toxics gone: every archive in the repository (those
whose manifest PUT looked failed but landed included) restores bit-exact through the
direct (proxy-free) backend, and deep verify is clean.

``pytest`` runs :data:`QUICK` schedules; ``pytest --soak`` (``make soak``) runs :data:`SOAK`.
"""

from __future__ import annotations

import contextlib
import random
import time
import types
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from tests.store.conftest import CHUNK
from tests.store.faults import FaultyS3
from tests.store.helpers import restore, write_disk
from tests.store.schedule import Scheduler
from vmguard.errors import (
    BackendUnavailableError,
    ChunkMissingError,
    CorruptObjectError,
    GcBusyError,
    LeaseLostError,
    ObjectNotFoundError,
    RepositoryError,
)
from vmguard.store import Repository, VmIdentity, names
from vmguard.store.backend import Backend, ObjectInfo, Retention
from vmguard.store.gc import collect_garbage
from vmguard.store.prune import RetentionPolicy, prune, retire_archive
from vmguard.store.verify import verify

pytestmark = pytest.mark.lab
QUICK = 3
"""Schedules in every test run (fixed seeds 0..QUICK-1)."""
SOAK = 24
"""Schedules with ``--soak``."""
FAULTS = ("latency", "latency", "resets", "resets", "cut", "cut", "stall")
"""Toxics the network thread switches on; "cut" and "stall" are ambiguous writes (a
stalled request costs the client timeout, 2 s per attempt: the rarest)."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seed" in metafunc.fixturenames:
        count = SOAK if metafunc.config.getoption("soak") else QUICK
        metafunc.parametrize("seed", range(count))


class SchedulingBackend:
    """An S3 backend whose every call is a scheduling point. Not a fake: each call goes
    to MinIO through the fault proxy."""

    def __init__(
        self, inner: Backend, scheduler: Scheduler, before_call: Callable[[], None]
    ) -> None:
        self._inner = inner
        self._scheduler = scheduler
        self._before_call = before_call

    def _turn(self) -> None:
        self._scheduler.yield_point()
        self._before_call()

    def __getattr__(self, name: str) -> Any:  # location, capabilities, list_page, ...
        return getattr(self._inner, name)

    def put(self, name: str, data: bytes, *, retention: Retention | None = None) -> None:
        self._turn()
        self._inner.put(name, data, retention=retention)

    def put_if_absent(self, name: str, data: bytes, *, retention: Retention | None = None) -> bool:
        self._turn()
        return self._inner.put_if_absent(name, data, retention=retention)

    def get(self, name: str) -> bytes:
        self._turn()
        return self._inner.get(name)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        self._turn()
        return self._inner.get_range(name, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        self._turn()
        return self._inner.stat(name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._turn()
        yield from self._inner.list(prefix)

    def delete(self, name: str) -> None:
        self._turn()
        self._inner.delete(name)

    def copy(self, source: str, target: str) -> None:
        self._turn()
        self._inner.copy(source, target)


class Scenario:
    def __init__(self, seed: int, faulty: FaultyS3) -> None:
        self.rng = random.Random(seed)
        self.faulty = faulty
        self.scheduler = Scheduler(random.Random(seed))
        self._toxics = ExitStack()
        self._calls_left = 0
        self._pending_close = False
        Repository.init(faulty.direct(), chunk_size=CHUNK)
        # The store's own retry policy (short delays) as in production: a fault the
        # network heals is retried, one that outlasts the retries fails the operation.
        self.backend = SchedulingBackend(faulty.retrying(), self.scheduler, self.before_call)
        self.repo = Repository.open(self.backend)  # type: ignore[arg-type]
        self.pool = [self.rng.randbytes(CHUNK) for _ in range(8)] + [bytes(CHUNK)]
        self.expected: dict[str, bytes] = {}
        """The disk of every archive whose manifest PUT was (or may have been) sent."""
        self.writers_left = 2
        self.stopped: dict[str, int] = {}
        self.injected: dict[str, int] = {}
        self.reads = 0
        self.read_errors: list[str] = []

    def _count(self, what: str) -> None:
        self.stopped[what] = self.stopped.get(what, 0) + 1

    def backups(self, vm: str, seed: float) -> None:
        rng = random.Random(seed)
        previous: list[int] | None = None
        parent: str | None = None
        for _ in range(3):
            if previous is None:
                layout = [rng.randrange(len(self.pool)) for _ in range(4)]
            else:
                layout = [
                    rng.randrange(len(self.pool)) if rng.random() < 0.4 else p for p in previous
                ]
            data = b"".join(self.pool[i] for i in layout)
            changed = None
            if previous is not None:
                changed = {
                    n for n, (a, b) in enumerate(zip(layout, previous, strict=True)) if a != b
                }
            try:
                with self.repo.begin_backup(
                    VmIdentity(id=vm), parent=parent, auto_refresh=False
                ) as writer:

                    def refresh(lease: Any = writer.lease) -> None:
                        if rng.random() < 0.3:
                            with contextlib.suppress(BackendUnavailableError):  # tried later
                                lease.refresh()

                    write_disk(writer, "d", data, changed=changed, between_chunks=refresh)
                    writer.lease.refresh()
                    # Known before the manifest PUT: a reader may list the archive the
                    # moment it lands, and one whose PUT failed may still land.
                    self.expected[writer.archive_id] = data
                    manifest = writer.commit(mode="incremental" if parent else "full")
            except LeaseLostError:
                self._count("backup lease lost")
                continue
            except BackendUnavailableError:
                self._count("backup write failed")
                continue
            previous, parent = layout, manifest.archive_id
        self.writers_left -= 1

    def prunes(self) -> None:
        while self.writers_left:
            try:
                archives = self.repo.list_archives()
                if archives and self.rng.random() < 0.3:
                    retire_archive(self.repo, self.rng.choice(archives).archive_id)
                else:
                    prune(self.repo, RetentionPolicy(keep_last=1))
            except BackendUnavailableError:
                self._count("prune failed")

    def gcs(self) -> None:
        while self.writers_left:
            try:
                # Chunk grace 0: GC as eager as it can be (format §7.5), races likelier.
                collect_garbage(self.repo, auto_refresh=False, chunk_grace_seconds=0)
            except (GcBusyError, LeaseLostError, BackendUnavailableError) as exc:
                self._count(f"gc {type(exc).__name__}")

    def reads_(self) -> None:
        """Restore archives while GC fossilises and resurrects their chunks."""
        while self.writers_left:
            try:
                archives = self.repo.list_archives()
            except BackendUnavailableError:
                continue
            if not archives:
                self.scheduler.yield_point()
                continue
            archive_id = self.rng.choice(archives).archive_id
            try:
                data = restore(self.repo, self.repo.load_archive(archive_id), "d")
            except BackendUnavailableError:
                continue
            except RepositoryError as exc:  # pruned meanwhile, or a real loss
                try:
                    self.faulty.direct().stat(names.manifest_name(archive_id))
                except ObjectNotFoundError:
                    continue  # pruned: its chunks are GC's to take
                if isinstance(exc, ChunkMissingError | CorruptObjectError):
                    self.read_errors.append(f"{archive_id}: {exc}")
                continue
            self.reads += 1
            if data != self.expected[archive_id]:
                self.read_errors.append(f"{archive_id}: restored bytes differ")

    def network(self) -> None:
        """Between store calls, switch a toxic on for the next few store calls."""
        while self.writers_left:
            self.scheduler.yield_point()
            if not (self._calls_left or self._pending_close) and self.rng.random() < 0.1:
                fault = self.rng.choice(FAULTS)
                self.injected[fault] = self.injected.get(fault, 0) + 1
                if fault == "latency":
                    cm: Any = self.faulty.latency(self.rng.choice((50, 300, 1200)), jitter=50)
                elif fault == "resets":
                    cm = self.faulty.resets()
                else:
                    cm = self.faulty.ambiguous_writes(fault)  # type: ignore[arg-type]
                self._toxics.enter_context(cm)
                # A stalled call costs the client timeout per attempt: stall one call.
                self._calls_left = 1 if fault == "stall" else self.rng.randint(1, 3)
        self._toxics.close()

    def before_call(self) -> None:
        """Called by the backend as a store call goes out: the toxic's window shrinks."""
        if self._calls_left:
            self._calls_left -= 1
            if self._calls_left == 0:
                self._pending_close = True
        elif self._pending_close:
            self._toxics.close()
            self._pending_close = False

    def run(self) -> None:
        for i in range(2):
            self.scheduler.spawn(f"backup-{i}", lambda i=i: self.backups(f"vm-{i}", i + 0.5))
        self.scheduler.spawn("prune", self.prunes)
        self.scheduler.spawn("gc-a", self.gcs, weight=4)
        self.scheduler.spawn("gc-b", self.gcs, weight=2)
        self.scheduler.spawn("reader", self.reads_)
        self.scheduler.spawn("network", self.network, weight=2)
        try:
            self.scheduler.run()
        finally:
            self._toxics.close()

    def check_all_archives(self) -> int:
        repo = Repository.open(self.faulty.direct())
        archives = repo.list_archives()
        for ref in archives:
            manifest = repo.load_archive(ref.archive_id)
            assert restore(repo, manifest, "d") == self.expected[ref.archive_id]
        report = verify(repo, deep=True)
        assert report.ok, report
        return len(archives)


def test_gc_never_loses_a_chunk_an_archive_needs_on_minio_through_faults(
    seed: int, faulty_s3: FaultyS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = types.SimpleNamespace(token_bytes=random.Random(-seed - 1).randbytes)
    monkeypatch.setattr(names, "secrets", ids)
    started = time.monotonic()
    scenario = Scenario(seed, faulty_s3)
    scenario.run()
    assert scenario.scheduler.errors == []
    assert scenario.read_errors == []
    archives = scenario.check_all_archives()
    # One line per schedule for the soak log: what was injected and how the threads fared.
    print(
        f"seed {seed}: {time.monotonic() - started:.1f}s archives={archives} "
        f"reads={scenario.reads} injected={scenario.injected} stopped={scenario.stopped}"
    )
