"""Restore targets in vSphere: a new VM from a captured config, a new disk, power state.

vCenter's side only — no disk data passes here. :func:`create_vm` builds a VM from a
:class:`~.vmconfig.VMConfig` placed as :class:`NewVMTarget` says (name, folder, resource
pool, datastore, network map), with empty disks of the captured sizes, thin where the
source was thin; the data mover then writes the backup into those disks through a
transport. :func:`add_disk` gives an existing VM one new empty disk (single-disk
restore). Invariants: a created VM is powered off until the data is written (the caller
powers it on when asked); a failed creation leaves no half-made VM behind.

Restart safety (the operator may be killed between "create" and "record what was
created"): a caller may give a *marker*, an extraConfig key/value set in the very
CreateVM or ReconfigVM call that makes the VM or disk; ``find_marked_vm`` and
``find_marked_disk`` find what an earlier, interrupted attempt made, so it is adopted
instead of made twice (:mod:`.adoption`). Markers carry a UID, never a secret.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pyVmomi import vim, vmodl

from vmguard.errors import ConfigError, PermanentError
from vmguard.vsphere.inventory import InventoryTree, find_vm, moid
from vmguard.vsphere.session import VSphereSession, wait_for
from vmguard.vsphere.vmconfig import ControllerConfig, DiskConfig, NicConfig, VMConfig

log = logging.getLogger(__name__)

_CONTROLLER_CLASSES: dict[str, Any] = {
    "pvscsi": vim.vm.device.ParaVirtualSCSIController,
    "lsilogic": vim.vm.device.VirtualLsiLogicController,
    "lsilogic-sas": vim.vm.device.VirtualLsiLogicSASController,
    "buslogic": vim.vm.device.VirtualBusLogicController,
    "sata": vim.vm.device.VirtualAHCIController,
    "nvme": vim.vm.device.VirtualNVMEController,
}
_NIC_CLASSES: dict[str, Any] = {
    "vmxnet3": vim.vm.device.VirtualVmxnet3,
    "vmxnet2": vim.vm.device.VirtualVmxnet2,
    "e1000e": vim.vm.device.VirtualE1000e,
    "e1000": vim.vm.device.VirtualE1000,
    "pcnet32": vim.vm.device.VirtualPCNet32,
}


@dataclass(frozen=True)
class NewVMTarget:
    name: str
    datastore: str
    folder: str = ""
    """Inventory path of a VM folder (``/DC0/vm/Restores``); default: the datacenter's root."""
    resource_pool: str = ""
    """Inventory path of a resource pool; default: the first pool found."""
    network_map: Mapping[str, str] = field(default_factory=dict)
    """Source network name → target network name; unmapped networks keep their name."""
    isolated_network: str = ""
    """When set, every NIC is connected to this network, whatever ``network_map`` says: no
    NIC of the new VM can reach the source's networks (the boot test's sandbox)."""
    keep_mac: bool = False
    """Keep the source's MAC addresses (only when the source VM is gone)."""
    host: str = ""
    """Name or inventory path of an ESXi host; default: vCenter picks one in the pool."""
    marker: tuple[str, str] | None = None
    """(extraConfig key, value) set at creation, to find this VM again (adoption.find_marked_vm)."""


@dataclass(frozen=True)
class CreatedDisk:
    source_key: int
    key: int
    file_name: str
    capacity: int
    thin: bool


@dataclass(frozen=True)
class CreatedVM:
    moref: str
    name: str
    disks: tuple[CreatedDisk, ...]


def _by_path(tree: InventoryTree, path: str, kind: str) -> str:
    for ref, node in tree.nodes.items():
        if node.kind.endswith(kind) and tree.path(ref) == path.rstrip("/"):
            return ref
    raise ConfigError(f"no {kind.rsplit('.', 1)[-1]} at {path!r}")


def _first(tree: InventoryTree, kind: str) -> str:
    refs = sorted(
        (tree.path(ref), ref) for ref, node in tree.nodes.items() if node.kind.endswith(kind)
    )
    if not refs:
        raise ConfigError(f"vCenter has no {kind.rsplit('.', 1)[-1]}")
    return refs[0][1]


def _network_ref(tree: InventoryTree, name: str) -> tuple[str, str]:
    """(moref, kind) of the network with this name."""
    for ref, node in tree.nodes.items():
        if node.name == name and (
            node.kind.endswith("Network") or node.kind.endswith("DistributedVirtualPortgroup")
        ):
            return ref, node.kind
    raise ConfigError(f"no network named {name!r}")


def _controller_spec(c: ControllerConfig) -> Any:
    cls = _CONTROLLER_CLASSES.get(c.kind)
    if cls is None:
        raise PermanentError(f"cannot recreate a {c.kind} controller")
    dev = cls(key=-c.key, busNumber=c.bus)
    if isinstance(dev, vim.vm.device.VirtualSCSIController):
        dev.sharedBus = c.shared_bus  # type: ignore[assignment]
    return vim.vm.device.VirtualDeviceSpec(operation="add", device=dev)


