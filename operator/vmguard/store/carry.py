"""What a backup may rely on when it takes chunks from its parent (format §8.1, §9).

A backup depends on chunks it did not write: those in its parent's index, and those
it finds by an existence check. This module decides which of them must be looked at
before the backup relies on them, and brings Object Lock retentions up to what the new
archive promises, in requests that scale with what changed, not with the disk:

- **Presence.** A chunk is trusted once somebody other than its uploader's PUT has
  seen it: a later backup's HEAD, listing or retention request, or a verify. So a
  backup looks only at the chunks its parent *added* — the parent's index minus the
  grandparent's — when the parent was written under this rule
  (``ArchiveManifest.carried_checked``); otherwise at all of them. A few are HEADed;
  many (the first incremental after a full) are found by walking ``chunks/`` in name
  order a page of 1000 at a time from each next wanted name (``Backend.list_page``),
  which costs about one request per 1000 chunks in a young repository and never more
  than one per chunk. Missing or implausibly small ones are returned so the caller
  reads them again from the source.
- **Lock.** Chunks are locked until ``chunk_until`` = the archive's ``retain_until``
  plus one lock period, so the next archives of the chain find them locked long
  enough without a request, and a chunk is extended about once per period. The
  parent's ``lock_horizon`` says how long all its chunks are locked; when it falls
  short of the new ``retain_until`` (or is unknown) every carried chunk is extended
  (one request each, which also proves it is there).

Invariant: every chunk this module reports as usable was seen present with a plausible
size (HEAD or listing) or accepted a retention request during the call, or was seen so
by an earlier backup of the chain; with Object Lock it is retained at least until the
``floor`` it reports (≥ ``retain_until``): established by a request, or the parent's
horizon, a claim ``lockcheck`` audits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from vmguard.errors import ObjectLockedError, ObjectNotFoundError, RepositoryError
from vmguard.store import names
from vmguard.store.archive import ArchiveManifest
from vmguard.store.backend import Backend, LockMode, Retention
from vmguard.store.chunk import ChunkCodec

WORKERS = 16
"""Parallel HEAD / retention requests: S3 answers small requests in parallel well, and
the S3 backend's connection pool holds 32."""
HEAD_BELOW = 64
"""Fewer chunks than this are HEADed; more are found by listing pages."""
PAGE = 1000
"""Names per listing request (S3's largest page)."""

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class LockTarget:
    """The retentions one backup gives (format §9)."""

    mode: LockMode
    retain_until: datetime
    """The archive's own retention: its manifest and indexes; the least for its chunks."""
    chunk_until: datetime
    """What chunks are written or extended to: ``retain_until`` plus one lock period."""

    @classmethod
    def at(cls, mode: LockMode, days: int, now: datetime) -> LockTarget:
        until = now.replace(microsecond=0) + timedelta(days=days)
        return cls(mode, until, until + timedelta(days=days))

    @property
    def renew_below(self) -> datetime:
        """A chunk found by an existence check is extended when its lock ends before
        this (half a period past ``retain_until``): once per half period at most."""
        return self.retain_until + (self.chunk_until - self.retain_until) / 2

    @property
    def chunk_retention(self) -> Retention:
        return Retention(self.mode, self.chunk_until)

    @property
    def archive_retention(self) -> Retention:
        return Retention(self.mode, self.retain_until)


@dataclass
class Checked:
    """Outcome of looking at a set of chunks."""

    missing: set[bytes] = field(default_factory=set)
    """Absent or implausibly small: read them again from the source."""
    floor: datetime | None = None
    """With Object Lock: every usable chunk is retained at least until then."""
    requests: int = 0
    """Retention requests sent."""

    def add(self, other: Checked) -> None:
        self.missing |= other.missing
        self.requests += other.requests
        self.floor = earliest(self.floor, other.floor)


def earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def _parallel(func: Callable[[T], R], items: Iterable[T]) -> list[R]:
    items = list(items)
    if len(items) <= 1:
        return [func(item) for item in items]
    with ThreadPoolExecutor(min(WORKERS, len(items))) as pool:
        return list(pool.map(func, items))


