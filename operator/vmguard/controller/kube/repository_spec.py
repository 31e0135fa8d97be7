"""A VMGuardRepository's spec and the repository config it stands for (pure functions).

The VMGuardRepository controller is the one place a repository is created
(:mod:`vmguard.controller.repository.watch`); a backup never creates one. Creation
applies every spec field that the config fixes (:func:`creation_parameters`), and every later look
compares the two (:func:`spec_mismatches`): a difference is ``Ready=False`` naming the field, and a
backup into that repository fails with the same message, so a repository declared with
14 days of Object Lock is never silently written without it.

Invariants:

- ``chunkSize``, ``objectLockDays`` and ``objectLockMode`` are compared with the config
  exactly; encryption is compared by whether the key opens it (that is ``WrongKey``).
- The config's GC policy has no spec field: it must be what creation writes
  (:class:`~vmguard.store.GcPolicy` defaults) unless the key check authenticates it
  (an encrypted repository with ``authenticated-config``). So an unencrypted
  repository, or one of an earlier release, whose config was edited in the bucket is
  caught here, where no key can catch it.
- Pure: no I/O, no Kubernetes; the messages hold no secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from vmguard.store import GcPolicy, ObjectLockPolicy
from vmguard.store.backend import LockMode
from vmguard.store.config import CURRENT_FEATURES, DEFAULT_CHUNK_SIZE, RepositoryConfig

DEFAULT_LOCK_MODE: LockMode = "GOVERNANCE"


def object_lock(spec: Mapping[str, Any]) -> ObjectLockPolicy | None:
    """The Object Lock the spec asks for, or None."""
    days = spec.get("objectLockDays")
    if not days:
        return None
    mode = cast(LockMode, spec.get("objectLockMode") or DEFAULT_LOCK_MODE)
    return ObjectLockPolicy(mode, int(days))


def creation_parameters(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :meth:`vmguard.store.Repository.init` for this spec (the
    master key aside): every field the config fixes."""
    return {
        "chunk_size": int(spec.get("chunkSize") or DEFAULT_CHUNK_SIZE),
        "object_lock": object_lock(spec),
        "gc": GcPolicy(),
    }


def spec_mismatches(spec: Mapping[str, Any], config: RepositoryConfig) -> list[tuple[str, str]]:
    """(spec field, message) for every way the config differs from what the spec says."""
    out: list[tuple[str, str]] = []
    chunk = int(spec.get("chunkSize") or DEFAULT_CHUNK_SIZE)
    if config.chunk_size != chunk:
        out.append(
            (
                "chunkSize",
                f"spec.chunkSize is {chunk} but the repository's chunk size is"
                f" {config.chunk_size} (fixed when it was created; declare {config.chunk_size})",
            )
        )
    want, have = object_lock(spec), config.object_lock
    if (want.days if want else None) != (have.days if have else None):
        said = f"{want.days} days" if want else "no lock"
        found = f"{have.days} days" if have else "no Object Lock"
        out.append(
            (
                "objectLockDays",
                f"spec.objectLockDays asks for {said} but the repository's config has {found}"
                " (the lock is fixed when the repository is created)",
            )
        )
    elif want and have and want.mode != have.mode:
        out.append(
            (
                "objectLockMode",
                f"spec.objectLockMode is {want.mode} but the repository locks in {have.mode}",
            )
        )
    authenticated = config.encryption is not None and config.authenticated
    if not authenticated and config.gc != GcPolicy():
        why = (
            "it is unencrypted, so no key check covers it"
            if config.encryption is None
            else "it predates authenticated-config: `vmguard repo upgrade` adds the key check"
        )
        out.append(
            (
                "gc",
                f"the repository's config says lease ttl {config.gc.lease_ttl_seconds} s and"
                f" grace {config.gc.grace_seconds} s, not the {GcPolicy().lease_ttl_seconds} s"
                f" and {GcPolicy().grace_seconds} s this operator creates, and {why}",
            )
        )
    return out


def missing_features(config: RepositoryConfig) -> tuple[str, ...]:
    """Format features this release knows that the repository does not use yet."""
    return tuple(f for f in CURRENT_FEATURES if f not in config.features)
