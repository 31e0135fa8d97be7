"""Verify: check that every archive can be restored (format §8).

Two depths. *Quick* lists the store once and checks that every chunk an archive
references exists with a plausible size. *Deep* reads every referenced chunk and
checks it end to end (authentication or checksum, decompression, id hash). Both read
every manifest and index, checking each index against its manifest's hash.

Invariants:

- Every problem names the chunk (or archive) and every archive it affects, so an
  operator knows exactly which restore points are damaged.
- Every bad chunk is recorded as ``corrupt/<id>``; writers never deduplicate against
  it, so the next backup that contains it uploads it again and repairs every archive
  that references it. A deep verify that finds a marked chunk healthy clears its mark.
- Verify never deletes or rewrites chunks, indexes or manifests.
- A chunk present only as a fossil is not a problem (GC resurrects it); it is counted.
- Verify may run beside GC and prune (format §7.6): a chunk missing from both listings
  is looked for again as a reader would, and an archive pruned after it was listed is
  not checked, not reported.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from vmguard.errors import (
    ChunkCorruptError,
    ChunkMissingError,
    CorruptObjectError,
    ObjectNotFoundError,
    RepositoryError,
)
from vmguard.store import names
from vmguard.store.repository import CHUNK_READ_ROUNDS, Repository

ProblemKind = Literal["missing", "corrupt", "implausible-size"]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ChunkProblem:
    chunk_id: str
    kind: ProblemKind
    detail: str
    archives: tuple[str, ...]


@dataclass(frozen=True)
class ArchiveProblem:
    archive_id: str
    detail: str


@dataclass
class VerifyReport:
    deep: bool
    archives: int = 0
    chunks: int = 0
    bytes_read: int = 0
    fossils_referenced: int = 0
    chunk_problems: list[ChunkProblem] = field(default_factory=list)
    archive_problems: list[ArchiveProblem] = field(default_factory=list)
    marks_cleared: int = 0

    @property
    def ok(self) -> bool:
        return not self.chunk_problems and not self.archive_problems

    def affected_archives(self) -> set[str]:
        affected = {p.archive_id for p in self.archive_problems}
        for problem in self.chunk_problems:
            affected.update(problem.archives)
        return affected


def _references(
    repo: Repository, archive_ids: Iterable[str], report: VerifyReport
) -> dict[bytes, list[str]]:
    """chunk id -> archives referencing it; unreadable manifests/indexes are reported."""
    users: dict[bytes, list[str]] = defaultdict(list)
    for archive_id in archive_ids:
        report.archives += 1
        try:
            manifest = repo.load_archive(archive_id)
        except (CorruptObjectError, RepositoryError) as exc:
            if isinstance(exc, CorruptObjectError) or _committed(repo, archive_id):
                report.archive_problems.append(ArchiveProblem(archive_id, str(exc)))
            else:
                report.archives -= 1  # pruned since it was listed: nothing to check
            continue
        for disk in manifest.disks:
            try:
                index = repo.load_index(manifest, disk)
            except CorruptObjectError as exc:
                report.archive_problems.append(ArchiveProblem(archive_id, str(exc)))
                continue
            for chunk_id in index.referenced():
                users[chunk_id].append(archive_id)
    return users


def _committed(repo: Repository, archive_id: str) -> bool:
    try:
        repo.backend.stat(names.manifest_name(archive_id))
    except ObjectNotFoundError:
        return False
    return True


def _stored_size(repo: Repository, chunk_id: bytes) -> int | None:
    """Look for a chunk as GC may be moving it (copy, then delete), as a reader does."""
    for _ in range(CHUNK_READ_ROUNDS):
        for name in (names.chunk_name(chunk_id), names.fossil_name(chunk_id)):
            try:
                return repo.backend.stat(name).size
            except ObjectNotFoundError:
                continue
    return None


def _check_sizes(
    repo: Repository, users: dict[bytes, list[str]], report: VerifyReport
) -> list[tuple[bytes, ProblemKind, str]]:
    sizes: dict[bytes, int] = {}
    fossils: dict[bytes, int] = {}
    for prefix, table in ((names.CHUNKS, sizes), (names.FOSSILS, fossils)):
        for info in repo.backend.list(prefix):
            chunk_id = names.chunk_id_from_name(info.name)
            if chunk_id is not None:
                table[chunk_id] = info.size
    low, high = repo.codec.min_stored_size, repo.codec.max_stored_size
    bad: list[tuple[bytes, ProblemKind, str]] = []
    for chunk_id in users:
        size = sizes.get(chunk_id)
        if size is None and chunk_id in fossils:
            size = fossils[chunk_id]
            report.fossils_referenced += 1
        if size is None:
            size = _stored_size(repo, chunk_id)  # GC may have moved it between our listings
        if size is None:
            bad.append((chunk_id, "missing", "no chunk object"))
        elif not low <= size <= high:
            bad.append((chunk_id, "implausible-size", f"{size} bytes, expected {low}..{high}"))
    return bad


def _read_all(
    repo: Repository,
    users: dict[bytes, list[str]],
    report: VerifyReport,
    workers: int,
    progress: Progress | None,
) -> list[tuple[bytes, ProblemKind, str]]:
    def check(chunk_id: bytes) -> tuple[bytes, ProblemKind | None, str, int]:
        try:
            data = repo.read_chunk(chunk_id)
        except ChunkMissingError:
            return chunk_id, "missing", "no chunk object", 0
        except ChunkCorruptError as exc:
            return chunk_id, "corrupt", exc.reason, 0
        return chunk_id, None, "", len(data)

    bad: list[tuple[bytes, ProblemKind, str]] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for done, (chunk_id, kind, detail, size) in enumerate(pool.map(check, users), 1):
            report.bytes_read += size
            if kind is not None:
                bad.append((chunk_id, kind, detail))
            if progress:
                progress(done, len(users))
    return bad


def verify(
    repo: Repository,
    *,
    deep: bool = False,
    archive_ids: Iterable[str] | None = None,
    workers: int = 2,
    progress: Progress | None = None,
) -> VerifyReport:
    """Check the given archives (default: all) and record every bad chunk found."""
    report = VerifyReport(deep=deep)
    if archive_ids is None:
        archive_ids = [ref.archive_id for ref in repo.list_archives()]
    users = _references(repo, archive_ids, report)
    report.chunks = len(users)
    if deep:
        bad = _read_all(repo, users, report, workers, progress)
    else:
        bad = _check_sizes(repo, users, report)
    now = names.format_time(repo.clock.now())
    for chunk_id, kind, detail in sorted(bad):
        archives = tuple(sorted(set(users[chunk_id])))
        report.chunk_problems.append(ChunkProblem(chunk_id.hex(), kind, detail, archives))
        marker = {"id": chunk_id.hex(), "detected": now, "reason": f"{kind}: {detail}"}
        repo.backend.put(names.corrupt_name(chunk_id), json.dumps(marker).encode())
    if deep:
        bad_ids = {chunk_id for chunk_id, _, _ in bad}
        for info in repo.backend.list(names.CORRUPT):
            marked = names.chunk_id_from_name(info.name)
            if marked is not None and marked in users and marked not in bad_ids:
                repo.backend.delete(info.name)
                report.marks_cleared += 1
    return report
