"""GC racing backups and prunes: 200 randomized interleavings, one invariant.

Each run has three backup threads (chains of incrementals with CBT-like changed
sets, sharing content so chunks are reused by existence check and from parents), a
prune thread, a GC thread and a clock thread on one repository. A seeded scheduler
lets exactly one thread run at a time and picks, at every store call, at random which
thread goes next: every seed is a different interleaving at the granularity of
single store operations, and a failing seed replays exactly.

Afterwards, and again after a quiescent GC, every archive in the repository must
restore bit-exact and deep-verify clean, and the quiescent GC must have left exactly
the referenced chunks.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from tests.store.conftest import CHUNK
from tests.store.helpers import restore, write_disk
from vmguard.errors import LeaseLostError
from vmguard.store import GcPolicy, Repository, VmIdentity, names
from vmguard.store.backend import MemoryBackend, ObjectInfo, Retention
from vmguard.store.clock import ManualClock
from vmguard.store.config import MIN_GRACE_SECONDS
from vmguard.store.gc import collect_garbage
from vmguard.store.prune import RetentionPolicy, prune, retire_archive
from vmguard.store.verify import verify

pytestmark = pytest.mark.unit
SEEDS = 200


class Scheduler:
    """Runs registered threads one at a time, switching at random at yield points."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._cv = threading.Condition()
        self._alive: set[str] = set()
        self._waiting: set[str] = set()
        self._granted: str | None = None
        self._threads: list[threading.Thread] = []
        self._weights: dict[str, int] = {}
        self.errors: list[BaseException] = []

    def spawn(self, name: str, body: Callable[[], None], weight: int = 1) -> None:
        """Register a thread; ``weight`` is its relative chance of running next."""
        self._weights[name] = weight

        def run() -> None:
            try:
                self.yield_point()
                body()
            except BaseException as exc:  # surfaced by the test
                self.errors.append(exc)
            finally:
                with self._cv:
                    self._alive.discard(name)
                    self._granted = None
                    self._cv.notify_all()

        self._alive.add(name)
        self._threads.append(threading.Thread(target=run, name=name, daemon=True))

    def yield_point(self) -> None:
        name = threading.current_thread().name
        with self._cv:
            if name not in self._alive:
                return  # not a scheduled thread (setup and checks run freely)
            self._waiting.add(name)
            if self._granted == name:
                self._granted = None
            self._cv.notify_all()
            self._cv.wait_for(lambda: self._granted == name)
            self._waiting.discard(name)

    def run(self) -> None:
        for thread in self._threads:
            thread.start()
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._granted is None and self._waiting >= self._alive)
                if not self._alive:
                    break
                names_ = sorted(self._alive)
                weights = [self._weights[n] for n in names_]
                self._granted = self._rng.choices(names_, weights)[0]
                self._cv.notify_all()
        for thread in self._threads:
            thread.join()


class SchedulingBackend(MemoryBackend):
    """A MemoryBackend whose every call is a scheduling point. Not a fake of anything."""

    def __init__(self, clock: ManualClock, scheduler: Scheduler) -> None:
        super().__init__(clock=clock.now)
        self._scheduler = scheduler

    def put(self, name: str, data: bytes, *, retention: Retention | None = None) -> None:
        self._scheduler.yield_point()
        super().put(name, data, retention=retention)

    def put_if_absent(self, name: str, data: bytes, *, retention: Retention | None = None) -> bool:
        self._scheduler.yield_point()
        return super().put_if_absent(name, data, retention=retention)

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
        super().delete(name)

    def copy(self, source: str, target: str) -> None:
        self._scheduler.yield_point()
        super().copy(source, target)


class Scenario:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.clock = ManualClock(datetime(2025, 1, 1, tzinfo=UTC))
        self.scheduler = Scheduler(random.Random(seed))
        self.backend = SchedulingBackend(self.clock, self.scheduler)
        self.repo = Repository.init(
            self.backend,
            chunk_size=CHUNK,
            gc=GcPolicy(lease_ttl_seconds=600, grace_seconds=MIN_GRACE_SECONDS),
            clock=self.clock,
        )
        self.pool = [self.rng.randbytes(CHUNK) for _ in range(12)] + [bytes(CHUNK)]
        self.expected: dict[str, bytes] = {}
        self.writers_left = 3
        self.gc_lost_lock = 0

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
                    write_disk(writer, "d", data, changed=changed)
                    writer.lease.refresh()
                    manifest = writer.commit(mode="incremental" if parent else "full")
            except LeaseLostError:
                continue  # time jumped past the lease: this backup is lost, not broken
            self.expected[manifest.archive_id] = data
            previous, parent = layout, manifest.archive_id
        self.writers_left -= 1

    def prunes(self) -> None:
        while self.writers_left:
            archives = self.repo.list_archives()
            if archives and self.rng.random() < 0.3:
                # An operator forgets a specific archive, perhaps the parent of a
                # running incremental: the case the trash exists for.
                retire_archive(self.repo, self.rng.choice(archives).archive_id)
            else:
                prune(self.repo, RetentionPolicy(keep_last=1))

    def gcs(self) -> None:
        while self.writers_left:
            try:
                collect_garbage(self.repo, auto_refresh=False)
            except LeaseLostError:
                self.gc_lost_lock += 1  # time jumped past GC's own lock: it stopped safely

    def ticks(self) -> None:
        while self.writers_left:
            self.scheduler.yield_point()
            self.clock.advance(self.rng.choice((0, 0, 10, 30, 90)))

    def run(self) -> None:
        for i in range(3):
            self.scheduler.spawn(f"backup-{i}", lambda i=i: self.backups(f"vm-{i}", i + 0.5))
        # GC makes many store calls per run: favour it so that runs overlap backups.
        self.scheduler.spawn("prune", self.prunes, weight=2)
        self.scheduler.spawn("gc", self.gcs, weight=12)
        self.scheduler.spawn("clock", self.ticks)
        self.scheduler.run()

    def check_all_archives(self) -> set[bytes]:
        referenced: set[bytes] = set()
        for ref in self.repo.list_archives():
            manifest = self.repo.load_archive(ref.archive_id)
            assert restore(self.repo, manifest, "d") == self.expected[ref.archive_id]
            referenced |= self.repo.load_index(manifest, "d").referenced()
        report = verify(self.repo, deep=True)
        assert report.ok, report
        return referenced


@pytest.mark.parametrize("seed", range(SEEDS))
def test_gc_never_loses_a_chunk_an_archive_needs(seed: int) -> None:
    scenario = Scenario(seed)
    scenario.run()
    assert scenario.scheduler.errors == []
    scenario.check_all_archives()
    scenario.clock.advance(3600)
    collect_garbage(scenario.repo, auto_refresh=False)
    collect_garbage(scenario.repo, auto_refresh=False)
    referenced = scenario.check_all_archives()
    stored = {names.chunk_id_from_name(i.name) for i in scenario.backend.list(names.CHUNKS)}
    assert stored == referenced
    assert list(scenario.backend.list(names.FOSSILS)) == []
    assert list(scenario.backend.list(names.GC_COLLECTIONS)) == []