def _disk_spec(d: DiskConfig, controller_key: int, file_name: str) -> Any:
    backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
        fileName=file_name,
        diskMode=d.mode
        if d.mode.startswith("independent") or d.mode == "persistent"
        else "persistent",
        thinProvisioned=d.thin,
        eagerlyScrub=d.eager_zero and not d.thin,
    )
    disk = vim.vm.device.VirtualDisk(
        key=-d.key,
        controllerKey=controller_key,
        unitNumber=d.unit_number,
        capacityInBytes=d.capacity,
        capacityInKB=d.capacity // 1024,
        backing=backing,
        deviceInfo=vim.Description(label=d.label, summary=d.label),
    )
    return vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=disk)


def _nic_spec(si: Any, tree: InventoryTree, n: NicConfig, target: NewVMTarget) -> Any:
    name = target.isolated_network or target.network_map.get(n.network, n.network)
    ref, kind = _network_ref(tree, name)
    cls = _NIC_CLASSES.get(n.kind, vim.vm.device.VirtualVmxnet3)
    if kind.endswith("DistributedVirtualPortgroup"):
        pg: Any = vim.dvs.DistributedVirtualPortgroup(ref, si._stub)
        backing: Any = vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
            port=vim.dvs.PortConnection(
                portgroupKey=pg.key, switchUuid=pg.config.distributedVirtualSwitch.uuid
            )
        )
    else:
        backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
            deviceName=name, network=vim.Network(ref, si._stub)
        )
    nic = cls(
        key=-n.key,
        backing=backing,
        connectable=vim.vm.device.VirtualDevice.ConnectInfo(
            startConnected=n.start_connected, allowGuestControl=True
        ),
    )
    if target.keep_mac and n.mac_address:
        nic.addressType, nic.macAddress = "manual", n.mac_address
    else:
        nic.addressType = "generated"
    return vim.vm.device.VirtualDeviceSpec(operation="add", device=nic)


def create_spec(si: Any, tree: InventoryTree, config: VMConfig, target: NewVMTarget) -> Any:
    """The ConfigSpec of the new VM (pure but for network lookups)."""
    ds = target.datastore
    changes = []
    scsi_like = [c for c in config.controllers if c.kind != "ide"]
    changes += [_controller_spec(c) for c in scsi_like]
    made = {c.key for c in scsi_like}
    for d in config.disks:
        # IDE controllers exist on every VM: keep their keys; others were re-created.
        ctrl = -d.controller_key if d.controller_key in made else d.controller_key
        # A bare "[datastore]" lets vSphere name the file inside the new VM's directory.
        changes.append(_disk_spec(d, ctrl, f"[{ds}]"))
    changes += [_nic_spec(si, tree, nic, target) for nic in config.nics]
    spec = vim.vm.ConfigSpec(
        name=target.name,
        guestId=config.guest_id,
        version=config.hardware_version or None,
        numCPUs=config.num_cpus,
        numCoresPerSocket=config.cores_per_socket,
        memoryMB=config.memory_mb,
        firmware=config.firmware,
        annotation=config.annotation,
        files=vim.vm.FileInfo(vmPathName=f"[{ds}]"),
        deviceChange=changes,
        extraConfig=[
            vim.option.OptionValue(key=k, value=v) for k, v in config.extra_config.items()
        ],
    )
    if target.marker:
        key, value = target.marker
        spec.extraConfig.append(vim.option.OptionValue(key=key, value=value))
    if config.firmware == "efi":
        spec.bootOptions = vim.vm.BootOptions(efiSecureBootEnabled=config.secure_boot)
    return spec


def create_vm(session: VSphereSession, config: VMConfig, target: NewVMTarget) -> CreatedVM:
    """Create the VM (powered off, empty disks) and say where each source disk went."""

    def run(si: vim.ServiceInstance) -> CreatedVM:
        tree = InventoryTree(si)
        folder_ref = (
            _by_path(tree, target.folder, "vim.Folder") if target.folder else _vm_root(tree)
        )
        pool_ref = (
            _by_path(tree, target.resource_pool, "vim.ResourcePool")
            if target.resource_pool
            else _first(tree, "vim.ResourcePool")
        )
        spec = create_spec(si, tree, config, target)
        # vSphere escapes '/', '%' and backslash in names; some versions (and vcsim) mangle
        # a CreateVM of such a name, so the VM is created under a plain one and renamed.
        plain = re.sub(r"[/%\\]", "-", target.name)
        spec.name = plain
        folder: Any = vim.Folder(folder_ref, si._stub)
        host: Any = vim.HostSystem(_host_ref(tree, target.host), si._stub) if target.host else None
        vm = wait_for(
            folder.CreateVM_Task(config=spec, pool=vim.ResourcePool(pool_ref, si._stub), host=host)
        )
        moref = moid(vm)
        try:
            if plain != target.name:
                wait_for(find_vm(si, moref).Rename_Task(newName=target.name))
            disks = paired_disks(find_vm(si, moref), config)
        except Exception:
            wait_for(find_vm(si, moref).Destroy_Task())
            raise
        return CreatedVM(moref, target.name, disks)

    return session.call(run)


