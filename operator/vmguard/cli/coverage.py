"""The coverage view's pure part: every VM, its effective policy, last good backup and
RPO state, built from VCenter, VMProtectionPolicy and VMGuardBackup objects.

Where each thing comes from:

- **The VMs and their effective policy**: each VCenter's ``status.vmList``, written by
  the operator's sweep (:mod:`vmguard.controller.vcenter.vmlist`): every VM it found, the
  unprotected ones included.
- **The last good backup**: the VM's ProtectedVM (its ``lastGoodPoint``: one record per
  VM, :func:`point_records`), or a newer ``Completed`` VMGuardBackup (by
  ``completionTime``) — VMGuardBackups are backup runs that expire, so they add only what
  ran within their TTL. Under any policy; a VM is identified by vCenter and instance
  UUID (label ``vmguard.io/vm`` or ``spec.vm.instanceUuid``).
- **The last verification**: the newest ended verification of any of the VM's points,
  from the ProtectedVM's ``points[].verification`` or a VMGuardBackup's
  ``status.verification`` (its result, when it ended, and the backup or archive it
  verified; docs/verification.md).
- **The RPO**: the policy's ``spec.rpo``, else twice the longest gap between two runs of
  its schedule (the rule of the policy controller's ``vmsOutsideRPO``).

RPO states: ``unprotected`` (no policy), ``breached`` (the last good backup is older
than the RPO), ``never`` (never backed up), ``unknown`` (the policy object is gone or
its schedule does not parse), ``ok``, and ``gone`` for a VM that still has backups but
was not in its vCenter's complete list at the last sweep. A vCenter whose list is
missing (never swept) or truncated still shows its VMs that have backups, with the
policy of their newest backup, and a note says what cannot be shown.

Names are shown as a person typed them: vSphere escapes ``%``, ``/`` and ``\\`` in
names as ``%25``, ``%2f``, ``%5c`` (:func:`unescape_name`); the JSON output keeps the
escaped form too. Nothing here does I/O.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vmguard.api import (
    ANNOTATION_VM_NAME,
    LABEL_VCENTER,
    LABEL_VM,
    BackupPhase,
    VerificationPhase,
    format_time,
    parse_duration,
    parse_time,
)
from vmguard.controller.kube.schedule import parse
from vmguard.controller.vcenter.vmlist import read_vm_list
from vmguard.errors import VmguardError

UNPROTECTED, BREACHED, NEVER, UNKNOWN, OK, GONE = (
    "unprotected",
    "breached",
    "never",
    "unknown",
    "ok",
    "gone",
)
STATES = (UNPROTECTED, BREACHED, NEVER, UNKNOWN, OK, GONE)
"""Every RPO state, in the order rows are shown: what needs attention first."""

_ESCAPE = re.compile(r"%(25|2[fF]|5[cC])")
_UNESCAPED = {"25": "%", "2f": "/", "5c": "\\"}


def unescape_name(name: str) -> str:
    """A vSphere name as typed: ``web%2ffrontend`` → ``web/frontend``, ``50%25`` → ``50%``.

    One pass, so ``%252f`` (a literal ``%2f`` in the name) becomes ``%2f``, not ``/``.
    """
    return _ESCAPE.sub(lambda m: _UNESCAPED[m.group(1).lower()], name)


def policy_rpo(spec: Mapping[str, Any]) -> dt.timedelta | None:
    """``spec.rpo``, else twice the schedule's longest gap; None when neither parses."""
    try:
        seconds = parse_duration(spec.get("rpo"), 0.0)
        if seconds:
            return dt.timedelta(seconds=seconds)
        sched = spec.get("schedule") or {}
        return parse(sched.get("cron", ""), sched.get("timeZone") or "UTC").default_rpo()
    except VmguardError:
        return None


def rpo_state(
    policy: Mapping[str, Any] | None,
    protected: bool,
    last: dt.datetime | None,
    now: dt.datetime,
) -> tuple[str, dt.timedelta | None]:
    """The RPO state of a VM and its RPO; ``policy`` is its policy object, if it exists."""
    if not protected:
        return UNPROTECTED, None
    rpo = policy_rpo(policy.get("spec") or {}) if policy is not None else None
    if last is None:
        return NEVER, rpo
    if rpo is None:
        return UNKNOWN, None
    return (OK if now - last <= rpo else BREACHED), rpo


