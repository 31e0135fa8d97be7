"""Repository statistics: archives, chunks, stored and logical bytes, dedup ratio.

One function, :func:`repository_stats`, shared by ``vmguard repo stats`` and the
operator's VMGuardRepository controller, so both report the same numbers.

Cost: one listing of ``chunks/`` (sizes come with the listing, no GET per chunk) and one
listing of ``archives/``, plus one manifest GET per archive for its logical size.
Manifests never change once committed, so a caller that asks again and again (the
operator, every minute) passes ``logical_cache`` and reads only the manifests of new
archives; entries of archives that are gone are dropped from it.

Stored bytes count live chunks only (``chunks/``): fossils awaiting a pending GC
collection, manifests and indexes are not included (they are small, or about to go).
"""

from __future__ import annotations

from dataclasses import dataclass

from vmguard.store import names
from vmguard.store.repository import Repository


@dataclass(frozen=True)
class RepositoryStats:
    archives: int
    chunks: int
    stored_bytes: int
    logical_bytes: int

    @property
    def dedup_ratio(self) -> float | None:
        """logical ÷ stored bytes; None while nothing is stored."""
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else None


def repository_stats(
    repo: Repository, logical_cache: dict[str, int] | None = None
) -> RepositoryStats:
    """Count the repository; ``logical_cache`` (archive id → logical bytes) is read and
    updated when given."""
    stored = count = 0
    for info in repo.backend.list(names.CHUNKS):
        if names.chunk_id_from_name(info.name) is None:
            continue
        stored += info.size
        count += 1
    cache = logical_cache if logical_cache is not None else {}
    ids = [ref.archive_id for ref in repo.list_archives()]
    for gone in set(cache) - set(ids):
        del cache[gone]
    for archive_id in ids:
        if archive_id not in cache:
            cache[archive_id] = repo.load_archive(archive_id).stats.logical_bytes
    logical = sum(cache[archive_id] for archive_id in ids)
    return RepositoryStats(len(ids), count, stored, logical)
