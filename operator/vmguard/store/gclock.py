"""The GC lock: at most one GC acts on a repository, fenced by generations (format §7.3).

S3 has no compare-and-swap on an existing object that every S3 store offers, so the
lock is not one object but a sequence: ``gc/locks/<generation>`` (20 digits, so names
sort as numbers). The GC that created the highest generation holds the lock.
Invariants:

- A generation is created only with create-if-absent, so of two GCs that try to take
  the same generation exactly one succeeds. A store without atomic create-if-absent
  (``capabilities.atomic_create`` false) cannot promise that; GC refuses to run on one
  unless its caller states that no other GC can run (``assume_sole_gc``).
- The highest generation is never deleted: its holder releases it by rewriting it as
  released, and only a higher generation's holder deletes lower ones. So generations
  only grow, and a holder that sees any generation above its own knows it was taken
  over.
- A new generation is taken only when the highest one is released or *gone*: its
  last refresh is more than ``ttl + grace`` old (the same rule as backup leases).
- A holder refreshes only its own generation's object, so a late refresh of an old
  holder can never overwrite a newer holder's lock.
- Fencing: before every destructive step the holder checks its own deadline (its
  monotonic clock, as a backup does before its commit) and lists ``gc/locks/``; a
  generation above its own stops it with LeaseLostError.
- A ``gc/lock`` object of an older release that is not gone makes GC busy: the two
  kinds of lock never run side by side (an older release refuses a repository that
  carries the ``lease-commit-v2`` feature, §10).
"""

from __future__ import annotations

import json
import logging
import secrets
from datetime import datetime

from vmguard.errors import (
    ConfigError,
    GcBusyError,
    LeaseLostError,
    ObjectNotFoundError,
    VmguardError,
)
from vmguard.store import names
from vmguard.store.backend import Backend
from vmguard.store.clock import Clock
from vmguard.store.lease import Lease, expired_long_ago, lease_body

log = logging.getLogger(__name__)

GC_LOCKS = "gc/locks/"
_DIGITS = 20


def lock_name(generation: int) -> str:
    return f"{GC_LOCKS}{generation:0{_DIGITS}d}"


def _generation(name: str) -> int | None:
    tail = name[len(GC_LOCKS) :]
    return int(tail) if len(tail) == _DIGITS and tail.isdigit() else None


class GcLock:
    """One GC's hold on the lock. :meth:`acquire`, then :meth:`fence` before each delete."""

    def __init__(
        self,
        backend: Backend,
        clock: Clock,
        *,
        ttl: float,
        grace: float,
        assume_sole_gc: bool = False,
    ) -> None:
        self._backend = backend
        self._clock = clock
        self.ttl = ttl
        self.grace = grace
        self._assume_sole_gc = assume_sole_gc
        self.generation = 0
        self._lease: Lease | None = None
        self._token = secrets.token_hex(8)

    def _highest(self) -> tuple[int, str | None]:
        best, best_name = 0, None
        for info in self._backend.list(GC_LOCKS):
            generation = _generation(info.name)
            if generation is not None and generation > best:
                best, best_name = generation, info.name
        return best, best_name

    def _check_store(self) -> None:
        if self._assume_sole_gc or self._backend.capabilities.atomic_create:
            return
        raise ConfigError(
            f"{self._backend.location} cannot create an object only if it is absent"
            " (create-if-absent, S3 If-None-Match), so two GCs could both take the GC lock"
            " and delete chunks the other still waits on; GC refuses to run. If nothing"
            " else can run GC on this repository, say so explicitly (assume_sole_gc)."
        )

    def _check_legacy(self, now: datetime) -> bool:
        """Raise GcBusyError while an older release's lock is not gone; True if one is left."""
        try:
            held = self._backend.stat(names.GC_LOCK).modified
        except ObjectNotFoundError:
            return False
        if not expired_long_ago(held, now, self.ttl, self.grace):
            raise GcBusyError(
                f"a GC of an older vmguard release holds {names.GC_LOCK} (refreshed {held})"
            )
        return True

    def _held_by_another(self, name: str, now: datetime) -> bool:
        try:
            info = self._backend.stat(name)
            body = json.loads(self._backend.get(name))
        except ObjectNotFoundError:
            return False  # deleted by a newer holder: a higher generation exists
        except ValueError:
            body = {}
        if isinstance(body, dict) and body.get("released"):
            return False
        return not expired_long_ago(info.modified, now, self.ttl, self.grace)

    def acquire(self, now: datetime, *, auto_refresh: bool) -> None:
        """Take the next generation, or raise GcBusyError; ``now`` is the server's clock."""
        self._check_store()
        legacy = self._check_legacy(now)
        highest, name = self._highest()
        if name is not None and self._held_by_another(name, now):
            raise GcBusyError(f"another GC holds the GC lock ({name})")
        generation = highest + 1
        body = lease_body(
            "gc", self._clock.now(), self.ttl, generation=generation, token=self._token
        )
        lease = Lease(self._backend, lock_name(generation), body, ttl=self.ttl, clock=self._clock)
        if not lease.acquire(if_absent=True):
            raise GcBusyError(f"another GC took the GC lock ({lock_name(generation)}) just now")
        self.generation, self._lease = generation, lease
        if auto_refresh:
            lease.start_refreshing()
        # Lower generations are released or gone: tidy them. A late refresh of an old
        # holder may write its object again; the next GC removes it.
        for info in list(self._backend.list(GC_LOCKS)):
            lower = _generation(info.name)
            if lower is not None and lower < generation:
                self.fence()
                self._backend.delete(info.name)
        if legacy:
            self.fence()
            self._backend.delete(names.GC_LOCK)  # its holder died long ago

    def fence(self) -> None:
        """Raise LeaseLostError unless this GC still holds the lock with margin to spare."""
        if self._lease is None:
            raise LeaseLostError("this GC does not hold the GC lock")
        self._lease.ensure_valid()
        highest, name = self._highest()
        if highest != self.generation:
            self._lease.stop()
            raise LeaseLostError(
                f"the GC lock was taken over ({name} follows {lock_name(self.generation)}):"
                " this GC stops before its next delete"
            )

    def refresh(self) -> None:
        if self._lease is None:
            raise LeaseLostError("this GC does not hold the GC lock")
        self._lease.refresh()

    def release(self) -> None:
        """Mark our generation released (never delete it: generations must only grow)."""
        if self._lease is None:
            return
        self._lease.stop()
        body = lease_body(
            "gc", self._clock.now(), self.ttl, generation=self.generation, released=True
        )
        try:
            self._backend.put(lock_name(self.generation), json.dumps(body).encode())
        except VmguardError as exc:
            log.warning("could not release the GC lock (it will expire): %s", exc)
        self._lease = None
