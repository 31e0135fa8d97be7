"""How ``pytest -n N`` (pytest-xdist) shares this suite among N workers, each with a lab of
its own (``tests/conftest.py`` gives worker ``gwK`` the lab ``$VMGUARD_LAB_DIR-gwK``).

Test files are the units of work, as with ``--dist loadfile``: a module's fixtures (an
operator, a namespace, a repository) are set up once, on one worker. The tests that judge
the whole session — marked ``after_captures`` (tests/gitops/test_health.py) or
``after_all`` (tests/vsphere/test_privileges.py) — are held back until every other test of
every worker has finished; then they run on the last worker standing, which sees what all
workers captured and called (the session's shared directory, :func:`shared_dir`). The
workers name those tests to the scheduler in :data:`HELD_IDS` in that directory.

Invariant: a held test never starts while any other test is still queued or running. A
worker runs an item only once it has been sent the next one (or told to shut down), so
the last worker keeps its own last test until the others have left; that test, then the
held ones, run after them. The cost is at most that one test's overlap.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

SESSION_END = "session-end"
"""The scheduler's unit of the tests that read what the whole session left behind."""

HELD_IDS = "session-end.json"


def worker() -> str | None:
    """This process's xdist worker id (``gw0``, ...), or None outside a distributed run."""
    return os.environ.get("PYTEST_XDIST_WORKER")


def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory every worker of this session shares: the controller's base temporary
    directory (each worker's own is a ``popen-gwK`` below it), or the session's own when
    the run is not distributed."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if worker() else base


@contextlib.contextmanager
def one_at_a_time(tmp_path_factory: pytest.TempPathFactory, what: str) -> Iterator[None]:
    """Hold the session's lock ``what`` (a file lock in :func:`shared_dir`): one worker
    at a time runs the block."""
    with (shared_dir(tmp_path_factory) / f"{what}.lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def reads_the_session(item: pytest.Item) -> bool:
    """A test that reads what the session's other tests captured or left behind."""
    return "after_captures" in item.keywords or "after_all" in item.keywords


def order(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The session's order (``pytest_collection_modifyitems``): the tests that read the
    session last (the sort is stable: every other test keeps its place). On a worker, the
    files with lab tests (the long ones) first, so that the short unit files even out the
    workers' ends, and the held tests named to the scheduler (every worker collects the
    same tests, so each writes the same list)."""
    items.sort(key=reads_the_session)
    if not worker():
        return
    lab_files = {i.path for i in items if "lab" in i.keywords}
    items.sort(key=lambda i: (reads_the_session(i), i.path not in lab_files))
    target = Path(config.option.basetemp).parent / HELD_IDS
    part = target.with_name(f"{HELD_IDS}.{worker()}")
    part.write_text(json.dumps([i.nodeid for i in items if reads_the_session(i)]))
    os.replace(part, target)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Every distributed run of this suite is scheduled by :class:`FilesThenSessionEnd`
    (a conftest imports this hook)."""
    return FilesThenSessionEnd(config, log)


class FilesThenSessionEnd(LoadScopeScheduling):
    """Files in collection order as units of work; the :data:`SESSION_END` group last, on
    one worker, once every other worker has finished."""

    def __init__(self, config: pytest.Config, log: Any = None) -> None:
        super().__init__(config, log)
        self.held: dict[str, bool] = {}
        self.held_ids: frozenset[str] = frozenset()
        # Where xdist puts the workers' base temporary directories (it reads this
        # attribute of pytest's too): the directory of name_held.
        self.shared = Path(config._tmp_path_factory.getbasetemp())

    def _split_scope(self, nodeid: str) -> str:
        if nodeid in self.held_ids:
            return SESSION_END
        return nodeid.split("::", 1)[0]

    @property
    def tests_finished(self) -> bool:
        return not self.held and bool(super().tests_finished)

    @property
    def has_pending(self) -> bool:
        return bool(self.held) or bool(super().has_pending)

    def schedule(self) -> None:
        assert self.collection_is_completed
        if self.collection is None:
            if not self._check_nodes_have_same_collection():
                self.log("**Different tests collected, aborting run**")
                return
            self.collection = list(next(iter(self.registered_collections.values())))
            held = self.shared / HELD_IDS
            self.held_ids = frozenset(json.loads(held.read_text()) if held.exists() else ())
            for nodeid in self.collection:
                scope = self._split_scope(nodeid)
                unit = self.held if scope == SESSION_END else self.workqueue.setdefault(scope, {})
                unit[nodeid] = False
        for node in self.nodes:
            self._reschedule(node)

    def _reschedule(self, node: Any) -> None:
        if node.shutting_down:
            return
        pending = self._pending_of(self.assigned_work[node])
        if self.workqueue:
            if pending <= 2:
                self._assign_work_unit(node)
            return
        if not self.held:
            node.shutdown()
            return
        if pending > 1:
            return  # it still has tests it can run
        if len(self.nodes) > 1:
            # Idle but for its last test: leave if another worker can take the held tests,
            # else wait for the others to leave.
            if any(not n.shutting_down for n in self.nodes if n is not node):
                node.shutdown()
            return
        # The last worker standing: every other test has finished.
        indices = [self.registered_collections[node].index(nodeid) for nodeid in self.held]
        self.assigned_work[node][SESSION_END] = self.held
        self.held = {}
        node.send_runtest_some(indices)
        node.shutdown()

    def remove_node(self, node: Any) -> str | None:
        crashed = super().remove_node(node)
        # A crashed worker's held tests go back to being held.
        self.held.update(self.workqueue.pop(SESSION_END, {}))
        for other in self.nodes:
            self._reschedule(other)
        return crashed
