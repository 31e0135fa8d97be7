"""The index-driven task supervisor (controller/kube/supervisor.py), without kopf.

It replaces the VMGuardBackup kind's kopf daemons (a backup in flight, a running
verification): kopf kept the latest body of every backup because the kind had daemons
(docs/scale.md). These tests hold it to the daemons' semantics: a task per member of the
index, started when the object enters it (a start or a resume starts every member),
stopped — ``stopped`` set, then cancelled, given ``cancellation_timeout`` on the clock —
when it leaves, when the gate closes and when the supervisor ends; never two tasks for
one UID; a body that returns on its own is done with its object until it leaves the
index; a body's fault is logged and the body runs again after 30 s on the clock.

The index is a dict (kopf's is a mapping of the same shape), the gate the operator's
own :class:`~vmguard.controller.kube.handlers.Presence`, the clock a
:class:`~vmguard.store.clock.ManualClock` (its sleeps move it and return at once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from vmguard.controller.kube.handlers import Presence
from vmguard.controller.kube.supervisor import (
    EXITING,
    FILTER,
    PAUSED,
    RETRY,
    Member,
    Stopper,
    Supervisor,
    member_of,
)
from vmguard.controller.kube.timing import Timing
from vmguard.store.clock import ManualClock

pytestmark = pytest.mark.unit

Log = list[tuple[str, str, str | None]]


def _member(uid: str) -> Member:
    return Member("ns", f"backup-{uid}", uid)


def _recording(log: Log) -> Callable[[Member, Stopper, Any], Awaitable[None]]:
    """A daemon-like body: runs until stopped, and says when it started and why it ended."""

    async def body(member: Member, stopped: Stopper, logger: Any) -> None:
        log.append(("start", member.uid, None))
        try:
            await stopped.wait()
        finally:
            log.append(("end", member.uid, stopped.reason))

    return body


def test_the_index_entry_is_a_small_member_under_the_uid() -> None:
    body = {"metadata": {"namespace": "ns", "name": "b1", "uid": "u1"}, "status": {"x": 1}}
    assert member_of(body) == {"u1": Member("ns", "b1", "u1")}


def test_a_task_per_member_starts_and_stops_with_the_index_and_never_two_for_one_uid() -> None:
    async def main() -> None:
        index: dict[str, list[Member]] = {"a": [_member("a")]}
        log: Log = []
        sup = Supervisor("test", _recording(log), index, Timing(clock=ManualClock()))

        sup.touch("a")
        await sup.turn()
        assert sup.counts.started == 1 and set(sup.running()) == {"a"}
        # Touched again and again while it runs: still one task.
        for _ in range(3):
            sup.touch("a")
            await sup.turn()
        assert sup.counts.started == 1

        # It leaves the index (its filter no longer holds): stopped, with that reason.
        del index["a"]
        sup.touch("a")
        await sup.turn()
        await sup.ended("a")
        assert log == [("start", "a", None), ("end", "a", FILTER)]
        assert sup.running() == {}

        # Back in the index (a queued backup admitted): a new task.
        index["a"] = [_member("a")]
        sup.touch("a")
        await sup.turn()
        assert sup.counts.started == 2 and set(sup.running()) == {"a"}
        await sup.stop("a")
        assert log[-1] == ("end", "a", "object deleted") and sup.running() == {}

    asyncio.run(main())


def test_a_body_that_returns_on_its_own_is_done_with_its_object_until_it_leaves() -> None:
    async def main() -> None:
        index: dict[str, list[Member]] = {"b": [_member("b")]}
        runs: list[str] = []

        async def finishes(member: Member, stopped: Stopper, logger: Any) -> None:
            runs.append(member.uid)  # e.g. the backup completed

        sup = Supervisor("test", finishes, index, Timing(clock=ManualClock()))
        sup.touch("b")
        await sup.turn()
        await sup.ended("b")
        assert (runs, sup.counts.ended) == (["b"], 1)
        sup.touch("b")  # still in the index (the watch has not seen the change yet)
        await sup.turn()
        assert runs == ["b"] and sup.counts.started == 1
        del index["b"]
        sup.touch("b")
        await sup.turn()
        index["b"] = [_member("b")]
        sup.touch("b")
        await sup.turn()
        await sup.ended("b")
        assert runs == ["b", "b"]

    asyncio.run(main())


def test_a_task_that_outlives_its_cancellation_holds_its_uid_until_it_ends() -> None:
    """Stopped, it ignores ``stopped`` and its cancellation: after 5 s on the clock it is
    left running and logged; its object comes back meanwhile and gets no second task
    until the first has ended — then it gets one."""

    async def main() -> None:
        clock = ManualClock()
        index: dict[str, list[Member]] = {"c": [_member("c")]}
        release = asyncio.Event()
        starts: list[str] = []

        async def stubborn(member: Member, stopped: Stopper, logger: Any) -> None:
            starts.append(member.uid)
            if len(starts) > 1:
                await stopped.wait()
                return
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    continue  # ignores it

        sup = Supervisor("test", stubborn, index, Timing(clock=clock))
        sup.touch("c")
        await sup.turn()
        before = clock.monotonic()
        del index["c"]
        await sup.stop("c", FILTER)
        assert clock.monotonic() - before == 5.0  # its cancellation timeout, on the clock
        assert sup.counts.left_running == 1 and set(sup.running()) == {"c"}

        index["c"] = [_member("c")]
        sup.touch("c")
        await sup.turn()
        assert starts == ["c"] and sup.counts.started == 1

        release.set()
        await sup.ended("c")
        await sup.turn()  # its end touched it: still in the index, so a new task
        assert sup.counts.started == 2 and set(sup.running()) == {"c"}
        await sup.stop_all(EXITING)
        assert starts == ["c", "c"]

    asyncio.run(main())


def test_a_bodys_fault_is_logged_and_it_runs_again_30_s_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        clock = ManualClock()
        index: dict[str, list[Member]] = {"d": [_member("d")]}
        at: list[float] = []
        second = asyncio.Event()

        async def faulty(member: Member, stopped: Stopper, logger: Any) -> None:
            at.append(clock.monotonic())
            if len(at) == 1:
                raise RuntimeError("step broke")
            second.set()
            await stopped.wait()

        logger = logging.getLogger("test-supervisor")
        sup = Supervisor("test", faulty, index, Timing(clock=clock), logger_of=lambda m: logger)
        sup.touch("d")
        await sup.turn()
        await second.wait()
        assert at[1] - at[0] == RETRY == 30.0
        assert sup.counts.faults == 1 and sup.counts.started == 1
        await sup.stop_all(EXITING)

    with caplog.at_level(logging.ERROR, logger="test-supervisor"):
        asyncio.run(main())
    assert [r.getMessage() for r in caplog.records] == ["test failed: step broke; again in 30 s"]


def test_tasks_run_only_while_the_gate_is_open_and_resume_when_it_opens_again() -> None:
    """Under peering the gate is open while kopf lets this replica act. Closed: nothing
    starts. Opened: every member starts, touched or not (kopf's first LIST fills the
    index before any handler: an operator's start resumes every backup in flight).
    Closed again (kopf pauses the replica): every task stops. Opened: all start again."""

    async def main() -> None:
        index = {uid: [_member(uid)] for uid in ("a", "b", "c")}
        log: Log = []
        presence = Presence(always=False)
        sup = Supervisor("test", _recording(log), index, Timing(clock=ManualClock()), presence)
        sup.touch("a")
        await sup.turn()
        assert sup.counts.started == 0

        acting = presence.entered()
        acting.__enter__()
        await sup.turn()
        assert set(sup.running()) == {"a", "b", "c"}

        acting.__exit__(None, None, None)
        await sup.turn()
        for uid in "abc":
            await sup.ended(uid)
        assert sorted(e for e in log if e[0] == "end") == [("end", u, PAUSED) for u in "abc"]
        assert sup.running() == {}

        with presence.entered():
            await sup.turn()
            assert set(sup.running()) == {"a", "b", "c"} and sup.counts.started == 6
            await sup.stop_all(EXITING)

    asyncio.run(main())


def test_the_loop_follows_touches_and_the_gate_and_stops_every_task_when_it_ends() -> None:
    """:meth:`Supervisor.run`, as ``main`` runs it: woken by touches and by the gate's
    opening and closing, and cancelled at the operator's exit, when it stops every task."""

    async def main() -> None:
        index: dict[str, list[Member]] = {"e": [_member("e")]}
        said = asyncio.Queue[tuple[str, str, str | None]]()
        presence = Presence(always=False)

        async def body(member: Member, stopped: Stopper, logger: Any) -> None:
            said.put_nowait(("start", member.uid, None))
            try:
                await stopped.wait()
            finally:
                said.put_nowait(("end", member.uid, stopped.reason))

        async def next_two() -> set[tuple[str, str, str | None]]:
            return {await asyncio.wait_for(said.get(), 10) for _ in range(2)}

        sup = Supervisor("test", body, index, Timing(clock=ManualClock()), presence)
        loop = asyncio.create_task(sup.run(Stopper()))
        acting = presence.entered()
        acting.__enter__()  # the gate's opening wakes the loop: "e" resumes
        assert await asyncio.wait_for(said.get(), 10) == ("start", "e", None)
        index["f"] = [_member("f")]
        sup.touch("f")
        assert await asyncio.wait_for(said.get(), 10) == ("start", "f", None)
        acting.__exit__(None, None, None)  # paused
        assert await next_two() == {("end", "e", PAUSED), ("end", "f", PAUSED)}
        with presence.entered():  # resumed
            assert await next_two() == {("start", "e", None), ("start", "f", None)}
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
        assert await next_two() == {("end", "e", EXITING), ("end", "f", EXITING)}
        assert sup.running() == {} and sup.counts.started == 4

    asyncio.run(main())


def test_a_nudge_wakes_the_running_task_of_its_uid_only() -> None:
    """A backup's task waits on ``stopped.nudged`` while its proxy runs: the proxy's
    report (a status event) wakes that task, and no other (docs/vmbackup-controller.md)."""

    async def main() -> None:
        index: dict[str, list[Member]] = {"a": [_member("a")], "b": [_member("b")]}
        stoppers: dict[str, Stopper] = {}
        woken: list[str] = []

        async def waits(member: Member, stopped: Stopper, logger: Any) -> None:
            stoppers[member.uid] = stopped
            await stopped.nudged.wait()
            woken.append(member.uid)

        sup = Supervisor("test", waits, index, Timing(clock=ManualClock()))
        sup.touch("a")
        sup.touch("b")
        await sup.turn()
        sup.nudge("nobody")  # no task: nothing
        sup.nudge("b")
        await sup.ended("b")
        assert woken == ["b"]
        assert not stoppers["a"].nudged.is_set() and set(sup.running()) == {"a"}
        await sup.stop_all(EXITING)

    asyncio.run(main())
