"""``vmguard status`` (also ``kubectl vmguard status``): which VMs are covered, from the
cluster's objects alone.

One row per VM: its name, vCenter, effective policy, last good backup (the newest
``Completed`` VMBackup of that VM) and RPO state — ``ok`` (a completed backup newer than
the policy's RPO), ``breached`` (the newest is older), ``never`` (no completed backup),
``unknown`` (the policy is gone or its schedule does not parse, so there is no RPO).
Below the rows: each vCenter's unprotected VMs.

Where the VMs come from, and what that cannot show:

- The operator keeps a sweep's per-VM assignment in memory only; no object lists every
  VM a sweep saw. So the rows are the VMs that have a VMBackup (label ``vmguard.io/vm``
  or ``spec.vm.instanceUuid``; name from ``status.vm``, the ``vmguard.io/vm-name``
  annotation or ``spec.vm.name``), and the effective policy is that of the VM's newest
  backup made under a policy. A VM a policy matched but never backed up has no object
  naming it: it is counted per policy (``status.matchedVMs`` minus the VMs listed) in
  a note, not named.
- Unprotected VMs: the count is the VCenter's ``status.vms.unprotected`` (exact); the
  names are parsed from its ``Protected`` condition message, which lists at most 20
  (the rest as "and N more") and separates names by ", " — a VM name containing ", "
  is shown split. A VM that left vCenter keeps its row as long as its backups exist.

RPO is the policy's ``spec.rpo``, else twice the longest gap between two runs of its
schedule (what the policy controller's ``vmsOutsideRPO`` uses). Reading is blocking
and happens here, in the command; :func:`build_coverage` is pure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vmguard.controller.builders_policy import ANNOTATION_VM_NAME, LABEL_VCENTER, LABEL_VM
from vmguard.controller.history import COMPLETED, format_time, parse_time
from vmguard.controller.schedule import parse
from vmguard.controller.vcenter import parse_duration
from vmguard.errors import ConfigError, RetryableError, VmguardError

OK, BREACHED, NEVER, UNKNOWN = "ok", "breached", "never", "unknown"
_MORE = re.compile(r" and (\d+) more$")


@dataclass(frozen=True)
class VMRow:
    namespace: str
    vcenter: str
    vm: str
    instance_uuid: str
    moref: str
    policy: str
    last_backup: dt.datetime | None
    last_backup_name: str
    rpo: dt.timedelta | None
    rpo_state: str

    def doc(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "vcenter": self.vcenter,
            "vm": self.vm,
            "instanceUuid": self.instance_uuid,
            "moref": self.moref,
            "policy": self.policy,
            "lastGoodBackup": self.last_backup_name or None,
            "lastGoodBackupTime": format_time(self.last_backup) if self.last_backup else None,
            "rpoSeconds": int(self.rpo.total_seconds()) if self.rpo else None,
            "rpoState": self.rpo_state,
        }


@dataclass(frozen=True)
class Unprotected:
    """One vCenter's unprotected VMs at its last sweep: the exact count, the names listed."""

    namespace: str
    vcenter: str
    count: int
    names: list[str]
    last_sweep: str

    def doc(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "vcenter": self.vcenter,
            "count": self.count,
            "names": self.names,
            "lastSweepTime": self.last_sweep or None,
        }


@dataclass
class Coverage:
    rows: list[VMRow] = field(default_factory=list)
    unprotected: list[Unprotected] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def doc(self) -> dict[str, Any]:
        return {
            "vms": [r.doc() for r in self.rows],
            "unprotected": [u.doc() for u in self.unprotected],
            "notes": self.notes,
        }


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


def unprotected_names(message: str) -> list[str]:
    """The VM names of a ``Protected=False`` condition message (see the module docstring)."""
    _, sep, listed = message.partition(": ")
    if not sep:
        return []
    listed = _MORE.sub("", listed)
    return [n for n in listed.split(", ") if n]


@dataclass
class _VM:
    namespace: str
    uuid: str
    vcenter: str = ""
    name: str = ""
    moref: str = ""
    policy: str = ""
    policy_seen: dt.datetime | None = None
    named_at: dt.datetime | None = None
    last: dt.datetime | None = None
    last_name: str = ""


