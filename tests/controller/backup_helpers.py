"""Helpers for VMGuardBackup tests: a lab VM with known content, VMGuardBackups, and the checks
every backup test makes (no snapshot of ours left, archives restore bit-exact)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.controller import objects
from tests.vsphere.helpers import our_snapshots, pick_vm, restored_afterwards, sha256_file

from vmguard.api import BACKUP_TERMINAL
from vmguard.engine.restore import restore_disk
from vmguard.store import MasterKey, Repository
from vmguard.store.backend import S3Backend
from vmguard.transport.file import FileSink
from vmguard_lab.images import ImageSpec, PartitionSpec, RawRegion, small_mixed
from vmguard_lab.procs import eventually
from vmguard_lab.vsim import VSimControl, VSimVM

MiB = 1 << 20
TINY_DISK = ImageSpec(
    16 * MiB,
    None,
    (
        PartitionSpec(
            "raw",
            None,
            layout=(
                RawRegion("compressible", 2 * MiB),
                RawRegion("random", 4 * MiB),
                RawRegion("hole", 2 * MiB),
                RawRegion("zeros", 1 * MiB),
                RawRegion("repeat", 3 * MiB),
                RawRegion("random", 2 * MiB),
                RawRegion("hole", 2 * MiB),
            ),
        ),
    ),
)
"""A 16 MiB disk of every kind of content (copies' tests: 16 chunks of 1 MiB)."""

TAKEN: set[str] = set()
"""VMs used by controller tests in this session (pick_vm never hands one out twice)."""


@contextlib.contextmanager
def data_vm(
    vc: Any,
    vsim: VSimControl,
    image_factory: Any,
    tmp_path: Path,
    seed: int = 4,
    spec: ImageSpec | None = None,
) -> Iterator[VSimVM]:
    """A powered-on one-disk lab VM with mixed content (``spec``, default
    :func:`small_mixed`), put back as found afterwards."""
    lab_vm = pick_vm(vsim, TAKEN)
    try:
        with restored_afterwards(vc, vsim, lab_vm, tmp_path):
            image = image_factory.build(spec or small_mixed(), seed, tmp_path / f"mixed-{seed}.img")
            vsim.put_image(lab_vm.moref, lab_vm.disks[0].key, str(image.path))
            yield vsim.vm(lab_vm.moref)
    finally:
        # Put back as found (CBT, power, no snapshot of ours): free for the next test;
        # the lab has only so many VMs with CBT off.
        TAKEN.discard(lab_vm.moref)


def disk_hashes(vsim: VSimControl, moref: str) -> dict[str, str]:
    return {str(d.key): sha256_file(d.path) for d in vsim.vm(moref).disks}


def create_backup(
    kube_api: Any, ns: str, name: str, vm: dict[str, str], **spec: Any
) -> dict[str, Any]:
    body = {"vm": vm, **spec}
    if "policyRef" not in body:
        body.setdefault("vcenterRef", {"name": "lab"})
        body.setdefault("repositoryRef", {"name": "repo"})
    return objects.create(kube_api, ns, "vmguardbackups", "VMGuardBackup", name, body)


def wait_done(kube_api: Any, ns: str, name: str, timeout: float = 240.0) -> dict[str, Any]:
    return objects.wait_phase(kube_api, ns, "vmguardbackups", name, set(BACKUP_TERMINAL), timeout)


def open_repo(bucket: dict[str, Any], key: str | None = None, prefix: str = "") -> Repository:
    """The bucket's repository (under ``prefix``), opened with ``key`` if it is encrypted."""
    backend = S3Backend(
        bucket["endpoint"],
        bucket["bucket"],
        access_key=bucket["access_key"],
        secret_key=bucket["secret_key"],
        prefix=prefix,
        secure=False,
    )
    return Repository.open(backend, MasterKey.from_text(key) if key else None)


def restored_hashes(repo: Repository, archive_id: str, tmp_path: Path) -> dict[str, str]:
    """sha256 of every disk of the archive, restored into sparse files."""
    manifest = repo.load_archive(archive_id)
    out = {}
    for disk in manifest.disks:
        target = tmp_path / f"restored-{archive_id[-8:]}-{disk.key}.img"
        sink = FileSink.create(target, disk.length)
        try:
            restore_disk(repo, manifest, disk.key, sink)
        finally:
            sink.close()
        out[disk.key] = sha256_file(str(target))
    return out


def no_snapshot_left(vc: Any, moref: str) -> None:
    eventually(lambda: our_snapshots(vc, moref) == [], timeout=60, what="our snapshots gone")
