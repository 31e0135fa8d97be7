"""Partition tables (GPT and MBR) written by sfdisk onto an image file.

Invariants: partitions start on 1 MiB boundaries and are whole MiB long; GPT leaves its
backup header at the end of the disk untouched by any partition; every identifier (disk
GUID, partition GUIDs, MBR disk signature) derives from the seed, so the table is
byte-identical for the same spec and seed.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vmguard.errors import ConfigError
from vmguard_lab.imaging.content import derive_bytes
from vmguard_lab.imaging.tools import run

SECTOR = 512
ALIGN = 1 << 20

TableKind = Literal["gpt", "mbr"]
FsKind = Literal["ext4", "ntfs", "fat", "xfs", "raw"]

_LINUX_FS = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
_BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
_LINUX_RESERVED = "8DA63339-0007-60C0-C436-083AC8230908"
GPT_TYPES: dict[str, str] = {
    "ext4": _LINUX_FS,
    "xfs": _LINUX_FS,
    "ntfs": _BASIC_DATA,
    "fat": _BASIC_DATA,
    "raw": _LINUX_RESERVED,
}
MBR_TYPES: dict[str, str] = {"ext4": "83", "xfs": "83", "ntfs": "7", "fat": "c", "raw": "da"}


@dataclass(frozen=True)
class Slot:
    """Where one partition lives on the disk, in bytes."""

    offset: int
    length: int


def plan(disk_size: int, table: TableKind | None, sizes: Sequence[int | None]) -> list[Slot]:
    """Offsets and lengths of partitions of ``sizes`` (None: the rest of the disk)."""
    if disk_size % ALIGN:
        raise ConfigError(f"disk size {disk_size} is not a whole number of MiB")
    if table is None:
        if len(sizes) != 1 or sizes[0] not in (None, disk_size):
            raise ConfigError("a disk without partition table holds exactly one region")
        return [Slot(0, disk_size)]
    if table == "mbr" and len(sizes) > 4:
        raise ConfigError("MBR holds at most 4 primary partitions")
    if sizes.count(None) > 1 or (None in sizes and sizes[-1] is not None):
        raise ConfigError("only the last partition may take the rest of the disk")
    # GPT keeps 33 sectors of backup table at the end; stay a whole MiB clear of them.
    end = disk_size - (ALIGN if table == "gpt" else 0)
    slots: list[Slot] = []
    pos = ALIGN
    for size in sizes:
        length = end - pos if size is None else size
        if length <= 0 or length % ALIGN:
            raise ConfigError(f"partition size {size} is not a positive whole number of MiB")
        if pos + length > end:
            raise ConfigError(f"partitions need {pos + length} bytes; the disk has {end}")
        slots.append(Slot(pos, length))
        pos += length
    return slots


def guid(seed: int, *labels: object) -> str:
    return str(uuid.UUID(bytes=derive_bytes(seed, 16, *labels), version=4)).upper()


def script(
    table: TableKind,
    slots: Sequence[Slot],
    kinds: Sequence[FsKind],
    names: Sequence[str],
    seed: int,
) -> str:
    """The sfdisk script for ``slots`` (all identifiers derived from ``seed``)."""
    lines = ["unit: sectors", "sector-size: 512"]
    if table == "gpt":
        lines[:0] = ["label: gpt", f"label-id: {guid(seed, 'gpt-disk')}"]
    else:
        disk_id = int.from_bytes(derive_bytes(seed, 4, "mbr-disk"), "big") | 1
        lines[:0] = ["label: dos", f"label-id: 0x{disk_id:08x}"]
    lines.append("")
    for i, (slot, kind, name) in enumerate(zip(slots, kinds, names, strict=True)):
        fields = [f"start={slot.offset // SECTOR}", f"size={slot.length // SECTOR}"]
        if table == "gpt":
            fields += [f"type={GPT_TYPES[kind]}", f"uuid={guid(seed, 'gpt-part', i)}"]
            fields.append(f'name="{name}"')
        else:
            fields.append(f"type={MBR_TYPES[kind]}")
            if i == 0:
                fields.append("bootable")
        lines.append(", ".join(fields))
    return "\n".join(lines) + "\n"


def write(image: Path, text: str) -> None:
    """Write the partition table described by the sfdisk script ``text`` onto ``image``."""
    argv = ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "--wipe", "never"]
    run([*argv, "--wipe-partitions", "never", image], stdin=text.encode())
