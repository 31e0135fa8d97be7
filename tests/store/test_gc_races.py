"""GC racing backups, prunes, readers and another GC over a faulty network: randomized schedules.

Each schedule has three backup threads (chains of incrementals with CBT-like changed
sets, sharing content so chunks are reused by existence check and from parents), a
prune thread, two GC threads, a reader restoring archives while GC moves their chunks,
a clock thread, and a network thread, all on one repository. A seeded scheduler lets
exactly one thread run at a time and picks, at every store call, at random which
thread goes next: every seed is a different interleaving at the granularity of single
store operations, and a failing seed replays exactly.

The network (:class:`Network`) makes writes slow (the clock moves while they are in
flight, so lease refreshes land late), lost (not applied, the client gets an error),
ambiguous (applied, the client still gets an error) or held (the client gets an error,
the store applies the write later: a manifest or a refresh answered after the client
gave up). A write is in flight for at most :data:`FLIGHT` seconds of store time, the
bound format §7.1 assumes (below ``margin + grace``); the network lands a held write
before the clock passes its deadline.

Afterwards, and again after a quiescent GC, every archive in the repository (the ones
whose manifest PUT looked failed but landed included) must restore bit-exact and
deep-verify clean, and the quiescent GC must have left exactly the referenced chunks.

``pytest`` runs :data:`QUICK` schedules; ``pytest --soak`` (``make soak``) runs
:data:`SOAK`.
"""

from __future__ import annotations

import contextlib
import random
import types
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from tests.store.conftest import CHUNK
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
from vmguard.store import GcPolicy, Repository, VmIdentity, names
from vmguard.store.backend import MemoryBackend, ObjectInfo, Retention
from vmguard.store.clock import ManualClock
from vmguard.store.config import MIN_GRACE_SECONDS
from vmguard.store.gc import collect_garbage
from vmguard.store.lease import Lease
from vmguard.store.prune import RetentionPolicy, prune, retire_archive
from vmguard.store.verify import verify

