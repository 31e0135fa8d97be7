"""The operator's side of a restore: check the target and prepare it, before any byte moves.

Control plane only (BRIEF §2): these functions read the archive's manifest and captured
VM config, and create VMs and empty disks through pyVmomi; the proxy Job then writes
the disks (or files). Every function here blocks (pyVmomi, S3): callers run them in a
thread. Each returns a :class:`Prepared` — the VM and the disks the proxy will write,
which the operator records in ``status.result`` *before* creating the Job — or raises
:class:`~vmguard.errors.RestoreRejected` with the condition reason.

Restart safety: what is made carries a marker with the VMGuardRestore's UID (a new VM's
extraConfig :data:`VM_MARKER`, an added disk's :func:`disk_marker`), and every function
first looks for what an earlier, interrupted attempt made. Running one twice therefore
never makes a second VM or disk.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vmguard.api import (
    RESTORE_VM_MARKER,
    BackupPlacement,
    RestoredDisk,
    RestoreResult,
    VMIdentity,
)
from vmguard.errors import ConfigError, PermanentError, RestoreRejected
from vmguard.store import ArchiveManifest
from vmguard.vsphere import adoption
from vmguard.vsphere import restore as vrestore
from vmguard.vsphere.inventory import vm_record
from vmguard.vsphere.session import VSphereSession
from vmguard.vsphere.vmconfig import CONFIG_FORMAT, VMConfig

VM_MARKER = RESTORE_VM_MARKER
"""extraConfig key on a VM a restore created; the value is the VMGuardRestore's UID."""


def disk_marker(uid: str, source_key: int) -> str:
    """extraConfig key on a VM that got a disk from a restore (value: controller:unit)."""
    return f"vmguard.restore.{uid}.disk{source_key}"


@dataclass
class Prepared:
    vm: VMIdentity = field(default_factory=VMIdentity)
    """``{moref, name}`` of the VM restored into or created ({} for files)."""
    disks: list[RestoredDisk] = field(default_factory=list)
    """Per disk to write: ``{sourceKey, vm, key, backing, label}``."""
    power_on_after: bool = False
    power_off: list[str] = field(default_factory=list)
    """VMs to power off before the Job writes to their disks."""
    location: str = ""

    def result(self) -> RestoreResult:
        out: RestoreResult = {}
        if self.vm:
            out["vm"] = self.vm
        if self.disks:
            out["disks"] = self.disks
        if self.location:
            out["location"] = self.location
        return out


def archive_config(manifest: ArchiveManifest) -> VMConfig:
    if manifest.config_format != CONFIG_FORMAT:
        raise RestoreRejected(
            "NoVMConfig",
            f"archive {manifest.archive_id} holds no vSphere VM config: restore disks or files",
        )
    return VMConfig.from_json(manifest.config_blob)


def source_disk_key(manifest: ArchiveManifest, selector: dict[str, Any]) -> int:
    """The archive's disk named by ``{key}`` or ``{label}``."""
    for d in manifest.disks:
        if ("key" in selector and str(selector["key"]) == d.key) or (
            "label" in selector and selector["label"] == d.label
        ):
            return int(d.key)
    wanted = selector.get("key", selector.get("label"))
    have = ", ".join(f"{d.key} ({d.label})" for d in manifest.disks)
    raise RestoreRejected(
        "DiskNotInBackup", f"archive {manifest.archive_id} has no disk {wanted!r}; it has {have}"
    )


def _datastore_of(backing: str) -> str:
    """``[ds1] vm/vm.vmdk`` → ``ds1``."""
    return backing[1:].split("]", 1)[0] if backing.startswith("[") else ""


def prepare_new_vm(
    session: VSphereSession, manifest: ArchiveManifest, new_vm: dict[str, Any], uid: str
) -> Prepared:
    config = archive_config(manifest)
    datastore = new_vm.get("datastore") or next(
        (_datastore_of(d.file_name) for d in config.disks if d.file_name), ""
    )
    target = vrestore.NewVMTarget(
        name=new_vm["name"],
        datastore=datastore,
        folder=new_vm.get("folder", ""),
        resource_pool=new_vm.get("resourcePool", ""),
        host=new_vm.get("host", ""),
        network_map={m["from"]: m["to"] for m in new_vm.get("networkMap") or ()},
        isolated_network=new_vm.get("isolatedNetwork", ""),
        marker=(VM_MARKER, uid),
    )
    moref = adoption.find_marked_vm(session, VM_MARKER, uid)
    if moref is not None:
        created = adoption.created_vm(session, moref, config)  # made before a restart
    else:
        taken = adoption.vms_named(session, target.name)
        if taken:
            raise RestoreRejected(
                "TargetExists", f"a VM named {target.name!r} already exists ({', '.join(taken)})"
            )
        try:
            vrestore.check_target(session, config, target)
            created = vrestore.create_vm(session, config, target)
        except (ConfigError, PermanentError) as exc:
            raise RestoreRejected("InvalidTarget", str(exc)) from None
    labels = {d.key: d.label for d in config.disks}
    return Prepared(
        vm={"moref": created.moref, "name": created.name},
        disks=[
            {
                "sourceKey": d.source_key,
                "vm": created.moref,
                "key": d.key,
                "backing": d.file_name,
                "label": labels.get(d.source_key, ""),
            }
            for d in created.disks
        ],
        power_on_after=bool(new_vm.get("powerOn")),
    )


