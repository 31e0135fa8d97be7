"""An in-memory backend: the reference implementation of the Backend protocol.

Used by unit tests and by anything that needs a throw-away repository. It keeps every
invariant of :mod:`vmguard.store.backend.base`, including atomic create-if-absent and,
when constructed with ``object_lock=True``, S3 Object Lock semantics (an object under
retention cannot be deleted; retention can only be extended). Its object-lock mode
stands in for a lock-enabled S3 bucket in unit tests; the same conformance tests run
against the real thing on the lab's MinIO.

The clock is injectable so tests can age objects (GC compares last-modified times)
without sleeping.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from vmguard.errors import ConfigError, ObjectLockedError, ObjectNotFoundError
from vmguard.store.backend.base import (
    Capabilities,
    ObjectInfo,
    Retention,
    check_name,
    check_prefix,
    check_range,
)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Stored:
    data: bytes
    modified: datetime
    retention: Retention | None


class MemoryBackend:
    """Objects in a dict guarded by a lock."""

    def __init__(
        self, *, object_lock: bool = False, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self._objects: dict[str, _Stored] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self._capabilities = Capabilities(atomic_create=True, object_lock=object_lock)

    @property
    def location(self) -> str:
        return f"memory:{id(self):x}"

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    def _check_retention(self, retention: Retention | None) -> None:
        if retention is not None and not self._capabilities.object_lock:
            raise ConfigError("this memory backend was created without object lock")

    def _store(self, name: str, data: bytes, retention: Retention | None) -> None:
        # S3 keeps the overwritten version, and its lock, until that lock expires: an
        # overwrite never makes a locked key deletable. Keep the later of the two locks.
        old = self._objects.get(name)
        old_lock = old.retention if old is not None else None
        if old_lock is not None and old_lock.until > self._clock():
            retention = (
                old_lock if retention is None or retention.until < old_lock.until else retention
            )
        self._objects[name] = _Stored(bytes(data), self._clock(), retention)

    def put(self, name: str, data: bytes, *, retention: Retention | None = None) -> None:
        check_name(name)
        self._check_retention(retention)
        with self._lock:
            self._store(name, data, retention)

    def put_if_absent(self, name: str, data: bytes, *, retention: Retention | None = None) -> bool:
        check_name(name)
        self._check_retention(retention)
        with self._lock:
            if name in self._objects:
                return False
            self._store(name, data, retention)
            return True

    def _find(self, name: str) -> _Stored:
        check_name(name)
        stored = self._objects.get(name)
        if stored is None:
            raise ObjectNotFoundError(name)
        return stored

    def get(self, name: str) -> bytes:
        with self._lock:
            return self._find(name).data

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        check_range(offset, length)
        with self._lock:
            return self._find(name).data[offset : offset + length]

    def stat(self, name: str) -> ObjectInfo:
        with self._lock:
            stored = self._find(name)
            until = stored.retention.until if stored.retention else None
            return ObjectInfo(name, len(stored.data), stored.modified, until)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        with self._lock:
            found = [
                ObjectInfo(name, len(s.data), s.modified)
                for name, s in self._objects.items()
                if name.startswith(prefix)
            ]
        yield from sorted(found, key=lambda info: info.name)

    def list_page(self, prefix: str, start_after: str, limit: int) -> Sequence[ObjectInfo]:
        return list(itertools.islice((i for i in self.list(prefix) if i.name > start_after), limit))

    def delete(self, name: str) -> None:
        check_name(name)
        with self._lock:
            stored = self._objects.get(name)
            if stored is None:
                return
            if stored.retention is not None and stored.retention.until > self._clock():
                raise ObjectLockedError(name, f"retained until {stored.retention.until}")
            del self._objects[name]

    def copy(self, source: str, target: str) -> None:
        check_name(target)
        with self._lock:
            self._store(target, self._find(source).data, None)

    def set_retention(self, name: str, retention: Retention) -> None:
        self._check_retention(retention)
        with self._lock:
            stored = self._find(name)
            if stored.retention is not None and stored.retention.until > retention.until:
                raise ObjectLockedError(name, "retention can only be extended")
            stored.retention = retention

    def bypass_retention(self, name: str, retention: Retention | None) -> None:
        """Shorten or remove a retention, as S3 allows a caller with
        ``s3:BypassGovernanceRetention`` on a GOVERNANCE lock. No vmguard code calls this:
        tests use it to make the lock shortfall that ``lock-check`` must find."""
        with self._lock:
            self._find(name).retention = retention

    def close(self) -> None:
        pass
