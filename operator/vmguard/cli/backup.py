"""``vmguard backup create|get|describe|logs``: VMGuardBackup objects, as a user works with them.

What users did with ``kubectl`` and YAML, in one verb each (Velero's shape):

- ``backup create VM [--policy P | --vcenter V --repository R] [--mode full] [--wait]``
  creates a VMGuardBackup for the VM named by name, moref (``vm-42``) or instance UUID;
  ``--wait`` follows it to Completed (exit 0) or Failed (exit 1) with a
  progress bar fed by ``status.progress``;
- ``backup get [NAME]`` (also ``backup list``): a table, or ``-o json|yaml`` documents;
- ``backup describe NAME``: spec summary, status, conditions, the object's events and
  the tail of the proxy Job's pod log;
- ``backup logs NAME``: the proxy pod's log (the latest attempt's Job).

The cluster is the one :mod:`.kube` selects. The objects' layout is the CRD's
(``vmguard.crds.backup``); nothing here writes status. No secret is read or printed:
the spec holds none, and pod logs are the proxy's, which never log one (BRIEF §9.4).
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from typing import Any

from vmguard.api.kinds import BACKUP
from vmguard.api.phases import BACKUP_TERMINAL, BackupPhase
from vmguard.cli.create import create_and_follow
from vmguard.cli.kube import (
    Cluster,
    add_cluster_options,
    api_version,
    connect,
    get_object,
    list_objects,
)
from vmguard.cli.options import UsageError, add_output_option, emit
from vmguard.cli.progress import human_bytes
from vmguard.errors import ObjectNotFoundError

PLURAL = BACKUP.plural
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_MOREF = re.compile(r"^vm-[0-9]{1,10}$")


def vm_selector(text: str) -> dict[str, str]:
    """``spec.vm`` for what the user typed: an instance UUID, a moref or a name."""
    if _UUID.match(text):
        return {"instanceUuid": text.lower()}
    if _MOREF.match(text):
        return {"moref": text}
    return {"name": text}


def name_prefix(vm: str) -> str:
    """A DNS-label prefix for ``metadata.generateName`` made from the VM's name."""
    base = re.sub(r"[^a-z0-9-]+", "-", vm.lower()).strip("-")[:40].strip("-")
    return f"{base or 'vm'}-"


def build_vmbackup(args: argparse.Namespace, namespace: str) -> dict[str, Any]:
    if not args.policy and not (args.vcenter and args.repository):
        raise UsageError("give --policy P, or both --vcenter V and --repository R")
    spec: dict[str, Any] = {"vm": vm_selector(args.vm), "mode": args.mode}
    if args.policy:
        spec["policyRef"] = {"name": args.policy}
    if args.vcenter:
        spec["vcenterRef"] = {"name": args.vcenter}
    if args.repository:
        spec["repositoryRef"] = {"name": args.repository}
    meta: dict[str, Any] = {"namespace": namespace}
    if args.name:
        meta["name"] = args.name
    else:
        meta["generateName"] = name_prefix(args.vm)
    return {"apiVersion": api_version(), "kind": BACKUP.kind, "metadata": meta, "spec": spec}


def _create(args: argparse.Namespace) -> int:
    body = build_vmbackup(args, "")  # usage errors before connecting
    done = create_and_follow(args, PLURAL, body, BACKUP_TERMINAL, "backup")
    if done is None:
        return 0
    emit(args, done, summary(done))
    return 0 if (done.get("status") or {}).get("phase") == BackupPhase.COMPLETED else 1


def summary(obj: dict[str, Any]) -> str:
    """One paragraph: phase, archive, mode and totals, or the error."""
    status = obj.get("status") or {}
    lines = [f"{obj['metadata']['name']}: {status.get('phase', 'Pending')}"]
    if status.get("archiveId"):
        lines.append(f"  archive  {status['archiveId']}")
    if status.get("modeUsed"):
        lines.append(f"  mode     {status['modeUsed']} ({status.get('modeReason', '')})")
    totals = status.get("totals") or {}
    if totals:
        lines.append(
            f"  read     {human_bytes(totals.get('bytesRead', 0))},"
            f" uploaded {human_bytes(totals.get('bytesUploaded', 0))}"
        )
    error = status.get("error") or {}
    if error:
        lines.append(f"  error    {error.get('reason', '')}: {error.get('message', '')}")
    return "\n".join(lines)


