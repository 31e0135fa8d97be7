"""Crash-consistent and damaged file systems, made in a disk image without root.

Verification tests need points a checker must pass and points it must fail:

- :func:`dirty_ext4_journal` turns a clean ext4 partition into what a snapshot of a
  running VM holds after a crash: a committed transaction in the journal (a new file's
  directory entry, inode, bitmaps and group descriptor, written with debugfs' journal
  commands), checkpointed only in part (the new directory block and the file's data are
  in place, the inode and bitmaps are not). A read-only ``e2fsck -fn`` reports errors on
  it; after a journal replay it is clean — exactly what a mount would see.
- :func:`set_fat_dirty_bit` sets the boot sector's "dirty" state bit of a FAT partition,
  as Linux does while it has the file system mounted (a running VM's EFI partition).
- :func:`damage_ext4_superblock` overwrites fields of the primary superblock (the magic
  stays, so the volume is still recognised as ext4).
- :func:`damage_ntfs_mft` overwrites the first records of the $MFT (the boot sector
  stays, so the volume is still recognised as NTFS).
- :func:`plant_ext4_file` adds a file to an ext4 partition (a malware scan's target).

Each works on one partition of an image the factory built, through a scratch copy of
the partition (debugfs cannot address a partition inside a disk image), and writes
back in place. Invariant: bytes outside the partition are never touched.
"""

from __future__ import annotations

import struct
from pathlib import Path

from vmguard_lab.imaging.tools import run

CRASH_FILE = "crash-consistent.txt"


def _extract(image: Path, offset: int, length: int, out: Path) -> None:
    with open(image, "rb") as src, open(out, "wb") as dst:
        dst.truncate(length)
        src.seek(offset)
        done = 0
        while done < length:
            block = src.read(min(1 << 20, length - done))
            if not block:
                break
            if block.count(0) != len(block):
                dst.seek(done)
                dst.write(block)
            done += len(block)


def _write_back(image: Path, offset: int, part: Path) -> None:
    with open(part, "rb") as src, open(image, "r+b") as dst:
        pos = 0
        while block := src.read(1 << 20):
            dst.seek(offset + pos)
            dst.write(block)
            pos += len(block)


def _block_size(part: Path) -> int:
    with open(part, "rb") as f:
        f.seek(1024 + 24)
        (log,) = struct.unpack("<I", f.read(4))
    return 1024 << log


def _blocks(part: Path, path: str) -> list[int]:
    out = run(["debugfs", "-R", f"blocks {path}", part])
    return [int(n) for n in out.split()]


def dirty_ext4_journal(image: Path, offset: int, length: int, work: Path) -> None:
    """Leave the ext4 partition at ``offset`` crash-consistent with a dirty journal."""
    before, after = work / "before.ext4", work / "after.ext4"
    _extract(image, offset, length, before)
    _extract(image, offset, length, after)
    payload = work / "payload"
    payload.write_bytes(b"written just before the snapshot\n" * 64)
    run(["debugfs", "-w", "-R", f"write {payload} {CRASH_FILE}", after])
    size = _block_size(after)
    data = set(_blocks(after, CRASH_FILE))
    root = set(_blocks(after, "/"))
    changed = []
    with open(before, "rb") as a, open(after, "rb") as b:
        # block 0 holds the superblock, which debugfs' journal commands write themselves
        for number in range(1, length // size):
            a.seek(number * size)
            b.seek(number * size)
            if a.read(size) != b.read(size):
                changed.append(number)
    metadata = [n for n in changed if n not in data]
    blob = work / "journal-blocks"
    with open(after, "rb") as b, open(blob, "wb") as out:
        for number in metadata:
            b.seek(number * size)
            out.write(b.read(size))
    script = work / "journal.cmds"
    script.write_text(f"jo\njw -b {','.join(map(str, metadata))} {blob}\njc\n")
    run(["debugfs", "-w", "-f", script, before])
    # The partial checkpoint: data (ordered mode) and the directory block are in place.
    with open(after, "rb") as b, open(before, "r+b") as a:
        for number in sorted(data | (root & set(changed))):
            b.seek(number * size)
            a.seek(number * size)
            a.write(b.read(size))
    _write_back(image, offset, before)


def set_fat_dirty_bit(image: Path, offset: int) -> None:
    """Mark the FAT file system at ``offset`` as not cleanly unmounted."""
    with open(image, "r+b") as f:
        f.seek(offset)
        boot = f.read(512)
        fat32 = boot[0x16:0x18] == b"\0\0"  # no 16-bit FAT size: FAT32's layout
        where = offset + (0x41 if fat32 else 0x25)
        f.seek(where)
        state = f.read(1)[0]
        f.seek(where)
        f.write(bytes([state | 0x01]))


def damage_ext4_superblock(image: Path, offset: int) -> None:
    """Overwrite the primary superblock's counts and geometry, keeping its magic."""
    with open(image, "r+b") as f:
        f.seek(offset + 1024)
        # s_inodes_count, s_blocks_count_lo, s_r_blocks_count_lo, s_free_blocks_count_lo,
        # s_free_inodes_count, s_first_data_block, s_log_block_size, s_log_cluster_size
        f.write(struct.pack("<8I", 7, 3, 0xFFFFFFFF, 0xFFFFFFFF, 9, 5, 17, 17))


def damage_ntfs_mft(image: Path, offset: int) -> None:
    """Overwrite the first four records of the $MFT with garbage, keeping the boot sector."""
    with open(image, "r+b") as f:
        f.seek(offset)
        boot = f.read(512)
        bytes_per_sector = struct.unpack_from("<H", boot, 0x0B)[0]
        sectors_per_cluster = boot[0x0D]
        mft_cluster = struct.unpack_from("<Q", boot, 0x30)[0]
        f.seek(offset + mft_cluster * bytes_per_sector * sectors_per_cluster)
        f.write(bytes((i * 37 + 11) & 0xFF for i in range(4096)))


def plant_ext4_file(
    image: Path, offset: int, length: int, path: str, data: bytes, work: Path
) -> None:
    """Write ``data`` as the file ``path`` into the ext4 partition at ``offset``, making
    its missing directories, cleanly (no journal left to replay)."""
    part, payload = work / "plant.ext4", work / "plant.payload"
    _extract(image, offset, length, part)
    payload.write_bytes(data)
    directory, _, name = path.rpartition("/")
    script = work / "plant.cmds"
    parents = directory.split("/") if directory else []
    mkdirs = ["mkdir /" + "/".join(parents[: i + 1]) for i in range(len(parents))]
    script.write_text("\n".join([*mkdirs, f"cd /{directory}", f"write {payload} {name}", ""]))
    out = run(["debugfs", "-w", "-f", script, part], merge_stderr=True).decode()
    if "Allocated inode" not in out or "cd: File not found" in out:
        raise AssertionError(f"debugfs did not write {path}: {out}")
    _write_back(image, offset, part)
    for scratch in (part, payload, script):
        scratch.unlink()
