"""One shared, compact read of a namespace's ProtectedVMs for the policies' passes.

Every policy's scheduler pass and every fail-safe pass after a sweep reads the points of
its namespace's VMs (their backup runs may have expired: ``points.expired_points``). At 5,000
VMs with 30 points each that is ≈ 29 MB of JSON per read; read by each policy every
30 s and decoded into dicts, it kept a core busy and the operator's memory far above its
budget (docs/scale.md). :class:`ProtectedVMReader` is kopf's operator memo's one reader:

- **Compact**: the LIST is read one page at a time and each object kept only as a
  :class:`~.points.HeldVM` (key, RPO state, points as tuples), so no page outlives its
  decoding and every object is never held as a dict at once.
- **Shared**: within ``max_age`` seconds (on the clock of :mod:`.timing`, so the lab's
  speed-up scales it) of a read, every caller of the namespace gets the same records;
  callers that arrive while a read is under way wait for it (one LIST, not one each).
- **One pass at a time**: :meth:`one_pass` is the namespace's lock a policy's pass
  holds while its stand-ins and history are in memory (tens of MB at 5,000 VMs).
- **One generation held**: a stale read is dropped before the next is made, and a
  policy's pass lets go of the records it read when it ends (``policy.runs``), so the
  operator holds one namespace's records once, not once per policy.
- **Nothing held between passes**: a read older than ``max_age`` serves no one, and a
  policy's pass that skips its work (every 30 s per policy when nothing changed) drops
  it (:meth:`drop_stale`): at 5,000 VMs with 30 points each the read is ≈ 43 MB (301 bytes a
  point, measured at 500 VMs), held before until the next pass that worked — up to
  ``policy.runs.REBUILD_EVERY`` — now at most one refresh after it went stale.
- **Fresh after our own writes**: a caller that writes ProtectedVMs (retention taking out
  a point, an RPO state, a backup run expiring) calls :meth:`forget`, so the next pass
  reads again. Points other writers add (a backup completing, catalog sync) are seen
  within ``max_age``: a completing backup's run object carries its point meanwhile.

Only the event loop calls it (an asyncio lock per namespace; no thread touches it).
The records are shared between callers: they are tuples and frozen dataclasses, never
changed in place.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from vmguard.controller.kube import points
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.timing import REAL_TIME, Timing

SHARED_FOR = 30.0
"""Seconds a read serves every caller of the namespace: a policy's pass comes every
30 s (``policy.runs.STATUS_REFRESH``), so all of a namespace's policies share one read."""


async def read_held(api: KubeAPI, namespace: str) -> list[points.HeldVM]:
    """Every ProtectedVM of ``namespace``, compact, read page by page (one LIST)."""
    out: list[points.HeldVM] = []
    async for page in api.list_pages(points.PLURAL, namespace):
        out.extend(h for h in map(points.held_of, page) if h is not None)
    return out


@dataclass
class ProtectedVMReader:
    """The namespace's ProtectedVMs, read at most once per ``max_age`` seconds of the
    clock (0: every call reads). See the module docstring."""

    max_age: float
    timing: Timing = REAL_TIME
    reads: int = 0
    """LISTs made (each of one or more pages): what the callers share."""
    _cache: dict[str, tuple[float, list[points.HeldVM]]] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _passes: dict[str, asyncio.Lock] = field(default_factory=dict)

    async def read(self, api: KubeAPI, namespace: str) -> list[points.HeldVM]:
        async with self._locks.setdefault(namespace, asyncio.Lock()):
            now = self.timing.monotonic()
            cached = self._cache.get(namespace)
            if cached is not None and now - cached[0] < self.timing.interval(self.max_age):
                return cached[1]
            # Let go of the stale read before the new one is built, not after: two
            # generations at once are ≈ 80 MB at 5,000 VMs (docs/scale.md).
            self._cache.pop(namespace, None)
            del cached
            held = await read_held(api, namespace)
            self.reads += 1
            if self.max_age > 0:
                self._cache[namespace] = (now, held)
            return held

    def one_pass(self, namespace: str) -> asyncio.Lock:
        """The lock a policy's pass holds while it works on the namespace's points (its
        stand-ins, history, retention and status): one pass's worth in memory at a time,
        not one per policy (they all start together)."""
        return self._passes.setdefault(namespace, asyncio.Lock())

    def drop_stale(self, namespace: str) -> None:
        """Let go of the namespace's read once it is older than ``max_age``: no caller
        gets it any more (a caller that has it keeps its own reference)."""
        cached = self._cache.get(namespace)
        age = self.timing.monotonic() - cached[0] if cached is not None else 0.0
        if cached is not None and age >= self.timing.interval(self.max_age):
            del self._cache[namespace]

    def holds(self, namespace: str) -> int:
        """How many of the namespace's ProtectedVMs the reader holds now (0: no read)."""
        cached = self._cache.get(namespace)
        return len(cached[1]) if cached is not None else 0

    def forget(self, namespace: str) -> None:
        """The namespace's ProtectedVMs changed by our hand: the next call reads again."""
        self._cache.pop(namespace, None)
