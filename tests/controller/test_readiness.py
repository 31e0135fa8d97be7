"""kopf's wait for its indexes (``controller/kube/readiness.py``), on kopf's own classes.

Unit tests with kopf's ``ToggleSet`` as the operator uses it: one toggle per object of an
indexed kind, dropped once the object is indexed, and every object's worker waiting
until all are gone. Waking every waiter at each toggle made 5,000 backups cost ≈ 25
million wake-ups at an operator start (docs/scale.md); counted here as evaluations of
the set's state, not timed.
"""

from __future__ import annotations

import asyncio

import pytest
from kopf._cogs.aiokits import aiotoggles

from vmguard.controller.kube import readiness

pytestmark = pytest.mark.unit

OBJECTS, WORKERS = 300, 300


def _scenario() -> tuple[int, list[int]]:
    """(state evaluations, workers done after each drop) for OBJECTS toggles dropped
    one by one while WORKERS wait for all of them to go."""

    async def run() -> tuple[int, list[int]]:
        evaluations = 0

        def all_indexed(states: object) -> bool:
            nonlocal evaluations
            evaluations += 1
            return all(states)  # type: ignore[call-overload]

        toggles = aiotoggles.ToggleSet(all_indexed)
        made = [await toggles.make_toggle(name=f"object-{i}") for i in range(OBJECTS)]
        workers = [asyncio.create_task(toggles.wait_for(True)) for _ in range(WORKERS)]
        await asyncio.sleep(0)  # one turn of the loop: each worker is waiting now
        done = []
        for toggle in made:
            await toggles.drop_toggle(toggle)
            await asyncio.sleep(0)
            done.append(sum(1 for w in workers if w.done()))
        await asyncio.gather(*workers)
        return evaluations, done

    return asyncio.run(run())


def test_waiting_workers_wake_when_every_object_is_indexed_not_at_each_one() -> None:
    assert readiness.install()
    evaluations, done = _scenario()
    # Released exactly when the last object is indexed, all of them.
    assert done[:-1] == [0] * (OBJECTS - 1) and done[-1] == WORKERS
    # Linear: each toggle made and dropped looks at the state twice, each worker a few
    # times; waking every worker at each toggle would be OBJECTS x WORKERS (90,000).
    assert evaluations <= 4 * OBJECTS + 3 * WORKERS


def test_a_toggle_turned_on_still_wakes_the_waiters() -> None:
    """kopf's per-kind toggles are turned on (not dropped) once a kind's list is in."""
    assert readiness.install()

    async def run() -> bool:
        toggles = aiotoggles.ToggleSet(all)
        kind = await toggles.make_toggle(name="kind")
        waiter = asyncio.create_task(toggles.wait_for(True))
        await asyncio.sleep(0)
        assert not waiter.done()
        await kind.turn_to(True)
        await asyncio.wait_for(waiter, timeout=5)
        return toggles.is_on()

    assert asyncio.run(run())


def test_an_unknown_kopf_release_is_left_alone() -> None:
    assert not readiness.install("2.0.0")
