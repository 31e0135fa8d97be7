"""A policy's copy targets (``spec.copies``, issue 17), judged: which may receive copies.

What CEL cannot check (it sees one object) is checked here from the VMGuardRepository
objects the policy names, and reported as the policy's ``CopiesValid`` condition, never
raised. A target that fails a check receives nothing; the policy's own backups go on
(losing the copy must not cost the primary backup too). Reasons, first problem first:

- ``CopyRepositoryNotFound`` — the VMGuardRepository named does not exist;
- ``CopyTargetOverlaps`` — its bucket and prefix are the primary's, or one prefix lies
  inside the other (:func:`vmguard.store.copy.check_distinct`: a copy there would be
  the same failure domain, and its GC would see the other's objects); or, under
  another host name of the same S3 service (which no URL comparison can see), the
  repository controller found the primary's repository there: both objects'
  ``status.repositoryId`` are the same;
- ``ChunkSizeMismatch`` — its ``chunkSize`` differs from the primary's (a copy maps
  chunks by position, format §11, so the sizes must agree).

Pure: the repository objects are looked up by the caller (:func:`judge` takes them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vmguard.api import parse_duration
from vmguard.controller.kube.proxyjob import repository_url
from vmguard.errors import ConfigError
from vmguard.store.config import DEFAULT_CHUNK_SIZE
from vmguard.store.copy import check_distinct

CONDITION = "CopiesValid"
NOT_FOUND = "CopyRepositoryNotFound"
OVERLAPS = "CopyTargetOverlaps"
CHUNK_SIZE = "ChunkSizeMismatch"


@dataclass(frozen=True)
class CopyTarget:
    """A copy target that passed every check."""

    repository: str
    """The VMGuardRepository's name."""
    retention: Mapping[str, Any]
    """Its ``retention`` (the keep* counts), applied to the copies in that repository."""
    delay: float
    """Seconds after a backup's completion before it is copied."""
    credentials: Mapping[str, Any] | None = None
    """The copy Jobs' own ``credentialsSecretRef`` for the target (None: the
    repository's)."""
    bandwidth: int | None = None
    """Bytes per second each copy Job may upload to the target (None: no limit)."""
    points: str = "All"
    """Which points are copied: ``All``, ``Daily`` or ``Weekly`` (:func:`.copying.chosen`)."""


@dataclass
class TargetJudgement:
    targets: list[CopyTarget]
    problems: list[tuple[str, str]]
    """(reason, message) per refused target, in spec order."""


def chunk_size(repository_spec: Mapping[str, Any]) -> int:
    return int(repository_spec.get("chunkSize") or DEFAULT_CHUNK_SIZE)


def judge(
    policy_spec: Mapping[str, Any],
    primary: Mapping[str, Any] | None,
    repositories: Mapping[str, Mapping[str, Any] | None],
    ids: Mapping[str, str | None] | None = None,
) -> TargetJudgement:
    """``primary``: the primary VMGuardRepository's spec (None: missing, then no copy is
    judged usable); ``repositories``: name -> spec of each copy target (None: missing);
    ``ids``: name -> ``status.repositoryId`` of the primary and the targets, where known
    (a repository not opened yet has none: then its URL alone is judged)."""
    ids = ids or {}
    primary_id = ids.get((policy_spec.get("repositoryRef") or {}).get("name", ""))
    out = TargetJudgement([], [])
    for entry in policy_spec.get("copies") or ():
        name = (entry.get("repositoryRef") or {}).get("name", "")
        spec = repositories.get(name)
        if spec is None:
            out.problems.append(
                (NOT_FOUND, f"copy target VMGuardRepository {name!r} does not exist")
            )
            continue
        if primary is None:
            continue  # the policy is not Ready (RepositoryNotFound says why)
        try:
            check_distinct(repository_url(primary), repository_url(spec))
        except ConfigError as exc:
            out.problems.append((OVERLAPS, f"copy target {name}: {exc}"))
            continue
        if primary_id and ids.get(name) == primary_id:
            out.problems.append(
                (
                    OVERLAPS,
                    f"copy target {name} is the same repository as the primary ({primary_id})"
                    " under another endpoint name: a copy must live in another repository",
                )
            )
            continue
        if chunk_size(spec) != chunk_size(primary):
            out.problems.append(
                (
                    CHUNK_SIZE,
                    f"copy target {name} has chunkSize {chunk_size(spec)}, the primary"
                    f" {chunk_size(primary)}: copies need the same chunk size",
                )
            )
            continue
        out.targets.append(
            CopyTarget(
                name,
                dict(entry.get("retention") or {}),
                parse_duration(entry.get("delay"), 0.0),
                entry.get("credentialsSecretRef"),
                _bandwidth(entry.get("bandwidthLimitMiBps")),
                str(entry.get("points") or "All"),
            )
        )
    return out


def _bandwidth(mib_per_second: Any) -> int | None:
    """``bandwidthLimitMiBps`` in bytes per second (None: no limit)."""
    return int(mib_per_second) * (1 << 20) if mib_per_second else None


__all__ = [
    "CHUNK_SIZE",
    "CONDITION",
    "NOT_FOUND",
    "OVERLAPS",
    "CopyTarget",
    "TargetJudgement",
    "judge",
]
