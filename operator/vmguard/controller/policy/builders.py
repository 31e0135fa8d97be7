"""Pure builders of the VMGuardBackup objects a policy creates (scheduled and fail-safe).

Invariants:

- **Deterministic names.** ``<policy>-<vm>-<t><YYYYMMDDHHMM>``: the policy's name, the
  first 8 hex digits of the SHA-256 of the VM's instance UUID, ``s`` (schedule) or
  ``f`` (fail-safe), and the scheduled minute in UTC. The same run of the same VM
  always gets the same name, so a restarted operator (or a second replica) that
  creates it again gets AlreadyExists and moves on. A policy name longer than 40
  characters is cut to 31 and followed by 8 hex digits of its own hash, so names stay
  DNS-1123 labels of at most 63 characters and two long policy names never collide.
- **Labels** say whose backup it is, so lists are label-selected: ``vmguard.io/policy``,
  ``vmguard.io/vcenter``, ``vmguard.io/vm`` (the instance UUID, lower case),
  ``vmguard.io/trigger`` (``schedule`` or ``failsafe``), ``vmguard.io/run`` (the
  scheduled minute, ``20250107T0200Z``). The VM's name is free text and goes in the
  ``vmguard.io/vm-name`` annotation, never in a label or a name.
- **Owner**: the policy (``controller: true``), so deleting a policy deletes its
  VMGuardBackup objects; what happens to the archives is the VMGuardBackup controller's rule.
- **Finalizer from the start**: the operator's finalizer is in the object as created,
  as kopf would add it (a backup in flight has a deletion handler and daemons): one
  PATCH less per backup, 5,000 fewer in a night of 5,000 VMs (docs/scale.md).
- **Spec**: the VM's three ids (a moref that is not ``vm-N`` is left out: the CRD
  admits only that shape), ``policyRef``, and ``mode: full`` when the policy's
  ``mode.type`` is ``full`` (else ``auto``; ``fullEvery`` is the VMGuardBackup controller's
  decision). No secret, no free text outside the VM name.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from typing import Any

from vmguard.api import (
    ANNOTATION_VM_NAME,
    API_VERSION,
    FINALIZER,
    LABEL_POLICY,
    LABEL_RUN,
    LABEL_TRIGGER,
    LABEL_VCENTER,
    LABEL_VM,
    Trigger,
)
from vmguard.api.kinds import BACKUP, POLICY
from vmguard.vsphere.records import VMRecord

MAX_NAME = 63
_SUFFIX = len("-12345678-s202501070200")
_MOREF = re.compile(r"^vm-[0-9]{1,10}$")


def vm_hash(instance_uuid: str) -> str:
    return hashlib.sha256(instance_uuid.lower().encode()).hexdigest()[:8]


def run_label(when: dt.datetime) -> str:
    """The scheduled minute as a label value (UTC): ``20250107T0200Z``."""
    return when.astimezone(dt.UTC).strftime("%Y%m%dT%H%MZ")


def name_prefix(policy: str) -> str:
    room = MAX_NAME - _SUFFIX
    if len(policy) <= room:
        return policy
    digest = hashlib.sha256(policy.encode()).hexdigest()[:8]
    return f"{policy[: room - 9]}-{digest}"


def backup_name(policy: str, instance_uuid: str, when: dt.datetime, trigger: str) -> str:
    stamp = when.astimezone(dt.UTC).strftime("%Y%m%d%H%M")
    letter = "f" if trigger == Trigger.FAILSAFE else "s"
    return f"{name_prefix(policy)}-{vm_hash(instance_uuid)}-{letter}{stamp}"


def vm_identity(vm: VMRecord) -> dict[str, str]:
    out = {"instanceUuid": vm.instance_uuid.lower(), "name": vm.name}
    if _MOREF.match(vm.moref):
        out["moref"] = vm.moref
    return out


def build_vmbackup(
    policy: Mapping[str, Any], vm: VMRecord, when: dt.datetime, trigger: str
) -> dict[str, Any]:
    """The VMGuardBackup for ``vm`` of the run at ``when`` (or a fail-safe made at ``when``)."""
    meta, spec = policy["metadata"], policy.get("spec") or {}
    name = meta["name"]
    full = (spec.get("mode") or {}).get("type") == "full"
    return {
        "apiVersion": API_VERSION,
        "kind": BACKUP.kind,
        "metadata": {
            "name": backup_name(name, vm.instance_uuid, when, trigger),
            "namespace": meta.get("namespace"),
            "labels": {
                LABEL_POLICY: name,
                LABEL_VCENTER: (spec.get("vcenterRef") or {}).get("name", ""),
                LABEL_VM: vm.instance_uuid.lower(),
                LABEL_TRIGGER: trigger,
                LABEL_RUN: run_label(when),
            },
            "annotations": {ANNOTATION_VM_NAME: vm.name},
            "finalizers": [FINALIZER],
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": POLICY.kind,
                    "name": name,
                    "uid": meta["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": {
            "vm": vm_identity(vm),
            "policyRef": {"name": name},
            "mode": "full" if full else "auto",
        },
    }
