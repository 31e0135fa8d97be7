"""One operator-owned asyncio task per object of a kopf index, in place of a kopf daemon.

kopf keeps the latest body of every object of a kind that has any daemon
(``live_fresh_body``: it is set before any filter), whether a daemon runs for it or not:
17-20 KB of Python objects per finished VMGuardBackup, ≈ 90 MB for one night's 5,000
(docs/scale.md). A :class:`Supervisor` does a daemon's work without that: a kopf index
keeps a small :class:`Member` (namespace, name, UID) of each object the daemon's filter
matched, a handler of every event of the kind calls :meth:`Supervisor.touch`, and the
supervisor runs the daemon's loop body for each member. Nothing here imports kopf: the
index is any mapping of UID to the members kept under it (kopf's ``Index`` is one).

Invariants (kopf's daemon semantics, ``cancellation_timeout`` without a back-off):

- **A task per member while the gate is open** (``Gate``: under peering, open while kopf
  lets this replica act), started when the object enters the index — also at the
  operator's start, when kopf's first LIST fills the index: every object in flight is
  resumed.
- **Never two tasks for one UID.** A task is stopped when its object leaves the index
  (its filter no longer holds, it is being deleted, or it is gone), when the gate
  closes, and when the supervisor ends (the operator exits): its ``stopped`` is set, it
  gets a few turns of the event loop to end by itself, then it is cancelled, and it is
  given ``cancellation_timeout`` on the clock to end. One that still runs is left
  running, logged, and holds its UID: no other task starts for it until it has ended.
  An object that left and came back while its task was stopping gets a new task once
  the old one has ended.
- **A body that returns on its own is done with its object** (kopf's "forever
  stopped"): no new task starts for that UID until the object has left the index.
- **A body that raises is logged and run again** after :data:`RETRY` seconds on the
  clock, unless it was stopped meanwhile.

Memory: a touched UID is looked up in the index once, at the next turn; the supervisor
keeps an entry per running task and the UIDs of bodies done with their objects (until
those leave the index). A turn costs the touched UIDs, not the index: at a start with
5,000 objects, 5,000 touches and one look at each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from vmguard.controller.kube.timing import Timing

RETRY = 30.0
"""Seconds before a body that raised runs again."""
CANCELLATION_TIMEOUT = 5.0
"""Seconds a cancelled task is given to end (kopf's ``cancellation_timeout`` of the
daemons this replaces)."""
INSTANT_EXIT_CYCLES = 10
"""Turns of the event loop a stopped task gets to end before it is cancelled (kopf's
``settings.background.instant_exit_zero_time_cycles`` default)."""

FILTER = "left the index"
PAUSED = "not acting"
EXITING = "supervisor ending"
DELETED = "object deleted"

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Member:
    """What the index keeps of an object: enough to read it afresh."""

    namespace: str
    name: str
    uid: str


def member_of(body: Mapping[str, Any]) -> dict[str, Member]:
    """An index entry: the object's :class:`Member` under its UID (pure)."""
    meta = body.get("metadata") or {}
    uid = str(meta.get("uid") or "")
    return {uid: Member(str(meta.get("namespace") or ""), str(meta.get("name") or ""), uid)}


