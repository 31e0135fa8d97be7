"""Quiesce failures and consolidation against the lab simulator's per-VM faults.

- a quiesced snapshot of a VM whose guest cannot be frozen: with the fallback allowed a
  crash-consistent snapshot is taken and the reason (the fault's text) recorded; without
  it the backup fails clearly and no snapshot of ours is left;
- ``consolidationNeeded``: discovery reports it; the snapshot cycle's finish and the
  orphan sweep consolidate when allowed, report it when not, and report a failing
  consolidation with its fault text instead of raising.

Every VM flagged here is set back as found (``restored_afterwards``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.vsphere.helpers import our_snapshots, pick_vm, restored_afterwards

from vmguard.errors import PermanentError
from vmguard.vm.backup import BackupOptions, backup_vm
from vmguard.vm.cycle import finish
from vmguard.vsphere.inventory import discover, vm_record
from vmguard.vsphere.snapshots import (
    ConsolidationReport,
    create_snapshot,
    snapshot_cycle,
    sweep_orphans,
)
from vmguard_lab.images import small_mixed
from vmguard_lab.vsim import LabDiskLocator, VSimControl, VSimVM

pytestmark = pytest.mark.lab

TAKEN: set[str] = set()

QUIESCE_TEXT = "An error occurred while quiescing the virtual machine"
CONSOLIDATE_TEXT = "An error occurred while consolidating disks: Failed to lock the file"


@pytest.fixture
def lab_vm(vc: Any, vsim: VSimControl, tmp_path: Path) -> Iterator[VSimVM]:
    vm = pick_vm(vsim, TAKEN)
    with restored_afterwards(vc, vsim, vm, tmp_path):
        yield vm


def _needs_consolidation(vc: Any, moref: str) -> bool:
    return bool(vc.call(lambda si: vm_record(si, moref)).consolidation_needed)


def test_quiesce_failure_falls_back_to_a_crash_consistent_snapshot(
    vc: Any, vsim: VSimControl, lab_vm: VSimVM
) -> None:
    assert vsim.set_faults(lab_vm.moref, quiesce_fault=True).quiesce_fault
    with snapshot_cycle(vc, lab_vm.moref, "uid-quiesce-fallback", quiesce=True) as taken:
        assert taken.quiesced is False
        assert "ApplicationQuiesceFault" in taken.fallback_reason
        assert QUIESCE_TEXT in taken.fallback_reason
        [snap] = our_snapshots(vc, lab_vm.moref)
        assert (snap.moref, snap.backup_uid, snap.quiesced) == (
            taken.moref,
            "uid-quiesce-fallback",
            False,
        )
    assert taken.removed
    assert our_snapshots(vc, lab_vm.moref) == []


def test_quiesce_failure_is_recorded_in_the_backup(
    vc: Any,
    vsim: VSimControl,
    repo: Any,
    locator: LabDiskLocator,
    image_factory: Any,
    lab_vm: VSimVM,
    tmp_path: Path,
) -> None:
    image = image_factory.build(small_mixed(), 5, tmp_path / "mixed.img")
    vsim.put_image(lab_vm.moref, lab_vm.disks[0].key, str(image.path))
    vsim.set_faults(lab_vm.moref, quiesce_fault=True)
    result = backup_vm(
        vc, repo, lab_vm.moref, locator, BackupOptions(transport="nbd", quiesce=True)
    )
    assert result.quiesced is False
    assert QUIESCE_TEXT in result.fallback_reason
    assert result.manifest.labels["quiesced"] == "false"
    assert our_snapshots(vc, lab_vm.moref) == []


def test_quiesce_failure_without_fallback_fails_and_leaves_no_snapshot(
    vc: Any, vsim: VSimControl, lab_vm: VSimVM
) -> None:
    vsim.set_faults(lab_vm.moref, quiesce_fault=True)
    with pytest.raises(PermanentError, match="ApplicationQuiesceFault") as failed:
        create_snapshot(
            vc, lab_vm.moref, "uid-no-fallback", quiesce=True, crash_consistent_fallback=False
        )
    assert lab_vm.name in str(failed.value) and QUIESCE_TEXT in str(failed.value)
    assert vc.call(lambda si: vm_record(si, lab_vm.moref)).snapshots == ()
    # Only quiescing fails: a crash-consistent snapshot of the same VM works.
    with snapshot_cycle(vc, lab_vm.moref, "uid-crash-consistent") as taken:
        assert not taken.quiesced and not taken.fallback_reason
    assert our_snapshots(vc, lab_vm.moref) == []


def test_discovery_reports_consolidation_needed(vc: Any, vsim: VSimControl, lab_vm: VSimVM) -> None:
    vsim.set_faults(lab_vm.moref, consolidation_needed=True)
    needing = [r.moref for r in vc.call(discover) if r.consolidation_needed]
    assert needing == [lab_vm.moref]


def test_finish_consolidates_when_allowed(vc: Any, vsim: VSimControl, lab_vm: VSimVM) -> None:
    vsim.set_faults(lab_vm.moref, consolidation_needed=True)
    taken = create_snapshot(vc, lab_vm.moref, "uid-consolidate")
    done = finish(vc, lab_vm.moref, "uid-consolidate", allow_consolidate=True)
    assert done.removed == (taken.moref,)
    assert done.consolidation == ConsolidationReport(needed=True, consolidated=True)
    assert vsim.faults(lab_vm.moref).consolidation_needed is False
    assert not _needs_consolidation(vc, lab_vm.moref)


def test_finish_reports_consolidation_it_may_not_do(
    vc: Any, vsim: VSimControl, lab_vm: VSimVM
) -> None:
    vsim.set_faults(lab_vm.moref, consolidation_needed=True)
    taken = create_snapshot(vc, lab_vm.moref, "uid-no-consolidate")
    done = finish(vc, lab_vm.moref, "uid-no-consolidate", allow_consolidate=False)
    assert done.removed == (taken.moref,)
    report = done.consolidation
    assert report is not None and report.needed and not report.consolidated
    assert "not allowed" in report.error
    assert vsim.faults(lab_vm.moref).consolidation_needed is True
    assert _needs_consolidation(vc, lab_vm.moref)


def test_failing_consolidation_is_reported_not_raised(
    vc: Any, vsim: VSimControl, lab_vm: VSimVM
) -> None:
    vsim.set_faults(lab_vm.moref, consolidation_needed=True, consolidate_fault=True)
    taken = create_snapshot(vc, lab_vm.moref, "uid-consolidate-fails")
    done = finish(vc, lab_vm.moref, "uid-consolidate-fails")
    assert done.removed == (taken.moref,)
    report = done.consolidation
    assert report is not None and report.needed and not report.consolidated
    assert "FileLocked" in report.error and CONSOLIDATE_TEXT in report.error
    assert our_snapshots(vc, lab_vm.moref) == []
    # A retry (the Finalizing phase runs again) gets the same report, nothing raised.
    again = finish(vc, lab_vm.moref, "uid-consolidate-fails")
    assert again.removed == () and again.consolidation == report
    assert vsim.faults(lab_vm.moref).consolidation_needed is True


def test_orphan_sweep_consolidates_when_allowed_and_reports_otherwise(
    vc: Any, vsim: VSimControl, lab_vm: VSimVM
) -> None:
    moref = lab_vm.moref

    def sweep(allow: Any) -> Any:
        records = [r for r in vc.call(discover) if r.moref == moref]
        return sweep_orphans(vc, records, lambda uid: False, timedelta(hours=1), **allow)

    # Not allowed (per VM): the orphan goes, the VM is reported as still needing it.
    vsim.set_faults(moref, consolidation_needed=True)
    create_snapshot(vc, moref, "uid-orphan-1")
    result = sweep({"allow_consolidate": lambda vm: vm.moref != moref})
    assert [(s.backup_uid, s.removed) for s in result.swept] == [("uid-orphan-1", True)]
    assert result.consolidation_needed == [lab_vm.name]
    assert "not allowed" in result.consolidations[lab_vm.name].error
    assert vsim.faults(moref).consolidation_needed is True

    # Allowed but failing: reported with the fault's text.
    vsim.set_faults(moref, consolidate_fault=True)
    result = sweep({"allow_consolidate": True})
    assert result.swept == [] and result.consolidation_needed == [lab_vm.name]
    assert CONSOLIDATE_TEXT in result.consolidations[lab_vm.name].error

    # Allowed: consolidated, and the simulator agrees.
    vsim.set_faults(moref, consolidate_fault=False)
    create_snapshot(vc, moref, "uid-orphan-2")
    result = sweep({})
    assert [s.backup_uid for s in result.swept] == ["uid-orphan-2"]
    assert result.consolidation_needed == []
    assert result.consolidations == {
        lab_vm.name: ConsolidationReport(needed=True, consolidated=True)
    }
    assert vsim.faults(moref).consolidation_needed is False
    assert our_snapshots(vc, moref) == []
