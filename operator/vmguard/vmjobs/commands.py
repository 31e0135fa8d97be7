"""``vmguard vm ls | backup | restore``: the command implementations (no cluster needed).

The CLI parses arguments and builds a :class:`~vmguard.vmjobs.access.DiskLocator`;
everything else is here. vCenter credentials come from ``VMGUARD_VC_USER`` /
``VMGUARD_VC_PASSWORD``, trust from ``--thumbprint`` or ``--ca-file`` (``--insecure``
only when asked for by name); the repository from a URL (``file:///path`` or
``s3://host:port/bucket[/prefix]``, as :mod:`vmguard.store.location` reads it, with
S3 credentials from the environment) and its key from ``--key-file`` or ``VMGUARD_KEY``.
No secret is ever printed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from typing import TextIO

from vmguard.errors import ConfigError, RepositoryNotFoundError
from vmguard.store import MasterKey, Repository
from vmguard.store.crypto import KEY_ENV
from vmguard.store.location import open_location
from vmguard.vmjobs.access import DiskLocator
from vmguard.vmjobs.backup import BackupOptions, backup_vm
from vmguard.vmjobs.restore import restore_in_place, restore_new_vm
from vmguard.vsphere.inventory import discover, find_by_name
from vmguard.vsphere.restore import NewVMTarget
from vmguard.vsphere.session import Endpoint, VSphereSession
from vmguard.vsphere.tags import TagClient

USER_ENV = "VMGUARD_VC_USER"
PASSWORD_ENV = "VMGUARD_VC_PASSWORD"


def endpoint(url: str, thumbprint: str | None, ca_file: str | None, insecure: bool) -> Endpoint:
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