class Stopper:
    """A task's ``stopped`` (kopf's ``DaemonStopped`` as the loop bodies read it): false
    until the task is to end, then true with a reason; awaitable until then."""

    __slots__ = ("_event", "nudged", "reason")

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.reason: str | None = None
        self.nudged = asyncio.Event()
        """Set by :meth:`Supervisor.nudge`: news of the object that a body waiting on it
        (it clears it before it reads the object) acts on now."""

    def set(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> bool:
        return await self._event.wait()


class Stopped(Protocol):
    """What ends :meth:`Supervisor.run`: false, then true; awaitable until then."""

    def __bool__(self) -> bool: ...

    def wait(self) -> Awaitable[object]: ...


class Gate(Protocol):
    """Open while this replica acts (``kube.handlers.Presence``); it sets every event
    handed to :meth:`listen` when it opens or closes."""

    def is_set(self) -> bool: ...

    def listen(self, event: asyncio.Event) -> None: ...


async def _until(waitable: Stopped | asyncio.Event) -> None:
    await waitable.wait()


class AlwaysOpen:
    """A gate that never closes (no peering, or a test)."""

    def is_set(self) -> bool:
        return True

    def listen(self, event: asyncio.Event) -> None:
        pass


Body = Callable[[Member, Stopper, "logging.Logger | logging.LoggerAdapter[Any]"], Awaitable[None]]
"""A daemon's loop body: ``(member, stopped, logger)``; returns when done with the object."""

LoggerOf = Callable[[Member], "logging.Logger | logging.LoggerAdapter[Any]"]


@dataclass(eq=False)
class _Entry:
    member: Member
    stopper: Stopper
    task: asyncio.Task[None] | None = None
    stopping: asyncio.Task[None] | None = None
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the task has ended and the supervisor has accounted for it."""


@dataclass
class Counts:
    """What a supervisor did (for tests and the bench): tasks started, stopped by it,
    ended on their own, and the bodies' faults."""

    started: int = 0
    stopped: int = 0
    ended: int = 0
    faults: int = 0
    left_running: int = 0


@dataclass(eq=False)
class Supervisor:
    """Runs ``body`` once per member of ``members`` (see the module doc)."""

    name: str
    body: Body
    members: Mapping[str, Collection[Member]]
    timing: Timing
    gate: Gate = field(default_factory=AlwaysOpen)
    logger_of: LoggerOf = field(default=lambda member: log)
    cancellation_timeout: float = CANCELLATION_TIMEOUT
    retry: float = RETRY
    counts: Counts = field(default_factory=Counts)
    _tasks: dict[str, _Entry] = field(default_factory=dict, init=False, repr=False)
    _done_with: set[str] = field(default_factory=set, init=False, repr=False)
    _dirty: set[str] = field(default_factory=set, init=False, repr=False)
    _wake: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    _acting: bool = field(default=False, init=False, repr=False)

    def touch(self, uid: str) -> None:
        """An event of the object ``uid`` was seen (the index is current for it): its
        task is started or stopped at the next turn."""
        self._dirty.add(uid)
        self._wake.set()

    def nudge(self, uid: str) -> None:
        """Wake the running task of ``uid`` from a wait on its ``stopped.nudged`` (a
        body that waits on it only where the news matters; nothing for no task)."""
        entry = self._tasks.get(uid)
        if entry is not None:
            entry.stopper.nudged.set()

    def running(self) -> dict[str, Member]:
        """The members whose task has not ended (stopping ones included)."""
        return {uid: e.member for uid, e in self._tasks.items()}

    async def run(self, stopped: Stopped) -> None:
        """Turns until ``stopped`` (kopf-like: false, then true; awaitable) or until
        cancelled; then every task is stopped and waited for."""
        self.gate.listen(self._wake)
        try:
            while not stopped:
                await self.turn()
                waiters = {
                    asyncio.ensure_future(_until(self._wake)),
                    asyncio.ensure_future(_until(stopped)),
                }
                try:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waiters:
                        w.cancel()
        finally:
            await self.stop_all(EXITING)

    async def turn(self) -> None:
        """Start and stop the tasks of the touched UIDs (all of them when the gate has
        just opened: a resume); stop every task when the gate is closed."""
        self._wake.clear()
        if not self.gate.is_set():
            if self._acting:
                self._acting = False
                for entry in list(self._tasks.values()):
                    self._signal(entry, PAUSED)
            return
        if not self._acting:
            self._acting = True
            self._dirty |= set(self.members) | set(self._tasks)
        dirty, self._dirty = self._dirty, set()
        for uid in dirty:
            self._settle(uid)

    async def stop(self, uid: str, reason: str = DELETED) -> None:
        """Stop the task of ``uid`` now, if one runs, and wait until it has ended (or
        was left running after ``cancellation_timeout``). The object's deletion handler
        calls this before it cleans up."""
        entry = self._tasks.get(uid)
        if entry is None:
            return
        self._signal(entry, reason)
        if entry.stopping is not None:
            await asyncio.shield(entry.stopping)
        else:
            await entry.gone.wait()

    async def ended(self, uid: str) -> None:
        """Until the task of ``uid`` (if one runs) has ended and been accounted for."""
        entry = self._tasks.get(uid)
        if entry is not None:
            await entry.gone.wait()

    async def stop_all(self, reason: str) -> None:
        """Stop every task and wait for each (or its being left running)."""
        entries = list(self._tasks.values())
        for entry in entries:
            self._signal(entry, reason)
        waits = [asyncio.shield(e.stopping) if e.stopping else e.gone.wait() for e in entries]
        if waits:
            await asyncio.gather(*waits, return_exceptions=True)

    def _settle(self, uid: str) -> None:
        member = next(iter(self.members.get(uid) or ()), None)
        entry = self._tasks.get(uid)
        if member is None:
            self._done_with.discard(uid)
            if entry is not None:
                self._signal(entry, FILTER)
            return
        if entry is not None or uid in self._done_with:
            return  # running, stopping (its end touches it again), or done with
        self._start(member)

    def _start(self, member: Member) -> None:
        entry = _Entry(member, Stopper())
        entry.task = asyncio.create_task(
            self._guard(entry), name=f"{self.name} {member.namespace}/{member.name}"
        )
        entry.task.add_done_callback(lambda _: self._ended(entry))
        self._tasks[member.uid] = entry
        self.counts.started += 1

    async def _guard(self, entry: _Entry) -> None:
        logger = self.logger_of(entry.member)
        while True:
            try:
                await self.body(entry.member, entry.stopper, logger)
                return
            except Exception as exc:  # the body's own fault: report, wait, run it again
                self.counts.faults += 1
                logger.exception("%s failed: %s; again in %.0f s", self.name, exc, self.retry)
            if entry.stopper:
                return
            await self.timing.wait(self.retry, entry.stopper)
            if entry.stopper:
                return

    def _signal(self, entry: _Entry, reason: str) -> None:
        if entry.stopping is not None or entry.task is None or entry.task.done():
            return  # stopping already, or ended on its own (accounted for at once)
        entry.stopper.set(reason)
        self.counts.stopped += 1
        entry.stopping = asyncio.ensure_future(self._finish(entry))

    async def _finish(self, entry: _Entry) -> None:
        task = entry.task
        assert task is not None
        for _ in range(INSTANT_EXIT_CYCLES):
            if entry.gone.is_set():
                return
            await asyncio.sleep(0)
        if entry.gone.is_set():
            return
        task.cancel()
        await self.timing.wait(self.cancellation_timeout, entry.gone)
        if not entry.gone.is_set():
            self.counts.left_running += 1
            self.logger_of(entry.member).warning(
                "%s did not end %.0f s after it was cancelled (%s); left running, and no "
                "other task starts for it until it ends",
                self.name,
                self.cancellation_timeout,
                entry.stopper.reason,
            )

    def _ended(self, entry: _Entry) -> None:
        task = entry.task
        assert task is not None
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: task ended with %r", self.name, task.exception())
        uid = entry.member.uid
        if self._tasks.get(uid) is entry:
            del self._tasks[uid]
        if not entry.stopper:
            self._done_with.add(uid)  # ended on its own: kopf's "forever stopped"
            self.counts.ended += 1
        self.logger_of(entry.member).debug(
            "%s task ended (%s)", self.name, entry.stopper.reason or "on its own"
        )
        # Whether it is (still, or again) in the index: a new task if so.
        self._dirty.add(uid)
        self._wake.set()
        entry.gone.set()
