"""Naming an archive the way people do: by id, or by VM and point in time.

``select_archive(repo, "ab3k…-20250131T120000Z-x7k2m9qa")`` is the archive with that
id; ``select_archive(repo, "web01@latest")`` (or just ``"web01"``) the newest archive of
the VM whose name or id is ``web01``; ``"web01@2025-01-31T12:00"`` the newest one that
started at or before that time (ISO 8601, UTC unless it carries an offset).
Invariants:

- An archive id is recognised by its syntax and never confused with a VM name.
- A VM is matched by its id first (cheap: the id gives the tag, format §1.1), then by
  its name, which lives only in manifests: one manifest per VM tag is read (the newest).
  Several VMs with the same name is an error that lists their ids, never a guess.
- Times compare with the archive's start time, which its id carries.
"""

from __future__ import annotations

from datetime import datetime

from vmguard.api import parse_time
from vmguard.errors import ConfigError, RepositoryError
from vmguard.store import names
from vmguard.store.archive import ArchiveManifest
from vmguard.store.repository import ArchiveRef, Repository

LATEST = "latest"


def parse_when(text: str) -> datetime | None:
    """None for ``latest``, else an aware UTC datetime; ConfigError if unreadable."""
    if text in ("", LATEST):
        return None
    when = parse_time(text)
    if when is None:
        raise ConfigError(f"not an ISO 8601 time or 'latest': {text!r}")
    return when


def select_archive(repo: Repository, spec: str) -> ArchiveManifest:
    """The manifest of the archive ``spec`` names (see the module docstring)."""
    if names.is_archive_id(spec):
        return repo.load_archive(spec)
    return repo.load_archive(select_points(repo, spec)[-1].archive_id)


def select_points(repo: Repository, spec: str) -> list[ArchiveRef]:
    """Every archive of the VM ``spec`` names (``VM[@latest|@ISO-TIME]``) that started at
    or before its time, oldest first; RepositoryError when there is none. A search that
    walks back from a point (``vmguard verify --latest-clean``) starts from the last."""
    vm, _, when_text = spec.rpartition("@") if "@" in spec else (spec, "", LATEST)
    if not vm:
        raise ConfigError(f"no VM name in {spec!r}: use VM[@latest|@ISO-TIME] or an archive id")
    when = parse_when(when_text)
    refs = _archives_of(repo, vm)
    if when is not None:
        refs = [r for r in refs if r.started <= when]
    if not refs:
        at = "" if when is None else f" at or before {when.isoformat()}"
        raise RepositoryError(f"no archive of VM {vm!r}{at}")
    return refs


def _archives_of(repo: Repository, vm: str) -> list[ArchiveRef]:
    by_id = repo.list_archives(vm)
    if by_id:
        return by_id
    every = repo.list_archives()
    newest: dict[str, ArchiveRef] = {}
    for ref in every:
        newest[ref.vm_tag] = ref  # sorted oldest first: the last one wins
    matches: dict[str, str] = {}
    for tag, ref in newest.items():
        manifest = repo.load_archive(ref.archive_id)
        if manifest.vm.name == vm:
            matches[tag] = manifest.vm.id
    if len(matches) > 1:
        ids = ", ".join(sorted(matches.values()))
        raise ConfigError(f"several VMs are named {vm!r} (ids: {ids}); name one by its id")
    if not matches:
        return []
    tag = next(iter(matches))
    return [r for r in every if r.vm_tag == tag]
