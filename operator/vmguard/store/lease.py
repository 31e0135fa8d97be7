"""Leases: objects that say "a backup (or GC) is running", kept alive by rewriting them.

Implements the writer's side of ``docs/repository-format.md`` §7.1; GC, prune and
cleanup read leases through :func:`read_running_leases`. Invariants:

- A lease is *live* while its last-modified time (stamped by the store's clock) is
  within ``ttl`` of the store's now, and *gone* once it no longer exists or is more
  than ``ttl + grace`` old. Everything that decides whether a backup may still be
  running (GC, prune, cleanup) counts every lease that is not gone, never only the
  live ones: a refresh in flight may land late (format §7.3).
- Its holder refreshes it every ``ttl / 5`` and tracks, on its own monotonic clock,
  when its last good refresh *started* (the server stamps the object no earlier). A
  refresh is good only if it *landed* (returned) within ``ttl`` of the previous good
  refresh's start: then the lease never looked expired. A refresh that lands later,
  or starts later, loses the lease for good: GC may have judged it.
  :meth:`Lease.ensure_valid` raises LeaseLostError when less than ``margin`` of
  validity is left, so a commit never starts on a lease that may expire before the
  commit lands.
- Releasing deletes the object; a release that fails leaves a lease that expires.
  :meth:`Lease.abandon` stops refreshing without deleting: the lease runs out its
  time, for a holder that sent a write whose outcome it does not know (§7.1).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from vmguard.errors import LeaseLostError, ObjectNotFoundError, VmguardError
from vmguard.store.backend import Backend
from vmguard.store.clock import Clock
from vmguard.store.names import LEASES, format_time, parse_time

log = logging.getLogger(__name__)


class Lease:
    """One lease object held by this process."""

    def __init__(
        self,
        backend: Backend,
        name: str,
        body: dict[str, Any],
        *,
        ttl: float,
        clock: Clock,
        margin: float | None = None,
    ) -> None:
        self._backend = backend
        self.name = name
        self._data = json.dumps(body, sort_keys=True).encode()
        self.ttl = ttl
        self.margin = ttl / 2 if margin is None else margin
        self._clock = clock
        self._last_start: float | None = None
        self._lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def acquire(self, *, if_absent: bool = False) -> bool:
        """Write the lease; with ``if_absent``, only if no such lease exists yet."""
        start = self._clock.monotonic()
        if if_absent:
            if not self._backend.put_if_absent(self.name, self._data):
                return False
        else:
            self._backend.put(self.name, self._data)
        with self._lock:
            self._last_start = start
        return True

    def refresh(self) -> None:
        """Rewrite the lease now. Raises LeaseLostError if it lapsed or the write landed late."""
        start = self._clock.monotonic()
        with self._lock:
            previous = self._last_start
            if previous is None or self._lost:
                raise LeaseLostError(f"lease {self.name} is not held")
            if start - previous > self.ttl:
                self._lost = True
                raise LeaseLostError(f"lease {self.name} lapsed before it could be refreshed")
        self._backend.put(self.name, self._data)
        landed = self._clock.monotonic()
        with self._lock:
            if self._lost:
                raise LeaseLostError(f"lease {self.name} was given up while it was refreshed")
            if landed - previous > self.ttl:
                # Until this write landed, the object carried the previous refresh's
                # stamp, which was older than ttl for a while: GC may have judged the
                # lease expired. Only a fresh lease (a new backup) is safe now.
                self._lost = True
                raise LeaseLostError(
                    f"lease {self.name} refresh landed {landed - previous:.0f}s after the"
                    f" previous one started (ttl {self.ttl:.0f}s); it may have looked expired"
                )
            self._last_start = max(previous, start)

    def ensure_valid(self) -> None:
        """Raise LeaseLostError unless at least ``margin`` seconds of validity remain."""
        with self._lock:
            if self._last_start is None or self._lost:
                raise LeaseLostError(f"lease {self.name} is not held")
            age = self._clock.monotonic() - self._last_start
            if age > self.ttl - self.margin:
                raise LeaseLostError(
                    f"lease {self.name} was last refreshed {age:.0f}s ago (ttl {self.ttl:.0f}s);"
                    " its holder must stop and start again"
                )

    def start_refreshing(self) -> None:
        """Refresh in a daemon thread every ttl/5 until released."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"lease-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.ttl / 5):
            try:
                self.refresh()
            except LeaseLostError:
                log.warning("lease %s lost; the holder will not commit", self.name)
                return
            except VmguardError as exc:
                log.warning("lease %s refresh failed (will retry): %s", self.name, exc)

    def stop(self) -> None:
        """Stop refreshing and stop counting the lease as held; the object stays as it is."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            self._lost = True

    def abandon(self) -> None:
        """Give the lease up without deleting it: it runs out its time (``ttl + grace``)."""
        self.stop()
        log.info("lease %s left to run out its time", self.name)

    def release(self) -> None:
        """Delete the lease: only when nothing its holder sent can still land."""
        self.stop()
        try:
            self._backend.delete(self.name)
        except VmguardError as exc:
            log.warning("could not delete lease %s (it will expire): %s", self.name, exc)


@dataclass(frozen=True)
class LeaseInfo:
    name: str
    modified: datetime
    body: dict[str, Any]

    @property
    def started(self) -> datetime:
        try:
            return parse_time(str(self.body["started"]))
        except (KeyError, ValueError):
            return self.modified

    @property
    def archive_id(self) -> str | None:
        value = self.body.get("archive_id")
        return str(value) if value else None


def lease_body(purpose: str, started: datetime, ttl: float, **fields: Any) -> dict[str, Any]:
    return {"purpose": purpose, "started": format_time(started), "ttl_seconds": ttl, **fields}


def read_leases(backend: Backend) -> list[LeaseInfo]:
    """Every lease object with its store timestamp (live or not)."""
    found = []
    for info in backend.list(LEASES):
        try:
            body = json.loads(backend.get(info.name))
        except ObjectNotFoundError:
            continue  # released while we listed
        except ValueError:
            body = {}
        found.append(LeaseInfo(info.name, info.modified, body if isinstance(body, dict) else {}))
    return found


def expired_long_ago(modified: datetime, now: datetime, ttl: float, grace: float) -> bool:
    """True if a lease stamped ``modified`` is gone by its age: older than ``ttl + grace``."""
    return now - modified > timedelta(seconds=ttl + grace)


def is_gone(backend: Backend, name: str, now: datetime, ttl: float, grace: float) -> bool:
    """True if the lease no longer exists or expired more than ``grace`` ago (§7.3)."""
    try:
        modified = backend.stat(name).modified
    except ObjectNotFoundError:
        return True
    return expired_long_ago(modified, now, ttl, grace)


def read_running_leases(
    backend: Backend, now: datetime, ttl: float, grace: float
) -> list[LeaseInfo]:
    """Every lease that is not gone: its holder may still be running, or may still commit.

    Not only the live ones: a lease whose refresh is in flight looks expired until the
    refresh lands, and a holder whose last write's outcome is unknown lets its lease run
    out its time (format §7.3).
    """
    return [
        lease
        for lease in read_leases(backend)
        if not expired_long_ago(lease.modified, now, ttl, grace)
    ]
