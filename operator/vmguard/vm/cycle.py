"""The control-plane halves of one backup: *prepare* before the transfer, *finish* after.

A backup is three steps (docs/snapshot-cycle.md). The operator runs the first and the
last; a proxy Job runs the transfer in between (``vmguard.vm.backup.transfer``);
``vmguard vm backup`` runs all three in one process.

- :func:`prepare`: record the VM, enable CBT where allowed, find the parent archive (the
  VM's newest in the repository), decide the requested mode, and take the snapshot named
  after the backup's UID, with the policy's guest hooks around it (preSnapshot before,
  postSnapshot right after, also when the snapshot failed; :mod:`vmguard.vsphere.guestops`).
  Idempotent: when a snapshot of ours for that UID exists already
  (the operator died after taking it), it is reused, never doubled.
- :func:`finish`: remove every snapshot of ours for the UID — found by name and
  description on the VM, so it works after a restart with nothing remembered — wait for
  the removal and consolidate when vSphere asks for it. A VM that is gone has nothing to
  remove.

Nothing here moves disk data; both steps take seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from vmguard.errors import VMNotFoundError
from vmguard.store import Repository, VmIdentity
from vmguard.store.lineage import ModeDecision, backups_since_full, decide_mode, latest_archive
from vmguard.vsphere import cbt
from vmguard.vsphere.guestops import GuestLoginError, HookFailed, HookPlan, HookResult, run_hooks
from vmguard.vsphere.inventory import (
    discover,
    find_by_name,
    vm_by_instance_uuid,
    vm_record,
    vm_record_if_any,
)
from vmguard.vsphere.records import VMRecord
from vmguard.vsphere.session import VSphereSession
from vmguard.vsphere.snapshots import (
    ConsolidationReport,
    TakenSnapshot,
    consolidate,
    create_snapshot,
    find_our_snapshot,
    load_snapshot,
    remove_snapshot,
)

log = logging.getLogger(__name__)


def vm_identity(vm: VMRecord, vcenter: str) -> VmIdentity:
    """The VM's identity in the repository: stable across renames and moves."""
    return VmIdentity(
        id=f"{vcenter or 'vcenter'}:{vm.instance_uuid}",
        name=vm.name,
        instance_uuid=vm.instance_uuid,
        bios_uuid=vm.bios_uuid,
        moref=vm.moref,
        vcenter=vcenter,
    )


def resolve_vm(
    session: VSphereSession, *, moref: str = "", instance_uuid: str = "", name: str = ""
) -> VMRecord:
    """The one VM the ids denote; every id given must agree (VMNotFoundError otherwise).

    A moref or an instance UUID is looked up directly (one property-collector read of
    that VM; ``SearchIndex.FindByUuid`` for a UUID), so resolving costs the same few
    calls at 10 VMs as at 5,000. Only a name alone needs the whole inventory (vCenter
    has no index by name that spans folders), and must then be unique.
    """
    if not (moref or instance_uuid or name):
        raise VMNotFoundError("no VM id given (instanceUuid, moref or name)")
    if not (moref or instance_uuid):
        return _by_name(session, name)
    found = _by_moref(session, moref) if moref else None
    if instance_uuid and (found is None or found.instance_uuid != instance_uuid):
        by_uuid = session.call(lambda si: vm_by_instance_uuid(si, instance_uuid))
        if not by_uuid:
            raise VMNotFoundError(f"no VM {instance_uuid!r}")
        if found is not None:
            raise VMNotFoundError(
                f"the VM ids disagree: {instance_uuid!r} is {by_uuid}, not {found.moref}"
            )
        found = _by_moref(session, by_uuid, instance_uuid)
    assert found is not None
    if name and found.name != name:
        raise VMNotFoundError(
            f"the VM ids disagree: {found.moref} is named {found.name!r}, not {name!r}"
        )
    return found


def _by_moref(session: VSphereSession, moref: str, shown: str = "") -> VMRecord:
    record = session.call(lambda si: vm_record_if_any(si, moref))
    if record is None or record.template:
        raise VMNotFoundError(f"no VM {shown or moref!r}")
    return record


def _by_name(session: VSphereSession, name: str) -> VMRecord:
    records = [r for r in session.call(discover) if not r.template]
    try:
        return find_by_name(records, name)
    except LookupError as exc:
        raise VMNotFoundError(str(exc)) from None


@dataclass
class Prepared:
    vm: VMRecord
    """The VM as recorded before the snapshot."""
    identity: VmIdentity
    decision: ModeDecision
    snapshot: TakenSnapshot
    cbt_reason: str
    reused: bool
    """The snapshot existed already (taken by a predecessor that died)."""
    hooks: tuple[HookResult, ...] = ()
    """The guest hooks that ran, in order (none when the snapshot was reused)."""


