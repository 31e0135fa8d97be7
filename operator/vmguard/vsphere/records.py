"""Typed records of what discovery learns about each VM.

Plain, immutable data: no pyVmomi objects inside, so records can be matched against
policies, compared between sweeps, stored in status and unit-tested without a vCenter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

OUR_SNAPSHOT_PREFIX = "vmguard-"
_OUR_DESCRIPTION = re.compile(r"\bvmguard-backup-uid=([A-Za-z0-9._-]{1,128})\b")


def our_snapshot_name(backup_uid: str) -> str:
    return OUR_SNAPSHOT_PREFIX + backup_uid


def our_snapshot_description(backup_uid: str, detail: str = "") -> str:
    line = f"Taken by vmguard for a backup; removed when it ends. vmguard-backup-uid={backup_uid}"
    return f"{line}\n{detail}" if detail else line


def backup_uid_of(name: str, description: str) -> str:
    """The backup UID of a snapshot vmguard took, or "" when the snapshot is not ours.

    Both marks must agree: the name prefix and the UID in the description. A user's
    snapshot that merely starts with ``vmguard-`` is never taken for ours (and never
    removed by the orphan sweep).
    """
    if not name.startswith(OUR_SNAPSHOT_PREFIX):
        return ""
    found = _OUR_DESCRIPTION.search(description or "")
    uid = name[len(OUR_SNAPSHOT_PREFIX) :]
    return uid if found and found.group(1) == uid else ""


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
    datastore: str = ""
    controller: str = ""
    """The controller's kind and bus, e.g. ``pvscsi:0``."""


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
    parent: str = ""
    """Moref of the parent snapshot ("" for a root)."""
    backup_uid: str = ""
    """The backup this snapshot belongs to when vmguard took it; "" for anyone else's."""

    @property
    def ours(self) -> bool:
        return bool(self.backup_uid)


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
    def our_snapshots(self) -> tuple[SnapshotRecord, ...]:
        return tuple(s for s in self.snapshots if s.ours)

    @property
    def tag_names(self) -> frozenset[str]:
        names = set(self.tags)
        names.update(t.split(":", 1)[1] for t in self.tags if ":" in t)
        return frozenset(names)
