"""Test stand-in for the data mover: back up disk image files into a repository.

This is NOT the backup engine (that is ``vmguard.datamover``, being built separately).
It is the thinnest loop over the store's writer API that produces real archives for
file-restore tests: read an image file chunk by chunk, skipping holes the file system
reports (SEEK_DATA), ``put_chunk`` each piece, ``add_disk``, ``commit``. Replace its uses
with the data mover's engine once that lands.
"""

from __future__ import annotations

import os
from pathlib import Path

from vmguard.store import HOLE, ArchiveManifest, FixedIndex, Repository, VmIdentity


def _data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    out = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        out.append((start, min(end, size)))
        pos = end
    return out


def backup_images(
    repo: Repository,
    vm: str,
    disks: dict[str, Path],
    *,
    parent: str | None = None,
    vm_name: str | None = None,
) -> ArchiveManifest:
    """One archive of ``vm`` holding each image file as a disk (key → path)."""
    identity = VmIdentity(id=vm, name=vm_name or vm)
    size = repo.chunk_size
    with repo.begin_backup(identity, parent=parent, auto_refresh=False) as writer:
        for key, path in disks.items():
            length = path.stat().st_size
            index = FixedIndex(size, length)
            fd = os.open(path, os.O_RDONLY)
            try:
                wanted = set()
                for start, end in _data_ranges(fd, length):
                    wanted.update(range(start // size, (end - 1) // size + 1))
                for number in sorted(wanted):
                    offset, piece = index.extent(number)
                    data = os.pread(fd, piece, offset)
                    index[number] = writer.put_chunk(data).chunk_id
            finally:
                os.close(fd)
            assert all(index[n] == HOLE or n in wanted for n in range(len(index)))
            writer.add_disk(key, f"Hard disk {key}", index)
        return writer.commit(mode="incremental" if parent else "full")
