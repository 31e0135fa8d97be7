"""A Backend decorator that counts the bytes and requests that cross it.

File-level restore promises to read only what a file needs (BRIEF §8: one 10 MiB file
from a 16 GiB backup reads at most 64 MiB), and the only honest place to measure that
is the backend boundary: it sees what the store sent, after compression and
encryption, including manifests and indexes. Wrap the backend, read, look at
:attr:`CountingBackend.counts`. Invariants:

- Counts are exact and thread-safe: every ``get``/``get_range`` adds the length of the
  bytes it returned, every ``put`` the length it sent; a failed call adds nothing.
  Requests without a payload (``stat``, ``list``, ``set_retention``) are counted when
  they are sent, failed or not: each costs a round trip.
- Behaviour is unchanged otherwise: every call is passed through as is.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from vmguard.store.backend.base import Backend, Capabilities, ObjectInfo, Retention


@dataclass(frozen=True)
class TransferCounts:
    bytes_read: int = 0
    gets: int = 0
    bytes_written: int = 0
    puts: int = 0
    stats: int = 0
    lists: int = 0
    retentions: int = 0
    """``set_retention`` requests (Object Lock extensions), successful or not."""


class CountingBackend:
    """Wraps another backend and counts what passes through it."""

    def __init__(self, inner: Backend) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self._counts = TransferCounts()

    @property
    def inner(self) -> Backend:
        return self._inner

    @property
    def counts(self) -> TransferCounts:
        with self._lock:
            return self._counts

    def reset(self) -> TransferCounts:
        """Return the counts so far and start again from zero."""
        with self._lock:
            counts, self._counts = self._counts, TransferCounts()
            return counts

    def _add(self, **delta: int) -> None:
        with self._lock:
            current = self._counts
            self._counts = replace(
                current, **{k: getattr(current, k) + v for k, v in delta.items()}
            )

    @property
    def location(self) -> str:
        return self._inner.location

    @property
    def capabilities(self) -> Capabilities:
        return self._inner.capabilities

    def put(self, name: str, data: bytes, *, retention: Retention | None = None) -> None:
        self._inner.put(name, data, retention=retention)
        self._add(bytes_written=len(data), puts=1)

    def put_if_absent(self, name: str, data: bytes, *, retention: Retention | None = None) -> bool:
        created = self._inner.put_if_absent(name, data, retention=retention)
        self._add(bytes_written=len(data) if created else 0, puts=1)
        return created

    def get(self, name: str) -> bytes:
        data = self._inner.get(name)
        self._add(bytes_read=len(data), gets=1)
        return data

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        data = self._inner.get_range(name, offset, length)
        self._add(bytes_read=len(data), gets=1)
        return data

    def stat(self, name: str) -> ObjectInfo:
        self._add(stats=1)
        return self._inner.stat(name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._add(lists=1)
        return self._inner.list(prefix)

    def list_page(self, prefix: str, start_after: str, limit: int) -> Sequence[ObjectInfo]:
        self._add(lists=1)
        return self._inner.list_page(prefix, start_after, limit)

    def delete(self, name: str) -> None:
        self._inner.delete(name)

    def copy(self, source: str, target: str) -> None:
        self._inner.copy(source, target)

    def set_retention(self, name: str, retention: Retention) -> None:
        self._add(retentions=1)
        self._inner.set_retention(name, retention)

    def close(self) -> None:
        self._inner.close()
