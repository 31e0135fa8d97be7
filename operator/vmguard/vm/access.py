"""How the proxy reaches a disk's bytes: NBD (nbdkit) or hot-add, and the *auto* choice.

A :class:`DiskLocator` turns "disk K of snapshot S of VM V" into an NBD server (or
"disk K of VM V" for a restore target, writable), and a hot-added disk into a local
device path. Production: :class:`VddkLocator` (nbdkit's VDDK plugin; devices by disk
UUID).

:func:`open_locator` turns a locator spec (``VMGUARD_PROXY_LOCATOR``, ``vmguard vm
--locator``) into a locator: ``vddk`` is built in; any other ``SCHEME[:ARG]`` is looked up
in the entry-point group :data:`LOCATOR_ENTRY_POINTS`, where an installed distribution
registers ``SCHEME = "module:factory"`` with ``factory(arg, endpoint) -> DiskLocator``.
The product registers none; the lab's distribution registers ``lab`` (its locator over
the simulator's file-backed disks, ``vmguard_lab.vsim``).

:func:`snapshot_sources` opens one :class:`~vmguard.transport.extents.BlockSource` per
disk of a snapshot through the chosen transport and closes everything — NBD servers,
hot-added disks (detached) — when the block ends, whatever happens inside.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Protocol

from vmguard.errors import ConfigError
from vmguard.transport.extents import BlockSource
from vmguard.transport.file import FileSource
from vmguard.transport.nbd import NbdkitServer, NbdSource, VddkTarget
from vmguard.vsphere import hotadd
from vmguard.vsphere.records import VMRecord
from vmguard.vsphere.session import Endpoint, VSphereSession, sha1_thumbprint
from vmguard.vsphere.snapshots import TakenSnapshot

TRANSPORTS = ("nbd", "hotadd", "auto")
LOCATOR_ENTRY_POINTS = "vmguard.disk_locators"
"""Entry-point group of disk locator factories, by scheme: ``factory(arg, endpoint)``."""
HOTADD_IN_FLIGHT = 4  # reads in flight on a hot-added device


class DiskLocator(Protocol):
    def snapshot_disk(
        self, vm_moref: str, snapshot_moref: str, key: int, file_name: str
    ) -> NbdkitServer:
        """A read-only NBD server of one frozen disk."""
        ...

    def live_disk(self, vm_moref: str, key: int, file_name: str) -> NbdkitServer:
        """A writable NBD server of one disk of a (powered-off) VM."""
        ...

    def attached_device(self, proxy_moref: str, disk: hotadd.AttachedDisk) -> str:
        """The local device of a disk hot-added to the proxy."""
        ...

    def proxy_bios_uuid(self) -> str:
        """The BIOS UUID of the machine the proxy runs on ("" when it is no VM)."""
        ...


@dataclass(frozen=True)
class VddkLocator:
    """Production: nbdkit + VDDK against vCenter; hot-added devices by disk UUID."""

    endpoint: Endpoint
    sha1_thumbprint: str
    libdir: str = "/opt/vmware-vix-disklib-distrib"

    def _target(self, vm: str, file_name: str, snapshot: str = "") -> VddkTarget:
        host, _ = self.endpoint.host_port()
        return VddkTarget(
            server=host,
            username=self.endpoint.username,
            password=self.endpoint.password,
            thumbprint=self.sha1_thumbprint,
            vm_moref=vm,
            file_name=file_name,
            snapshot_moref=snapshot,
            libdir=self.libdir,
        )

    def snapshot_disk(
        self, vm_moref: str, snapshot_moref: str, key: int, file_name: str
    ) -> NbdkitServer:
        return NbdkitServer.vddk(self._target(vm_moref, file_name, snapshot_moref))

    def live_disk(self, vm_moref: str, key: int, file_name: str) -> NbdkitServer:
        return NbdkitServer.vddk(self._target(vm_moref, file_name), readonly=False)

    def attached_device(self, proxy_moref: str, disk: hotadd.AttachedDisk) -> str:
        return hotadd.device_by_uuid(proxy_moref, disk)

    def proxy_bios_uuid(self) -> str:
        return hotadd.own_bios_uuid()


def open_locator(spec: str, endpoint: Endpoint, *, vddk_libdir: str) -> DiskLocator:
    """The locator ``spec`` names: ``vddk`` (production, nbdkit's VDDK plugin from
    ``vddk_libdir``) or ``SCHEME[:ARG]``, a factory an installed distribution registers
    under :data:`LOCATOR_ENTRY_POINTS`. ConfigError naming the known schemes otherwise."""
    scheme, _, arg = spec.partition(":")
    if scheme == "vddk" and not arg:
        return VddkLocator(endpoint, sha1_thumbprint(endpoint), libdir=vddk_libdir)
    found = entry_points(group=LOCATOR_ENTRY_POINTS)
    plugin = [ep for ep in found if ep.name == scheme and scheme != "vddk"]
    if not plugin:
        known = ", ".join(["vddk", *sorted({ep.name + ":..." for ep in found})])
        raise ConfigError(f"unknown disk locator {spec!r}: known are {known}")
    locator: DiskLocator = plugin[0].load()(arg, endpoint)
    return locator


@dataclass(frozen=True)
class TransportChoice:
    transport: str
    """``nbd`` or ``hotadd``."""
    reason: str
    proxy_moref: str = ""


def choose(
    session: VSphereSession, locator: DiskLocator, vm: VMRecord, wanted: str
) -> TransportChoice:
    """The transport to use: ``auto`` prefers hot-add and says why it fell back."""
    if wanted not in TRANSPORTS:
        raise ConfigError(f"transport must be one of {', '.join(TRANSPORTS)}, not {wanted!r}")
    if wanted == "nbd":
        return TransportChoice("nbd", "nbd requested")
    proxy, why = hotadd.hotadd_possible(session, locator.proxy_bios_uuid(), vm)
    if proxy:
        return TransportChoice("hotadd", why, proxy)
    if wanted == "hotadd":
        raise ConfigError(f"hot-add requested but impossible: {why}")
    return TransportChoice("nbd", f"hot-add impossible ({why}); fell back to nbd")


@contextlib.contextmanager
def snapshot_sources(
    session: VSphereSession, locator: DiskLocator, taken: TakenSnapshot, choice: TransportChoice
) -> Iterator[dict[int, BlockSource]]:
    """A block source per disk key of the snapshot, all closed (and detached) afterwards."""
    with contextlib.ExitStack() as stack:
        sources: dict[int, BlockSource] = {}
        if choice.transport == "hotadd":
            attached = stack.enter_context(
                hotadd.hotadded(session, choice.proxy_moref, taken.disks)
            )
            for disk in attached:
                device = locator.attached_device(choice.proxy_moref, disk)
                src = FileSource(device, in_flight=HOTADD_IN_FLIGHT)
                stack.callback(src.close)
                sources[disk.source_key] = src
        else:
            for d in taken.disks:
                server = stack.enter_context(
                    locator.snapshot_disk(taken.vm_moref, taken.moref, d.key, d.file_name)
                )
                nbd_src = NbdSource(server.uri)
                stack.callback(nbd_src.close)
                sources[d.key] = nbd_src
        yield sources
