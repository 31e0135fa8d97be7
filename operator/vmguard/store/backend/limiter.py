"""A Backend decorator that limits the bytes written under a prefix per second.

A copy target's ``bandwidthLimitMiBps`` (issue 17) bounds what a copy Job uploads: wrap
the target's backend, naming the prefix whose writes count (the chunks'), and every
``put`` there first takes its length from a :class:`TokenBucket`. Invariants:

- Over any span from the bucket's start, the bytes whose ``put`` was let through are at
  most ``burst + rate * span`` (a put larger than the burst is let through once the
  bucket's debt is paid: it waits for its own bytes, never more).
- Only writes under ``prefix`` wait: a lease refresh, an index or a manifest is never
  held behind the chunks' debt (a lease refreshed late would be a safety fault, format
  §7.1). Reads, lists and deletes pass through as they are.
- Thread-safe: workers share one bucket, so the limit is the Job's, not each thread's.
- Time is read and waited on through the callables handed in (tests hand a manual
  clock: they count bytes against a clock that moves only when the bucket waits).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence

from vmguard.store.backend.base import Backend, Capabilities, ObjectInfo, Retention


class TokenBucket:
    """``rate`` bytes per second, at most ``burst`` bytes ahead of it."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"a bandwidth limit must be positive, not {rate}")
        self.rate = float(rate)
        self.burst = float(rate if burst is None else burst)
        self._monotonic = monotonic
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._last = monotonic()

    def take(self, amount: int) -> float:
        """Wait until ``amount`` bytes may pass; the seconds waited."""
        with self._lock:
            now = self._monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= amount  # may go negative: a debt the next takers wait for
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


class LimitedBackend:
    """Wraps another backend; ``put``s of names under ``prefix`` take from ``bucket``."""

    def __init__(self, inner: Backend, bucket: TokenBucket, prefix: str) -> None:
        self._inner = inner
        self.bucket = bucket
        self._prefix = prefix

    @property
    def inner(self) -> Backend:
        return self._inner

    @property
    def location(self) -> str:
        return self._inner.location

    @property
    def capabilities(self) -> Capabilities:
        return self._inner.capabilities

    def put(self, name: str, data: bytes, *, retention: Retention | None = None) -> None:
        if name.startswith(self._prefix):
            self.bucket.take(len(data))
        self._inner.put(name, data, retention=retention)

    def put_if_absent(self, name: str, data: bytes, *, retention: Retention | None = None) -> bool:
        if name.startswith(self._prefix):
            self.bucket.take(len(data))
        return self._inner.put_if_absent(name, data, retention=retention)

    def get(self, name: str) -> bytes:
        return self._inner.get(name)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        return self._inner.get_range(name, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        return self._inner.stat(name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self._inner.list(prefix)

    def list_page(self, prefix: str, start_after: str, limit: int) -> Sequence[ObjectInfo]:
        return self._inner.list_page(prefix, start_after, limit)

    def delete(self, name: str) -> None:
        self._inner.delete(name)

    def copy(self, source: str, target: str) -> None:
        self._inner.copy(source, target)

    def set_retention(self, name: str, retention: Retention) -> None:
        self._inner.set_retention(name, retention)

    def close(self) -> None:
        self._inner.close()


__all__ = ["LimitedBackend", "TokenBucket"]
