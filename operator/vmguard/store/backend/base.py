"""The storage backend protocol: named immutable byte objects in a flat namespace.

A backend stores bytes under names and knows nothing of chunks, indexes or archives
(the repository layer above gives names their meaning). Every implementation keeps
these invariants, and ``tests/store/backend/test_conformance.py`` checks them:

- ``put`` replaces the whole object atomically: a reader sees the old bytes or the new
  bytes, never a mix or a prefix.
- ``put_if_absent`` creates an object only if none exists and says whether it did;
  it is atomic where ``capabilities.atomic_create`` is true.
- ``get`` of a missing object raises :class:`~vmguard.errors.ObjectNotFoundError`;
  ``delete`` of a missing object is not an error.
- ``list(prefix)`` yields every object whose name starts with ``prefix`` (a plain
  string prefix, as in S3), sorted by name, with sizes and last-modified times taken
  from the store's own clock. ``list_page(prefix, start_after, limit)`` returns the
  first ``limit`` of them whose names sort after ``start_after``: one request on S3
  (for ``limit`` ≤ 1000), so a sorted set of names can be looked up a page at a time.
- Deleting an object under Object Lock retention raises
  :class:`~vmguard.errors.ObjectLockedError` and leaves the object in place.
- Transient faults raise :class:`~vmguard.errors.BackendUnavailableError` (retryable);
  nothing else is retryable.

No name is ever both an object and a "directory" of another (``a/b`` and ``a/b/c``):
a file system cannot hold both, and the repository's naming scheme never needs it.

Names are validated by :func:`check_name`, so no backend can be steered outside its
root by a name, and every name is valid on S3 and on any POSIX file system.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

from vmguard.errors import ConfigError

LockMode = Literal["GOVERNANCE", "COMPLIANCE"]

MAX_NAME_BYTES = 200
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid object name, else raise ConfigError.

    Valid names are ASCII path components of letters, digits, ``.``, ``_`` and ``-``
    joined by single slashes; no component is empty or starts with a dot (so none is
    ``.`` or ``..``, and none collides with a local backend's temporary files).
    """
    if len(name.encode()) > MAX_NAME_BYTES or not _NAME_RE.fullmatch(name):
        raise ConfigError(f"invalid object name: {name!r}")
    return name


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if some valid name could start with it, else raise ConfigError."""
    if prefix and not re.fullmatch(r"[A-Za-z0-9._/-]*", prefix):
        raise ConfigError(f"invalid object name prefix: {prefix!r}")
    return prefix


@dataclass(frozen=True)
class Retention:
    """An S3 Object Lock retention: the object may not be deleted before ``until``."""

    mode: LockMode
    until: datetime


@dataclass(frozen=True)
class ObjectInfo:
    """What the store says about one object. Times are timezone-aware UTC."""

    name: str
    size: int
    modified: datetime
    retain_until: datetime | None = None
    """Set by ``stat`` when the object is under retention; ``list`` leaves it None."""


@dataclass(frozen=True)
class Capabilities:
    """Which optional guarantees a backend gives."""

    atomic_create: bool
    """``put_if_absent`` is a single atomic operation (no check-then-write window)."""
    object_lock: bool
    """Objects can be written with a retention that forbids their deletion."""


@runtime_checkable
class Backend(Protocol):
    """Named byte objects in one flat namespace. Implementations are thread-safe."""

    @property
    def location(self) -> str:
        """A human-readable description of where the objects live (never a secret)."""
        ...

    @property
    def capabilities(self) -> Capabilities: ...

    def put(self, name: str, data: bytes, *, retention: Retention | None = None) -> None:
        """Create or replace ``name`` with ``data``."""
        ...

    def put_if_absent(self, name: str, data: bytes, *, retention: Retention | None = None) -> bool:
        """Create ``name`` unless it exists; return True if this call created it."""
        ...

    def get(self, name: str) -> bytes: ...

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of the object, shorter at its end."""
        ...

    def stat(self, name: str) -> ObjectInfo: ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def list_page(self, prefix: str, start_after: str, limit: int) -> Sequence[ObjectInfo]:
        """At most ``limit`` objects of ``list(prefix)`` whose names sort after
        ``start_after``, in name order."""
        ...

    def delete(self, name: str) -> None: ...

    def copy(self, source: str, target: str) -> None:
        """Copy ``source`` to ``target`` inside the store (server-side where possible)."""
        ...

    def set_retention(self, name: str, retention: Retention) -> None:
        """Extend the retention of an existing object (Object Lock backends only)."""
        ...

    def close(self) -> None: ...


def check_range(offset: int, length: int) -> None:
    """Raise ConfigError unless ``offset >= 0`` and ``length >= 1``."""
    if offset < 0 or length < 1:
        raise ConfigError(f"invalid byte range: offset={offset} length={length}")