def _key(meta: Mapping[str, Any]) -> str:
    return str(meta.get("namespace", ""))


def build_coverage(
    vcenters: Iterable[Mapping[str, Any]],
    policies: Iterable[Mapping[str, Any]],
    backups: Iterable[Mapping[str, Any]],
    now: dt.datetime,
) -> Coverage:
    """The coverage table from VCenter, VMProtectionPolicy and VMBackup objects. Pure."""
    by_policy = {(_key(p["metadata"]), p["metadata"]["name"]): p for p in policies}
    vms: dict[tuple[str, str], _VM] = {}
    for b in backups:
        meta = b.get("metadata") or {}
        spec, status = b.get("spec") or {}, b.get("status") or {}
        labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
        ids = {**(spec.get("vm") or {}), **(status.get("vm") or {})}
        uuid = str(labels.get(LABEL_VM) or ids.get("instanceUuid") or "").lower()
        if not uuid:  # an ad-hoc backup named only by VM name: not attributable
            continue
        vm = vms.setdefault((_key(meta), uuid), _VM(_key(meta), uuid))
        created = parse_time(meta.get("creationTimestamp"))
        policy = (spec.get("policyRef") or {}).get("name", "")
        if created is None or vm.named_at is None or created >= vm.named_at:
            vm.named_at = created
            vm.name = str(ids.get("name") or notes.get(ANNOTATION_VM_NAME) or vm.name)
            vm.moref = str(ids.get("moref") or vm.moref)
            vm.vcenter = str(
                status.get("vcenter")
                or labels.get(LABEL_VCENTER)
                or (spec.get("vcenterRef") or {}).get("name")
                or vm.vcenter
            )
        if policy and (vm.policy_seen is None or (created and created >= vm.policy_seen)):
            vm.policy, vm.policy_seen = policy, created
        if status.get("phase") == COMPLETED:
            done = parse_time(status.get("completionTime")) or created
            if done and (vm.last is None or done > vm.last):
                vm.last, vm.last_name = done, str(meta.get("name", ""))

    out = Coverage()
    for vm in vms.values():
        pol = by_policy.get((vm.namespace, vm.policy))
        if pol is not None and not vm.vcenter:
            vm.vcenter = (pol.get("spec") or {}).get("vcenterRef", {}).get("name", "")
        rpo = policy_rpo(pol.get("spec") or {}) if pol is not None else None
        if vm.last is None:
            state = NEVER
        elif rpo is None:
            state = UNKNOWN
        else:
            state = OK if now - vm.last <= rpo else BREACHED
        out.rows.append(
            VMRow(
                vm.namespace,
                vm.vcenter,
                vm.name or vm.uuid,
                vm.uuid,
                vm.moref,
                vm.policy if pol is not None else (f"{vm.policy} (deleted)" if vm.policy else ""),
                vm.last,
                vm.last_name,
                rpo,
                state,
            )
        )
    out.rows.sort(key=lambda r: (r.namespace, r.vcenter, r.vm, r.instance_uuid))

    for (ns, name), pol in sorted(by_policy.items()):
        matched = int((pol.get("status") or {}).get("matchedVMs") or 0)
        listed = sum(1 for r in out.rows if r.namespace == ns and r.policy == name)
        if matched > listed:
            out.notes.append(
                f"policy {ns}/{name}: {matched} VM(s) matched at the last sweep, "
                f"{matched - listed} without any backup (no object names them)"
            )

    for vc in sorted(vcenters, key=lambda v: (_key(v["metadata"]), v["metadata"]["name"])):
        status = vc.get("status") or {}
        count = int((status.get("vms") or {}).get("unprotected") or 0)
        protected: Mapping[str, Any] = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "Protected"), {}
        )
        names = unprotected_names(protected.get("message", "")) if count else []
        if not status.get("lastSweepTime"):
            out.notes.append(
                f"vCenter {_key(vc['metadata'])}/{vc['metadata']['name']}: not swept yet"
            )
        out.unprotected.append(
            Unprotected(
                _key(vc["metadata"]),
                vc["metadata"]["name"],
                count,
                names,
                str(status.get("lastSweepTime") or ""),
            )
        )
    return out


