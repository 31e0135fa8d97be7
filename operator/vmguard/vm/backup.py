"""Back up one vSphere VM into a repository: prepare → transfer → finish.

The three steps (docs/snapshot-cycle.md):

1. **prepare** (:func:`vmguard.vm.cycle.prepare`, operator side): enable CBT, find
   the parent archive, decide the mode, take the snapshot named after the backup's UID;
2. **transfer** (:func:`transfer`, here; the proxy Job's work): plan every disk of the
   snapshot against the parent's CBT chain, choose the transport, copy with the engine
   (:func:`vmguard.engine.backup.back_up`) and commit the archive (manifest with the
   config blob, per-disk chain state, mode reason and the backup's UID as a label);
3. **finish** (:func:`vmguard.vm.cycle.finish`, operator side): remove the snapshot.

:func:`backup_vm` (``vmguard vm backup``) composes them in one process; the operator runs
1 and 3 itself and 2 in a proxy Job (``vmguard proxy backup``).

Invariants: the archive is committed only when every disk was copied; the snapshot is
removed in every outcome of :func:`backup_vm`; :func:`transfer` is idempotent — when an
archive labelled with the backup's UID exists (a previous attempt committed it before
dying), it is reported and nothing is written.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from vmguard.engine.backup import DiskInput, DiskOutcome, back_up
from vmguard.engine.pipeline import Progress
from vmguard.store import ArchiveManifest, CbtState, Repository
from vmguard.store.lineage import BACKUP_UID_LABEL, archive_of_backup
from vmguard.transport.extents import Extent
from vmguard.vm.access import DiskLocator, TransportChoice, choose, snapshot_sources
from vmguard.vm.cycle import finish, prepare, vm_identity
from vmguard.vsphere import cbt
from vmguard.vsphere.guestops import HookPlan, HookResult
from vmguard.vsphere.inventory import vm_record
from vmguard.vsphere.session import VSphereSession
from vmguard.vsphere.snapshots import ConsolidationReport, load_snapshot
from vmguard.vsphere.vmconfig import CONFIG_FORMAT, capture_vm

log = logging.getLogger(__name__)

__all__ = ["BackupOptions", "BackupResult", "TransferRequest", "backup_vm", "transfer"]


@dataclass(frozen=True)
class BackupOptions:
    transport: str = "auto"
    quiesce: bool = False
    crash_consistent_fallback: bool = True
    enable_cbt: bool = True
    allow_consolidate: bool = True
    backup_uid: str = ""
    vcenter: str = ""
    mode: str = "auto"
    full_every: int = 0
    hooks: HookPlan | None = None
    """Guest hooks around the snapshot (docs/snapshot-cycle.md); None runs none."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """More manifest labels, e.g. the origin (``vmguard.io/namespace``) a proxy records."""


@dataclass(frozen=True)
class TransferRequest:
    """What the proxy is told: the snapshot to read and the archive to continue from."""

    vm_moref: str
    snapshot_moref: str
    backup_uid: str
    parent: str | None
    """Archive id of the parent; None reads everything (a full)."""
    vcenter: str = ""
    transport: str = "auto"
    mode_reason: str = ""
    """Why a full was requested (prepended to the per-disk reasons)."""
    snapshot_note: str = ""
    """E.g. why a quiesced snapshot fell back to crash-consistent."""
    backings: Mapping[int, str] = field(default_factory=dict)
    """Disk backing files recorded before the snapshot (the chain's base files)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """More manifest labels: who asked for the backup (catalog sync reads them back)."""


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
    reused: bool = False
    """The archive existed already: a previous attempt of this backup committed it."""
    hooks: tuple[HookResult, ...] = ()
    """The guest hooks that ran around the snapshot, in order."""


def _extents(areas: list[tuple[int, int]] | None) -> list[Extent] | None:
    return None if areas is None else [Extent(start, length) for start, length in areas]


def _reported(manifest: ArchiveManifest, request: TransferRequest) -> BackupResult:
    """The result of a transfer that had committed before: read back from its manifest."""
    labels = manifest.labels
    return BackupResult(
        manifest=manifest,
        mode=manifest.mode,
        mode_reason=manifest.mode_reason,
        transport=TransportChoice(labels.get("transport", ""), labels.get("transport_reason", "")),
        snapshot_moref=request.snapshot_moref,
        quiesced=labels.get("quiesced") == "true",
        fallback_reason="",
        reused=True,
    )


def transfer(
    session: VSphereSession,
    repo: Repository,
    locator: DiskLocator,
    request: TransferRequest,
    *,
    progress: Progress | None = None,
    on_disk: Callable[[DiskOutcome], None] | None = None,
) -> BackupResult:
    """Copy the snapshot's disks into one archive (see the module docstring, step 2)."""
    vm = session.call(lambda si: vm_record(si, request.vm_moref))
    identity = vm_identity(vm, request.vcenter)
    done = archive_of_backup(repo, identity.id, request.backup_uid)
    if done is not None:
        log.info("backup %s committed %s already", request.backup_uid, done.archive_id)
        return _reported(done, request)
    taken = load_snapshot(
        session, request.vm_moref, request.snapshot_moref, request.backup_uid, request.backings
    )
    parent = repo.load_archive(request.parent) if request.parent else None
    previous: dict[int, CbtState] = {}
    if parent is not None:
        previous = {int(d.key): d.cbt for d in parent.disks if d.cbt is not None}
    choice = choose(session, locator, vm, request.transport)
    marks = cbt.seen_marks(parent.labels) if parent is not None else {}
    plans = cbt.plan(session, taken, previous, marks)
    config = session.call(lambda si: capture_vm(si, request.vm_moref, taken.moref))
    reasons = {k: p.reason for k, p in plans.items()}
    parts = [request.mode_reason] if request.mode_reason else []
    parts += [f"disk {k}: {r}" for k, r in sorted(reasons.items())]
    if request.snapshot_note:
        parts.append(request.snapshot_note)
    mode_reason = "; ".join(parts)
    results: dict[int, DiskOutcome] = {}

    def disk_done(outcome: DiskOutcome) -> None:
        results[int(outcome.key)] = outcome
        if on_disk is not None:
            on_disk(outcome)

    with snapshot_sources(session, locator, taken, choice) as sources:
        disks = [
            DiskInput(
                str(d.key),
                sources[d.key],
                label=d.label,
                changed=_extents(plans[d.key].areas) if parent is not None else None,
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
                **request.labels,
                "transport": choice.transport,
                "transport_reason": choice.reason,
                BACKUP_UID_LABEL: request.backup_uid,
                "quiesced": str(taken.quiesced).lower(),
                **cbt.marks_label(taken),
            },
            config_format=CONFIG_FORMAT,
            config_blob=config.to_json(),
            mode_reason=mode_reason,
            progress=progress,
            on_disk=disk_done,
        )
    return BackupResult(
        manifest=manifest,
        mode=manifest.mode,
        mode_reason=mode_reason,
        transport=choice,
        snapshot_moref=taken.moref,
        quiesced=taken.quiesced,
        fallback_reason=request.snapshot_note,
        disks=results,
        reasons=reasons,
    )


def backup_vm(
    session: VSphereSession,
    repo: Repository,
    vm_moref: str,
    locator: DiskLocator,
    options: BackupOptions | None = None,
    progress: Progress | None = None,
) -> BackupResult:
    """All three steps in this process; the snapshot is removed in every outcome.
    ``progress(done, total)`` follows the transfer (bytes of every disk together)."""
    opts = options or BackupOptions()
    uid = opts.backup_uid or secrets.token_hex(8)
    prepared = prepare(
        session,
        repo,
        vm_moref,
        uid,
        vcenter=opts.vcenter,
        requested=opts.mode,
        full_every=opts.full_every,
        enable_cbt=opts.enable_cbt,
        quiesce=opts.quiesce,
        crash_consistent_fallback=opts.crash_consistent_fallback,
        allow_consolidate=opts.allow_consolidate,
        hooks=opts.hooks,
    )
    decision, taken = prepared.decision, prepared.snapshot
    request = TransferRequest(
        vm_moref=vm_moref,
        snapshot_moref=taken.moref,
        backup_uid=uid,
        parent=decision.parent,
        vcenter=opts.vcenter,
        transport=opts.transport,
        mode_reason="" if decision.mode == "incremental" else decision.reason,
        snapshot_note=taken.fallback_reason,
        backings={d.key: d.backing_file for d in prepared.vm.disks},
        labels=dict(opts.labels),
    )
    failed = True
    try:
        result = transfer(session, repo, locator, request, progress=progress)
        failed = False
    finally:
        try:
            finished = finish(session, vm_moref, uid, allow_consolidate=opts.allow_consolidate)
        except Exception as exc:
            # The orphan sweep will find it; never hide the transfer's own error.
            log.error("snapshot %s of %s not removed: %s", taken.moref, vm_moref, exc)
            if not failed:
                raise
    result.consolidation = finished.consolidation
    result.hooks = prepared.hooks
    return result