pytestmark = pytest.mark.unit
QUICK = 60
"""Schedules in every test run (fixed seeds 0..QUICK-1)."""
SOAK = 400
"""Schedules with ``--soak``."""
TTL, GRACE = 600, MIN_GRACE_SECONDS
FLIGHT = 240.0
"""Longest a write is in flight, in store seconds: below margin (ttl/2) + grace (§7.1)."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seed" in metafunc.fixturenames:
        count = SOAK if metafunc.config.getoption("soak") else QUICK
        metafunc.parametrize("seed", range(count))


@dataclass
class _Held:
    name: str
    data: bytes
    retention: Retention | None
    deadline: datetime


class Network:
    """The fate of each write, drawn from the schedule's seed. Not a fake of a store:
    every write that is applied is applied by the MemoryBackend behind it."""

    def __init__(self, rng: random.Random, clock: ManualClock, fault_rate: float) -> None:
        self._rng = rng
        self._clock = clock
        self.fault_rate = fault_rate
        self.held: list[_Held] = []
        self.counts: dict[str, int] = {}

    def fate(self, kinds: tuple[str, ...]) -> str:
        fate = self._rng.choice(kinds) if self._rng.random() < self.fault_rate else "ok"
        self.counts[fate] = self.counts.get(fate, 0) + 1
        return fate

    def slow_steps(self) -> int:
        return self._rng.randint(1, 6)

    def hold(self, name: str, data: bytes, retention: Retention | None) -> None:
        deadline = self._clock.now() + timedelta(seconds=FLIGHT)
        self.held.append(_Held(name, bytes(data), retention, deadline))

    def take_due(self, until: datetime, *, one_at_random: bool = False) -> list[_Held]:
        """Held writes that must land before the clock reaches ``until`` (or one, at random)."""
        if one_at_random:
            if not self.held:
                return []
            return [self.held.pop(self._rng.randrange(len(self.held)))]
        due = [h for h in self.held if h.deadline <= until]
        self.held = [h for h in self.held if h.deadline > until]
        return due


class SchedulingBackend(MemoryBackend):
    """A MemoryBackend whose every call is a scheduling point, and whose writes go
    through a :class:`Network`. Not a fake of anything."""

    def __init__(self, clock: ManualClock, scheduler: Scheduler, network: Network) -> None:
        super().__init__(clock=clock.now)
        self._manual = clock
        self._scheduler = scheduler
        self.network = network
        self.faults = False

    def _fate(self, name: str, kinds: tuple[str, ...]) -> str:
        if not self.faults or name == names.CONFIG:
            return "ok"
        return self.network.fate(kinds)

    def land(self, writes: list[_Held]) -> None:
        for write in writes:
            super().put(write.name, write.data, retention=write.retention)

    def put(self, name: str, data: bytes, *, retention: Retention | None = None) -> None:
        self._scheduler.yield_point()
        fate = self._fate(name, ("slow", "slow", "lost", "ambiguous", "held"))
        if fate == "lost":
            raise BackendUnavailableError(f"{name}: connection reset (not applied)")
        if fate == "held":
            self.network.hold(name, data, retention)
            raise BackendUnavailableError(f"{name}: timed out (applied later)")
        if fate == "slow":
            sent = self._manual.now()
            for _ in range(self.network.slow_steps()):
                self._scheduler.yield_point()
            if self._manual.now() - sent > timedelta(seconds=FLIGHT):
                raise BackendUnavailableError(f"{name}: timed out (dropped by the server)")
        super().put(name, data, retention=retention)
        if fate == "ambiguous":
            raise BackendUnavailableError(f"{name}: timed out (applied)")

    def put_if_absent(self, name: str, data: bytes, *, retention: Retention | None = None) -> bool:
        self._scheduler.yield_point()
        fate = self._fate(name, ("lost", "ambiguous"))
        if fate == "lost":
            raise BackendUnavailableError(f"{name}: connection reset (not applied)")
        created = super().put_if_absent(name, data, retention=retention)
        if fate == "ambiguous":
            raise BackendUnavailableError(f"{name}: timed out (applied)")
        return created

    def get(self, name: str) -> bytes:
        self._scheduler.yield_point()
        return super().get(name)

    def stat(self, name: str) -> ObjectInfo:
        self._scheduler.yield_point()
        return super().stat(name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._scheduler.yield_point()
        for info in super().list(prefix):
            yield info
            self._scheduler.yield_point()

    def delete(self, name: str) -> None:
        self._scheduler.yield_point()
        fate = self._fate(name, ("lost", "ambiguous"))
        if fate == "lost":
            raise BackendUnavailableError(f"{name}: connection reset (not applied)")
        super().delete(name)
        if fate == "ambiguous":
            raise BackendUnavailableError(f"{name}: timed out (applied)")

    def copy(self, source: str, target: str) -> None:
        self._scheduler.yield_point()
        fate = self._fate(target, ("lost", "ambiguous"))
        if fate == "lost":
            raise BackendUnavailableError(f"{target}: connection reset (not applied)")
        super().copy(source, target)
        if fate == "ambiguous":
            raise BackendUnavailableError(f"{target}: timed out (applied)")


_GC_STOPS = (GcBusyError, LeaseLostError, BackendUnavailableError)


class RefreshWhenDue:
    """What the lease thread does, at the scheduler's pace: a refresh every ttl/5, which
    may be slow, fail, or land late (a lost lease then ends the backup)."""

    def __init__(self, clock: ManualClock, lease: Lease) -> None:
        self._clock = clock
        self._lease = lease
        self._last = clock.monotonic()

    def __call__(self) -> None:
        if self._clock.monotonic() - self._last >= TTL / 5:
            self._last = self._clock.monotonic()
            with contextlib.suppress(BackendUnavailableError):  # logged; tried again later
                self._lease.refresh()


class Scenario:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.clock = ManualClock(datetime(2025, 1, 1, tzinfo=UTC))
        self.scheduler = Scheduler(random.Random(seed))
        # A third of the schedules run on a clean network, the rest with 2-10% faults.
        rate = 0.0 if seed % 3 == 0 else random.Random(seed).uniform(0.02, 0.10)
        self.network = Network(random.Random(seed + 1), self.clock, rate)
        self.backend = SchedulingBackend(self.clock, self.scheduler, self.network)
        self.repo = Repository.init(
            self.backend,
            chunk_size=CHUNK,
            gc=GcPolicy(lease_ttl_seconds=TTL, grace_seconds=GRACE),
            clock=self.clock,
        )
        self.backend.faults = True
        self.pool = [self.rng.randbytes(CHUNK) for _ in range(12)] + [bytes(CHUNK)]
        self.expected: dict[str, bytes] = {}
        """The disk of every archive whose manifest PUT was (or may have been) sent."""
        self.writers_left = 3
        self.stopped: dict[str, int] = {}
        self.reads = 0
        self.read_errors: list[str] = []

    def _count(self, what: str) -> None:
        self.stopped[what] = self.stopped.get(what, 0) + 1

    def _layout(self, rng: random.Random, previous: list[int] | None) -> list[int]:
        if previous is None:
            return [rng.randrange(len(self.pool)) for _ in range(6)]
        return [rng.randrange(len(self.pool)) if rng.random() < 0.4 else p for p in previous]

    def backups(self, vm: str, seed: float) -> None:
        rng = random.Random(seed)
        previous: list[int] | None = None
        parent: str | None = None
        for _ in range(4):
            layout = self._layout(rng, previous)
            data = b"".join(self.pool[i] for i in layout)
            changed = None
            if previous is not None:
                changed = {
                    n
                    for n, pair in enumerate(zip(layout, previous, strict=True))
                    if pair[0] != pair[1]
                }
            try:
                with self.repo.begin_backup(
                    VmIdentity(id=vm), parent=parent, auto_refresh=False
                ) as writer:
                    due = RefreshWhenDue(self.clock, writer.lease)
                    write_disk(writer, "d", data, changed=changed, between_chunks=due)
                    writer.lease.refresh()
                    # Known before the manifest PUT: a reader may list the archive the
                    # moment it lands, and one whose PUT failed may still land.
                    self.expected[writer.archive_id] = data
                    manifest = writer.commit(mode="incremental" if parent else "full")
            except LeaseLostError:
                self._count("backup lease lost")  # the lease lapsed: lost, not broken
                continue
            except BackendUnavailableError:
                self._count("backup write failed")
                continue
            previous, parent = layout, manifest.archive_id
        self.writers_left -= 1

    def prunes(self) -> None:
        while self.writers_left:
            archives = self.repo.list_archives()
            try:
                if archives and self.rng.random() < 0.3:
                    # An operator forgets a specific archive, perhaps the parent of a
                    # running incremental: the case the trash exists for.
                    retire_archive(self.repo, self.rng.choice(archives).archive_id)
                else:
                    prune(self.repo, RetentionPolicy(keep_last=1))
            except BackendUnavailableError:
                self._count("prune write failed")

    def gcs(self) -> None:
        while self.writers_left:
            # The chunk cutoff is no part of the safety argument (format §7.5): a chunk
            # grace of 0 makes GC as eager as it can be, so races are more likely.
            grace = self.rng.choice((0.0, 60.0, None))
            try:
                collect_garbage(self.repo, auto_refresh=False, chunk_grace_seconds=grace)
            except _GC_STOPS as exc:
                self._count(f"gc {type(exc).__name__}")

    def reads_(self) -> None:
        """Restore archives while GC fossilises and resurrects their chunks."""
        while self.writers_left:
            archives = self.repo.list_archives()
            if not archives:
                self.scheduler.yield_point()
                continue
            archive_id = self.rng.choice(archives).archive_id
            try:
                manifest = self.repo.load_archive(archive_id)
                data = restore(self.repo, manifest, "d")
            except RepositoryError as exc:  # pruned meanwhile, or a real loss
                try:
                    self.backend.stat(names.manifest_name(archive_id))
                except ObjectNotFoundError:
                    continue  # pruned: its chunks are GC's to take
                if isinstance(exc, ChunkMissingError | CorruptObjectError):
                    self.read_errors.append(f"{archive_id}: {exc}")
                continue
            self.reads += 1
            if data != self.expected[archive_id]:
                self.read_errors.append(f"{archive_id}: restored bytes differ")

    def network_(self) -> None:
        """The server gets round to a held write, at a random moment."""
        while self.writers_left:
            self.scheduler.yield_point()
            if self.rng.random() < 0.2:
                self.backend.land(self.network.take_due(self.clock.now(), one_at_random=True))

    def ticks(self) -> None:
        while self.writers_left:
            self.scheduler.yield_point()
            step = self.rng.choice((0, 0, 10, 30, 90))
            # No write stays in flight past FLIGHT: land what would be overdue first.
            self.backend.land(self.network.take_due(self.clock.now() + timedelta(seconds=step)))
            self.clock.advance(step)

    def run(self) -> None:
        for i in range(3):
            self.scheduler.spawn(f"backup-{i}", lambda i=i: self.backups(f"vm-{i}", i + 0.5))
        # GC makes many store calls per run: favour it so that runs overlap backups.
        self.scheduler.spawn("prune", self.prunes, weight=2)
        self.scheduler.spawn("gc-a", self.gcs, weight=8)
        self.scheduler.spawn("gc-b", self.gcs, weight=4)
        self.scheduler.spawn("reader", self.reads_, weight=2)
        self.scheduler.spawn("network", self.network_)
        self.scheduler.spawn("clock", self.ticks)
        self.scheduler.run()
        self.backend.faults = False
        self.backend.land(self.network.take_due(datetime.max.replace(tzinfo=UTC)))

    def check_all_archives(self) -> set[bytes]:
        referenced: set[bytes] = set()
        for ref in self.repo.list_archives():
            manifest = self.repo.load_archive(ref.archive_id)
            assert restore(self.repo, manifest, "d") == self.expected[ref.archive_id]
            referenced |= self.repo.load_index(manifest, "d").referenced()
        report = verify(self.repo, deep=True)
        assert report.ok, report
        return referenced


def test_gc_never_loses_a_chunk_an_archive_needs(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Archive and lease ids carry random parts, which decide listing order: draw them from
    # the seed too, so that a failing seed replays exactly.
    ids = types.SimpleNamespace(token_bytes=random.Random(-seed - 1).randbytes)
    monkeypatch.setattr(names, "secrets", ids)
    scenario = Scenario(seed)
    scenario.run()
    assert scenario.scheduler.errors == []
    assert scenario.read_errors == []
    scenario.check_all_archives()
    # Quiescent: every lease gone, then GC until nothing is left to collect. A chunk
    # resurrected for a trash root that the same run then empties is fresh again (the
    # copy stamps it), so the cutoff spares it until a later run: give time between runs.
    for _ in range(3):
        scenario.clock.advance(3600)
        collect_garbage(scenario.repo, auto_refresh=False)
    referenced = scenario.check_all_archives()
    stored = {names.chunk_id_from_name(i.name) for i in scenario.backend.list(names.CHUNKS)}
    assert stored == referenced
    assert list(scenario.backend.list(names.FOSSILS)) == []
    assert list(scenario.backend.list(names.GC_COLLECTIONS)) == []
