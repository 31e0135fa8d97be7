"""Back up factory disk images into a repository the way the product does.

File-restore tests need archives exactly as ``vmguard disk backup`` and the proxy Job
write them, so this is the real backup engine (:func:`vmguard.engine.backup.back_up`)
over the file block source (:class:`vmguard.transport.file.FileSource`): holes the file
system reports are never read, all-zero chunks become holes, and a later point is an
incremental against its parent that reads only the chunks its changed areas touch.
"""

from __future__ import annotations

from pathlib import Path

from vmguard.engine.backup import DiskInput, back_up
from vmguard.store import ArchiveManifest, Repository, VmIdentity
from vmguard.transport.extents import Extent
from vmguard.transport.file import FileSource
from vmguard_lab.images import DiskImage, changed_ranges

DISK_KEY = "2000"


def back_up_image(
    repo: Repository,
    vm: str,
    image: Path,
    *,
    parent: str | None = None,
    changed: list[Extent] | None = None,
    vm_name: str | None = None,
) -> ArchiveManifest:
    """One archive of ``vm`` holding ``image`` as disk :data:`DISK_KEY`.

    With a ``parent`` and ``changed`` areas this is an incremental (CBT's case); with a
    parent alone a full-scan incremental; without a parent a full backup.
    """
    with FileSource(image) as source:
        disk = DiskInput(DISK_KEY, source, label=f"Hard disk {DISK_KEY}", changed=changed)
        return back_up(repo, VmIdentity(id=vm, name=vm_name or vm), [disk], parent=parent)


def back_up_next_point(
    repo: Repository, vm: str, previous: DiskImage, image: DiskImage, parent: str
) -> ArchiveManifest:
    """An incremental of ``image`` against ``parent`` (the archive of ``previous``), with
    the changed areas the factory reports between the two images, as CBT would."""
    return back_up_image(
        repo, vm, image.path, parent=parent, changed=changed_ranges(previous, image)
    )
