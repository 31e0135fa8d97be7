"""The ``vmguard`` command line.

Sub-commands are registered here and implemented in their own modules; this file
only parses arguments and turns :class:`vmguard.errors.VmguardError` into a message
and a non-zero exit code (never a traceback for an expected failure).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from vmguard.errors import VmguardError


def _lab(args: argparse.Namespace) -> int:
    from vmguard.lab.lab import Lab

    lab = Lab()
    if args.lab_cmd == "up":
        state = lab.up(vms=args.vms)
        print(f"lab up in {lab.paths.lab}")
        for key, value in lab.env().items():
            if key != "PATH":
                print(f"  {key}={value}")
        del state
    elif args.lab_cmd == "down":
        stopped = lab.down()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    elif args.lab_cmd == "status":
        status = lab.status()
        if args.json:
            print(json.dumps(status))
        else:
            for name, running in status.items():
                print(f"{name:26} {'running' if running else 'stopped'}")
        return 0 if all(status.values()) else 3
    elif args.lab_cmd == "env":
        for key, value in lab.env(with_secrets=args.secrets).items():
            print(f"export {key}={shlex.quote(value)}")
    elif args.lab_cmd == "build":
        from vmguard.lab import build

        for name, path in build.ensure_built(lab.paths).items():
            print(f"{name:26} {path}")
    elif args.lab_cmd == "inventory":
        from vmguard.lab.inventory import print_inventory

        print_inventory(lab)
    return 0


def _crds(args: argparse.Namespace) -> int:
    from vmguard.crds.render import run

    return run(Path(args.check or args.write), check=bool(args.check))


def _operator(args: argparse.Namespace) -> int:
    import logging

    from vmguard.controller.main import run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run(args.namespace or [], args.all_namespaces, args.liveness, args.peering)
    return 0


def _locator(args: argparse.Namespace, ep: Any) -> Any:
    if args.lab:
        from vmguard.lab.lab import Lab
        from vmguard.lab.vsim import LabDiskLocator, VSimControl

        control = Lab().state().data["vsphere"]["control_url"]
        return LabDiskLocator(VSimControl(control), proxy_uuid=args.lab_proxy_uuid or "")
    from vmguard.vmjobs.access import VddkLocator
    from vmguard.vsphere.session import sha1_thumbprint

    return VddkLocator(ep, sha1_thumbprint(ep), libdir=args.vddk_libdir)


def _vm(args: argparse.Namespace) -> int:
    from vmguard.vmjobs import commands
    from vmguard.vmjobs.backup import BackupOptions
    from vmguard.vsphere.restore import NewVMTarget

    ep = commands.endpoint(args.vcenter, args.thumbprint, args.ca_file, args.insecure)
    if args.vm_cmd == "ls":
        return commands.vm_ls(ep, sys.stdout, as_json=args.json)
    locator = _locator(args, ep)
    if args.vm_cmd == "backup":
        options = BackupOptions(
            transport=args.transport, quiesce=args.quiesce, vcenter=args.vcenter_name
        )
        return commands.vm_backup(
            ep,
            args.vm,
            args.repo,
            args.key_file,
            locator,
            options,
            sys.stdout,
        )
    networks = dict(pair.split("=", 1) for pair in args.network_map or ())
    return commands.vm_restore(
        ep,
        args.archive,
        args.repo,
        args.key_file,
        locator,
        sys.stdout,
        new_name=args.new_name,
        in_place_vm=args.vm if args.in_place else None,
        target=lambda name: NewVMTarget(
            name=name,
            datastore=args.datastore,
            folder=args.folder or "",
            resource_pool=args.pool or "",
            network_map=networks,
        ),
        power_on=args.power_on,
        power_off=args.power_off,
    )


def _vm_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    vm = sub.add_parser("vm", help="vSphere VMs without a cluster: list, back up, restore")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--vcenter", required=True, metavar="URL", help="https://vcenter/sdk")
    trust = common.add_mutually_exclusive_group()
    trust.add_argument("--thumbprint", help="pinned SHA-1/SHA-256 certificate thumbprint")
    trust.add_argument("--ca-file", help="CA bundle that signed vCenter's certificate")
    trust.add_argument("--insecure", action="store_true", help="do not verify TLS (never in prod)")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument(
        "--repo", required=True, metavar="URL", help="file:///dir or s3://host/bucket"
    )
    data.add_argument("--key-file", help="repository master key (else VMGUARD_KEY)")
    data.add_argument("--vddk-libdir", default="/opt/vmware-vix-disklib-distrib")
    data.add_argument("--lab", action="store_true", help=argparse.SUPPRESS)
    data.add_argument("--lab-proxy-uuid", help=argparse.SUPPRESS)
    vm_sub = vm.add_subparsers(dest="vm_cmd", required=True)
    ls = vm_sub.add_parser("ls", parents=[common], help="discover every VM")
    ls.add_argument("--json", action="store_true")
    backup = vm_sub.add_parser("backup", parents=[common, data], help="back up one VM")
    backup.add_argument("vm", help="name, moref or instance UUID")
    backup.add_argument("--transport", choices=("nbd", "hotadd", "auto"), default="auto")
    backup.add_argument("--quiesce", action="store_true")
    backup.add_argument("--vcenter-name", default="", help="name recorded in the VM's identity")
    restore = vm_sub.add_parser("restore", parents=[common, data], help="restore an archive")
    restore.add_argument("archive")
    where = restore.add_mutually_exclusive_group(required=True)
    where.add_argument("--new-name", help="restore as a new VM with this name")
    where.add_argument("--in-place", action="store_true", help="overwrite the VM backed up")
    restore.add_argument("--vm", help="with --in-place: another VM (moref) than the source")
    restore.add_argument("--datastore", default="", help="datastore of the new VM")
    restore.add_argument("--folder", help="VM folder path, e.g. /DC0/vm/Restores")
    restore.add_argument("--pool", help="resource pool path")
    restore.add_argument("--network-map", action="append", metavar="SRC=DST")
    restore.add_argument("--power-on", action="store_true")
    restore.add_argument("--power-off", action="store_true", help="with --in-place")
    vm.set_defaults(func=_vm)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmguard", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    lab = sub.add_parser("lab", help="the local lab of real peers (development and tests)")
    lab_sub = lab.add_subparsers(dest="lab_cmd", required=True)
    up = lab_sub.add_parser("up", help="build what is missing and start the lab (idempotent)")
    up.add_argument("--vms", type=int, default=24, help="VMs in the vSphere inventory (≤ 5000)")
    lab_sub.add_parser("down", help="stop every process the lab started")
    status = lab_sub.add_parser("status", help="which lab processes run")
    status.add_argument("--json", action="store_true")
    env = lab_sub.add_parser("env", help="shell exports pointing clients at the lab")
    env.add_argument("--secrets", action="store_true", help="include the lab's credentials")
    lab_sub.add_parser("build", help="build the lab's Go components (cached)")
    lab_sub.add_parser("inventory", help="endpoints, nodes, VMs and buckets of the running lab")
    lab.set_defaults(func=_lab)

    op = sub.add_parser(
        "operator", help="run the operator (kopf) against $KUBECONFIG or in-cluster"
    )
    op.add_argument("--namespace", action="append", help="watch this namespace (repeatable)")
    op.add_argument("--all-namespaces", action="store_true", help="watch the whole cluster")
    op.add_argument("--liveness", help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz")
    op.add_argument("--peering", help="kopf peering name: of several replicas exactly one acts")
    op.set_defaults(func=_operator)

    crds = sub.add_parser("crds", help="write or check the CRD manifests (crds/*.yaml)")
    target = crds.add_mutually_exclusive_group(required=True)
    target.add_argument("--write", metavar="DIR", help="write one YAML file per kind into DIR")
    target.add_argument("--check", metavar="DIR", help="exit 1 if DIR's manifests are stale")
    crds.set_defaults(func=_crds)

    from vmguard.commands import disk, repo

    repo.add_parser(sub)
    disk.add_parser(sub)

    _vm_parser(sub)

    # File-level restore and instant access: vmguard files ls|get|find, vmguard mount.
    from vmguard.files.commands import register as register_files

    register_files(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except VmguardError as exc:
        print(f"vmguard: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `vmguard vm ls | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
