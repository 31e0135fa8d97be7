"""A Backend decorator that retries transient failures with bounded exponential backoff.

Invariants:

- Only errors whose ``retryable`` attribute is true (``BackendUnavailableError``) are
  retried; not-found, locked, corrupt and permission errors pass straight through,
  because retrying them changes nothing and hides the real answer.
- Attempts and total delay are bounded: at most ``attempts`` calls, sleeping
  ``uniform(0, min(cap, base * 2**n))`` between them ("full jitter", so many proxies
  hitting a recovering MinIO do not retry in lock-step). The worst case a caller waits
  is known in advance (:attr:`RetryPolicy.worst_case_delay`), which the lease margin
  of a backup relies on (``docs/repository-format.md`` §7.1).
- Every operation the protocol defines is idempotent or made safe to repeat:
  ``put_if_absent`` retried after a lost response may report False for an object the
  first attempt created; callers that care compare contents.
- ``list`` is retried only before its first item is yielded; a failure mid-listing
  propagates (restarting would yield duplicates).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from vmguard.errors import VmguardError
from vmguard.store.backend.base import Backend, Capabilities, ObjectInfo, Retention

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    base_delay: float = 0.25
    max_delay: float = 8.0

    @property
    def worst_case_delay(self) -> float:
        """Upper bound of the total sleep across all retries of one operation."""
        delays = [min(self.max_delay, self.base_delay * 2**n) for n in range(self.attempts - 1)]
        return float(sum(delays))


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, VmguardError) and exc.retryable


class RetryingBackend:
    """Wraps another backend; see the module docstring for the policy."""

    def __init__(
        self,
        inner: Backend,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._inner = inner
        self._policy = policy or RetryPolicy()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.retries = 0
        """Number of retries made so far (for metrics and tests)."""

    @property
    def inner(self) -> Backend:
        return self._inner

    def _call(self, operation: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return operation()
            except Exception as exc:
                attempt += 1
                if not _is_retryable(exc) or attempt >= self._policy.attempts:
                    raise
                delay = min(self._policy.max_delay, self._policy.base_delay * 2 ** (attempt - 1))
                self.retries += 1
                self._sleep(self._rng.uniform(0, delay))

    @property
    def location(self) -> str:
        return self._inner.location

    @property
    def capabilities(self) -> Capabilities:
        return self._call(lambda: self._inner.capabilities)

    def put(self, name: str, data: bytes, *, retention: Retention | None = None) -> None:
        self._call(lambda: self._inner.put(name, data, retention=retention))

    def put_if_absent(self, name: str, data: bytes, *, retention: Retention | None = None) -> bool:
        return self._call(lambda: self._inner.put_if_absent(name, data, retention=retention))

    def get(self, name: str) -> bytes:
        return self._call(lambda: self._inner.get(name))

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        return self._call(lambda: self._inner.get_range(name, offset, length))

    def stat(self, name: str) -> ObjectInfo:
        return self._call(lambda: self._inner.stat(name))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        def first() -> tuple[Iterator[ObjectInfo], ObjectInfo | None]:
            iterator = self._inner.list(prefix)
            return iterator, next(iterator, None)

        iterator, head = self._call(first)
        if head is None:
            return
        yield head
        yield from iterator

    def list_page(self, prefix: str, start_after: str, limit: int) -> Sequence[ObjectInfo]:
        return self._call(lambda: self._inner.list_page(prefix, start_after, limit))

    def delete(self, name: str) -> None:
        self._call(lambda: self._inner.delete(name))

    def copy(self, source: str, target: str) -> None:
        self._call(lambda: self._inner.copy(source, target))

    def set_retention(self, name: str, retention: Retention) -> None:
        self._call(lambda: self._inner.set_retention(name, retention))

    def close(self) -> None:
        self._inner.close()
