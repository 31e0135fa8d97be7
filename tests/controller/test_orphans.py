"""The vCenter sweeper removes snapshots of ours that escaped their backup (lab: real
apiserver, the operator as a process, the vSphere simulator)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.controller.backup_helpers import TAKEN, create_backup, wait_done
from tests.controller.scrape import scrape
from tests.vsphere.helpers import our_snapshots, pick_vm, restored_afterwards

from vmguard.vsphere.snapshots import create_snapshot, remove_snapshot
from vmguard_lab.procs import eventually

pytestmark = pytest.mark.lab


def test_escaped_snapshots_are_removed_and_others_kept(
    kube_api: Any,
    vc: Any,
    vsim: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    start_operator: Any,
    tmp_path: Path,
) -> None:
    # Sweeps twelve times faster (docs/lab.md, "Lab time"): every 2.5 s, not 30 s.
    op = start_operator(extra_env={"VMGUARD_SNAPSHOT_GRACE": "1"}, speedup=12)
    lab_vm = pick_vm(vsim, TAKEN)
    with restored_afterwards(vc, vsim, lab_vm, tmp_path):
        done = create_backup(kube_api, namespace, "done", {"moref": lab_vm.moref})
        assert wait_done(kube_api, namespace, "done")["status"]["phase"] == "Completed"
        # What a crash leaves: the snapshot of a backup that has finished, and one of a
        # CBT activation cycle; next to them one whose backup this namespace cannot see
        # (another namespace's, perhaps), which must stay until it is a day old.
        for uid in (done["metadata"]["uid"], "cbt-0123456789ab", "elsewhere-uid-1"):
            create_snapshot(vc, lab_vm.moref, uid)
        assert len(our_snapshots(vc, lab_vm.moref)) == 3
        try:
            left = eventually(
                lambda: (
                    [s.backup_uid for s in our_snapshots(vc, lab_vm.moref)] == ["elsewhere-uid-1"]
                    and our_snapshots(vc, lab_vm.moref)
                ),
                timeout=120,
                what="escaped snapshots removed by a sweep",
            )

            # Still there at the next sweep, and its age is exported for the alert.
            def ages() -> dict[str, float] | None:
                samples = scrape(op.metrics_port) or {}
                found = {
                    dict(labels)["snapshot"]: v
                    for (name, labels), v in samples.items()
                    if name == "vmguard_snapshot_age_seconds"
                }
                return found if set(found) == {"vmguard-elsewhere-uid-1"} else None

            assert (
                eventually(ages, timeout=90, what="snapshot age metric")["vmguard-elsewhere-uid-1"]
                >= 0
            )
            assert "snapshot-" in op.text() and "its backup is not running; removed" in op.text()
        finally:
            for snap in our_snapshots(vc, lab_vm.moref):
                remove_snapshot(vc, lab_vm.moref, snap.moref)
        assert left