@dataclass(frozen=True)
class VMRow:
    namespace: str
    vcenter: str
    name: str
    """As vSphere shows it (escaped); :attr:`vm` is the name to show."""
    instance_uuid: str
    moref: str
    policy: str | None
    rpo_state: str
    rpo: dt.timedelta | None = None
    by_default: bool = False
    policy_deleted: bool = False
    power_state: str = ""
    folder: str = ""
    last_backup: dt.datetime | None = None
    last_backup_name: str = ""
    verified: dt.datetime | None = None
    """When the newest verification of one of the VM's points ended."""
    verification: str = ""
    """That verification's result (Passed, Failed, Infected, Error)."""
    verified_name: str = ""
    """The backup run (or archive id) whose point it verified."""
    listed: bool = True
    """False when the row comes from VMGuardBackups alone (the vCenter's list lacks the VM)."""

    @property
    def vm(self) -> str:
        return unescape_name(self.name)

    def doc(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "vcenter": self.vcenter,
            "vm": self.vm,
            "inventoryName": self.name,
            "instanceUuid": self.instance_uuid,
            "moref": self.moref or None,
            "powerState": self.power_state or None,
            "folder": self.folder or None,
            "policy": self.policy,
            "byDefault": self.by_default,
            "policyDeleted": self.policy_deleted,
            "lastGoodBackup": self.last_backup_name or None,
            "lastGoodBackupTime": format_time(self.last_backup) if self.last_backup else None,
            "rpoSeconds": int(self.rpo.total_seconds()) if self.rpo else None,
            "rpoState": self.rpo_state,
            "lastVerification": {
                "result": self.verification,
                "time": format_time(self.verified),
                "backup": self.verified_name,
            }
            if self.verified
            else None,
            "listed": self.listed,
        }


@dataclass(frozen=True)
class VCenterCoverage:
    """What one VCenter's status says of its sweep."""

    namespace: str
    vcenter: str
    reachable: bool
    last_sweep: str
    discovered: int
    unprotected: int
    listed: int
    truncated: bool
    has_list: bool

    def doc(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "vcenter": self.vcenter,
            "reachable": self.reachable,
            "lastSweepTime": self.last_sweep or None,
            "discovered": self.discovered,
            "unprotected": self.unprotected,
            "listed": self.listed if self.has_list else None,
            "truncated": self.truncated,
        }


@dataclass
class Coverage:
    rows: list[VMRow] = field(default_factory=list)
    vcenters: list[VCenterCoverage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATES}
        for r in self.rows:
            out[r.rpo_state] += 1
        return out

    def doc(self) -> dict[str, Any]:
        summary: dict[str, int] = {"vms": len(self.rows), **self.counts()}
        summary["byDefault"] = sum(1 for r in self.rows if r.by_default)
        return {
            "vms": [r.doc() for r in self.rows],
            "vcenters": [v.doc() for v in self.vcenters],
            "summary": summary,
            "notes": self.notes,
        }


@dataclass
class _History:
    """What a VM's VMGuardBackups say: its newest identity and policy, its last good backup."""

    vcenter: str
    uuid: str
    name: str = ""
    moref: str = ""
    named_at: dt.datetime | None = None
    policy: str = ""
    policy_at: dt.datetime | None = None
    last: dt.datetime | None = None
    last_name: str = ""
    verified: dt.datetime | None = None
    verification: str = ""
    verified_name: str = ""


def _ns(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("namespace", ""))