def _host_ref(tree: InventoryTree, name: str) -> str:
    for ref, node in tree.nodes.items():
        if node.kind.endswith("HostSystem") and name in (node.name, tree.path(ref)):
            return ref
    raise ConfigError(f"no ESXi host {name!r}")


def check_target(session: VSphereSession, config: VMConfig, target: NewVMTarget) -> None:
    """ConfigError naming what of the placement does not exist: datastore, folder,
    resource pool, host, or a network a NIC would be connected to."""

    def run(si: vim.ServiceInstance) -> None:
        tree = InventoryTree(si)
        if not any(
            node.kind.endswith("Datastore") and node.name == target.datastore
            for node in tree.nodes.values()
        ):
            raise ConfigError(f"no datastore named {target.datastore!r}")
        if target.folder:
            _by_path(tree, target.folder, "vim.Folder")
        if target.resource_pool:
            _by_path(tree, target.resource_pool, "vim.ResourcePool")
        if target.host:
            _host_ref(tree, target.host)
        for nic in config.nics:
            _network_ref(
                tree, target.isolated_network or target.network_map.get(nic.network, nic.network)
            )

    session.call(run)


def _vm_root(tree: InventoryTree) -> str:
    dc = _first(tree, "vim.Datacenter")
    return _by_path(tree, tree.path(dc) + "/vm", "vim.Folder")


def paired_disks(vm: Any, config: VMConfig) -> tuple[CreatedDisk, ...]:
    """Pair each captured disk with the new VM's disk in the same controller slot."""
    made = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
    if len(made) != len(config.disks):
        raise PermanentError(f"the new VM has {len(made)} disks, {len(config.disks)} wanted")
    out = []
    for src, dev in zip(config.disks, made, strict=True):
        out.append(
            CreatedDisk(
                source_key=src.key,
                key=int(dev.key),
                file_name=str(getattr(dev.backing, "fileName", "")),
                capacity=int(dev.capacityInBytes or 0),
                thin=bool(getattr(dev.backing, "thinProvisioned", False)),
            )
        )
    return tuple(out)


def add_disk(
    session: VSphereSession,
    vm_moref: str,
    disk: DiskConfig,
    datastore: str,
    marker: str = "",
) -> CreatedDisk:
    """Give an existing VM one new empty disk like ``disk`` on a free slot of its controller.

    With ``marker``, the same reconfiguration records ``marker = controller:unit`` in the
    VM's extraConfig, so ``adoption.find_marked_disk`` finds the disk after an interruption.
    """

    def run(si: vim.ServiceInstance) -> CreatedDisk:
        vm: Any = find_vm(si, vm_moref)
        devices = list(vm.config.hardware.device)
        ctrl = next(
            (d for d in devices if isinstance(d, vim.vm.device.VirtualSCSIController)), None
        )
        if ctrl is None:
            raise PermanentError(f"VM {vm.name} has no SCSI controller to add a disk to")
        used = {d.unitNumber for d in devices if d.controllerKey == ctrl.key} | {7}
        unit = min(set(range(16)) - used)
        before = {d.key for d in devices}
        file_name = f"[{datastore}]"
        slot = DiskConfig(**{**disk.__dict__, "unit_number": unit})
        spec = vim.vm.ConfigSpec(deviceChange=[_disk_spec(slot, ctrl.key, file_name)])
        if marker:
            spec.extraConfig = [vim.option.OptionValue(key=marker, value=f"{ctrl.key}:{unit}")]
        wait_for(vm.ReconfigVM_Task(spec=spec))
        new = next(
            d
            for d in vm.config.hardware.device
            if isinstance(d, vim.vm.device.VirtualDisk) and d.key not in before
        )
        return CreatedDisk(
            disk.key,
            int(new.key),
            str(getattr(new.backing, "fileName", "")),
            int(new.capacityInBytes or 0),
            bool(getattr(new.backing, "thinProvisioned", False)),
        )

    return session.call(run)


def power(session: VSphereSession, vm_moref: str, on: bool) -> None:
    """Power a VM on or off; nothing when it already is."""

    def run(si: vim.ServiceInstance) -> None:
        vm: Any = find_vm(si, vm_moref)
        state = vm.runtime.powerState
        try:
            if on and state != "poweredOn":
                wait_for(vm.PowerOnVM_Task())
            elif not on and state == "poweredOn":
                wait_for(vm.PowerOffVM_Task())
        except vmodl.MethodFault as exc:
            raise PermanentError(
                f"power {'on' if on else 'off'} of {vm.name}: {getattr(exc, 'msg', exc)}"
            ) from exc

    session.call(run)


def destroy(session: VSphereSession, vm_moref: str) -> None:
    session.call(lambda si: wait_for(find_vm(si, vm_moref).Destroy_Task()))
