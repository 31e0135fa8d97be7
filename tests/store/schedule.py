"""A seeded scheduler for randomized interleaving tests (test_gc_races*.py).

Registered threads run one at a time; at every yield point (each store call of a
scheduling backend) the scheduler picks, from the seed, which thread goes next. Only
one thread ever runs, so a schedule is a function of its seed and a failing seed
replays exactly (as far as the peers behind the store are deterministic).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable


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
