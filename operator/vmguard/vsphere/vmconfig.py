"""A VM's configuration as a backup keeps it: enough to create the VM again.

:func:`capture` reads a VM's (or a snapshot's) config into a :class:`VMConfig` — CPU,
memory, firmware and secure boot, guest id, hardware version, controllers, disks (size,
provisioning, mode, controller and slot), NICs (adapter kind, network, MAC and its
policy) and a *safe subset* of extraConfig — and serialises it to JSON for the archive
manifest's config blob (``config_format`` = :data:`CONFIG_FORMAT`).

Invariants: plain data only (no pyVmomi objects), a stable JSON shape
(``from_json(c.to_json()) == c``), and extraConfig filtered by an allow-list: keys such
as ``guestinfo.*`` may carry secrets or per-instance identity and are never stored.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pyVmomi import vim

from vmguard.errors import CorruptObjectError
from vmguard.vsphere.inventory import InventoryTree, controller_kind, find_vm

CONFIG_FORMAT = "vmguard.vsphere.vmconfig/v1"

SAFE_EXTRA_CONFIG = ("disk.EnableUUID", "svga.present", "mem.hotadd", "vcpu.hotadd")
SAFE_EXTRA_PREFIXES = ("isolation.tools.", "numa.", "cpuid.coresPerSocket", "time.synchronize.")

_DISK_CONTROLLERS = (
    vim.vm.device.VirtualSCSIController,
    vim.vm.device.VirtualSATAController,
    vim.vm.device.VirtualNVMEController,
    vim.vm.device.VirtualIDEController,
)

_NIC_KINDS: tuple[tuple[type, str], ...] = (
    (vim.vm.device.VirtualVmxnet3, "vmxnet3"),
    (vim.vm.device.VirtualVmxnet2, "vmxnet2"),
    (vim.vm.device.VirtualE1000e, "e1000e"),
    (vim.vm.device.VirtualE1000, "e1000"),
    (vim.vm.device.VirtualPCNet32, "pcnet32"),
)


@dataclass(frozen=True)
class ControllerConfig:
    key: int
    kind: str
    """pvscsi, lsilogic, lsilogic-sas, buslogic, sata, nvme, ide."""
    bus: int
    shared_bus: str = "noSharing"


@dataclass(frozen=True)
class DiskConfig:
    key: int
    label: str
    controller_key: int
    unit_number: int
    capacity: int
    thin: bool
    eager_zero: bool = False
    mode: str = "persistent"
    file_name: str = ""
    """The source disk's datastore path (informational: a restore makes new files)."""


@dataclass(frozen=True)
class NicConfig:
    key: int
    kind: str
    network: str
    mac_address: str
    mac_type: str
    """``generated`` / ``assigned`` (vCenter chooses) or ``manual`` (keep the MAC)."""
    start_connected: bool = True


