"""The volumes on a disk: partitions (GPT, MBR with logical partitions), LVM logical
volumes, or the whole disk, each with the filesystem found on it.

Partition tables and LVM metadata are parsed by dissect.volume; we only decide what to
call each volume and which filesystem it holds. Invariants:

- Volume names are stable and path-safe, and are the first component of every path the
  CLI shows: ``p<N>`` is partition N as the table numbers it (``sfdisk``/``lsblk``
  numbering), ``lvm-<vg>-<lv>`` a logical volume, ``disk`` a disk without a table.
- Offsets and sizes are exact bytes (dissect 3.18 reports a GPT partition one sector
  short; we take the size from the entry's inclusive last LBA).
- Probing a volume reads at most its first 128 KiB: listing the volumes of a 2 TiB disk
  fetches a few chunks, not the disk.
- A read failure (a corrupt chunk under the partition table) propagates as
  :class:`~vmguard.errors.DiskReadError`; it is never mistaken for "no partition table".
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

from dissect.util.stream import RangeStream

from vmguard.errors import DiskReadError

SECTOR = 512
_PROBE_BYTES = 128 << 10


@dataclass
class Volume:
    name: str
    """``p1``, ``p2``…, ``lvm-<vg>-<lv>``, or ``disk``."""
    offset: int | None
    """Byte offset on the disk; None for a logical volume (it may span extents)."""
    size: int
    scheme: str
    """``gpt``, ``mbr``, ``lvm`` or ``none``."""
    type: str
    """The partition type as the table names it (GUID description or MBR type)."""
    label: str
    fs: str | None
    """``ext4``, ``ntfs``, ``fat``, ``xfs``, ``btrfs``, ``lvm`` (a physical volume), or None."""
    stream: BinaryIO

    def describe(self) -> str:
        where = f"at {self.offset}" if self.offset is not None else "(logical)"
        return f"{self.name} {self.scheme} {self.fs or '-'} {self.size} bytes {where}"


def probe_fs(stream: BinaryIO) -> str | None:
    """The filesystem (or LVM physical volume) whose signature starts ``stream``."""
    stream.seek(0)
    head = stream.read(_PROBE_BYTES)
    if len(head) < 2048:
        return None
    if head[0x438:0x43A] == b"\x53\xef":
        return "ext4"
    if head[3:11] == b"NTFS    ":
        return "ntfs"
    if head[0:4] == b"XFSB":
        return "xfs"
    if len(head) >= 0x10048 and head[0x10040:0x10048] == b"_BHRfS_M":
        return "btrfs"
    if head[0x200:0x208] == b"LABELONE" and head[0x218:0x220] == b"LVM2 001":
        return "lvm"
    if head[0x1FE:0x200] == b"\x55\xaa" and (
        head[0x36:0x39] == b"FAT" or head[0x52:0x57] == b"FAT32" or _plausible_bpb(head)
    ):
        return "fat"
    return None


def _plausible_bpb(head: bytes) -> bool:
    # A FAT boot sector without the informational "FAT" string: check the BPB itself.
    bytes_per_sector, per_cluster, reserved, fats = struct.unpack_from("<HBHB", head, 11)
    return (
        bytes_per_sector in (512, 1024, 2048, 4096)
        and per_cluster in (1, 2, 4, 8, 16, 32, 64, 128)
        and reserved >= 1
        and fats in (1, 2)
        and head[0] in (0xEB, 0xE9)
    )


def list_volumes(disk: BinaryIO | io.RawIOBase, size: int) -> list[Volume]:
    """Every volume of ``disk`` (a seekable stream of ``size`` bytes), in table order."""
    whole = RangeStream(disk, 0, size)
    fs = probe_fs(whole)
    if fs is not None and fs != "lvm":
        # A filesystem straight on the disk; a FAT boot sector also looks like an MBR.
        return [Volume("disk", 0, size, "none", "", "", fs, RangeStream(disk, 0, size))]
    if fs == "lvm":
        return _lvm_volumes(RangeStream(disk, 0, size), "disk") or [
            Volume("disk", 0, size, "none", "LVM2 physical volume", "", "lvm", whole)
        ]

    from dissect.volume.disk import Disk

    disk.seek(0)
    try:
        table = Disk(disk)
    except DiskReadError:
        raise
    except Exception:
        _reraise_read_error(disk)
        return [Volume("disk", 0, size, "none", "", "", None, whole)]
    scheme = type(table.scheme).__name__.lower()
    volumes: list[Volume] = []
    for part in table.partitions:
        offset, length = int(part.offset), int(part.size)
        if scheme == "gpt" and getattr(part, "raw", None) is not None:
            length = (int(part.raw.last_lba) - int(part.raw.first_lba) + 1) * SECTOR
        if scheme == "mbr" and part.type in (0x05, 0x0F, 0x85):
            continue  # the extended partition's container; its logical partitions follow
        length = max(0, min(length, size - offset))
        stream = RangeStream(disk, offset, length)
        fs = probe_fs(stream)
        name = f"p{part.number}"
        label = part.name or "" if scheme == "gpt" else ""
        kind = _type_name(part.type)
        volumes.append(Volume(name, offset, length, scheme, kind, label, fs, stream))
        if fs == "lvm":
            volumes += _lvm_volumes(RangeStream(disk, offset, length), name)
    return volumes


def _type_name(part_type: Any) -> str:
    from dissect.volume.disk.partition import PARTITION_TYPES

    described = PARTITION_TYPES.get(part_type)
    if described:
        return str(described)
    return f"0x{part_type:02x}" if isinstance(part_type, int) else str(part_type)


def _lvm_volumes(pv: BinaryIO, where: str) -> list[Volume]:
    from dissect.volume.lvm import LVM2

    try:
        lvm = LVM2(pv)
    except DiskReadError:
        raise
    except Exception:
        return []
    out = []
    vg = lvm.volume_group
    for lv in vg.logical_volumes.values():
        if not lv.is_visible:
            continue
        try:
            stream = lv.open()
        except DiskReadError:
            raise
        except Exception:
            continue  # a segment type dissect cannot map (thin pool internals, cache)
        size = int(getattr(stream, "size", 0) or 0)
        label = f"{vg.name}/{lv.name} on {where}"
        name = f"lvm-{vg.name}-{lv.name}"
        out.append(Volume(name, None, size, "lvm", str(lv.type), label, probe_fs(stream), stream))
    return out


def _reraise_read_error(disk: BinaryIO | io.RawIOBase) -> None:
    """dissect swallows errors while it tries each scheme: read the first sectors
    ourselves so that a corrupt chunk is reported as such, not as "no table"."""
    disk.seek(0)
    disk.read(64 * SECTOR)
