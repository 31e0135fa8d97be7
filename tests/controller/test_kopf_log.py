"""kopf's per-object log at an operator start (controller/main.py): the success line of
each raw-event handler is dropped — kopf logged one per object and event (5,000 lines at
every start on the estate bench) — and nothing else is (pure, no cluster)."""

from __future__ import annotations

import logging

import kopf
import pytest

import vmguard.controller.main as main

pytestmark = pytest.mark.unit


def test_the_quiet_handlers_are_our_event_handlers() -> None:
    registry = kopf.get_default_registry()
    ids = {
        h.id
        for h in registry._watching.get_all_handlers()
        if h.fn.__module__.startswith("vmguard.")
    }
    assert ids == set(main.EVENT_HANDLERS)


def test_an_event_handlers_success_is_not_logged_and_everything_else_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    objects = logging.getLogger("kopf.objects")
    before = list(objects.filters)
    try:
        main.quiet_event_handlers()
        main.quiet_event_handlers()  # once, whatever the calls
        assert sum(isinstance(f, main.QuietEventHandlers) for f in objects.filters) == 1
        with caplog.at_level(logging.DEBUG, logger="kopf.objects"):
            objects.info("Handler 'vmbackup_phase' succeeded.")
            objects.info("Handler 'policy_seen' succeeded.")
            objects.info("Handler 'policy_changed' succeeded.")
            objects.error("Handler 'vmbackup_phase' failed with an exception. Will ignore.")
            objects.info("Creation is processed: 1 succeeded; 0 failed.")
    finally:
        objects.filters[:] = before
    assert [r.getMessage() for r in caplog.records] == [
        "Handler 'policy_changed' succeeded.",
        "Handler 'vmbackup_phase' failed with an exception. Will ignore.",
        "Creation is processed: 1 succeeded; 0 failed.",
    ]
