"""nbdkit's file plugin over the disk path the vSphere simulator reports, read with libnbd.

This is the lab's stand-in for production's nbdkit + VDDK: the same transport code, a
different nbdkit plugin. The bytes must be exactly what the image factory wrote, and
NBD block status must report the image's holes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from vmguard.transport.extents import Extent, normalise
from vmguard.transport.nbd import NbdkitServer, NbdSource
from vmguard_lab.images import small_mixed

pytestmark = pytest.mark.lab


def test_nbd_reads_factory_bytes_and_holes(image_factory: Any, vsim: Any, tmp_path: Path) -> None:
    image = image_factory.build(small_mixed(), seed=7, out_path=tmp_path / "mixed.img")
    vm = next(v for v in vsim.vms() if v.disks and not v.template)
    disk = vm.disks[0]
    vsim.put_image(vm.moref, disk.key, str(image.path))
    served = Path(vsim.disk(vm.moref, disk.key).path)
    assert served != image.path

    with NbdkitServer.file(served) as server:
        src = NbdSource(server.uri)
        try:
            assert src.size == image.size
            digest = hashlib.sha256()
            for _, data in src.read_many([Extent(0, src.size)]):
                digest.update(data)
            assert digest.hexdigest() == image.sha256
            allocated = src.allocated()
        finally:
            src.close()
    # Block status reports exactly the factory's data extents: everything else is a hole.
    assert allocated == normalise(Extent(e.offset, e.length) for e in image.extents)
    assert sum(e.length for e in allocated) < image.size
