"""Restore an archive to vSphere: as a new VM, in place, or one disk to an existing VM.

- **New VM**: the VM is created from the archive's config blob as the target says
  (:class:`~vmguard.vsphere.restore.NewVMTarget`), its empty disks are written through
  the transport by the data mover (:func:`vmguard.engine.restore.restore_disk`; only
  data, no holes or zero runs: thin stays thin), then it is powered on if asked.
- **In place**: the VM must be powered off (or ``power_off=True``). For each disk whose
  chain still continues from the backup's (same UUID, backing file, capacity, epoch),
  an instant snapshot of ours lets QueryChangedDiskAreas say what changed since the
  backup's change id; only the chunks touching those areas are written back. Otherwise
  the whole disk is overwritten (holes zeroed). The reason is returned per disk. Before
  the first write the restore is recorded on the VM
  (:func:`vmguard.vsphere.cbt.mark_in_place_restore`): CBT may not track these writes,
  so the next backup runs a full-scan incremental rather than trust a change id from
  before them.
- **Single disk**: a new disk is added to an existing VM and written.

The disks of one VM are written in parallel, at most ``disks_at_once`` at a time
(:func:`write_disks`; default :data:`DISKS_AT_ONCE`): a proxy Job is told how many its
vCenter's limits grant it. Memory is bounded by ``disks_at_once`` times one disk's
pipeline depth. The first disk that fails stops the restore: the disks not yet started
are not started, the running ones end, and the failure is raised.
"""

from __future__ import annotations

import dataclasses
import functools
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from vmguard.engine.pipeline import Progress, bounded_map
from vmguard.engine.plan import chunks_touching
from vmguard.engine.restore import RestoreStats, restore_disk
from vmguard.errors import ConfigError, PermanentError
from vmguard.store import ArchiveManifest, Repository
from vmguard.transport.extents import Extent
from vmguard.transport.nbd import NbdSink
from vmguard.vm.access import DiskLocator
from vmguard.vsphere import cbt
from vmguard.vsphere import restore as vrestore
from vmguard.vsphere.inventory import vm_record
from vmguard.vsphere.session import VSphereSession
from vmguard.vsphere.snapshots import snapshot_cycle
from vmguard.vsphere.vmconfig import CONFIG_FORMAT, VMConfig

DISKS_AT_ONCE = 2
"""Disks of a VM written at once unless the caller says otherwise."""

T = TypeVar("T")


def write_disks(writes: Sequence[Callable[[], T]], at_once: int) -> list[T]:
    """Run each disk's write, at most ``at_once`` at a time; the results in the given order.

    The first failure is raised once the writes running beside it have ended; writes not
    started by then are never started.
    """
    if at_once < 1:
        raise ConfigError(f"disks at once must be at least 1, not {at_once}")
    results: dict[int, T] = {}

    def run(item: tuple[int, Callable[[], T]]) -> tuple[int, T]:
        return item[0], item[1]()

    items = list(enumerate(writes))
    at_once = min(at_once, len(items)) or 1
    for number, result in bounded_map(
        run, items, workers=at_once, depth=at_once, ordered=False, name="restore-disk"
    ):
        results[number] = result
    return [results[n] for n in range(len(items))]


class DiskProgress:
    """Sums the progress of disks written in parallel into one ``(done, total)`` callback.

    Each disk's callback (:meth:`disk`) is called from that disk's thread; ``report`` is
    called under a lock, so it sees one sum at a time.
    """

    def __init__(self, report: Progress, lengths: Mapping[int, int]) -> None:
        self._report, self._total = report, sum(lengths.values())
        self._done: dict[int, int] = {}
        self._lock = threading.Lock()

    def disk(self, key: int) -> Progress:
        def progress(done: int, _total: int) -> None:
            with self._lock:
                self._done[key] = done
                self._report(sum(self._done.values()), self._total)

        return progress


def archive_config(manifest: ArchiveManifest) -> VMConfig:
    if manifest.config_format != CONFIG_FORMAT:
        raise PermanentError(
            f"archive {manifest.archive_id} holds no vSphere VM config "
            f"(format {manifest.config_format or 'none'!r})"
        )
    return VMConfig.from_json(manifest.config_blob)


def write_disk(
    locator: DiskLocator,
    repo: Repository,
    manifest: ArchiveManifest,
    vm_moref: str,
    source_key: int,
    target_key: int,
    file_name: str,
    *,
    only: list[Extent] | None = None,
    zero_holes: bool = False,
    progress: Progress | None = None,
) -> RestoreStats:
    """Disk ``source_key`` of the archive into disk ``target_key`` of a powered-off VM."""
    with locator.live_disk(vm_moref, target_key, file_name) as server:
        sink = NbdSink(server.uri)
        try:
            return restore_disk(
                repo,
                manifest,
                str(source_key),
                sink,
                only=only,
                zero_holes=zero_holes,
                progress=progress,
            )
        finally:
            sink.close()


@dataclass
class NewVMResult:
    vm: vrestore.CreatedVM
    disks: dict[int, RestoreStats]
    powered_on: bool


