"""``vmguard restore create``: a VMGuardRestore from flags, optionally followed to its end.

Exactly one source: ``--backup NAME`` (a VMGuardBackup, while that run exists), or
``--protected-vm NAME`` with ``--archive ID`` or ``--at TIME`` (a point of a
ProtectedVM: that one, or the newest taken at or before TIME).

Exactly one target, as the CRD demands (``vmguard.crds.restore``):

- ``--new-vm NAME`` [``--folder``, ``--pool``, ``--host``, ``--datastore``,
  ``--network-map SRC=DST``, ``--power-on``]: the backup as a new VM;
- ``--in-place --confirm``: over the VM that was backed up;
- ``--disk KEY`` (repeatable) with ``--attach-to VM`` (new disks on that VM) or
  ``--confirm`` (over the same disks of the original VM);
- ``--files PATH`` (repeatable, globs allowed) with ``--to-s3 PREFIX`` [``--bucket``]
  or ``--to-pvc CLAIM[:DIR]`` [``--files-disk KEY``].

Overwriting needs ``--confirm`` here as ``confirm: true`` does in YAML: a typo must not
destroy what the backup protects. Missing or conflicting flags are usage errors (exit
2) found before anything is sent; ``--wait`` exits 0 on Completed, 1 on Failed.
"""

from __future__ import annotations

import argparse
from typing import Any

from vmguard.api import format_time, parse_time
from vmguard.api.kinds import RESTORE
from vmguard.api.phases import RESTORE_TERMINAL, RestorePhase
from vmguard.cli.create import create_and_follow
from vmguard.cli.kube import (
    add_cluster_options,
    api_version,
)
from vmguard.cli.options import UsageError, add_output_option, emit

PLURAL = RESTORE.plural


def _vm_ref(text: str) -> dict[str, str]:
    if text.startswith("vm-") and text[3:].isdigit():
        return {"moref": text}
    if len(text) == 36 and text.count("-") == 4:
        return {"instanceUuid": text.lower()}
    return {"name": text}


def build_target(args: argparse.Namespace) -> dict[str, Any]:
    chosen = [
        flag
        for flag, given in (
            ("--new-vm", args.new_vm),
            ("--in-place", args.in_place),
            ("--disk", args.disk),
            ("--files", args.files),
        )
        if given
    ]
    if len(chosen) != 1:
        raise UsageError("give exactly one of --new-vm, --in-place, --disk, --files")
    if args.new_vm:
        new: dict[str, Any] = {"name": args.new_vm, "powerOn": args.power_on}
        for key, value in (
            ("folder", args.folder),
            ("resourcePool", args.pool),
            ("host", args.host),
            ("datastore", args.datastore),
        ):
            if value:
                new[key] = value
        if args.network_map:
            pairs = [m.split("=", 1) for m in args.network_map]
            if any(len(p) != 2 or not all(p) for p in pairs):
                raise UsageError("--network-map takes SRC=DST")
            new["networkMap"] = [{"from": a, "to": b} for a, b in pairs]
        return {"newVM": new}
    if args.in_place:
        if not args.confirm:
            raise UsageError("--in-place overwrites the VM's disks: add --confirm")
        return {"inPlace": {"confirm": True}}
    if args.disk:
        if not args.attach_to and not args.confirm:
            raise UsageError(
                "--disk overwrites the original disks: add --confirm, or --attach-to VM"
            )
        disks = []
        for key in args.disk:
            item: dict[str, Any] = {"source": _disk(key)}
            if args.attach_to:
                item["attachTo"] = {"vm": _vm_ref(args.attach_to)}
                if args.datastore:
                    item["attachTo"]["datastore"] = args.datastore
            else:
                item["overwrite"] = {"confirm": True}
            disks.append(item)
        return {"disks": disks}
    if bool(args.to_s3) == bool(args.to_pvc):
        raise UsageError("--files needs exactly one of --to-s3 PREFIX and --to-pvc CLAIM[:DIR]")
    to: dict[str, Any]
    if args.to_s3:
        to = {"s3": {"prefix": args.to_s3, **({"bucket": args.bucket} if args.bucket else {})}}
    else:
        claim, _, path = args.to_pvc.partition(":")
        to = {"pvc": {"claimName": claim, **({"path": path} if path else {})}}
    files: dict[str, Any] = {"paths": list(args.files), "to": to}
    if args.files_disk:
        files["disk"] = _disk(args.files_disk)
    return {"files": files}


def _disk(text: str) -> dict[str, Any]:
    return {"key": int(text)} if text.isdigit() else {"label": text}


