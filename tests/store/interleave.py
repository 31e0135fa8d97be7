"""Slow, failed and ambiguous store calls, and a way to run one actor in the middle of another.

:class:`FaultyBackend` wraps a real backend (in these tests a :class:`MemoryBackend`
on a :class:`ManualClock`) and lets a test attach a :class:`Fault` to the next call
that matches an operation and a name prefix. A fault can

- run a callable *before* the call reaches the store (the request is in flight: a slow
  PUT; whatever the callable does, e.g. advance the clock and run a GC, happens before
  the store applies it, and the store stamps the object at landing time),
- run a callable *after* the store answered, before the caller sees the answer,
- end the call with ``"lost"`` (not applied, the client gets an error),
  ``"ambiguous"`` (applied, the client still gets an error) or ``"held"`` (the client
  gets an error now, the store applies the request later, when the test calls
  :meth:`FaultyBackend.land_held`: a write answered after the client gave up).

It is not a fake of any store: every call that is applied is applied by the wrapped
backend. The network faults it models are what S3 clients meet on real networks; the
lab's fault proxy reproduces them against MinIO.

:class:`Actors` runs store users (GCs, backups) in threads and lets the test move them
forward one checkpoint at a time, so two GCs can be interleaved at exactly the store
calls a test names. Synchronisation is by condition variables, never by sleeping.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from vmguard.errors import BackendUnavailableError
from vmguard.store.backend import Backend, Capabilities, ObjectInfo, Retention
from vmguard.store.clock import ManualClock

Op = Literal["put", "put_if_absent", "get", "stat", "list", "delete", "copy"]
Outcome = Literal["ok", "lost", "ambiguous", "held"]


@dataclass
class Fault:
    op: Op
    prefix: str
    before: Callable[[], None] | None = None
    after: Callable[[], None] | None = None
    outcome: Outcome = "ok"
    times: int = 1
    """How many matching calls this fault applies to."""
    hits: int = 0


@dataclass
class _Held:
    name: str
    data: bytes
    retention: Retention | None


@dataclass
class FaultyBackend:
    """A backend wrapper that injects the faults a test attached. See the module docstring."""

    inner: Backend
    faults: list[Fault] = field(default_factory=list)
    held: list[_Held] = field(default_factory=list)
    atomic_create: bool | None = None
    """Override ``capabilities.atomic_create`` (a store without create-if-absent)."""

    def on(
        self,
        op: Op,
        prefix: str,
        *,
        before: Callable[[], None] | None = None,
        after: Callable[[], None] | None = None,
        outcome: Outcome = "ok",
        times: int = 1,
    ) -> Fault:
        fault = Fault(op, prefix, before, after, outcome, times)
        self.faults.append(fault)
        return fault

    def _match(self, op: Op, name: str) -> Fault | None:
        for fault in self.faults:
            if fault.op == op and name.startswith(fault.prefix) and fault.hits < fault.times:
                fault.hits += 1
                return fault
        return None

    def land_held(self) -> int:
        """Apply every held write now (the server got round to them); return how many."""
        held, self.held = self.held, []
        for write in held:
            self.inner.put(write.name, write.data, retention=write.retention)
        return len(held)

    # -- Backend -----------------------------------------------------------------------

    @property
    def location(self) -> str:
        return f"faulty+{self.inner.location}"

    @property
    def capabilities(self) -> Capabilities:
        caps = self.inner.capabilities
        if self.atomic_create is None:
            return caps
        return Capabilities(atomic_create=self.atomic_create, object_lock=caps.object_lock)

    def _write(self, op: Op, name: str, apply: Callable[[], object], held: _Held | None) -> object:
        fault = self._match(op, name)
        if fault is None:
            return apply()
        if fault.before is not None:
            fault.before()
        if fault.outcome == "lost":
            raise BackendUnavailableError(f"{name}: connection reset (injected, not applied)")
        if fault.outcome == "held":
            assert held is not None, "only plain puts can be held"
            self.held.append(held)
            raise BackendUnavailableError(f"{name}: timed out (injected, applied later)")
        result = apply()
        if fault.after is not None:
            fault.after()
        if fault.outcome == "ambiguous":
            raise BackendUnavailableError(f"{name}: timed out (injected, applied)")
        return result

    def put(self, name: str, data: bytes, *, retention: Retention | None = None) -> None:
        self._write(
            "put",
            name,
            lambda: self.inner.put(name, data, retention=retention),
            _Held(name, bytes(data), retention),
        )

    def put_if_absent(self, name: str, data: bytes, *, retention: Retention | None = None) -> bool:
        created = self._write(
            "put_if_absent",
            name,
            lambda: self.inner.put_if_absent(name, data, retention=retention),
            None,
        )
        return bool(created)

    def delete(self, name: str) -> None:
        self._write("delete", name, lambda: self.inner.delete(name), None)

    def copy(self, source: str, target: str) -> None:
        self._write("copy", target, lambda: self.inner.copy(source, target), None)

    def _read(self, op: Op, name: str, call: Callable[[], object]) -> object:
        fault = self._match(op, name)
        if fault is not None and fault.before is not None:
            fault.before()
        try:
            return call()
        finally:
            if fault is not None and fault.after is not None:
                fault.after()

    def get(self, name: str) -> bytes:
        return bytes(self._read("get", name, lambda: self.inner.get(name)))  # type: ignore[arg-type]

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        return self.inner.get_range(name, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        info = self._read("stat", name, lambda: self.inner.stat(name))
        assert isinstance(info, ObjectInfo)
        return info

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        found = self._read("list", prefix, lambda: list(self.inner.list(prefix)))
        assert isinstance(found, list)
        yield from found

    def list_page(self, prefix: str, start_after: str, limit: int) -> Sequence[ObjectInfo]:
        found = self._read("list", prefix, lambda: self.inner.list_page(prefix, start_after, limit))
        assert isinstance(found, Sequence)
        return found

    def set_retention(self, name: str, retention: Retention) -> None:
        self.inner.set_retention(name, retention)

    def close(self) -> None:
        self.inner.close()


class PausedClock:
    """Shares a ManualClock's wall time but has its own monotonic clock, which can stop.

    Models a process whose monotonic clock did not advance while the world's did (a VM
    or host that was suspended: Linux's CLOCK_MONOTONIC stops during suspend), the case
    that a holder's own deadline cannot catch and only fencing can.
    """

    def __init__(self, world: ManualClock) -> None:
        self._world = world
        self._frozen: float | None = None

    def now(self) -> datetime:
        return self._world.now()

    def monotonic(self) -> float:
        return self._world.monotonic() if self._frozen is None else self._frozen

    def pause(self) -> None:
        self._frozen = self._world.monotonic()


class Actors:
    """Threads that a test moves forward one named checkpoint at a time.

    An actor calls :meth:`checkpoint` (usually from a fault's ``before``) and stops there
    until the test calls :meth:`step`. The test calls :meth:`start` to run an actor up
    to its first checkpoint (or its end) and :meth:`step` to run it to the next one.
    What an actor raised is kept in :attr:`errors` under its name.
    """

    TIMEOUT = 30.0
    """How long a step may take before the test fails (a deadlock, not a timing claim)."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._at: dict[str, str | None] = {}
        self._go: dict[str, bool] = {}
        self._done: set[str] = set()
        self.errors: dict[str, BaseException] = {}
        self.results: dict[str, object] = {}

    def checkpoint(self, label: str) -> None:
        name = threading.current_thread().name
        with self._cv:
            if name not in self._go:
                return  # not an actor: the test's own thread runs through
            self._at[name] = label
            self._go[name] = False
            self._cv.notify_all()
            self._cv.wait_for(lambda: self._go[name])

    def start(self, name: str, body: Callable[[], object]) -> str | None:
        def run() -> None:
            try:
                self.results[name] = body()
            except BaseException as exc:  # reported to the test
                self.errors[name] = exc
            finally:
                with self._cv:
                    self._done.add(name)
                    self._cv.notify_all()

        with self._cv:
            self._go[name] = True
            self._at[name] = None
        threading.Thread(target=run, name=name, daemon=True).start()
        return self._wait(name)

    def step(self, name: str) -> str | None:
        """Let ``name`` run to its next checkpoint; return its label (None: it finished)."""
        with self._cv:
            self._at[name] = None
            self._go[name] = True
            self._cv.notify_all()
        return self._wait(name)

    def _wait(self, name: str) -> str | None:
        with self._cv:
            arrived = self._cv.wait_for(
                lambda: name in self._done or self._at[name] is not None, self.TIMEOUT
            )
            assert arrived, f"actor {name} neither reached a checkpoint nor finished"
            return None if name in self._done else self._at[name]

    def finish(self, name: str) -> None:
        """Run ``name`` to its end, through every checkpoint."""
        while self.step(name) is not None:
            pass
