"""The VCenter controller: connect, sweep the inventory, give every VM its policy.

One sweep = log in with the referenced credentials and trust, read every VM in one
paged pass (plus its tags over the vSphere Automation REST API), then match the VMs
against the namespace's ``VMProtectionPolicy`` objects of this vCenter
(:func:`vmguard.vsphere.matching.assign`). The outcome lands in the VCenter's status
(reachability, version, VM counts, conditions, and the compact per-VM list of
:mod:`.vmlist`, sent only when it changed) and each policy's ``matchedVMs``.
VMs that no policy selects and no default policy catches are *unprotected*: counted,
named in the ``Protected`` condition, and announced by a warning event when they
first appear. VMs for which vSphere reports ``consolidationNeeded`` (a snapshot removal
left delta disks behind, ours or anyone's) are counted and named in the
``Consolidated`` condition: reported, never ignored (the snapshot cycle consolidates the
VMs it backs up when their policy allows; see docs/snapshot-cycle.md).

Blocking vSphere calls run in a thread; nothing here touches disk data. A sweep that
fails sets ``Reachable=False`` with a reason and is retried at the next interval: a
bad spec or a missing Secret never crash-loops the operator.
``Stalled``/``Reconciling`` follow ``Ready`` (:func:`..kube.conditions.standing_conditions`):
kstatus reads a vCenter that cannot be swept as Failed until a sweep succeeds. Before the
first sweep of a VCenter whose ``Ready`` was never decided, ``Ready`` is Unknown
(``Sweeping``, :func:`first_sweep_status`): a first sweep can take long (a large
inventory, a vCenter slow to answer), and kstatus would read an object without status as
Current.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from vmguard.api import format_time
from vmguard.api.kinds import POLICY
from vmguard.controller.kube.access import endpoint_for
from vmguard.controller.kube.conditions import (
    get_condition,
    set_condition,
    standing_conditions,
)
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.vcenter.vmlist import build_vm_list, changed
from vmguard.errors import ConfigError, PermanentError, VmguardError
from vmguard.store.clock import Clock, SystemClock
from vmguard.vsphere.matching import MatchResult, PolicyRef, assign
from vmguard.vsphere.records import VMRecord
from vmguard.vsphere.session import Endpoint

UNPROTECTED_LISTED = 20  # names in a condition message; the count is always exact


@dataclass
class SweepOutcome:
    status: dict[str, Any]
    unprotected: list[VMRecord] = field(default_factory=list)
    matched: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    # Set when the sweep succeeded: every VM's assignment, and the policies it used.
    result: MatchResult | None = None
    policies: list[dict[str, Any]] = field(default_factory=list)
    records: list[VMRecord] = field(default_factory=list)
    endpoint: Endpoint | None = None


def _read_inventory(ep: Endpoint) -> tuple[dict[str, str], list[VMRecord]]:
    """Blocking: log in, read the about info, the tags and every VM; log out."""
    from vmguard.vsphere.inventory import discover
    from vmguard.vsphere.session import connect, disconnect
    from vmguard.vsphere.tags import TagClient

    si = connect(ep)
    try:
        about = si.content.about
        info = {
            "version": str(about.version or ""),
            "build": str(about.build or ""),
            "instanceUuid": str(about.instanceUuid or ""),
        }
        with TagClient(ep) as tags:
            vm_tags = tags.vm_tags()
        return info, discover(si, vm_tags)
    finally:
        disconnect(si)


def summarise(
    vcenter: str, records: list[VMRecord], policies: list[dict[str, Any]]
) -> tuple[MatchResult, dict[str, int]]:
    refs = [PolicyRef.from_object(p) for p in policies]
    vms = [r for r in records if not r.template]
    result = assign(vms, refs, vcenter)
    matched = {r.name: 0 for r in refs if r.vcenter == vcenter}
    for a in result.assignments:
        if a.policy is not None:
            matched[a.policy] = matched.get(a.policy, 0) + 1
    return result, matched


def first_sweep_status(body: dict[str, Any]) -> dict[str, Any] | None:
    """Pure: the status to write before the first sweep of a VCenter whose ``Ready`` was
    never decided (``Ready=Unknown``, ``Reconciling=True``); None when it was."""
    conditions = (body.get("status") or {}).get("conditions") or []
    if get_condition(conditions, "Ready"):
        return None
    generation = body["metadata"].get("generation")
    text = "the first sweep is under way"
    conditions = set_condition(conditions, "Ready", None, "Sweeping", text, generation)
    conditions = standing_conditions(conditions, generation)
    return {"observedGeneration": generation, "conditions": conditions}


async def sweep(
    api: KubeAPI,
    body: dict[str, Any],
    interval: float,
    clock: Clock | None = None,
    wake: asyncio.Event | None = None,
) -> SweepOutcome:
    """One sweep; ``interval`` is the wait until the next (``nextSweepTime``), and
    ``clock`` the controller's (controller/kube/timing.py). ``wake`` (the sweeper's: a
    policy changed) is cleared just before the policies are read: a change that woke the
    sweeper before then is matched by this sweep, and only a later one calls for another
    (at a start kopf sees every policy applied while no operator ran as created, and each
    woke the sweeper during its first sweep: a second sweep at once, and every policy's
    pass again on it; docs/scale.md)."""
    meta, spec = body["metadata"], body["spec"]
    name, namespace = meta["name"], meta["namespace"]
    generation = meta.get("generation")
    old_status = body.get("status") or {}
    conditions = old_status.get("conditions") or []
    clock = clock or SystemClock()
    started = clock.monotonic()
    try:
        ep = await endpoint_for(api, namespace, spec)
        info, records = await asyncio.to_thread(_read_inventory, ep)
        if wake is not None:
            wake.clear()
        policies = await api.list_objects(POLICY.plural, namespace)
    except VmguardError as exc:
        reason = (
            "InvalidConfiguration"
            if isinstance(exc, (ConfigError, PermanentError))
            else "Unreachable"
        )
        conditions = set_condition(conditions, "Reachable", False, reason, str(exc), generation)
        conditions = set_condition(conditions, "Ready", False, reason, str(exc), generation)
        conditions = standing_conditions(conditions, generation)
        return SweepOutcome(
            {"observedGeneration": generation, "reachable": False, "conditions": conditions}
        )
    except Exception as exc:  # an unexpected fault must not kill the sweeper
        message = f"{type(exc).__name__}: {exc}"
        conditions = set_condition(
            conditions, "Reachable", False, "SweepFailed", message, generation
        )
        conditions = set_condition(conditions, "Ready", False, "SweepFailed", message, generation)
        conditions = standing_conditions(conditions, generation)
        return SweepOutcome(
            {"observedGeneration": generation, "reachable": False, "conditions": conditions}
        )

    result, matched = summarise(name, records, policies)
    unprotected = result.unprotected
    by_default = sum(1 for a in result.assignments if a.reason == "Default")
    discovered = sum(1 for r in records if not r.template)
    conditions = set_condition(
        conditions,
        "Reachable",
        True,
        "Connected",
        f"vCenter {info['version']} answered",
        generation,
    )
    if unprotected:
        message = "VM(s) have no policy and there is no default policy"
        message = _listing(unprotected, message)
        conditions = set_condition(
            conditions, "Protected", False, "UnprotectedVMs", message, generation
        )
    else:
        conditions = set_condition(
            conditions,
            "Protected",
            True,
            "AllVMsProtected",
            "every VM has an effective policy",
            generation,
        )
    if result.problems:
        conditions = set_condition(
            conditions,
            "PoliciesConsistent",
            False,
            "PolicyConflict",
            "; ".join(result.problems),
            generation,
        )
    else:
        conditions = set_condition(
            conditions,
            "PoliciesConsistent",
            True,
            "NoConflict",
            "policies are consistent",
            generation,
        )
    unconsolidated = [r for r in records if r.consolidation_needed]
    if unconsolidated:
        message = _listing(unconsolidated, "VM(s) need their disks consolidated")
        conditions = set_condition(
            conditions, "Consolidated", False, "ConsolidationNeeded", message, generation
        )
    else:
        conditions = set_condition(
            conditions,
            "Consolidated",
            True,
            "NoneNeeded",
            "no VM needs its disks consolidated",
            generation,
        )
    conditions = set_condition(conditions, "Ready", True, "Swept", "inventory swept", generation)
    conditions = standing_conditions(conditions, generation)
    status = {
        "observedGeneration": generation,
        "reachable": True,
        **info,
        "vms": {
            "discovered": discovered,
            "protected": discovered - len(unprotected),
            "protectedByDefault": by_default,
            "unprotected": len(unprotected),
            "consolidationNeeded": len(unconsolidated),
        },
        "lastSweepTime": format_time(clock.now()),
        "lastSweepDurationSeconds": int(clock.monotonic() - started),
        "nextSweepTime": format_time(clock.now() + dt.timedelta(seconds=interval)),
        "conditions": conditions,
    }
    vm_list = build_vm_list(result.assignments)
    if changed(old_status, vm_list):  # a merge patch without the key keeps the stored list
        status["vmList"] = vm_list
    return SweepOutcome(
        status, unprotected, matched, result.problems, result, policies, records, ep
    )


def _listing(vms: list[VMRecord], what: str) -> str:
    """``3 <what>: a, b, c``, naming at most UNPROTECTED_LISTED of them."""
    names = ", ".join(vm.name for vm in vms[:UNPROTECTED_LISTED])
    more = len(vms) - UNPROTECTED_LISTED
    return f"{len(vms)} {what}: {names}" + (f" and {more} more" if more > 0 else "")
