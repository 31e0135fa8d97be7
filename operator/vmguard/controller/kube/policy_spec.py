"""What other kinds read from a VMProtectionPolicy's spec (pure).

The policy's own controller (:mod:`vmguard.controller.policy`) reads the whole spec; a
backup and the vCenter's orphan-snapshot sweep only need to know whether the policy lets
vmguard consolidate a VM's disks after removing a snapshot. That one reading lives here,
below the kinds, so that neither imports the policy package and both read it alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def consolidation_allowed(policy_spec: Mapping[str, Any]) -> bool:
    """``spec.snapshot.consolidate`` of a policy (default true)."""
    return bool((policy_spec.get("snapshot") or {}).get("consolidate", True))
