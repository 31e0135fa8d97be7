"""Guest hooks around the snapshot, against the lab simulator's guest (lab/vsphere/guest.go).

- a preSnapshot hook runs before the snapshot is taken and a postSnapshot hook right
  after: the guest recorded both, in order, with the snapshot's createTime between them,
  and the pre hook's marker file is in the VM's guest directory;
- a failing preSnapshot hook with onError=fail fails the prepare step with the hook's
  name and exit code, and leaves no snapshot of ours; the postSnapshot hook still ran;
- onError=continue: the backup's snapshot is taken and the failure is a warning;
- a failing postSnapshot hook with onError=fail removes our snapshot; postSnapshot hooks
  run also when the snapshot itself fails;
- a hook over its timeout is terminated in the guest;
- a wrong guest password is refused clearly, and the password is in no message or log;
- ``vmguard vm backup``'s engine (``backup_vm``) runs them too and reports what ran.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from tests.vsphere.helpers import our_snapshots, pick_vm, restored_afterwards

from vmguard.errors import PermanentError
from vmguard.vm.backup import BackupOptions, backup_vm
from vmguard.vm.cycle import finish, prepare
from vmguard.vsphere.guestops import (
    GuestCredentials,
    GuestLoginError,
    Hook,
    HookFailed,
    HookPlan,
)
from vmguard.vsphere.inventory import vm_record
from vmguard_lab.vsim import VSimControl, VSimVM

pytestmark = pytest.mark.lab

TAKEN: set[str] = set()
SH = "/bin/sh"


@pytest.fixture
def lab_vm(vc: Any, vsim: VSimControl, tmp_path: Path) -> Iterator[VSimVM]:
    vm = pick_vm(vsim, TAKEN)
    with restored_afterwards(vc, vsim, vm, tmp_path):
        yield vm


@pytest.fixture(scope="module")
def creds(lab_state: dict[str, Any]) -> GuestCredentials:
    vs = lab_state["vsphere"]
    return GuestCredentials(vs["guest_username"], vs["guest_password"])


def guest_dir(lab: Any, moref: str) -> Path:
    return Path(lab.paths.lab) / "vsphere" / "guest" / moref


def sh(name: str, script: str, **kw: Any) -> Hook:
    return Hook(name=name, command=SH, args=("-c", script), **kw)


def test_pre_and_post_hooks_run_around_the_snapshot(
    vc: Any, vsim: VSimControl, repo: Any, lab: Any, lab_vm: VSimVM, creds: GuestCredentials
) -> None:
    plan = HookPlan(
        creds,
        pre=(sh("flush", 'echo "flushed $VMGUARD_LAB_VM" > marker'),),
        post=(sh("thaw", "echo thawed >> marker"),),
    )
    before = len(vsim.guest_processes(lab_vm.moref))
    prepared = prepare(vc, repo, lab_vm.moref, "uid-hooks-ok", enable_cbt=False, hooks=plan)
    try:
        assert [(h.name, h.phase, h.exit_code, h.warning) for h in prepared.hooks] == [
            ("flush", "preSnapshot", 0, ""),
            ("thaw", "postSnapshot", 0, ""),
        ]
        vm = vc.call(lambda si: vm_record(si, lab_vm.moref))
        snap = next(s for s in vm.our_snapshots if s.moref == prepared.snapshot.moref)
        created = datetime.fromisoformat(snap.created)
    finally:
        finish(vc, lab_vm.moref, "uid-hooks-ok")
    calls = vsim.guest_processes(lab_vm.moref)[before:]
    assert [(c.program, c.args, c.user, c.exit_code) for c in calls] == [
        (SH, ("-c", 'echo "flushed $VMGUARD_LAB_VM" > marker'), creds.username, 0),
        (SH, ("-c", "echo thawed >> marker"), creds.username, 0),
    ]
    pre_end = calls[0].end_time
    assert pre_end is not None
    assert pre_end <= created <= calls[1].start_time
    marker = guest_dir(lab, lab_vm.moref) / "marker"
    assert marker.read_text() == f"flushed {lab_vm.moref}\nthawed\n"
    assert our_snapshots(vc, lab_vm.moref) == []


def test_failing_pre_hook_fails_the_backup_and_leaves_no_snapshot(
    vc: Any, vsim: VSimControl, repo: Any, lab_vm: VSimVM, creds: GuestCredentials
) -> None:
    plan = HookPlan(
        creds,
        pre=(sh("flush-db", "exit 7"), sh("never", "exit 0")),
        post=(sh("thaw-db", "exit 0"),),
    )
    before = len(vsim.guest_processes(lab_vm.moref))
    with pytest.raises(HookFailed, match=r"preSnapshot hook 'flush-db' failed: exit code 7"):
        prepare(vc, repo, lab_vm.moref, "uid-hooks-fail", enable_cbt=False, hooks=plan)
    assert our_snapshots(vc, lab_vm.moref) == []
    calls = vsim.guest_processes(lab_vm.moref)[before:]
    # "never" did not run; the post hook ran to undo what the pre hooks did.
    assert [(c.args[1], c.exit_code) for c in calls] == [("exit 7", 7), ("exit 0", 0)]


def test_continue_records_a_warning_and_takes_the_snapshot(
    vc: Any, repo: Any, lab_vm: VSimVM, creds: GuestCredentials
) -> None:
    plan = HookPlan(creds, pre=(sh("optional", "exit 3", on_error="continue"),))
    prepared = prepare(vc, repo, lab_vm.moref, "uid-hooks-cont", enable_cbt=False, hooks=plan)
    try:
        (result,) = prepared.hooks
        assert result.exit_code == 3
        assert "'optional'" in result.warning and "exit code 3" in result.warning
        assert [s.moref for s in our_snapshots(vc, lab_vm.moref)] == [prepared.snapshot.moref]
    finally:
        finish(vc, lab_vm.moref, "uid-hooks-cont")
    assert our_snapshots(vc, lab_vm.moref) == []


def test_hook_over_its_timeout_is_terminated(
    vc: Any, vsim: VSimControl, repo: Any, lab_vm: VSimVM, creds: GuestCredentials
) -> None:
    plan = HookPlan(creds, pre=(Hook("hang", "/bin/sleep", ("600",), timeout=1.0),))
    before = len(vsim.guest_processes(lab_vm.moref))
    with pytest.raises(HookFailed, match=r"'hang' failed: timed out after 1 s and was terminated"):
        prepare(vc, repo, lab_vm.moref, "uid-hooks-timeout", enable_cbt=False, hooks=plan)
    assert our_snapshots(vc, lab_vm.moref) == []
    (call,) = vsim.guest_processes(lab_vm.moref)[before:]
    assert call.terminated
    # SIGKILL: the guest reports 128 + 9 once the process is gone.
    for _ in range(100):
        if call.exit_code is not None:
            break
        time.sleep(0.05)
        (call,) = vsim.guest_processes(lab_vm.moref)[before:]
    assert call.exit_code == 137


def test_wrong_guest_password_is_refused_and_never_shown(
    vc: Any,
    vsim: VSimControl,
    repo: Any,
    lab_vm: VSimVM,
    creds: GuestCredentials,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = GuestCredentials(creds.username, "not-the-guest-password-" + creds.password[:4])
    plan = HookPlan(wrong, pre=(sh("flush", "exit 0"),), post=(sh("thaw", "exit 0"),))
    before = len(vsim.guest_processes(lab_vm.moref))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(GuestLoginError, match="InvalidGuestLogin") as info:
        prepare(vc, repo, lab_vm.moref, "uid-hooks-login", enable_cbt=False, hooks=plan)
    assert our_snapshots(vc, lab_vm.moref) == []
    for text in (str(info.value), repr(info.value), repr(wrong), caplog.text):
        assert wrong.password not in text
        assert creds.password not in text
    (call,) = vsim.guest_processes(lab_vm.moref)[before:]
    assert (call.fault, call.pid, call.user) == ("InvalidGuestLogin", 0, creds.username)


def test_failing_post_hook_removes_our_snapshot(
    vc: Any, vsim: VSimControl, repo: Any, lab_vm: VSimVM, creds: GuestCredentials
) -> None:
    plan = HookPlan(creds, post=(sh("thaw-db", "exit 4"),))
    with pytest.raises(HookFailed, match=r"postSnapshot hook 'thaw-db' failed: exit code 4"):
        prepare(vc, repo, lab_vm.moref, "uid-hooks-postfail", enable_cbt=False, hooks=plan)
    assert our_snapshots(vc, lab_vm.moref) == []


def test_post_hooks_run_when_the_snapshot_fails(
    vc: Any, vsim: VSimControl, repo: Any, lab_vm: VSimVM, creds: GuestCredentials
) -> None:
    vsim.set_faults(lab_vm.moref, quiesce_fault=True)
    plan = HookPlan(creds, pre=(sh("freeze", "exit 0"),), post=(sh("thaw", "exit 0"),))
    before = len(vsim.guest_processes(lab_vm.moref))
    with pytest.raises(PermanentError, match="quiescing"):
        prepare(
            vc,
            repo,
            lab_vm.moref,
            "uid-hooks-snapfail",
            enable_cbt=False,
            quiesce=True,
            crash_consistent_fallback=False,
            hooks=plan,
        )
    assert our_snapshots(vc, lab_vm.moref) == []
    calls = vsim.guest_processes(lab_vm.moref)[before:]
    assert [(c.args[1], c.exit_code) for c in calls] == [("exit 0", 0), ("exit 0", 0)]


def test_one_process_backup_runs_the_hooks(
    vc: Any,
    vsim: VSimControl,
    repo: Any,
    locator: Any,
    lab: Any,
    lab_vm: VSimVM,
    creds: GuestCredentials,
) -> None:
    plan = HookPlan(creds, pre=(sh("flush", "echo one-process > marker"),))
    result = backup_vm(vc, repo, lab_vm.moref, locator, BackupOptions(transport="nbd", hooks=plan))
    assert [(h.name, h.exit_code) for h in result.hooks] == [("flush", 0)]
    assert (guest_dir(lab, lab_vm.moref) / "marker").read_text() == "one-process\n"
    assert [a.archive_id for a in repo.list_archives()] == [result.manifest.archive_id]
    assert our_snapshots(vc, lab_vm.moref) == []