@dataclass(frozen=True)
class VMConfig:
    name: str
    guest_id: str
    hardware_version: str
    num_cpus: int
    cores_per_socket: int
    memory_mb: int
    firmware: str = "bios"
    secure_boot: bool = False
    annotation: str = ""
    controllers: tuple[ControllerConfig, ...] = ()
    disks: tuple[DiskConfig, ...] = ()
    nics: tuple[NicConfig, ...] = ()
    extra_config: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> VMConfig:
        try:
            doc = json.loads(raw)
            return cls(
                name=str(doc["name"]),
                guest_id=str(doc["guest_id"]),
                hardware_version=str(doc["hardware_version"]),
                num_cpus=int(doc["num_cpus"]),
                cores_per_socket=int(doc["cores_per_socket"]),
                memory_mb=int(doc["memory_mb"]),
                firmware=str(doc.get("firmware", "bios")),
                secure_boot=bool(doc.get("secure_boot", False)),
                annotation=str(doc.get("annotation", "")),
                controllers=tuple(ControllerConfig(**c) for c in doc.get("controllers", ())),
                disks=tuple(DiskConfig(**d) for d in doc.get("disks", ())),
                nics=tuple(NicConfig(**n) for n in doc.get("nics", ())),
                extra_config={str(k): str(v) for k, v in doc.get("extra_config", {}).items()},
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptObjectError(f"VM config blob is malformed: {exc!r}") from None

    def disk(self, key: int) -> DiskConfig:
        for d in self.disks:
            if d.key == key:
                return d
        raise KeyError(f"no disk {key} in the config of {self.name}")


def safe_extra_config(options: Any) -> dict[str, str]:
    out = {}
    for opt in options or ():
        key = str(opt.key)
        if key in SAFE_EXTRA_CONFIG or key.startswith(SAFE_EXTRA_PREFIXES):
            out[key] = str(opt.value)
    return out


def _nic_kind(dev: Any) -> str:
    for cls, kind in _NIC_KINDS:
        if isinstance(dev, cls):
            return kind
    return "vmxnet3"


def capture(config: Any, network_names: dict[str, str] | None = None) -> VMConfig:
    """A :class:`VMConfig` from a ``vim.vm.ConfigInfo`` (a VM's or a snapshot's).

    ``network_names`` maps network morefs (and DVS portgroup keys) to names; without it
    the backing's device name is used.
    """
    names = network_names or {}
    hw = config.hardware
    controllers, disks, nics = [], [], []
    for d in hw.device:
        label = d.deviceInfo.label if d.deviceInfo else ""
        if isinstance(d, _DISK_CONTROLLERS):
            controllers.append(
                ControllerConfig(
                    key=int(d.key),
                    kind=controller_kind(d),
                    bus=int(d.busNumber),
                    shared_bus=str(getattr(d, "sharedBus", "") or "noSharing"),
                )
            )
        elif isinstance(d, vim.vm.device.VirtualDisk):
            b = d.backing
            disks.append(
                DiskConfig(
                    key=int(d.key),
                    label=label,
                    controller_key=int(d.controllerKey or 0),
                    unit_number=int(d.unitNumber or 0),
                    capacity=int(d.capacityInBytes or (d.capacityInKB or 0) * 1024),
                    thin=bool(getattr(b, "thinProvisioned", False)),
                    eager_zero=bool(getattr(b, "eagerlyScrub", False)),
                    mode=str(getattr(b, "diskMode", "") or "persistent"),
                    file_name=str(getattr(b, "fileName", "") or ""),
                )
            )
        elif isinstance(d, vim.vm.device.VirtualEthernetCard):
            b = d.backing
            if isinstance(b, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
                key = str(b.port.portgroupKey)
                network = names.get(key, key)
            else:
                ref = getattr(b, "network", None)
                network = names.get(ref._moId if ref is not None else "", "") or str(
                    getattr(b, "deviceName", "") or ""
                )
            connect = d.connectable
            nics.append(
                NicConfig(
                    key=int(d.key),
                    kind=_nic_kind(d),
                    network=network,
                    mac_address=str(d.macAddress or ""),
                    mac_type=str(d.addressType or "generated"),
                    start_connected=bool(connect.startConnected) if connect else True,
                )
            )
    boot = config.bootOptions
    return VMConfig(
        name=str(config.name),
        guest_id=str(config.guestId or ""),
        hardware_version=str(config.version or ""),
        num_cpus=int(hw.numCPU or 1),
        cores_per_socket=int(hw.numCoresPerSocket or 1),
        memory_mb=int(hw.memoryMB or 0),
        firmware=str(config.firmware or "bios"),
        secure_boot=bool(boot.efiSecureBootEnabled) if boot else False,
        annotation=str(config.annotation or ""),
        controllers=tuple(controllers),
        disks=tuple(disks),
        nics=tuple(nics),
        extra_config=safe_extra_config(config.extraConfig),
    )


def capture_vm(si: vim.ServiceInstance, vm_moref: str, snapshot_moref: str = "") -> VMConfig:
    """The config of a VM, or of one of its snapshots (what a backup stores)."""
    names = {ref: node.name for ref, node in InventoryTree(si).nodes.items()}
    # A snapshot's config is the VM as it was then: the one to restore.
    config: Any = (
        vim.vm.Snapshot(snapshot_moref, si._stub).config
        if snapshot_moref
        else find_vm(si, vm_moref).config
    )
    return capture(config, names)