def _age(at: dt.datetime | None, now: dt.datetime) -> str:
    if at is None:
        return "-"
    seconds = max(0, int((now - at).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def render_table(coverage: Coverage, now: dt.datetime, wide: bool, namespaces: bool) -> str:
    """``kubectl get``-style columns, then the unprotected VMs and the notes."""
    head = ["VM", "VCENTER", "POLICY", "LAST-GOOD-BACKUP", "AGE", "RPO"]
    if wide:
        head += ["RPO-LIMIT", "INSTANCE-UUID", "MOREF", "BACKUP"]
    if namespaces:
        head.insert(0, "NAMESPACE")
    lines = [head]
    for r in coverage.rows:
        row = [
            r.vm,
            r.vcenter or "-",
            r.policy or "-",
            format_time(r.last_backup) if r.last_backup else "-",
            _age(r.last_backup, now),
            r.rpo_state,
        ]
        if wide:
            limit = f"{int(r.rpo.total_seconds() // 3600)}h" if r.rpo else "-"
            row += [limit, r.instance_uuid, r.moref or "-", r.last_backup_name or "-"]
        if namespaces:
            row.insert(0, r.namespace)
        lines.append(row)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = [
        "   ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    if not coverage.rows:
        text.append("(no VM has a VMBackup yet)")
    for u in coverage.unprotected:
        where = f"{u.namespace}/{u.vcenter}" if namespaces else u.vcenter
        if u.count:
            shown = ", ".join(u.names)
            more = u.count - len(u.names)
            tail = f" and {more} more" if more > 0 else ""
            text.append(f"UNPROTECTED in vCenter {where}: {u.count}: {shown}{tail}")
        else:
            text.append(f"vCenter {where}: no unprotected VMs")
    text += [f"note: {n}" for n in coverage.notes]
    return "\n".join(text)


def _current_namespace() -> str:
    from kubernetes import config

    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip()
    except OSError:
        pass
    try:
        _, active = config.list_kube_config_contexts()
    except (config.ConfigException, OSError):
        return "default"
    return str((active.get("context") or {}).get("namespace") or "default")


def read_objects(namespace: str | None) -> dict[str, list[dict[str, Any]]]:
    """Blocking: the three kinds, from one namespace or (``None``) every namespace."""
    from kubernetes import client

    from vmguard.controller.kubeapi import GROUP, VERSION, load_config

    try:
        load_config()
    except Exception as exc:  # a missing or broken kubeconfig
        raise ConfigError(f"no cluster to talk to: {exc}") from None
    api = client.CustomObjectsApi()
    out = {}
    for plural in ("vcenters", "vmprotectionpolicies", "vmbackups"):
        try:
            if namespace is None:
                res = api.list_cluster_custom_object(GROUP, VERSION, plural)
            else:
                res = api.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
        except client.ApiException as exc:
            if exc.status in (401, 403, 404):
                raise ConfigError(f"cannot list {plural}: {exc.status} {exc.reason}") from None
            raise RetryableError(f"listing {plural}: {exc.status} {exc.reason}") from None
        except OSError as exc:
            raise RetryableError(f"listing {plural}: {exc}") from None
        out[plural] = list(res.get("items", []))
    return out


def _run(args: argparse.Namespace) -> int:
    namespace = None if args.all_namespaces else (args.namespace or _current_namespace())
    found = read_objects(namespace)
    now = dt.datetime.now(dt.UTC)
    coverage = build_coverage(
        found["vcenters"], found["vmprotectionpolicies"], found["vmbackups"], now
    )
    if args.output == "json":
        print(json.dumps(coverage.doc(), indent=1))
    else:
        print(render_table(coverage, now, args.output == "wide", args.all_namespaces))
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "status", help="coverage: every VM, its policy, last good backup and RPO state"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("-n", "--namespace", help="this namespace (default: the context's)")
    where.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    p.add_argument("-o", "--output", choices=["wide", "json"], help="more columns, or JSON")
    p.set_defaults(func=_run)
