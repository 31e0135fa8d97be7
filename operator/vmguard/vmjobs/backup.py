"""Back up one vSphere VM into a repository: the snapshot cycle around the data mover.

Order (docs/snapshot-cycle.md, docs/cbt-chain.md): enable CBT when allowed → snapshot
(change ids recorded) → capture the snapshot's config → plan every disk against the
parent archive's chain → choose the transport → copy with the engine
(:func:`vmguard.datamover.backup.back_up`) → commit the archive (manifest with config
blob, per-disk chain state and mode reason) → remove the snapshot. The snapshot is
removed in every outcome; the archive is committed only when every disk was copied.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field

from vmguard.datamover.backup import DiskInput, DiskOutcome, back_up
from vmguard.store import ArchiveManifest, CbtState, Repository, VmIdentity
from vmguard.transport.extents import Extent
from vmguard.vmjobs.access import DiskLocator, TransportChoice, choose, snapshot_sources
from vmguard.vsphere import cbt
from vmguard.vsphere.inventory import vm_record
from vmguard.vsphere.records import VMRecord
from vmguard.vsphere.session import VSphereSession
from vmguard.vsphere.snapshots import ConsolidationReport, snapshot_cycle
from vmguard.vsphere.vmconfig import CONFIG_FORMAT, capture_vm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackupOptions:
    transport: str = "auto"
    quiesce: bool = False
    crash_consistent_fallback: bool = True
    enable_cbt: bool = True
    allow_consolidate: bool = True
    backup_uid: str = ""
    vcenter: str = ""


@dataclass
class BackupResult:
    manifest: ArchiveManifest
    mode: str
    mode_reason: str
    transport: TransportChoice
    snapshot_moref: str
    quiesced: bool
    fallback_reason: str
    disks: dict[int, DiskOutcome] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)
    consolidation: ConsolidationReport | None = None


def vm_identity(vm: VMRecord, vcenter: str) -> VmIdentity:
    return VmIdentity(
        id=f"{vcenter or 'vcenter'}:{vm.instance_uuid}",
        name=vm.name,
        instance_uuid=vm.instance_uuid,
        bios_uuid=vm.bios_uuid,
        moref=vm.moref,
        vcenter=vcenter,
    )


def _previous(repo: Repository, identity: VmIdentity) -> ArchiveManifest | None:
    refs = repo.list_archives(identity.id)
    return repo.load_archive(refs[-1].archive_id) if refs else None


def _extents(areas: list[tuple[int, int]] | None) -> list[Extent] | None:
    return None if areas is None else [Extent(start, length) for start, length in areas]


def backup_vm(
    session: VSphereSession,
    repo: Repository,
    vm_moref: str,
    locator: DiskLocator,
    options: BackupOptions | None = None,
) -> BackupResult:
    opts = options or BackupOptions()
    uid = opts.backup_uid or secrets.token_hex(8)
    vm = session.call(lambda si: vm_record(si, vm_moref))
    if opts.enable_cbt:
        enabled = cbt.enable_cbt(session, vm_moref)
        log.info("%s: %s", vm.name, enabled.reason)
    identity = vm_identity(vm, opts.vcenter)
    parent = _previous(repo, identity)
    previous: dict[int, CbtState] = {}
    if parent is not None:
        previous = {int(d.key): d.cbt for d in parent.disks if d.cbt is not None}
    choice = choose(session, locator, vm, opts.transport)
    with snapshot_cycle(
        session,
        vm_moref,
        uid,
        quiesce=opts.quiesce,
        crash_consistent_fallback=opts.crash_consistent_fallback,
        allow_consolidate=opts.allow_consolidate,
    ) as taken:
        plans = cbt.plan(session, taken, previous)
        config = session.call(lambda si: capture_vm(si, vm_moref, taken.moref))
        reasons = {k: p.reason for k, p in plans.items()}
        mode_reason = "; ".join(f"disk {k}: {r}" for k, r in sorted(reasons.items()))
        if taken.fallback_reason:
            mode_reason += f"; {taken.fallback_reason}"
        results: dict[int, DiskOutcome] = {}
        with snapshot_sources(session, locator, taken, choice) as sources:
            disks = [
                DiskInput(
                    str(d.key),
                    sources[d.key],
                    label=d.label,
                    changed=_extents(plans[d.key].areas),
                    cbt=plans[d.key].state,
                )
                for d in taken.disks
            ]
            manifest = back_up(
                repo,
                identity,
                disks,
                parent=parent.archive_id if parent else None,
                labels={
                    "transport": choice.transport,
                    "transport_reason": choice.reason,
                    "backup_uid": uid,
                    "quiesced": str(taken.quiesced).lower(),
                },
                config_format=CONFIG_FORMAT,
                config_blob=config.to_json(),
                mode_reason=mode_reason,
                on_disk=lambda done: results.update({int(done.key): done}),
            )
    return BackupResult(
        manifest=manifest,
        mode=manifest.mode,
        mode_reason=mode_reason,
        transport=choice,
        snapshot_moref=taken.moref,
        quiesced=taken.quiesced,
        fallback_reason=taken.fallback_reason,
        disks=results,
        reasons=reasons,
        consolidation=taken.consolidation,
    )
