"""``vmguard vm ls | backup | restore``: one vSphere VM without a cluster.

:func:`register` adds ``vm`` to the top-level parser; its handler builds the
:class:`~vmguard.vm.access.DiskLocator` that ``--locator`` names (``vddk``, or one an
installed distribution registers: :func:`vmguard.vm.access.open_locator`) and runs the
use case from :mod:`vmguard.vm`. pyVmomi, NBD and the engine are imported when a ``vm`` command
runs, not when the parser is built, so every other ``vmguard`` command starts as fast
as before.

vCenter and the repository are named with the shared options of
:mod:`vmguard.cli.options` (vCenter credentials only from the environment; the
repository opened by :func:`vmguard.store.location.open_repository`). No secret is ever
printed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TextIO

from vmguard.cli.options import (
    add_output_option,
    add_repository_options,
    add_vcenter_options,
    open_repository_from,
    render,
    vcenter_endpoint,
)
from vmguard.cli.progress import ProgressDisplay
from vmguard.config import DEFAULT_VDDK_PATH

if TYPE_CHECKING:
    from vmguard.store import Repository
    from vmguard.vm.access import DiskLocator
    from vmguard.vm.backup import BackupOptions
    from vmguard.vsphere.restore import NewVMTarget
    from vmguard.vsphere.session import Endpoint


def register(sub: Any) -> None:
    """Add ``vm ls|backup|restore`` to the top-level sub-parsers."""
    vm = sub.add_parser("vm", help="vSphere VMs without a cluster: list, back up, restore")
    common = argparse.ArgumentParser(add_help=False)
    add_vcenter_options(common)
    data = argparse.ArgumentParser(add_help=False)
    add_repository_options(data, required=True)
    data.add_argument(
        "--locator",
        default="vddk",
        metavar="SPEC",
        help="how disks are reached: vddk (default), or SCHEME:ARG of an installed plugin",
    )
    data.add_argument(
        "--vddk-libdir",
        default=DEFAULT_VDDK_PATH,
        help="the VDDK's directory (with --locator vddk)",
    )
    data.add_argument("--quiet", action="store_true", help="no progress output")
    vm_sub = vm.add_subparsers(dest="vm_cmd", required=True)
    ls = vm_sub.add_parser("ls", parents=[common], help="discover every VM")
    add_output_option(ls)
    backup = vm_sub.add_parser("backup", parents=[common, data], help="back up one VM")
    backup.add_argument("vm", help="name, moref or instance UUID")
    backup.add_argument(
        "--transport",
        choices=("nbd", "hotadd", "auto"),
        default="auto",
        help="how disks are read: auto prefers hot-add, falls back to NBD (default: auto)",
    )
    backup.add_argument(
        "--quiesce", action="store_true", help="quiesce the guest file systems (VMware Tools)"
    )
    backup.add_argument("--vcenter-name", default="", help="name recorded in the VM's identity")
    add_output_option(backup)
    restore = vm_sub.add_parser("restore", parents=[common, data], help="restore an archive")
    restore.add_argument("archive", help="archive id (see vmguard repo ls)")
    where = restore.add_mutually_exclusive_group(required=True)
    where.add_argument("--new-vm", metavar="NAME", help="restore as a new VM with this name")
    # The name before --new-vm (the flag of `vmguard restore create`), kept for scripts.
    where.add_argument("--new-name", dest="new_vm", help=argparse.SUPPRESS)
    where.add_argument("--in-place", action="store_true", help="overwrite the VM backed up")
    restore.add_argument("--vm", help="with --in-place: another VM (moref) than the source")
    restore.add_argument(
        "--datastore", default="", help="datastore of the new VM (default: the source VM's)"
    )
    restore.add_argument("--folder", help="VM folder path, e.g. /DC0/vm/Restores")
    restore.add_argument("--pool", help="resource pool path")
    restore.add_argument(
        "--network-map",
        action="append",
        metavar="SRC=DST",
        help="connect the new VM's NICs on network SRC to DST instead (repeatable)",
    )
    restore.add_argument("--power-on", action="store_true", help="power the new VM on")
    restore.add_argument(
        "--power-off", action="store_true", help="with --in-place: power the VM off first"
    )
    restore.add_argument(
        "--disks-at-once",
        type=int,
        default=None,
        metavar="N",
        help="write at most N of the VM's disks in parallel (default 2)",
    )
    for p in (ls, backup, restore):
        p.set_defaults(func=_vm, parser=p)


def _vm(args: argparse.Namespace) -> int:
    from vmguard.vm.backup import BackupOptions
    from vmguard.vsphere.restore import NewVMTarget

    ep = vcenter_endpoint(args)
    if args.vm_cmd == "ls":
        return vm_ls(ep, sys.stdout, output=args.output)
    from vmguard.vm.access import open_locator

    locator = open_locator(args.locator, ep, vddk_libdir=args.vddk_libdir)
    if args.vm_cmd == "backup":
        options = BackupOptions(
            transport=args.transport, quiesce=args.quiesce, vcenter=args.vcenter_name
        )
        # Never creates a repository: a mistyped --repo fails here (`repo init` creates).
        repo = open_repository_from(args)
        return vm_backup(
            ep, args.vm, repo, locator, options, sys.stdout, quiet=args.quiet, output=args.output
        )
    networks = dict(pair.split("=", 1) for pair in args.network_map or ())
    return vm_restore(
        ep,
        args.archive,
        open_repository_from(args),
        locator,
        sys.stdout,
        new_name=args.new_vm,
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
        quiet=args.quiet,
        disks_at_once=args.disks_at_once,
    )


def vm_ls(ep: Endpoint, out: TextIO, output: str = "table") -> int:
    from vmguard.vsphere.inventory import discover
    from vmguard.vsphere.session import VSphereSession
    from vmguard.vsphere.tags import TagClient

    session = VSphereSession(ep)
    try:
        session.keepalive()  # log in first: a trust failure is reported by the SOAP side
        with TagClient(ep) as tags:
            vm_tags = tags.vm_tags()
        records = session.call(lambda si: discover(si, vm_tags))
    finally:
        session.close()
    if output != "table":
        out.write(render([asdict(r) for r in records], output) + "\n")
        return 0
    out.write(f"{'NAME':32} {'MOREF':10} {'POWER':10} {'HW':>3} {'CBT':4} {'DISKS':>5} FOLDER\n")
    for r in records:
        name = r.name + (" (template)" if r.template else "")
        cbt = "on" if r.cbt_enabled else "off"
        ours = ",".join(s.backup_uid for s in r.our_snapshots)
        flag = f" [snapshots of ours: {ours}]" if ours else ""
        out.write(
            f"{name:32} {r.moref:10} {r.power_state:10} {r.hardware_version:3} {cbt:4} "
            f"{len(r.disks):5} {r.folder_path}{flag}\n"
        )
    return 0


def vm_backup(
    ep: Endpoint,
    vm: str,
    repo: Repository,
    locator: DiskLocator,
    options: BackupOptions,
    out: TextIO,
    quiet: bool = False,
    output: str = "table",
) -> int:
    from vmguard.vm.backup import backup_vm
    from vmguard.vsphere.inventory import discover, find_by_name
    from vmguard.vsphere.session import VSphereSession

    session = VSphereSession(ep)
    try:
        record = find_by_name(session.call(discover), vm)
        with ProgressDisplay(f"backup {record.name}", enabled=not quiet) as display:
            result = backup_vm(session, repo, record.moref, locator, options, progress=display)
            display.finish()
    finally:
        session.close()
    m = result.manifest
    if output != "table":
        doc = {
            "archive_id": m.archive_id,
            "mode": result.mode,
            "mode_reason": result.mode_reason,
            "transport": result.transport.transport,
            "transport_reason": result.transport.reason,
            "disks": {str(k): {"mode": d.mode, **asdict(d.stats)} for k, d in result.disks.items()},
        }
        out.write(render(doc, output) + "\n")
        return 0
    out.write(f"archive {m.archive_id}\n")
    out.write(f"  mode       {result.mode}  ({result.mode_reason})\n")
    out.write(f"  transport  {result.transport.transport}  ({result.transport.reason})\n")
    for key, d in sorted(result.disks.items()):
        out.write(
            f"  disk {key}: {d.mode}, read {d.stats.bytes_read} B, stored {d.stats.bytes_stored} B,"
            f" chunks new {d.stats.chunks_new} reused {d.stats.chunks_reused}\n"
        )
    return 0


def vm_restore(
    ep: Endpoint,
    archive_id: str,
    repo: Repository,
    locator: DiskLocator,
    out: TextIO,
    *,
    new_name: str | None,
    in_place_vm: str | None,
    target: Callable[[str], NewVMTarget],
    power_on: bool,
    power_off: bool,
    quiet: bool = False,
    disks_at_once: int | None = None,
) -> int:
    from vmguard.vm.restore import DISKS_AT_ONCE, DiskProgress, restore_in_place, restore_new_vm
    from vmguard.vsphere.session import VSphereSession

    # The disks are written in parallel: one bar for all of them.
    manifest = repo.load_archive(archive_id)
    keys = [d.key for d in manifest.disks]
    what = f"restore disk {keys[0]}" if len(keys) == 1 else f"restore disks {', '.join(keys)}"
    display = ProgressDisplay(what, enabled=not quiet)
    summed = DiskProgress(display, {int(d.key): d.length for d in manifest.disks})
    at_once = disks_at_once or DISKS_AT_ONCE

    session = VSphereSession(ep)
    try:
        if new_name:
            made = restore_new_vm(
                session, repo, archive_id, target(new_name), locator, power_on, summed.disk,
                disks_at_once=at_once,
            )  # fmt: skip
            display.finish()
            out.write(f"restored {archive_id} as {made.vm.name} ({made.vm.moref})\n")
        else:
            moref = in_place_vm or manifest.vm.moref
            done = restore_in_place(
                session, repo, archive_id, moref, locator, power_off, summed.disk,
                disks_at_once=at_once,
            )  # fmt: skip
            display.finish()
            for key, why in sorted(done.reasons.items()):
                out.write(f"disk {key}: {why}\n")
    finally:
        display.close()
        session.close()
    return 0
