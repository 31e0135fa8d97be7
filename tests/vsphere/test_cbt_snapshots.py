"""The snapshot cycle and the CBT chain against the lab simulator."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.vsphere.helpers import our_snapshots, pick_vm, random_writes, restored_afterwards

from vmguard.store.archive import CbtState
from vmguard.vsphere import cbt
from vmguard.vsphere.cbt import broken_reason, enable_cbt, merge
from vmguard.vsphere.inventory import discover, find_vm, vm_record
from vmguard.vsphere.records import backup_uid_of
from vmguard.vsphere.session import wait_for
from vmguard.vsphere.snapshots import create_snapshot, snapshot_cycle, sweep_orphans
from vmguard_lab.vsim import VSimControl

TAKEN: set[str] = set()


def test_enable_cbt_activates_and_leaves_no_snapshot(
    vc: Any, vsim: VSimControl, tmp_path: Path
) -> None:
    lab_vm = pick_vm(vsim, TAKEN)
    with restored_afterwards(vc, vsim, lab_vm, tmp_path):
        result = enable_cbt(vc, lab_vm.moref)
        assert result.enabled and result.changed
        assert vsim.vm(lab_vm.moref).cbt_active
        assert our_snapshots(vc, lab_vm.moref) == []
        again = enable_cbt(vc, lab_vm.moref)
        assert again.enabled and not again.changed
        assert not enable_cbt(vc, lab_vm.moref, allowed=False).changed


def test_incremental_lists_exactly_the_written_blocks(
    vc: Any, vsim: VSimControl, tmp_path: Path
) -> None:
    lab_vm = pick_vm(vsim, TAKEN)
    disk = lab_vm.disks[0]
    with restored_afterwards(vc, vsim, lab_vm, tmp_path):
        enable_cbt(vc, lab_vm.moref)
        with snapshot_cycle(vc, lab_vm.moref, "uid-first") as first:
            plans = cbt.plan(vc, first, {})
            assert not plans[disk.key].known
            assert plans[disk.key].reason == "no earlier backup of this disk"
            assert our_snapshots(vc, lab_vm.moref)[0].backup_uid == "uid-first"
        states = {k: p.state for k, p in plans.items()}
        # What the first backup's archive records: the in-place restore marks its
        # snapshot saw (an earlier test may have restored into this lab VM).
        seen = cbt.seen_marks(cbt.marks_label(first))
        assert first.removed and our_snapshots(vc, lab_vm.moref) == []
        expected = merge(random_writes(vsim, lab_vm.moref, disk.key, disk.capacity))
        with snapshot_cycle(vc, lab_vm.moref, "uid-second") as second:
            plans = cbt.plan(vc, second, states, previous_marks=seen)
        got = plans[disk.key]
        assert got.known and got.areas == expected, got.reason
        assert got.state.change_id != states[disk.key].change_id
        assert got.state.backing_file == disk.file_name
        assert our_snapshots(vc, lab_vm.moref) == []


@pytest.mark.parametrize("how", ["resize", "reset", "unknown-id", "future-id"])
def test_broken_chain_is_unknown_with_its_reason(
    vc: Any, vsim: VSimControl, tmp_path: Path, how: str
) -> None:
    lab_vm = pick_vm(vsim, TAKEN)
    disk = lab_vm.disks[0]
    with restored_afterwards(vc, vsim, lab_vm, tmp_path):
        enable_cbt(vc, lab_vm.moref)
        with snapshot_cycle(vc, lab_vm.moref, "uid-a") as first:
            states = {k: p.state for k, p in cbt.plan(vc, first, {}).items()}
        old = states[disk.key]
        if how == "resize":
            vsim.resize(lab_vm.moref, disk.key, disk.capacity + 64 * 1024 * 1024)
            want = "disk resized"
        elif how == "reset":
            vsim.reset_cbt(lab_vm.moref, disk.key)
            want = "CBT was reset"
        elif how == "unknown-id":
            # Well-formed, but of an epoch this disk never had.
            other = "52 00 11 22 33 44 55 66-77 88 99 aa bb cc dd ee/3"
            states[disk.key] = replace(old, change_id=other)
            want = "CBT was reset"
        else:
            epoch, seq = old.change_id.rsplit("/", 1)
            states[disk.key] = replace(old, change_id=f"{epoch}/{int(seq) + 99}")
            # A recorded id ahead of the disk's: seen as a step back, never asked for.
            want = "the change id went backwards"
        with snapshot_cycle(vc, lab_vm.moref, "uid-b") as second:
            got = cbt.plan(vc, second, states)[disk.key]
        assert not got.known and got.reason.startswith(want), got.reason
        assert our_snapshots(vc, lab_vm.moref) == []


def test_pure_chain_checks() -> None:
    base = CbtState("u1", "[ds] vm/disk1.vmdk", 1 << 30, "52 aa/5")
    assert broken_reason(base, base) == ""
    delta = CbtState("u1", "[ds] vm/disk1-000001.vmdk", 1 << 30, "52 aa/5")
    assert broken_reason(delta, base) == "", "a delta file is the same base disk"
    assert broken_reason(base, replace(base, disk_uuid="u2")).startswith("disk replaced")
    moved = CbtState("u1", "[ds2] vm/disk1.vmdk", 1 << 30, "52 aa/9")
    assert broken_reason(base, moved).startswith("backing file moved")
    assert broken_reason(CbtState("u1", base.backing_file, 1 << 30, ""), base).startswith(
        "no change"
    )
    assert broken_reason(base, CbtState("u1", base.backing_file, 1 << 30, "")).startswith(
        "CBT is not"
    )
    assert broken_reason(base, CbtState("u1", base.backing_file, 1 << 30, "52 bb/1")).startswith(
        "CBT was reset"
    )


def test_a_change_id_that_went_backwards_is_a_broken_chain() -> None:
    """Same epoch, lower sequence: the disk went back to an earlier state (a revert to a
    snapshot). An incremental from the higher id would miss whatever the abandoned line
    changed, whatever vCenter answers for it."""
    earlier = CbtState("u1", "[ds] vm/disk1.vmdk", 1 << 30, "52 aa/5")
    later = replace(earlier, change_id="52 aa/9")
    assert broken_reason(later, earlier).startswith("the change id went backwards")
    assert broken_reason(earlier, later) == ""


def test_an_in_place_restore_breaks_the_chain_from_before_it() -> None:
    """The restore leaves a token on the VM before it writes; each backup records the
    tokens its snapshot saw. A token the previous backup did not see is a restore since."""
    prev = CbtState("u1", "[ds] vm/disk1.vmdk", 1 << 30, "52 aa/5")
    now = replace(prev, change_id="52 aa/7")
    assert broken_reason(prev, now, "t1", None).startswith("in-place restore since")
    assert broken_reason(prev, now, "t2", "t1").startswith("in-place restore since")
    assert broken_reason(prev, now, "t1", "t1") == "", "the previous backup saw this restore"
    assert broken_reason(prev, now, None, "t1") == ""
    assert broken_reason(prev, now) == ""


def test_snapshot_is_removed_when_the_transfer_fails(
    vc: Any, vsim: VSimControl, tmp_path: Path
) -> None:
    lab_vm = pick_vm(vsim, TAKEN)
    with restored_afterwards(vc, vsim, lab_vm, tmp_path):
        cycle = snapshot_cycle(vc, lab_vm.moref, "uid-fails", quiesce=True)
        with pytest.raises(RuntimeError, match="transfer broke"), cycle as taken:
            assert taken.quiesced and not taken.fallback_reason
            assert len(our_snapshots(vc, lab_vm.moref)) == 1
            raise RuntimeError("transfer broke")
        assert our_snapshots(vc, lab_vm.moref) == []


def test_orphan_sweep_removes_ours_only(vc: Any, vsim: VSimControl, tmp_path: Path) -> None:
    lab_vm = pick_vm(vsim, TAKEN)
    with restored_afterwards(vc, vsim, lab_vm, tmp_path):
        # A proxy that dies after taking snapshots never removes them.
        dead = create_snapshot(vc, lab_vm.moref, "uid-dead")
        running = create_snapshot(vc, lab_vm.moref, "uid-running")
        vm = vc.call(lambda si: find_vm(si, lab_vm.moref))
        user = wait_for(
            vm.CreateSnapshot_Task(
                name="vmguard-lookalike", description="mine", memory=False, quiesce=False
            )
        )
        assert backup_uid_of("vmguard-lookalike", "mine") == ""
        records = [r for r in vc.call(discover) if r.moref == lab_vm.moref]
        result = sweep_orphans(vc, records, lambda uid: uid == "uid-running", timedelta(hours=6))
        assert [(s.backup_uid, s.removed) for s in result.swept] == [("uid-dead", True)]
        left = vc.call(lambda si: vm_record(si, lab_vm.moref)).snapshots
        assert sorted(s.name for s in left) == ["vmguard-lookalike", "vmguard-uid-running"]
        # Too old: removed although its backup claims to run.
        records = [r for r in vc.call(discover) if r.moref == lab_vm.moref]
        result = sweep_orphans(vc, records, lambda uid: True, timedelta(seconds=0))
        assert [s.backup_uid for s in result.swept] == ["uid-running"]
        assert our_snapshots(vc, lab_vm.moref) == [] and not result.consolidation_needed
        assert [s.moref for s in vc.call(lambda si: vm_record(si, lab_vm.moref)).snapshots] == [
            user._moId
        ]
        del dead, running
