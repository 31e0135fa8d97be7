"""Typed records of what discovery learns about each VM.

Plain, immutable data: no pyVmomi objects inside, so records can be matched against
policies, compared between sweeps, stored in status and unit-tested without a vCenter.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DiskRecord:
    key: int
    label: str
    capacity: int
    backing_file: str
    disk_uuid: str
    mode: str = "persistent"
    controller_key: int = 0
    unit_number: int = 0
    thin: bool = True
    change_id: str = ""


@dataclass(frozen=True)
class NicRecord:
    key: int
    label: str
    network: str
    mac_address: str
    mac_type: str = "generated"


@dataclass(frozen=True)
class SnapshotRecord:
    moref: str
    name: str
    description: str
    created: str
    quiesced: bool


@dataclass(frozen=True)
class VMRecord:
    """One VM (or template) as one inventory sweep saw it."""

    moref: str
    name: str
    instance_uuid: str
    bios_uuid: str = ""
    power_state: str = "poweredOff"
    guest_id: str = ""
    hardware_version: int = 0
    cbt_supported: bool = False
    cbt_enabled: bool = False
    template: bool = False
    folder_path: str = ""
    datacenter: str = ""
    cluster: str = ""
    cluster_path: str = ""
    host: str = ""
    resource_pool: str = ""
    datastores: tuple[str, ...] = ()
    disks: tuple[DiskRecord, ...] = ()
    nics: tuple[NicRecord, ...] = ()
    custom_attributes: dict[str, str] = field(default_factory=dict)
    # "category:tag" strings; a tag is also matchable by its name alone.
    tags: tuple[str, ...] = ()
    snapshots: tuple[SnapshotRecord, ...] = ()
    consolidation_needed: bool = False

    @property
    def tag_names(self) -> frozenset[str]:
        names = set(self.tags)
        names.update(t.split(":", 1)[1] for t in self.tags if ":" in t)
        return frozenset(names)
