"""The latest inventory sweep of each vCenter, shared between the sweeper and policies.

The VCenter sweeper publishes every *successful* sweep here (kept in kopf's operator
memo, keyed by ``(namespace, vCenter name)``); a policy reads which VMs are its own at
the moment one of its runs starts. A failed sweep publishes nothing, so the last good
assignment stays in force while a vCenter is unreachable. A policy whose vCenter has
not been swept since the operator started waits for the first sweep.

The sweeper also reports its first *failed* sweep of a vCenter (:meth:`LatestSweeps.failed`),
once: a policy's first pass after a start waits for its vCenter's first sweep attempt,
not for a success that may never come (``policy.runs``), and that wakes it.

Only the event loop touches this object (no locks): publish and read happen in
coroutines, never in threads.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

from vmguard.vsphere.matching import MatchResult
from vmguard.vsphere.records import VMRecord


@dataclass(frozen=True)
class SweepView:
    """One successful sweep: when, at what interval, and every VM's effective policy."""

    time: dt.datetime
    interval: float
    result: MatchResult

    def vms_of(self, policy: str) -> list[VMRecord]:
        return [a.vm for a in self.result.assignments if a.policy == policy]

    def ties(self, policy: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """Equal-priority conflicts of ``policy``, by the other policy, as VM names.

        First: VMs it protects that others select at the same priority. Second: VMs it
        selects at the same priority as their winner, by winner.
        """
        won: dict[str, list[str]] = {}
        lost: dict[str, list[str]] = {}
        for a in self.result.assignments:
            if a.policy == policy:
                for other in a.conflicts:
                    won.setdefault(other, []).append(a.vm.name)
            elif a.policy is not None and policy in a.conflicts:
                lost.setdefault(a.policy, []).append(a.vm.name)
        return won, lost


class LatestSweeps:
    def __init__(self) -> None:
        self._views: dict[tuple[str, str], SweepView] = {}
        self._events: dict[tuple[str, str], asyncio.Event] = {}
        self._failed: set[tuple[str, str]] = set()

    def get(self, namespace: str, vcenter: str) -> SweepView | None:
        return self._views.get((namespace, vcenter))

    def publish(self, namespace: str, vcenter: str, view: SweepView) -> None:
        key = (namespace, vcenter)
        self._views[key] = view
        # Wake whoever waits for this sweep; later waiters get a fresh event.
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    def failed(self, namespace: str, vcenter: str) -> None:
        """A sweep of this vCenter failed. The first failure wakes whoever waits for its
        next sweep (as a publish does); later ones do not: only the first attempt
        changes what a waiting policy does (:meth:`attempted`)."""
        key = (namespace, vcenter)
        if key in self._failed:
            return
        self._failed.add(key)
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    def attempted(self, namespace: str, vcenter: str) -> bool:
        """Whether a sweep of this vCenter ended, well or not, since the operator started."""
        key = (namespace, vcenter)
        return key in self._views or key in self._failed

    def next_sweep(self, namespace: str, vcenter: str) -> asyncio.Event:
        """An event set by the next publish for this vCenter (or its first failure)."""
        return self._events.setdefault((namespace, vcenter), asyncio.Event())