def build_source(args: argparse.Namespace) -> dict[str, Any]:
    """``spec.source``: ``--backup NAME``, or ``--protected-vm NAME`` with exactly one of
    ``--archive ID`` and ``--at TIME`` (the CRD's rule, checked before connecting)."""
    if bool(args.backup) == bool(args.protected_vm):
        raise UsageError("give --backup NAME, or --protected-vm NAME with --archive or --at")
    if args.backup:
        if args.archive or args.at:
            raise UsageError("--archive and --at go with --protected-vm, not --backup")
        return {"backupRef": {"name": args.backup}}
    if bool(args.archive) == bool(args.at):
        raise UsageError("--protected-vm needs exactly one of --archive ID and --at TIME")
    if args.archive:
        return {"protectedVM": args.protected_vm, "archiveId": args.archive}
    at = parse_time(args.at)
    if at is None:
        raise UsageError(f"--at {args.at!r}: not a time (RFC 3339, e.g. 2026-01-31T02:00:00Z)")
    return {"protectedVM": args.protected_vm, "at": format_time(at)}


def build_vmrestore(args: argparse.Namespace, namespace: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "source": build_source(args),
        "target": build_target(args),
    }
    if args.vcenter:
        spec["vcenterRef"] = {"name": args.vcenter}
    meta: dict[str, Any] = {"namespace": namespace}
    if args.name:
        meta["name"] = args.name
    else:
        meta["generateName"] = f"{(args.backup or args.protected_vm)[:50]}-restore-"
    return {"apiVersion": api_version(), "kind": RESTORE.kind, "metadata": meta, "spec": spec}


def _create(args: argparse.Namespace) -> int:
    body = build_vmrestore(args, "")  # usage errors before connecting
    done = create_and_follow(args, PLURAL, body, RESTORE_TERMINAL, "restore")
    if done is None:
        return 0
    name = done["metadata"]["name"]
    status = done.get("status") or {}
    error = status.get("error") or {}
    text = f"{name}: {status.get('phase')}" + (
        f" ({error.get('reason', '')}: {error.get('message', '')})" if error else ""
    )
    result = status.get("result") or {}
    if (result.get("vm") or {}).get("moref"):
        text += f"\n  vm  {result['vm'].get('name', '')} ({result['vm']['moref']})"
    emit(args, done, text)
    return 0 if status.get("phase") == RestorePhase.COMPLETED else 1


def register(sub: Any) -> None:
    """Add ``restore create`` to the top-level sub-parsers."""
    restore = sub.add_parser("restore", help="VMGuardRestore objects in the cluster: create")
    cmds = restore.add_subparsers(dest="restore_cmd", required=True, metavar="COMMAND")
    c = cmds.add_parser(
        "create",
        help="restore a VMGuardBackup or a ProtectedVM's point: new VM, in place, disks or files",
    )
    c.add_argument("--backup", metavar="NAME", help="the VMGuardBackup to restore")
    c.add_argument(
        "--protected-vm",
        metavar="NAME",
        help="restore a point of this ProtectedVM (with --archive or --at) instead",
    )
    c.add_argument("--archive", metavar="ID", help="with --protected-vm: the point's archive id")
    c.add_argument(
        "--at",
        metavar="TIME",
        help="with --protected-vm: the newest point taken at or before TIME (RFC 3339)",
    )
    c.add_argument("--name", help="name of the VMGuardRestore (default: from the backup's)")
    c.add_argument("--vcenter", metavar="V", help="VCenter to restore into (default: the backup's)")
    c.add_argument("--new-vm", metavar="NAME", help="restore as a new VM with this name")
    c.add_argument("--folder", help="with --new-vm: VM folder, e.g. /DC0/vm/restored")
    c.add_argument("--pool", help="with --new-vm: resource pool")
    c.add_argument("--host", help="with --new-vm: ESXi host")
    c.add_argument("--datastore", help="with --new-vm or --attach-to: datastore")
    c.add_argument(
        "--network-map",
        action="append",
        metavar="SRC=DST",
        help="with --new-vm: NICs on network SRC go to DST (repeatable)",
    )
    c.add_argument("--power-on", action="store_true", help="with --new-vm: power it on")
    c.add_argument("--in-place", action="store_true", help="over the VM that was backed up")
    c.add_argument(
        "--disk",
        action="append",
        metavar="KEY",
        help="restore this disk (key or label; repeatable)",
    )
    c.add_argument("--attach-to", metavar="VM", help="with --disk: attach as new disks to this VM")
    c.add_argument(
        "--files", action="append", metavar="PATH", help="restore these paths/globs (repeatable)"
    )
    c.add_argument("--files-disk", metavar="KEY", help="with --files: only this disk")
    c.add_argument("--to-s3", metavar="PREFIX", help="with --files: under this S3 key prefix")
    c.add_argument("--bucket", help="with --to-s3: bucket (default: the repository's)")
    c.add_argument("--to-pvc", metavar="CLAIM[:DIR]", help="with --files: into this PVC")
    c.add_argument("--confirm", action="store_true", help="allow overwriting a VM's disks")
    c.add_argument(
        "--wait", action="store_true", help="follow it to the end; exit 1 unless Completed"
    )
    c.add_argument(
        "--timeout",
        type=float,
        default=0,
        metavar="SECONDS",
        help="with --wait: give up after this long (default: never)",
    )
    c.add_argument("--quiet", action="store_true", help="with --wait: no progress output")
    add_output_option(c)
    add_cluster_options(c)
    c.set_defaults(func=_create, parser=c)
