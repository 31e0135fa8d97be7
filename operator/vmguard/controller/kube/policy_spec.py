"""What other kinds read from a VMProtectionPolicy's spec (pure).

The policy's own controller (:mod:`vmguard.controller.policy`) reads the whole spec; a
backup and the vCenter's orphan-snapshot sweep only need to know whether the policy lets
vmguard consolidate a VM's disks after removing a snapshot, and a finished backup how
long it stays (:func:`backup_ttl`). Those readings live here, below the kinds, so that
neither imports the policy package and all read them alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmguard.api import DEFAULT_BACKUP_TTL


def consolidation_allowed(policy_spec: Mapping[str, Any]) -> bool:
    """``spec.snapshot.consolidate`` of a policy (default true)."""
    return bool((policy_spec.get("snapshot") or {}).get("consolidate", True))


def backup_ttl(backup_spec: Mapping[str, Any], policy_spec: Mapping[str, Any] | None) -> int:
    """Seconds a finished VMGuardBackup stays: its own ``spec.ttlSecondsAfterFinished``,
    else its policy's, else :data:`~vmguard.api.DEFAULT_BACKUP_TTL` (24 h)."""
    for spec in (backup_spec, policy_spec or {}):
        ttl = spec.get("ttlSecondsAfterFinished")
        if isinstance(ttl, int) and ttl >= 0:
            return ttl
    return DEFAULT_BACKUP_TTL