def prepare(
    session: VSphereSession,
    repo: Repository,
    vm_moref: str,
    backup_uid: str,
    *,
    vcenter: str = "",
    requested: str = "auto",
    full_every: int = 0,
    enable_cbt: bool = True,
    quiesce: bool = False,
    crash_consistent_fallback: bool = True,
    allow_consolidate: bool = True,
    hooks: HookPlan | None = None,
) -> Prepared:
    """Everything before the transfer (see the module docstring)."""
    vm = session.call(lambda si: vm_record_if_any(si, vm_moref))
    if vm is None:
        raise VMNotFoundError(f"no VM {vm_moref}")
    existing = find_our_snapshot(vm, backup_uid)
    cbt_reason = ""
    if existing is None and enable_cbt:
        cbt_reason = cbt.enable_cbt(session, vm_moref, allow_consolidate=allow_consolidate).reason
        log.info("%s: %s", vm.name, cbt_reason)
        vm = session.call(lambda si: vm_record(si, vm_moref))
    identity = vm_identity(vm, vcenter)
    parent = latest_archive(repo, identity.id)
    since = backups_since_full(repo, identity.id, full_every) if parent and full_every else 0
    decision = decide_mode(parent, requested, full_every, since)
    if existing is not None:
        log.info("%s: reusing snapshot %s of backup %s", vm.name, existing.moref, backup_uid)
        taken = load_snapshot(session, vm_moref, existing.moref, backup_uid)
        return Prepared(vm, identity, decision, taken, cbt_reason, True)

    def take() -> TakenSnapshot:
        return create_snapshot(
            session,
            vm_moref,
            backup_uid,
            quiesce=quiesce,
            crash_consistent_fallback=crash_consistent_fallback,
        )

    if hooks is None or not (hooks.pre or hooks.post):
        return Prepared(vm, identity, decision, take(), cbt_reason, False)
    ran = _snapshot_with_hooks(session, vm_moref, backup_uid, hooks, take, allow_consolidate)
    return Prepared(vm, identity, decision, ran[0], cbt_reason, False, ran[1])


def _snapshot_with_hooks(
    session: VSphereSession,
    vm_moref: str,
    backup_uid: str,
    plan: HookPlan,
    take: Callable[[], TakenSnapshot],
    allow_consolidate: bool,
) -> tuple[TakenSnapshot, tuple[HookResult, ...]]:
    """preSnapshot hooks, the snapshot, postSnapshot hooks (docs/snapshot-cycle.md).

    postSnapshot hooks run right after the snapshot, also when taking it failed or a
    preSnapshot hook failed (they usually undo what the pre hooks did), but not when the
    guest refused the login. A failing onError=fail hook raises :class:`HookFailed`;
    after a post hook that leaves no snapshot of ours behind.
    """
    creds = plan.credentials
    results: list[HookResult] = []

    def post_after_failure() -> None:
        try:
            results.extend(run_hooks(session, vm_moref, plan.post, creds, "postSnapshot"))
        except HookFailed as exc:
            log.warning("%s: after a failure: %s", vm_moref, exc)

    try:
        results.extend(run_hooks(session, vm_moref, plan.pre, creds, "preSnapshot"))
    except HookFailed as exc:
        post_after_failure()
        raise HookFailed(exc.result, [*exc.results, *results]) from None
    try:
        taken = take()
    except Exception:
        post_after_failure()
        raise
    try:
        results.extend(run_hooks(session, vm_moref, plan.post, creds, "postSnapshot"))
    except (HookFailed, GuestLoginError):
        finish(session, vm_moref, backup_uid, allow_consolidate=allow_consolidate)
        raise
    return taken, tuple(results)


@dataclass(frozen=True)
class Finished:
    removed: tuple[str, ...]
    """Morefs of the snapshots removed (empty when none was left)."""
    consolidation: ConsolidationReport | None
    vm_gone: bool = False


def finish(
    session: VSphereSession, vm_moref: str, backup_uid: str, *, allow_consolidate: bool = True
) -> Finished:
    """Remove our snapshot(s) of ``backup_uid`` from the VM, then consolidate if needed."""
    found = session.call(lambda si: vm_record_if_any(si, vm_moref))
    if found is None:
        return Finished((), None, vm_gone=True)
    vm = found
    removed = []
    while (snap := find_our_snapshot(vm, backup_uid)) is not None:
        remove_snapshot(session, vm_moref, snap.moref)
        removed.append(snap.moref)
        vm = session.call(lambda si: vm_record(si, vm_moref))
        if snap.moref in {s.moref for s in vm.snapshots}:
            break  # vSphere kept it: do not loop; the caller sees it still there
    report = None
    if removed or vm.consolidation_needed:
        report = consolidate(session, vm_moref, allow_consolidate)
    return Finished(tuple(removed), report)


def snapshot_left(session: VSphereSession, vm_moref: str, backup_uid: str) -> bool:
    """Whether a snapshot of ours for ``backup_uid`` is still on the VM."""
    vm = session.call(lambda si: vm_record_if_any(si, vm_moref))
    return vm is not None and find_our_snapshot(vm, backup_uid) is not None
