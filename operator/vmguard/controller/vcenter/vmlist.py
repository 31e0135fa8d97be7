"""The per-VM list a sweep leaves in VCenter status (``status.vmList``), and its reader.

The sweep's assignment of every VM to its effective policy otherwise lives only in the
operator's memory (:mod:`~vmguard.controller.kube.sweeps`); this compact copy lets
anyone holding read access to VCenter objects (``vmguard status``, a dashboard) see every VM,
protected or not.

Invariants:

- One entry per discovered VM (templates are not VMs here), with short keys:
  ``n`` name as vSphere shows it (``%2f`` for a slash), ``u`` instance UUID (lower
  case), ``m`` moref, ``s`` power state (``on``/``off``/``suspended``), ``f`` folder
  path, ``p`` effective policy (absent: unprotected) and ``d: true`` when ``p`` is the
  default (fail-safe) policy.
- Bounded: etcd refuses objects over 1.5 MiB, so the list stops at :data:`MAX_ITEMS`
  entries or :data:`MAX_BYTES` of JSON as the apiserver stores it (UTF-8, with
  ``<``, ``>``, ``&`` escaped as ``\\u003c`` by Go's encoder), whichever comes first;
  ``truncated``/``listed``/``total`` say so. Unprotected VMs come first, then VMs only
  the default policy catches, then the rest, each group by name: when the list must be
  cut, the VMs that need attention are the ones kept. Strings are clipped to the CRD's
  maximum lengths, so a status patch is never refused for them.
- The list is an atomic list (``x-kubernetes-list-type: atomic``): server-side apply
  tracks it as one field, so ``managedFields`` does not grow with every VM.
- Deterministic: the same inventory and policies give an equal list, so the sweep
  leaves it out of its status patch when nothing changed (:func:`changed`) instead of
  rewriting up to a megabyte every interval. A failed sweep writes no list: the last
  good one stays, and ``reachable: false`` says it may be stale.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vmguard.crds.vcenter import VM_LIST_MAX_FOLDER as MAX_FOLDER
from vmguard.crds.vcenter import VM_LIST_MAX_ID as MAX_ID
from vmguard.crds.vcenter import VM_LIST_MAX_ITEMS as MAX_ITEMS
from vmguard.crds.vcenter import VM_LIST_MAX_NAME as MAX_NAME
from vmguard.crds.vcenter import VM_LIST_MAX_POLICY as MAX_POLICY
from vmguard.vsphere.matching import Assignment

MAX_BYTES = 1_000_000

_POWER = {"poweredOn": "on", "poweredOff": "off", "suspended": "suspended"}
_GROUP = {"Unprotected": 0, "Default": 1}


def entry(a: Assignment) -> dict[str, Any]:
    """One VM's entry: short keys, only what is set."""
    vm = a.vm
    out: dict[str, Any] = {
        "n": vm.name[:MAX_NAME],
        "u": vm.instance_uuid.lower()[:MAX_ID],
        "m": vm.moref[:MAX_ID],
        "s": _POWER.get(vm.power_state, vm.power_state[:16]),
    }
    if vm.folder_path:
        out["f"] = vm.folder_path[:MAX_FOLDER]
    if a.policy is not None:
        out["p"] = a.policy[:MAX_POLICY]
        if a.reason == "Default":
            out["d"] = True
    return out


def stored_size(item: Mapping[str, Any]) -> int:
    """Bytes of ``item`` as JSON in etcd: UTF-8, Go escaping ``<>&`` and U+2028/9 as
    ``\\uXXXX`` (5 bytes more than the one we count)."""
    text = json.dumps(item, ensure_ascii=False, separators=(",", ":"))
    return len(text.encode()) + 5 * sum(text.count(c) for c in "<>&\u2028\u2029")


def build_vm_list(
    assignments: Iterable[Assignment], max_items: int = MAX_ITEMS, max_bytes: int = MAX_BYTES
) -> dict[str, Any]:
    """``status.vmList`` for one sweep's assignments. Pure."""
    vms = [a for a in assignments if a.reason != "Template"]
    vms.sort(key=lambda a: (_GROUP.get(a.reason, 2), a.vm.name, a.vm.instance_uuid))
    items: list[dict[str, Any]] = []
    size = 2  # the brackets
    for a in vms:
        if len(items) >= max_items:
            break
        item = entry(a)
        cost = stored_size(item) + 1  # the comma
        if size + cost > max_bytes:
            break
        items.append(item)
        size += cost
    return {
        "total": len(vms),
        "listed": len(items),
        "truncated": len(items) < len(vms),
        "items": items,
    }


def changed(old_status: Mapping[str, Any] | None, new_list: Mapping[str, Any]) -> bool:
    """Whether ``new_list`` differs from the list already in ``old_status``."""
    return (old_status or {}).get("vmList") != new_list


@dataclass(frozen=True)
class ListedVM:
    """One entry of ``status.vmList``, with long names."""

    name: str
    instance_uuid: str
    moref: str
    power_state: str
    folder: str
    policy: str | None
    by_default: bool

    @classmethod
    def from_entry(cls, item: Mapping[str, Any]) -> ListedVM:
        return cls(
            name=str(item.get("n", "")),
            instance_uuid=str(item.get("u", "")).lower(),
            moref=str(item.get("m", "")),
            power_state=str(item.get("s", "")),
            folder=str(item.get("f", "")),
            policy=str(item["p"]) if item.get("p") else None,
            by_default=bool(item.get("d")),
        )


@dataclass(frozen=True)
class VMList:
    """What a VCenter's status says of its VMs; ``present`` is False before any sweep
    wrote a list (or when an older operator wrote the status)."""

    present: bool
    vms: list[ListedVM]
    total: int
    truncated: bool


def read_vm_list(status: Mapping[str, Any] | None) -> VMList:
    raw = (status or {}).get("vmList")
    if not isinstance(raw, Mapping):
        return VMList(False, [], 0, False)
    vms = [ListedVM.from_entry(i) for i in raw.get("items") or [] if isinstance(i, Mapping)]
    total = int(raw.get("total") or len(vms))
    return VMList(True, vms, total, bool(raw.get("truncated")) or total > len(vms))