def extend(backend: Backend, chunk_id: bytes, lock: LockTarget) -> Checked:
    """Extend one chunk's retention to ``lock.chunk_until``; missing → ``missing``."""
    name = names.chunk_name(chunk_id)
    try:
        backend.set_retention(name, lock.chunk_retention)
        return Checked(floor=lock.chunk_until, requests=1)
    except ObjectNotFoundError:
        return Checked(missing={chunk_id}, requests=1)
    except ObjectLockedError:
        pass  # locked longer already (a later writer extended it): see for how long
    try:
        until = backend.stat(name).retain_until
    except ObjectNotFoundError:
        return Checked(missing={chunk_id}, requests=1)
    if until is None or until < lock.retain_until:
        raise RepositoryError(f"{name}: cannot extend its Object Lock retention to {until}")
    return Checked(floor=until, requests=1)


def look(
    backend: Backend,
    codec: ChunkCodec,
    chunk_id: bytes,
    lock: LockTarget | None = None,
    need: datetime | None = None,
) -> Checked:
    """HEAD one chunk: present and plausibly sized, and (with a lock) retained until
    ``need`` (default ``lock.retain_until``) — otherwise extended: one more request."""
    try:
        info = backend.stat(names.chunk_name(chunk_id))
    except ObjectNotFoundError:
        return Checked(missing={chunk_id})
    if not codec.min_stored_size <= info.size <= codec.max_stored_size:
        return Checked(missing={chunk_id})
    if lock is None:
        return Checked()
    if info.retain_until is None or info.retain_until < (need or lock.retain_until):
        return extend(backend, chunk_id, lock)
    return Checked(floor=info.retain_until)


def _walk(backend: Backend, codec: ChunkCodec, wanted: Sequence[str]) -> set[bytes]:
    """Missing or implausible chunks among ``wanted`` (sorted chunk object names), found
    by listing pages that start just before the next name not yet decided."""
    missing: set[bytes] = set()
    low, high = codec.min_stored_size, codec.max_stored_size
    i = 0
    while i < len(wanted):
        # Dropping the last digit gives a string just before the name: the page starts at
        # most 15 names early, so it always reaches wanted[i].
        page = backend.list_page(names.CHUNKS, wanted[i][:-1], PAGE)
        sizes = {info.name: info.size for info in page}
        last = page[-1].name if len(page) == PAGE else None  # None: nothing further
        while i < len(wanted) and (last is None or wanted[i] <= last):
            size = sizes.get(wanted[i])
            if size is None or not low <= size <= high:
                chunk_id = names.chunk_id_from_name(wanted[i])
                assert chunk_id is not None
                missing.add(chunk_id)
            i += 1
    return missing


def present(backend: Backend, codec: ChunkCodec, chunks: set[bytes]) -> Checked:
    """Which of ``chunks`` are missing or implausibly small (no retention looked at)."""
    result = Checked()
    if len(chunks) < HEAD_BELOW:
        for one in _parallel(lambda c: look(backend, codec, c), chunks):
            result.add(one)
        return result
    wanted = sorted(names.chunk_name(c) for c in chunks)
    # Contiguous runs, walked in parallel when there are many pages' worth of names.
    runs = max(1, min(WORKERS, len(wanted) // (2 * PAGE)))
    step = -(-len(wanted) // runs)
    parts = [wanted[k : k + step] for k in range(0, len(wanted), step)]
    for found in _parallel(lambda part: _walk(backend, codec, part), parts):
        result.missing |= found
    return result


def check_carried(
    backend: Backend,
    codec: ChunkCodec,
    chunks: set[bytes],
    added: set[bytes],
    parent: ArchiveManifest,
    lock: LockTarget | None,
) -> Checked:
    """Check the chunks a backup takes from ``parent`` (``chunks``), of which the parent
    added ``added`` (a subset) since its own parent (format §8.1, §9).

    Only ``added`` is looked at for presence. With a lock, the parent's
    ``lock_horizon`` covers every chunk when it reaches our ``retain_until`` (the claim
    lock-check audits); otherwise every chunk is extended instead, which also proves
    it is there.
    """
    horizon = parent.lock_horizon
    if lock is not None and (horizon is None or horizon < lock.retain_until):
        result = Checked()
        for one in _parallel(lambda c: extend(backend, c, lock), chunks):
            result.add(one)
        return result
    result = present(backend, codec, added)
    result.floor = horizon if lock is not None else None
    return result
