"""Hot-add: attach a snapshot's disks to the proxy VM, read them as local block devices.

The proxy finds its own VM by its BIOS UUID (``/sys/class/dmi/id/product_uuid`` in the
guest; ``SearchIndex.FindByUuid``), attaches each frozen disk of the snapshot by a
reconfigure (``independent_nonpersistent``: nothing the proxy does reaches the disk),
finds the new block device, reads it, and **always** detaches — the attach is a
context manager, and the detach runs also after a failed read. The device is found by
a :data:`DeviceFinder`: in production from the disk UUID in ``/dev/disk/by-id`` (the
proxy VM needs ``disk.EnableUUID=TRUE``), in the lab from the simulator's path mapping.

:func:`hotadd_possible` is the *auto* choice: hot-add only when the proxy is a VM of the
same vCenter, in the same datacenter, and sees every datastore of the disks; otherwise
NBD, and the reason is returned for the backup's status. :func:`hotadd_nodes` asks the
same of every Kubernetes node, so the operator can decide before a proxy pod exists.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyVmomi import vim

from vmguard.errors import PermanentError
from vmguard.vsphere.inventory import find_vm, moid, vm_record
from vmguard.vsphere.records import VMRecord
from vmguard.vsphere.session import VSphereSession, wait_for
from vmguard.vsphere.snapshots import SnapshotDisk

log = logging.getLogger(__name__)

DMI_UUID = "/sys/class/dmi/id/product_uuid"


@dataclass(frozen=True)
class AttachedDisk:
    source_key: int
    """The disk's key in the backed-up VM."""
    proxy_key: int
    """The device key it got on the proxy VM."""
    file_name: str
    capacity: int
    disk_uuid: str


DeviceFinder = Callable[[str, AttachedDisk], str]
"""(proxy VM moref, attached disk) → local device path."""


def own_bios_uuid(path: str = DMI_UUID) -> str:
    """This machine's BIOS UUID as vSphere shows it (config.uuid), or "" outside a VM."""
    try:
        with open(path) as f:
            return f.read().strip().lower()
    except OSError:
        return ""


def find_proxy_vm(session: VSphereSession, bios_uuid: str) -> str:
    """The moref of the VM with this BIOS UUID, or "" when vCenter knows none."""
    if not bios_uuid:
        return ""

    def find(si: vim.ServiceInstance) -> Any:
        index: Any = si.RetrieveContent().searchIndex
        return index.FindByUuid(None, bios_uuid, True, False)

    return moid(session.call(find))


def hotadd_possible(session: VSphereSession, proxy_bios_uuid: str, vm: VMRecord) -> tuple[str, str]:
    """(proxy moref or "", reason): whether hot-add can serve this VM, and why (not)."""
    if not proxy_bios_uuid:
        return "", "the proxy is not a virtual machine (no BIOS UUID)"
    proxy_moref = find_proxy_vm(session, proxy_bios_uuid)
    if not proxy_moref:
        return "", f"no VM of this vCenter has the proxy's BIOS UUID {proxy_bios_uuid}"
    if proxy_moref == vm.moref:
        return "", "the proxy cannot hot-add its own disks"
    proxy = session.call(lambda si: vm_record(si, proxy_moref))
    if proxy.datacenter != vm.datacenter:
        return "", f"the proxy {proxy.name} is in another datacenter ({proxy.datacenter})"
    seen = set(proxy.datastores) | {d.datastore for d in proxy.disks}
    missing = sorted({d.datastore for d in vm.disks} - seen)
    if missing:
        return "", f"the proxy {proxy.name} does not see datastore(s) {', '.join(missing)}"
    return proxy_moref, f"hot-add through proxy VM {proxy.name}"


