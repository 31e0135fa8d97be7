"""Typed views of the vmguard objects the controller reads from the apiserver.

An object arrives from the (untyped) Kubernetes client as a plain dictionary. Its
status was written by the controller and the proxy Job as the ``TypedDict``s of
:mod:`vmguard.api.status`, its spec admitted against the CRD that
:mod:`vmguard.api.spec` mirrors, and the CRD's schema holds both to those shapes, so
these functions are the one place where the controller takes that on trust (a
``cast``): past them, mypy checks every key the controller reads.

Invariant: a view is the object's own dictionary, not a copy (a status patched in place
reads back through it), or an empty one when the object has no status yet; any key may
be missing (statuses are written piecewise by merge patches).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from vmguard.api import BackupSpec, BackupStatus, LocalRef, ObjectRef, RestoreStatus


def backup_status(obj: Mapping[str, Any]) -> BackupStatus:
    """The status of a VMGuardBackup (empty when it has none yet)."""
    return cast(BackupStatus, obj.get("status") or {})


def restore_status(obj: Mapping[str, Any]) -> RestoreStatus:
    """The status of a VMGuardRestore (empty when it has none yet)."""
    return cast(RestoreStatus, obj.get("status") or {})


def backup_spec(obj: Mapping[str, Any]) -> BackupSpec:
    """The spec of a VMGuardBackup (the CRD requires one; the apiserver checked it)."""
    return cast(BackupSpec, obj.get("spec") or {})


def ref_name(ref: LocalRef | ObjectRef | None) -> str | None:
    """The name a reference of a spec gives (``policyRef`` …); None without one."""
    return ref.get("name") if ref else None