def _source_vm(session: VSphereSession, manifest: ArchiveManifest) -> str:
    try:
        return adoption.find_vm_ref(
            session, moref=manifest.vm.moref, instance_uuid=manifest.vm.instance_uuid
        )
    except LookupError:
        raise RestoreRejected(
            "TargetNotFound",
            f"the backed-up VM {manifest.vm.name!r} ({manifest.vm.moref}) no longer exists:"
            " restore it as a new VM",
        ) from None


def prepare_in_place(
    session: VSphereSession, manifest: ArchiveManifest, power_on_after: bool | None
) -> Prepared:
    """The original VM; ``power_on_after`` as recorded before, else from its power state."""
    moref = _source_vm(session, manifest)
    if power_on_after is None:
        power_on_after = adoption.power_state(session, moref) == "poweredOn"
    return Prepared(
        vm={"moref": moref, "name": manifest.vm.name},
        power_on_after=power_on_after,
        power_off=[moref],
    )


def prepare_disks(
    session: VSphereSession,
    manifest: ArchiveManifest,
    items: list[dict[str, Any]],
    uid: str,
    power_on_after: bool | None,
) -> Prepared:
    config = archive_config(manifest)
    out = Prepared()
    for item in items:
        source = source_disk_key(manifest, item["source"])
        label = manifest.disk(str(source)).label
        if "overwrite" in item:
            moref = _source_vm(session, manifest)
            live = {d.key: d for d in adoption.vm_disks(session, moref)}
            if source not in live or live[source].capacity != manifest.disk(str(source)).length:
                raise RestoreRejected(
                    "InvalidTarget",
                    f"disk {source} of {manifest.vm.name!r} is gone or was resized:"
                    " attach it to a VM instead",
                )
            if power_on_after is None:
                power_on_after = adoption.power_state(session, moref) == "poweredOn"
            out.power_on_after = power_on_after
            out.power_off.append(moref)
            key, backing = source, live[source].backing_file
        else:
            attach = item["attachTo"]
            ident = attach["vm"]
            try:
                moref = adoption.find_vm_ref(
                    session,
                    moref=ident.get("moref", ""),
                    instance_uuid=ident.get("instanceUuid", ""),
                    name=ident.get("name", ""),
                )
            except LookupError as exc:
                raise RestoreRejected("TargetNotFound", str(exc)) from None
            if adoption.power_state(session, moref) != "poweredOff":
                raise RestoreRejected(
                    "TargetPoweredOn",
                    f"VM {moref} is powered on: a disk is written only to a powered-off VM",
                )
            marker = disk_marker(uid, source)
            made = adoption.find_marked_disk(session, moref, marker, source)
            if made is None:
                datastore = attach.get("datastore") or _datastore_of(config.disk(source).file_name)
                try:
                    made = vrestore.add_disk(
                        session, moref, config.disk(source), datastore, marker=marker
                    )
                except (ConfigError, PermanentError) as exc:
                    raise RestoreRejected("InvalidTarget", str(exc)) from None
            key, backing = made.key, made.file_name
        out.disks.append(
            {"sourceKey": source, "vm": moref, "label": label, "key": key, "backing": backing}
        )
        out.vm = out.vm or {"moref": moref}
    return out


def _inside(prefix: str, parent: str) -> bool:
    prefix, parent = prefix.strip("/"), parent.strip("/")
    return not parent or prefix == parent or prefix.startswith(parent + "/")


def prepare_files(
    manifest: ArchiveManifest, files: dict[str, Any], repo_s3: dict[str, Any]
) -> Prepared:
    """Check a files restore: the disk exists; an S3 prefix is outside the repository."""
    if files.get("disk"):
        source_disk_key(manifest, files["disk"])
    to = files["to"]
    if "s3" in to:
        bucket = to["s3"].get("bucket") or repo_s3["bucket"]
        prefix = to["s3"]["prefix"].strip("/")
        if bucket == repo_s3["bucket"] and _inside(prefix, repo_s3.get("prefix", "")):
            where = repo_s3.get("prefix") or "the whole bucket"
            raise RestoreRejected(
                "TargetInsideRepository",
                f"s3://{bucket}/{prefix} lies inside the repository ({where}): files written"
                " there would mix with its objects; choose another prefix or bucket",
            )
        return Prepared(location=f"s3://{bucket}/{prefix}")
    pvc = to["pvc"]
    path = posixpath.normpath("/" + pvc.get("path", "").strip("/"))
    return Prepared(location=f"pvc/{pvc['claimName']}:{path}")


def placement(session: VSphereSession, prepared: Prepared) -> BackupPlacement:
    """Where the restore writes, for the admission limits: the target VM's host and the
    disks it writes per datastore (every disk of the VM for an in-place restore)."""
    moref = prepared.vm.get("moref") or next((d["vm"] for d in prepared.disks), "")
    record = session.call(lambda si: vm_record(si, moref))
    if prepared.disks:
        per_datastore = Counter(_datastore_of(d["backing"]) for d in prepared.disks)
    else:
        per_datastore = Counter(d.datastore for d in record.disks if d.datastore)
    per_datastore.pop("", None)
    return {
        "host": record.host,
        "datastores": sorted(per_datastore),
        "disks": [{"datastore": ds, "count": n} for ds, n in sorted(per_datastore.items())],
    }


def powered_off_for(target: Mapping[str, Any], result: Mapping[str, Any]) -> list[str]:
    """The VMs to power off before the Job writes, from the spec and the recorded result:
    the VM of an in-place restore, the VMs whose disks are overwritten."""
    if "inPlace" in target:
        moref = (result.get("vm") or {}).get("moref")
        return [moref] if moref else []
    items, written = target.get("disks") or (), result.get("disks") or ()
    return [d["vm"] for item, d in zip(items, written, strict=False) if "overwrite" in item]