def _age(stamp: str | None, now: dt.datetime) -> str:
    if not stamp:
        return "-"
    try:
        when = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return "-"
    seconds = max(0, int((now - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _vm_name(obj: dict[str, Any]) -> str:
    vm = (obj.get("status") or {}).get("vm") or (obj.get("spec") or {}).get("vm") or {}
    return str(vm.get("name") or vm.get("moref") or vm.get("instanceUuid") or "-")


def table(items: list[dict[str, Any]], wide: bool) -> str:
    now = dt.datetime.now(dt.UTC)
    head = ["NAME", "VM", "POLICY", "PHASE", "MODE", "PROGRESS", "AGE"]
    if wide:
        head += ["ARCHIVE", "REASON"]
    rows = [head]
    for obj in items:
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        percent = (status.get("progress") or {}).get("percent")
        row = [
            obj["metadata"]["name"],
            _vm_name(obj),
            (spec.get("policyRef") or {}).get("name") or "-",
            status.get("phase") or "Pending",
            status.get("modeUsed") or "-",
            "-" if percent is None else f"{percent}%",
            _age(obj["metadata"].get("creationTimestamp"), now),
        ]
        if wide:
            row += [status.get("archiveId") or "-", (status.get("error") or {}).get("reason", "-")]
        rows.append(row)
    if len(rows) == 1:
        return "No VMGuardBackups found."
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _get(args: argparse.Namespace) -> int:
    cluster = connect(args)
    if args.name:
        items = [get_object(cluster, PLURAL, args.name)]
        doc: Any = items[0]
    else:
        items = list_objects(cluster, PLURAL, args.selector or "")
        doc = {"apiVersion": "v1", "kind": "List", "items": items}
    emit(args, doc, table(items, args.output == "wide"))
    return 0


def proxy_pod(cluster: Cluster, obj: dict[str, Any]) -> dict[str, Any] | None:
    """The newest pod of the backup's proxy Job (``status.jobName``), or None."""
    job = (obj.get("status") or {}).get("jobName")
    if not job:
        return None
    core = cluster.core()
    pods = cluster.call(
        f"pods of Job {job}",
        lambda: core.list_namespaced_pod(cluster.namespace, label_selector=f"job-name={job}"),
    )
    found = cluster.api.sanitize_for_serialization(pods).get("items", [])
    if not found:
        return None
    newest: dict[str, Any] = max(found, key=lambda p: p["metadata"].get("creationTimestamp", ""))
    return newest


def pod_log(cluster: Cluster, pod: dict[str, Any], tail: int | None) -> str:
    core = cluster.core()
    name = pod["metadata"]["name"]
    kwargs: dict[str, Any] = {"tail_lines": tail} if tail else {}
    text: str = cluster.call(
        f"log of pod {name}",
        lambda: core.read_namespaced_pod_log(name, cluster.namespace, **kwargs),
    )
    return text


def events(cluster: Cluster, kind: str, name: str) -> list[dict[str, Any]]:
    core = cluster.core()
    found = cluster.call(
        f"events of {kind} {name}",
        lambda: core.list_namespaced_event(
            cluster.namespace,
            field_selector=f"involvedObject.kind={kind},involvedObject.name={name}",
        ),
    )
    items: list[dict[str, Any]] = cluster.api.sanitize_for_serialization(found).get("items", [])
    return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")


def _used(status: dict[str, Any]) -> str:
    if not status.get("modeUsed"):
        return ""
    return f"; used {status['modeUsed']} ({status.get('modeReason', '')})"


def describe_text(cluster: Cluster, obj: dict[str, Any], tail: int) -> str:
    """What ``describe`` prints (see the module docstring)."""
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    vm = status.get("vm") or spec.get("vm") or {}
    ref = lambda key: (spec.get(key) or {}).get("name") or "-"  # noqa: E731
    progress = status.get("progress") or {}
    lines = [
        f"Name:          {meta['name']}",
        f"Namespace:     {meta.get('namespace', cluster.namespace)}",
        f"Created:       {meta.get('creationTimestamp', '-')}",
        "VM:            "
        + ", ".join(f"{k} {v}" for k, v in vm.items() if k in ("name", "moref", "instanceUuid")),
        f"Policy:        {ref('policyRef')}",
        f"VCenter:       {status.get('vcenter') or ref('vcenterRef')}",
        f"Repository:    {status.get('repository') or ref('repositoryRef')}",
        f"Mode:          requested {spec.get('mode', 'auto')}"
        + (
            f"; used {status['modeUsed']} ({status.get('modeReason', '')})"
            if status.get("modeUsed")
            else ""
        ),
        f"Phase:         {status.get('phase', 'Pending')}",
    ]
    if progress:
        lines.append(
            f"Progress:      {progress.get('percent', 0)}%"
            f" ({human_bytes(progress.get('bytesDone', 0))}"
            f" of {human_bytes(progress.get('bytesTotal', 0))})"
        )
    for label, key in (
        ("Archive:", "archiveId"),
        ("Parent:", "parentArchiveId"),
        ("Job:", "jobName"),
    ):
        if status.get(key):
            lines.append(f"{label:15}{status[key]}")
    error = status.get("error") or {}
    if error:
        lines.append(f"Error:         {error.get('reason', '')}: {error.get('message', '')}")
    lines.append("Conditions:")
    conditions = status.get("conditions") or []
    if conditions:
        rows = [["TYPE", "STATUS", "REASON", "LAST-TRANSITION", "MESSAGE"]]
        rows += [
            [
                str(c.get("type", "")),
                str(c.get("status", "")),
                str(c.get("reason", "")),
                str(c.get("lastTransitionTime", "")),
                str(c.get("message", "")),
            ]
            for c in conditions
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines += [
            "  " + "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
            for r in rows
        ]
    else:
        lines.append("  <none>")
    lines.append("Events:")
    found = events(cluster, obj.get("kind", BACKUP.kind), meta["name"])
    lines += [
        f"  {e.get('type', ''):8} {e.get('reason', ''):24} {e.get('message', '')}" for e in found
    ] or ["  <none>"]
    pod = proxy_pod(cluster, obj)
    if pod is None:
        lines.append("Proxy log:     <no proxy pod>")
    else:
        lines.append(f"Proxy log (pod {pod['metadata']['name']}, last {tail} lines):")
        try:
            text = pod_log(cluster, pod, tail)
        except Exception as exc:  # a describe shows what it can: the log is the last part
            text = f"<not available: {exc}>"
        lines += ["  " + line for line in text.rstrip("\n").splitlines()] or ["  <empty>"]
    return "\n".join(lines)


def _describe(args: argparse.Namespace) -> int:
    cluster = connect(args)
    obj = get_object(cluster, PLURAL, args.name)
    print(describe_text(cluster, obj, args.tail))
    return 0


def _logs(args: argparse.Namespace) -> int:
    cluster = connect(args)
    obj = get_object(cluster, PLURAL, args.name)
    pod = proxy_pod(cluster, obj)
    if pod is None:
        what = f"{BACKUP.singular} {args.name}"
        raise ObjectNotFoundError(f"{what} has no proxy pod (yet): see describe")
    sys.stdout.write(pod_log(cluster, pod, args.tail))
    return 0


def register(sub: Any) -> None:
    """Add ``backup create|get|list|describe|logs`` to the top-level sub-parsers."""
    backup = sub.add_parser(
        "backup", help="VMGuardBackup objects in the cluster: create, get, describe"
    )
    cmds = backup.add_subparsers(dest="backup_cmd", required=True, metavar="COMMAND")

    create = cmds.add_parser("create", help="back up one VM now (a VMGuardBackup)")
    create.add_argument("vm", help="the VM: name, moref (vm-42) or instance UUID")
    create.add_argument("--policy", metavar="P", help="VMProtectionPolicy whose settings apply")
    create.add_argument("--vcenter", metavar="V", help="VCenter object (default: the policy's)")
    create.add_argument(
        "--repository", metavar="R", help="VMGuardRepository object (default: the policy's)"
    )
    create.add_argument(
        "--mode",
        choices=("auto", "full"),
        default="auto",
        help="auto: incremental when the CBT chain allows; full: read every block",
    )
    create.add_argument("--name", help="name of the VMGuardBackup (default: from the VM's name)")
    create.add_argument(
        "--wait", action="store_true", help="follow it to the end; exit 1 unless Completed"
    )
    create.add_argument(
        "--timeout",
        type=float,
        default=0,
        metavar="SECONDS",
        help="with --wait: give up after this long (default: never)",
    )
    create.add_argument("--quiet", action="store_true", help="with --wait: no progress output")
    create.set_defaults(func=_create, parser=create)

    get = cmds.add_parser("get", aliases=["list"], help="list VMGuardBackups, or show one")
    get.add_argument("name", nargs="?", help="one VMGuardBackup (default: all in the namespace)")
    get.add_argument("-l", "--selector", help="label selector, e.g. vmguard.io/policy=daily")
    add_output_option(get, ("table", "wide", "json", "yaml"))
    get.set_defaults(func=_get, parser=get)

    describe = cmds.add_parser("describe", help="status, conditions, events and proxy log")
    describe.add_argument("name", help="the VMGuardBackup")
    describe.add_argument(
        "--tail", type=int, default=20, metavar="N", help="proxy log lines (default: 20)"
    )
    describe.set_defaults(func=_describe, parser=describe)

    logs = cmds.add_parser("logs", help="the proxy pod's log")
    logs.add_argument("name", help="the VMGuardBackup")
    logs.add_argument(
        "--tail", type=int, default=0, metavar="N", help="last N lines (default: all)"
    )
    logs.set_defaults(func=_logs, parser=logs)

    add_output_option(create)
    for p in (create, get, describe, logs):
        add_cluster_options(p)