def restore_new_vm(
    session: VSphereSession,
    repo: Repository,
    archive_id: str,
    target: vrestore.NewVMTarget,
    locator: DiskLocator,
    power_on: bool = False,
    progress: Callable[[int], Progress] | None = None,
    disks_at_once: int = DISKS_AT_ONCE,
) -> NewVMResult:
    """``progress(disk key)``, when given, makes the progress callback of that disk (called
    from that disk's thread)."""
    manifest = repo.load_archive(archive_id)
    config = archive_config(manifest)
    if not target.datastore:
        target = dataclasses.replace(target, datastore=source_datastore(config))
    # A placement that does not exist is a clear error before anything is created (a
    # real vCenter faults on it; the lab's simulator would crash).
    vrestore.check_target(session, config, target)
    created = vrestore.create_vm(session, config, target)
    try:
        written = write_disks(
            [
                functools.partial(
                    write_disk,
                    locator,
                    repo,
                    manifest,
                    created.moref,
                    d.source_key,
                    d.key,
                    d.file_name,
                    progress=progress(d.source_key) if progress else None,
                )
                for d in created.disks
            ],
            disks_at_once,
        )
        results = {d.source_key: w for d, w in zip(created.disks, written, strict=True)}
    except BaseException:
        vrestore.destroy(session, created.moref)
        raise
    if power_on:
        vrestore.power(session, created.moref, on=True)
    return NewVMResult(created, results, power_on)


def source_datastore(config: VMConfig) -> str:
    """The datastore of the source VM's first disk (``[ds] dir/file.vmdk``): where a new
    VM goes when the caller names none."""
    for disk in config.disks:
        if disk.file_name.startswith("[") and "]" in disk.file_name:
            return disk.file_name[1 : disk.file_name.index("]")]
    raise ConfigError("the archive does not say which datastore its VM was on: name one")


@dataclass
class InPlaceResult:
    disks: dict[int, RestoreStats] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)
    """Per disk: ``changed chunks only (...)`` or why the disk was overwritten whole."""


def restore_in_place(
    session: VSphereSession,
    repo: Repository,
    archive_id: str,
    vm_moref: str,
    locator: DiskLocator,
    power_off: bool = False,
    progress: Callable[[int], Progress] | None = None,
    disks_at_once: int = DISKS_AT_ONCE,
) -> InPlaceResult:
    """``progress(disk key)``, when given, makes the progress callback of that disk (called
    from that disk's thread)."""
    manifest = repo.load_archive(archive_id)
    vm = session.call(lambda si: vm_record(si, vm_moref))
    if vm.power_state != "poweredOff":
        if not power_off:
            raise ConfigError(
                f"{vm.name} is {vm.power_state}: power it off for an in-place restore"
            )
        vrestore.power(session, vm_moref, on=False)
    live = {d.key: d for d in vm.disks}
    backed = {int(d.key): d for d in manifest.disks}
    missing = sorted(set(backed) - set(live))
    if missing:
        raise ConfigError(f"{vm.name} no longer has disk(s) {missing}: restore as a new VM")
    plans: dict[int, cbt.DiskPlan] = {}
    if any(d.cbt and d.cbt.change_id for d in manifest.disks) and vm.cbt_enabled:
        # The areas changed since the backup, through an instant snapshot of ours.
        with snapshot_cycle(session, vm_moref, "restore-" + secrets.token_hex(6)) as taken:
            states = cbt.chain_states(taken)
            for d in taken.disks:
                prev = backed[d.key].cbt if d.key in backed else None
                seen = cbt.seen_marks(manifest.labels).get(d.key)
                plans[d.key] = cbt.plan_disk(session, taken, d, states[d.key], prev, seen)
    for key, record in sorted(backed.items()):
        if live[key].capacity != record.length:
            raise ConfigError(
                f"disk {key} of {vm.name} is {live[key].capacity} bytes, the backup "
                f"{record.length}: restore as a new VM or to a new disk"
            )
    # Before the first write: CBT may not track what we write, so the next backup must
    # not continue from a change id of before this restore (docs/cbt-chain.md).
    cbt.mark_in_place_restore(session, vm_moref, backed, archive_id)
    result = InPlaceResult()
    size = repo.chunk_size
    writes: list[Callable[[], RestoreStats]] = []
    for key, record in sorted(backed.items()):
        disk = live[key]
        p = plans.get(key)
        only = None
        if p is not None and p.areas is not None:
            only = [Extent(start, length) for start, length in p.areas]
            count = len(chunks_touching(only, size, record.length))
            result.reasons[key] = f"changed chunks only ({count}; {p.reason})"
        else:
            why = p.reason if p is not None else "CBT is off or the backup has no change id"
            result.reasons[key] = f"full overwrite ({why})"
        writes.append(
            functools.partial(
                write_disk,
                locator,
                repo,
                manifest,
                vm_moref,
                key,
                key,
                disk.backing_file,
                only=only,
                zero_holes=True,
                progress=progress(key) if progress else None,
            )
        )
    for key, stats in zip(sorted(backed), write_disks(writes, disks_at_once), strict=True):
        result.disks[key] = stats
    return result


def restore_single_disk(
    session: VSphereSession,
    repo: Repository,
    archive_id: str,
    disk_key: int,
    vm_moref: str,
    datastore: str,
    locator: DiskLocator,
) -> tuple[vrestore.CreatedDisk, RestoreStats]:
    """Add one new disk to ``vm_moref`` and write disk ``disk_key`` of the archive into it."""
    manifest = repo.load_archive(archive_id)
    config = archive_config(manifest)
    created = vrestore.add_disk(session, vm_moref, config.disk(disk_key), datastore)
    written = write_disk(
        locator, repo, manifest, vm_moref, disk_key, created.key, created.file_name
    )
    return created, written
