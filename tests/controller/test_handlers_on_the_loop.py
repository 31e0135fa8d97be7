"""Every kopf handler of the operator runs on the event loop (pure, no cluster).

kopf runs a handler written as a plain function in its thread pool. Our handlers wake
loops (a vCenter's admission loop, a policy's scheduler, the expiry loop) by setting an
``asyncio.Event``, which is not thread-safe: set from a pool thread, it resolves the
waiter's future without waking the loop, so the wake-up is seen only when something
else wakes the loop (the expiry loop's first version, a plain index function, never
woke and its lab test timed out after 60 s). So each handler is a coroutine function.
"""

from __future__ import annotations

import asyncio

import kopf
import pytest

import vmguard.controller.main  # noqa: F401  (registers every handler)
from vmguard.api.kinds import BACKUP

pytestmark = pytest.mark.unit


def test_every_handler_of_ours_is_a_coroutine_function() -> None:
    registry = kopf.get_default_registry()
    ours = [
        handler.fn
        for part in (registry._activities, registry._indexing, registry._watching,
                     registry._spawning, registry._changing, registry._webhooks)
        for handler in part.get_all_handlers()
        if handler.fn.__module__.startswith("vmguard.")
    ]  # fmt: skip
    assert len(ours) > 20  # the registry was read, not an empty one
    sync = sorted(
        f"{fn.__module__}.{fn.__name__}" for fn in ours if not asyncio.iscoroutinefunction(fn)
    )
    assert sync == [], (
        "run in kopf's thread pool, where an asyncio.Event set does not wake the loop"
    )


def test_the_backups_kind_has_no_kopf_daemon_or_timer() -> None:
    """kopf keeps the latest body of every object of a kind that has any daemon or timer
    (``live_fresh_body``, set before any filter): 17-20 KB per finished run, ≈ 90 MB
    for one night's 5,000 (docs/scale.md). Backups in flight and running verifications
    are the operator's own tasks (controller/kube/supervisor.py) over kopf indexes."""
    registry = kopf.get_default_registry()
    spawning = registry._spawning.get_all_handlers()
    assert spawning, "the registry was read: other kinds have daemons"
    on_backups = sorted(
        handler.id for handler in spawning if handler.selector.any_name == BACKUP.plural
    )
    assert on_backups == []
    indexes = {handler.id for handler in registry._indexing.get_all_handlers()}
    assert {"backups_running", "verifications_running"} <= indexes