def point_records(protected_vms: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One Completed VMGuardBackup-shaped record per ProtectedVM with a good point: its
    ``lastGoodPoint`` (named after the run that made it, else the archive id), under the
    ProtectedVM's policy; and one of its newest verified point, good or not — what
    :func:`histories` reads (pure)."""
    out = []
    for pvm in protected_vms:
        meta, status = pvm.get("metadata") or {}, pvm.get("status") or {}
        good = status.get("lastGoodPoint") or {}
        vm = dict(status.get("vm") or {})
        if not vm.get("instanceUuid"):
            continue
        # With no good point left too: that is when its newest verification matters.
        out += _verified_record(meta, status, vm)
        if not good.get("time"):
            continue
        made_by = next(
            (
                p.get("backup")
                for p in status.get("points") or []
                if p.get("archiveId") == good.get("archiveId")
            ),
            None,
        )
        out.append(
            {
                "metadata": {
                    "name": made_by or good.get("archiveId", ""),
                    "namespace": meta.get("namespace", ""),
                    "creationTimestamp": good["time"],
                    "labels": {LABEL_VM: str(vm["instanceUuid"]).lower()},
                },
                "spec": {"policyRef": {"name": status.get("policy", "")}, "vm": vm},
                "status": {
                    "phase": BackupPhase.COMPLETED,
                    "completionTime": good["time"],
                    "vcenter": status.get("vcenter", ""),
                    "vm": vm,
                },
            }
        )
    return out


def _verified_record(
    meta: Mapping[str, Any], status: Mapping[str, Any], vm: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The ProtectedVM's newest verified point as a VMGuardBackup-shaped record that says
    only that (no phase: it is no backup of its own), or none."""
    newest = max(
        (p for p in status.get("points") or [] if (p.get("verification") or {}).get("time")),
        key=lambda p: (
            parse_time(p["verification"]["time"]) or dt.datetime.min.replace(tzinfo=dt.UTC)
        ),
        default=None,
    )
    if newest is None:
        return []
    v = newest["verification"]
    return [
        {
            "metadata": {
                "name": newest.get("backup") or newest.get("archiveId", ""),
                "namespace": meta.get("namespace", ""),
                "creationTimestamp": newest.get("time"),
                "labels": {LABEL_VM: str(vm["instanceUuid"]).lower()},
            },
            "spec": {"policyRef": {"name": status.get("policy", "")}, "vm": dict(vm)},
            "status": {
                "vcenter": status.get("vcenter", ""),
                "verification": {
                    "phase": VerificationPhase.COMPLETED,
                    "time": v["time"],
                    "result": v.get("result", ""),
                },
            },
        }
    ]


def histories(
    backups: Iterable[Mapping[str, Any]], policies: Mapping[tuple[str, str], Mapping[str, Any]]
) -> dict[tuple[str, str, str], _History]:
    """``(namespace, vcenter, instance UUID)`` → what the VM's backups say."""
    out: dict[tuple[str, str, str], _History] = {}
    for b in backups:
        meta = b.get("metadata") or {}
        spec, status = b.get("spec") or {}, b.get("status") or {}
        labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
        ids = {**(spec.get("vm") or {}), **(status.get("vm") or {})}
        uuid = str(labels.get(LABEL_VM) or ids.get("instanceUuid") or "").lower()
        if not uuid:  # an ad-hoc backup named only by VM name: not attributable
            continue
        policy = (spec.get("policyRef") or {}).get("name", "")
        pol_spec = (policies.get((_ns(b), policy)) or {}).get("spec") or {}
        vcenter = str(
            status.get("vcenter")
            or labels.get(LABEL_VCENTER)
            or (spec.get("vcenterRef") or {}).get("name")
            or (pol_spec.get("vcenterRef") or {}).get("name")
            or ""
        )
        h = out.setdefault((_ns(b), vcenter, uuid), _History(vcenter, uuid))
        created = parse_time(meta.get("creationTimestamp"))
        if created is None or h.named_at is None or created >= h.named_at:
            h.named_at = created
            h.name = str(ids.get("name") or notes.get(ANNOTATION_VM_NAME) or h.name)
            h.moref = str(ids.get("moref") or h.moref)
        if policy and (h.policy_at is None or (created and created >= h.policy_at)):
            h.policy, h.policy_at = policy, created
        if status.get("phase") == BackupPhase.COMPLETED:
            done = parse_time(status.get("completionTime")) or created
            if done and (h.last is None or done > h.last):
                h.last, h.last_name = done, str(meta.get("name", ""))
        verification = status.get("verification") or {}
        if verification.get("phase") == VerificationPhase.COMPLETED:
            ended = parse_time(verification.get("time"))
            if ended and (h.verified is None or ended > h.verified):
                h.verified, h.verified_name = ended, str(meta.get("name", ""))
                h.verification = str(verification.get("result") or "")
    return out


def build_coverage(
    vcenters: Iterable[Mapping[str, Any]],
    policies: Iterable[Mapping[str, Any]],
    backups: Iterable[Mapping[str, Any]],
    now: dt.datetime,
) -> Coverage:
    """The coverage from VCenter, VMProtectionPolicy and VMGuardBackup objects. Pure."""
    by_policy = {(_ns(p), p["metadata"]["name"]): p for p in policies}
    past = histories(backups, by_policy)
    out = Coverage()
    complete: set[tuple[str, str]] = set()  # vCenters whose list names every VM
    for vc in sorted(vcenters, key=lambda v: (_ns(v), v["metadata"]["name"])):
        ns, name = _ns(vc), str(vc["metadata"]["name"])
        status = vc.get("status") or {}
        listing = read_vm_list(status)
        counts = status.get("vms") or {}
        out.vcenters.append(
            VCenterCoverage(
                ns,
                name,
                bool(status.get("reachable")),
                str(status.get("lastSweepTime") or ""),
                int(counts.get("discovered") or listing.total),
                int(counts.get("unprotected") or 0),
                len(listing.vms),
                listing.truncated,
                listing.present,
            )
        )
        where = f"vCenter {ns}/{name}"
        if not listing.present:
            out.notes.append(f"{where}: no VM list yet (not swept); only VMs with backups shown")
        elif listing.truncated:
            out.notes.append(
                f"{where}: {listing.total - len(listing.vms)} of {listing.total} VMs not in its "
                "list (status.vmList is capped); only those with backups are shown"
            )
        else:
            complete.add((ns, name))
        if listing.present and status.get("reachable") is False:
            out.notes.append(f"{where}: the last sweep failed; VMs as of the sweep before")
        for vm in listing.vms:
            h = past.pop((ns, name, vm.instance_uuid), None)
            pol = by_policy.get((ns, vm.policy)) if vm.policy else None
            state, rpo = rpo_state(pol, vm.policy is not None, h.last if h else None, now)
            if vm.policy and pol is None:
                state = UNKNOWN
            out.rows.append(
                VMRow(
                    ns,
                    name,
                    vm.name,
                    vm.instance_uuid,
                    vm.moref,
                    vm.policy,
                    state,
                    rpo,
                    by_default=vm.by_default,
                    policy_deleted=bool(vm.policy) and pol is None,
                    power_state=vm.power_state,
                    folder=vm.folder,
                    last_backup=h.last if h else None,
                    last_backup_name=h.last_name if h else "",
                    **_verification_of(h),
                )
            )
    for (ns, vcenter, uuid), h in past.items():  # VMs known only from their backups
        pol = by_policy.get((ns, h.policy)) if h.policy else None
        state, rpo = rpo_state(pol, True, h.last, now)
        if (ns, vcenter) in complete:
            state = GONE
        elif h.policy and pol is None:
            state = UNKNOWN
        out.rows.append(
            VMRow(
                ns,
                vcenter,
                h.name or uuid,
                uuid,
                h.moref,
                h.policy or None,
                state,
                rpo,
                policy_deleted=bool(h.policy) and pol is None,
                last_backup=h.last,
                last_backup_name=h.last_name,
                **_verification_of(h),
                listed=False,
            )
        )
    order = {s: i for i, s in enumerate(STATES)}
    out.rows.sort(
        key=lambda r: (r.namespace, r.vcenter, order[r.rpo_state], r.vm.casefold(), r.name)
    )
    return out


def _verification_of(h: _History | None) -> dict[str, Any]:
    if h is None or h.verified is None:
        return {}
    return {
        "verified": h.verified,
        "verification": h.verification,
        "verified_name": h.verified_name,
    }


def summary_line(coverage: Coverage) -> str:
    """``24 VMs: 20 ok, 1 breached, 2 never backed up, 1 unprotected; …``."""
    counts = coverage.counts()
    words = {NEVER: "never backed up", UNKNOWN: "unknown RPO", GONE: "gone from vCenter"}
    parts = [
        f"{counts[s]} {words.get(s, s)}"
        for s in (OK, BREACHED, NEVER, UNPROTECTED, UNKNOWN, GONE)
        if counts[s] or s in (OK, BREACHED, NEVER, UNPROTECTED)
    ]
    line = f"{len(coverage.rows)} VMs: " + ", ".join(parts)
    by_default = sum(1 for r in coverage.rows if r.by_default)
    if by_default:
        line += f"; {by_default} protected only by a default policy"
    return line
