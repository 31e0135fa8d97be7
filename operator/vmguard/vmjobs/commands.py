"""``vmguard vm ls | backup | restore``: parser and implementations (no cluster needed).

:func:`register` adds ``vm`` to the top-level parser (as ``vmguard.files.commands``
does); its handler builds the :class:`~vmguard.vmjobs.access.DiskLocator` that
``--locator`` names (``vddk``, or one an installed distribution registers:
:func:`vmguard.vmjobs.access.open_locator`) and runs the command. pyVmomi, NBD and the
engine are imported when a ``vm`` command runs, not when the parser is built, so every
other ``vmguard`` command starts as fast as before.

vCenter credentials come from ``VMGUARD_VC_USER`` / ``VMGUARD_VC_PASSWORD``, trust
from ``--thumbprint`` or ``--ca-file`` (``--insecure`` only when asked for by name);
the repository from a URL (``file:///path`` or ``s3://host:port/bucket[/prefix]``, as
:mod:`vmguard.store.location` reads it, with S3 credentials from the environment) and
its key from ``--key-file`` or ``VMGUARD_KEY``. No secret is ever printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TextIO

from vmguard.config import VC_PASSWORD_ENV, VC_USER_ENV
from vmguard.errors import ConfigError, RepositoryNotFoundError
from vmguard.store import MasterKey, Repository
from vmguard.store.crypto import KEY_ENV
from vmguard.store.location import open_location

if TYPE_CHECKING:
    from vmguard.vmjobs.access import DiskLocator
    from vmguard.vmjobs.backup import BackupOptions
    from vmguard.vsphere.restore import NewVMTarget
    from vmguard.vsphere.session import Endpoint

USER_ENV = VC_USER_ENV
PASSWORD_ENV = VC_PASSWORD_ENV


def register(sub: Any) -> None:
    """Add ``vm ls|backup|restore`` to the top-level sub-parsers."""
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
    data.add_argument(
        "--locator",
        default="vddk",
        metavar="SPEC",
        help="how disks are reached: vddk (default), or SCHEME:ARG of an installed plugin",
    )
    data.add_argument(
        "--vddk-libdir",
        default="/opt/vmware-vix-disklib-distrib",
        help="the VDDK's directory (with --locator vddk)",
    )
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
    restore.add_argument(
        "--datastore", default="", help="datastore of the new VM (default: the source VM's)"
    )
    restore.add_argument("--folder", help="VM folder path, e.g. /DC0/vm/Restores")
    restore.add_argument("--pool", help="resource pool path")
    restore.add_argument("--network-map", action="append", metavar="SRC=DST")
    restore.add_argument("--power-on", action="store_true")
    restore.add_argument("--power-off", action="store_true", help="with --in-place")
    vm.set_defaults(func=_vm)


def _vm(args: argparse.Namespace) -> int:
    from vmguard.vmjobs.backup import BackupOptions
    from vmguard.vsphere.restore import NewVMTarget

    ep = endpoint(args.vcenter, args.thumbprint, args.ca_file, args.insecure)
    if args.vm_cmd == "ls":
        return vm_ls(ep, sys.stdout, as_json=args.json)
    from vmguard.vmjobs.access import open_locator

    locator = open_locator(args.locator, ep, vddk_libdir=args.vddk_libdir)
    if args.vm_cmd == "backup":
        options = BackupOptions(
            transport=args.transport, quiesce=args.quiesce, vcenter=args.vcenter_name
        )
        return vm_backup(ep, args.vm, args.repo, args.key_file, locator, options, sys.stdout)
    networks = dict(pair.split("=", 1) for pair in args.network_map or ())
    return vm_restore(
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


def endpoint(url: str, thumbprint: str | None, ca_file: str | None, insecure: bool) -> Endpoint:
    from vmguard.vsphere.session import Endpoint

    user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
    if not user or not password:
        raise ConfigError(f"set {USER_ENV} and {PASSWORD_ENV} to the vCenter credentials")
    if sum(bool(x) for x in (thumbprint, ca_file, insecure)) > 1:
        raise ConfigError("give one of --thumbprint, --ca-file, --insecure")
    return Endpoint(url, user, password, ca_file=ca_file, thumbprint=thumbprint, insecure=insecure)


def open_repository(url: str, key_file: str | None, *, create: bool = False) -> Repository:
    backend = open_location(url, create=create)
    key = None
    if key_file:
        with open(key_file, "rb") as f:
            key = MasterKey(f.read().strip())
    elif os.environ.get(KEY_ENV):
        key = MasterKey(os.environ[KEY_ENV].encode())
    try:
        return Repository.open(backend, key)
    except RepositoryNotFoundError:
        if not create:
            raise
        return Repository.init(backend, master_key=key)


def vm_ls(ep: Endpoint, out: TextIO, as_json: bool = False) -> int:
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
    if as_json:
        json.dump([asdict(r) for r in records], out, ensure_ascii=False, indent=1)
        out.write("\n")
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
    repo_url: str,
    key_file: str | None,
    locator: DiskLocator,
    options: BackupOptions,
    out: TextIO,
) -> int:
    from vmguard.vmjobs.backup import backup_vm
    from vmguard.vsphere.inventory import discover, find_by_name
    from vmguard.vsphere.session import VSphereSession

    repo = open_repository(repo_url, key_file, create=True)
    session = VSphereSession(ep)
    try:
        record = find_by_name(session.call(discover), vm)
        result = backup_vm(session, repo, record.moref, locator, options)
    finally:
        session.close()
    m = result.manifest
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
    repo_url: str,
    key_file: str | None,
    locator: DiskLocator,
    out: TextIO,
    *,
    new_name: str | None,
    in_place_vm: str | None,
    target: Callable[[str], NewVMTarget],
    power_on: bool,
    power_off: bool,
) -> int:
    from vmguard.vmjobs.restore import restore_in_place, restore_new_vm
    from vmguard.vsphere.session import VSphereSession

    repo = open_repository(repo_url, key_file)
    session = VSphereSession(ep)
    try:
        if new_name:
            made = restore_new_vm(session, repo, archive_id, target(new_name), locator, power_on)
            out.write(f"restored {archive_id} as {made.vm.name} ({made.vm.moref})\n")
        else:
            manifest = repo.load_archive(archive_id)
            moref = in_place_vm or manifest.vm.moref
            done = restore_in_place(session, repo, archive_id, moref, locator, power_off)
            for key, why in sorted(done.reasons.items()):
                out.write(f"disk {key}: {why}\n")
    finally:
        session.close()
    return 0
