"""What every kind's kopf handlers share: which controllers run, wake-ups, events.

The handlers of each kind (``<kind>/handlers.py``) are registered with kopf when
:mod:`vmguard.controller.main` imports them. They never import each other; where one
kind's event concerns another kind's loop, they meet here, in kopf's operator memo
(filled by ``main.configure`` at start-up):

- :func:`vcenter_wakeup` — a policy changed: its vCenter's sweeper re-matches now;
- :func:`policy_wakeup` — a policy changed, or one of its backups completed: its
  scheduler re-reads the schedule and applies retention now;
- :func:`admission_wakeup` — queued work (a backup, a restore), a policy or a VCenter's
  limits changed: that vCenter's admission loop plans now;
- :attr:`OperatorMemo.lanes` — the kinds of proxy work the admission loops start
  (:class:`~.workqueue.Lane`), handed in by ``main``, so the VCenter's loop needs no
  kind's code;
- :data:`AfterSweep` — what the vCenter sweeper calls after each successful sweep
  (the policies' fail-safe, handed in by ``main``), so the sweeper needs no policy code.

:class:`OperatorMemo` says what a handler may read from the memo; a kind that needs more
declares its own narrower view on top of it (``backup.handlers.BackupMemo``), and
``main.Memo``, the one object kopf holds, implements every view (mypy checks it there).
kopf copies the memo shallowly for each object it serves, so all copies share the same
events, sweeps and contexts.

Only the event loop touches the memo's events (no locks).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import kopf

from vmguard.config import ProxySettings
from vmguard.controller.kube.held import ProtectedVMReader
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.sweeps import LatestSweeps, SweepView
from vmguard.controller.kube.timing import Timing
from vmguard.controller.kube.workqueue import Lane
from vmguard.hooks import Hooks
from vmguard.metrics import Metrics

CONTROLLERS = frozenset({"vcenters", "policies", "backups", "restores", "repositories", "catalog"})

AfterSweep = Callable[
    [KubeAPI, str, SweepView, Sequence[Mapping[str, Any]], dt.datetime], Awaitable[list[str]]
]
"""``(api, namespace, view, policy objects, now)`` → names of the VMGuardBackups it created."""

Announce = Callable[[str, str, bool], None]
"""``(reason, message, warning)``: an event on the object a handler works for."""


class OperatorMemo(Protocol):
    """What every kind's handlers read from kopf's operator memo (``memo=`` of a handler)."""

    controllers: frozenset[str]
    """The controllers this operator runs (``--controllers``; all by default)."""
    timing: Timing
    """The one clock of every handler and loop (:mod:`.timing`)."""
    hooks: Hooks
    """The embedder's injection points (:mod:`vmguard.hooks`; no-ops in production)."""
    metrics: Metrics
    catalog_interval: float
    """Seconds between catalog syncs (``VMGUARD_CATALOG_INTERVAL``)."""
    proxy: ProxySettings
    sweeps: LatestSweeps
    """The latest successful sweep of each vCenter, read by the policies' schedulers."""
    after_sweep: AfterSweep
    wakeups: dict[tuple[str, str], asyncio.Event]
    """(namespace, vCenter name) → the event that wakes that vCenter's sweeper."""
    policy_wakeups: dict[tuple[str, str], asyncio.Event]
    """(namespace, policy name) → the event that wakes that policy's scheduler."""
    admission_wakeups: dict[tuple[str, str], asyncio.Event]
    """(namespace, vCenter name) → the event that wakes that vCenter's admission loop."""
    lanes: tuple[Lane, ...]
    """The kinds of proxy work the admission loops start (docs/admission.md)."""
    protected_vms: ProtectedVMReader
    """The one shared, compact reader of the namespaces' ProtectedVMs (:mod:`.held`)."""
    presence: Presence
    """Whether kopf lets this replica act, for the loops kopf does not run itself."""
    changes: Changes
    """What kopf's watches saw change, counted (a policy's pass skips its work when its
    inputs did not change: :class:`Changes`)."""