def hotadd_nodes(
    session: VSphereSession, vm: VMRecord, node_uuids: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """Which Kubernetes nodes could hot-add ``vm``'s disks: (their names, sorted; node →
    why not, for the others). ``node_uuids`` maps node names to their system UUID (the
    BIOS UUID a proxy on that node reads, Kubernetes' ``status.nodeInfo.systemUUID``)."""
    able, why_not = [], {}
    for node, uuid in sorted(node_uuids.items()):
        proxy, reason = hotadd_possible(session, uuid.strip().lower(), vm)
        if proxy:
            able.append(node)
        else:
            why_not[node] = reason
    return able, why_not


def _free_slots(devices: Sequence[Any], count: int) -> list[tuple[int, int]]:
    """(controller key, unit number) for ``count`` disks on the proxy's SCSI controllers."""
    slots = []
    for ctrl in devices:
        if not isinstance(ctrl, vim.vm.device.VirtualSCSIController):
            continue
        used = {d.unitNumber for d in devices if d.controllerKey == ctrl.key}
        used.add(ctrl.scsiCtlrUnitNumber or 7)
        slots += [(ctrl.key, unit) for unit in range(16) if unit not in used]
    if len(slots) < count:
        raise PermanentError(
            f"the proxy VM has {len(slots)} free SCSI slots, {count} are needed for hot-add"
        )
    return slots[:count]


def attach(
    session: VSphereSession, proxy_moref: str, disks: Sequence[SnapshotDisk]
) -> list[AttachedDisk]:
    """Attach the snapshot's disks to the proxy, read-only (independent non-persistent)."""

    def run(si: vim.ServiceInstance) -> list[AttachedDisk]:
        proxy: Any = find_vm(si, proxy_moref)
        devices = list(proxy.config.hardware.device)
        changes = []
        slots = _free_slots(devices, len(disks))
        for n, (disk, (ctrl, unit)) in enumerate(zip(disks, slots, strict=True)):
            backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                fileName=disk.file_name, diskMode="independent_nonpersistent"
            )
            device = vim.vm.device.VirtualDisk(
                key=-100 - n,
                controllerKey=ctrl,
                unitNumber=unit,
                capacityInBytes=disk.capacity,
                backing=backing,
            )
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=device))
        wait_for(proxy.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=changes)))
        by_file = {
            getattr(d.backing, "fileName", ""): d
            for d in proxy.config.hardware.device
            if isinstance(d, vim.vm.device.VirtualDisk)
        }
        out = []
        for disk in disks:
            dev = by_file.get(disk.file_name)
            if dev is None:
                raise PermanentError(f"hot-add of {disk.file_name} to {proxy_moref} did not show")
            out.append(
                AttachedDisk(
                    disk.key,
                    int(dev.key),
                    disk.file_name,
                    disk.capacity,
                    str(getattr(dev.backing, "uuid", "") or disk.disk_uuid),
                )
            )
        return out

    return session.call(run)


def detach(session: VSphereSession, proxy_moref: str, attached: Sequence[AttachedDisk]) -> None:
    """Detach (never delete) the disks; already detached ones are skipped."""

    def run(si: vim.ServiceInstance) -> None:
        proxy: Any = find_vm(si, proxy_moref)
        keys = {a.proxy_key for a in attached}
        changes = [
            vim.vm.device.VirtualDeviceSpec(operation="remove", device=d)
            for d in proxy.config.hardware.device
            if isinstance(d, vim.vm.device.VirtualDisk) and d.key in keys
        ]
        if changes:
            wait_for(proxy.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=changes)))

    session.call(run)


@contextlib.contextmanager
def hotadded(
    session: VSphereSession, proxy_moref: str, disks: Sequence[SnapshotDisk]
) -> Iterator[list[AttachedDisk]]:
    """The disks attached to the proxy for the duration of the block; always detached."""
    attached = attach(session, proxy_moref, disks)
    try:
        yield attached
    finally:
        try:
            detach(session, proxy_moref, attached)
        except Exception:
            log.exception("hot-added disks of %s not detached from the proxy", proxy_moref)
            raise


def device_by_uuid(proxy_moref: str, disk: AttachedDisk, by_id: str = "/dev/disk/by-id") -> str:
    """Production finder: the block device whose serial/WWN carries the disk UUID."""
    digits = disk.disk_uuid.replace("-", "").lower()
    for path in sorted(glob.glob(os.path.join(by_id, "*"))):
        name = os.path.basename(path).lower()
        if digits and digits in name.replace("-", "").replace("_", ""):
            return os.path.realpath(path)
    raise PermanentError(
        f"no block device for hot-added disk {disk.file_name} (UUID {disk.disk_uuid}) under "
        f"{by_id}: does the proxy VM have disk.EnableUUID=TRUE?"
    )