class Changes:
    """Counters of changes kopf's watches saw, by key: ``("runs", namespace, policy)``
    (a VMGuardBackup of that policy), ``("points", namespace)`` (a ProtectedVM),
    ``("policies", namespace)`` (a VMProtectionPolicy). A reader compares the counters
    with those of its last look: equal counters mean nothing it reads changed (kopf's
    watch delivers every change; a counter never goes back)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, ...], int] = {}
        self._versions: dict[tuple[str, ...], Hashable] = {}

    def bump(self, *key: str) -> None:
        self._counts[key] = self._counts.get(key, 0) + 1

    def bump_on_change(
        self, key: tuple[str, ...], item: tuple[str, ...], version: Hashable | None
    ) -> None:
        """Bump ``key`` when ``item`` is new, gone (``version`` None) or at another
        ``version`` than last seen here: a change of what readers do not read (a
        status written) is not counted."""
        if version is None:
            self._versions.pop(item, None)
        elif self._versions.get(item, _UNSEEN) == version:
            return
        else:
            self._versions[item] = version
        self.bump(*key)

    def of(self, *keys: tuple[str, ...]) -> tuple[int, ...]:
        return tuple(self._counts.get(k, 0) for k in keys)


_UNSEEN = object()


class Presence:
    """Whether this replica acts, for the loops and tasks that are not kopf daemons (the
    backups' expiry loop, the tasks of backups in flight and of running verifications:
    :mod:`.supervisor`): kopf tells only its daemons, by stopping them all when peering
    pauses the operator and starting them again when it resumes. Without peering kopf
    never pauses, and the gate is always open. With peering it is open while at least
    one daemon that entered it (:meth:`entered`: each VCenter's admission loop, which
    runs whenever the backups or restores controller does) is running. Every event
    handed to :meth:`listen` is set when it opens or closes.

    Public kopf only: its pause toggle is not handed to handlers. A replica with no
    VCenter to watch therefore neither expires runs nor drives backups under peering
    until one exists (a backup in flight names its VCenter).
    """

    def __init__(self, always: bool) -> None:
        self.always = always
        self.count = 0
        self._open = asyncio.Event()
        self._listeners: list[asyncio.Event] = []
        if always:
            self._open.set()

    def is_set(self) -> bool:
        return self._open.is_set()

    async def wait(self) -> bool:
        return await self._open.wait()

    def listen(self, event: asyncio.Event) -> None:
        """Set ``event`` whenever the gate opens or closes."""
        self._listeners.append(event)

    def _changed(self) -> None:
        for event in self._listeners:
            event.set()

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Held by a kopf daemon while it runs."""
        self.count += 1
        if not self._open.is_set():
            self._open.set()
            self._changed()
        try:
            yield
        finally:
            self.count -= 1
            if self.count == 0 and not self.always:
                self._open.clear()
                self._changed()


def acts(memo: OperatorMemo, controller: str) -> bool:
    """Whether this operator runs ``controller`` (``--controllers``; all by default)."""
    return controller in memo.controllers


def announcer(body: kopf.Body) -> Announce:
    """Events on ``body``: a warning or an informational one."""

    def announce(reason: str, message: str, warning: bool) -> None:
        (kopf.warn if warning else kopf.info)(body, reason=reason, message=message)

    return announce


def vcenter_wakeup(memo: OperatorMemo, namespace: str, vcenter_name: str) -> asyncio.Event:
    """The event that wakes that vCenter's sweeper at once."""
    return memo.wakeups.setdefault((namespace, vcenter_name), asyncio.Event())


def policy_wakeup(memo: OperatorMemo, namespace: str, name: str) -> asyncio.Event:
    """The event that wakes that policy's scheduler at once."""
    return memo.policy_wakeups.setdefault((namespace, name), asyncio.Event())


def admission_wakeup(memo: OperatorMemo, namespace: str, vcenter_name: str) -> asyncio.Event:
    """The event that wakes that vCenter's admission loop at once."""
    return memo.admission_wakeups.setdefault((namespace, vcenter_name), asyncio.Event())
