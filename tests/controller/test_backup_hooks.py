"""The policy's guest hooks through the VMGuardBackup controller, against the lab guest.

- the guest credentials Secret is missing: the backup waits with the ``HooksRan``
  condition ``GuestCredentialsMissing`` (no crash loop); once the Secret exists the
  hooks run (a pre hook with onError=continue that fails, a post hook that succeeds),
  the backup completes with ``HooksRan`` reason ``HookWarning`` naming the hook and its
  exit code, and the archive restores bit-exact;
- a pre hook with onError=fail that fails: the backup is Failed with reason
  ``HookFailed``, the hook's name and exit code in the message, and no snapshot left;
- the guest password is in no status and no line of the operator's log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.controller import objects
from tests.controller.backup_helpers import (
    create_backup,
    data_vm,
    disk_hashes,
    no_snapshot_left,
    open_repo,
    restored_hashes,
    wait_done,
)

from vmguard_lab.procs import eventually

pytestmark = pytest.mark.lab


def _hooks(pre: dict[str, Any], post: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"guestCredentialsSecretRef": {"name": "guest"}, "preSnapshot": [pre]}
    if post:
        out["postSnapshot"] = [post]
    return out


def test_hooks_run_in_a_backup_and_their_outcome_is_a_condition(
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_state: dict[str, Any],
    lab_vcenter: str,
    lab_repository: str,
    s3_bucket: dict[str, Any],
    start_operator: Any,
    tmp_path: Path,
) -> None:
    guest = lab_state["vsphere"]
    with data_vm(vc, vsim, image_factory, tmp_path) as vm:
        pre = {"name": "flush-db", "command": "/bin/sh", "args": ["-c", "exit 3"]}
        objects.create_policy(
            kube_api,
            namespace,
            "hooked",
            selector={"names": [vm.name]},
            paused=True,
            hooks=_hooks(
                {**pre, "onError": "continue"},
                {"name": "thaw-db", "command": "/bin/sh", "args": ["-c", "echo ok > thawed"]},
            ),
        )
        objects.create_policy(
            kube_api,
            namespace,
            "strict",
            selector={"names": ["no-such-vm"]},
            paused=True,
            hooks=_hooks({**pre, "timeout": "30s"}),
        )
        expected = disk_hashes(vsim, vm.moref)
        proc = start_operator()
        create_backup(
            kube_api, namespace, "hooked", {"moref": vm.moref}, policyRef={"name": "hooked"}
        )

        def waiting() -> dict[str, Any] | None:
            obj = objects.get(kube_api, namespace, "vmguardbackups", "hooked")
            cond = objects.condition(obj, "HooksRan")
            return cond if cond.get("reason") == "GuestCredentialsMissing" else None

        cond = eventually(waiting, timeout=120, what="HooksRan GuestCredentialsMissing")
        assert cond["status"] == "False" and f"{namespace}/guest" in cond["message"]
        objects.secret(
            kube_api,
            namespace,
            "guest",
            {"username": guest["guest_username"], "password": guest["guest_password"]},
        )
        obj = wait_done(kube_api, namespace, "hooked")
        status = obj["status"]
        assert status["phase"] == "Completed", status.get("error")
        ran = objects.condition(obj, "HooksRan")
        assert (ran["status"], ran["reason"]) == ("True", "HookWarning")
        assert "'flush-db'" in ran["message"] and "exit code 3" in ran["message"]
        assert "thaw-db: exit code 0" in ran["message"]
        no_snapshot_left(vc, vm.moref)
        assert restored_hashes(open_repo(s3_bucket), status["archiveId"], tmp_path) == expected

        create_backup(
            kube_api, namespace, "strict", {"moref": vm.moref}, policyRef={"name": "strict"}
        )
        obj = wait_done(kube_api, namespace, "strict")
        status = obj["status"]
        assert status["phase"] == "Failed"
        assert status["error"]["reason"] == "HookFailed"
        assert "'flush-db'" in status["error"]["message"]
        assert "exit code 3" in status["error"]["message"]
        assert objects.condition(obj, "HooksRan")["reason"] == "HookFailed"
        no_snapshot_left(vc, vm.moref)
        calls = vsim.guest_processes(vm.moref)
        assert [c.args[-1] for c in calls[-3:]] == ["exit 3", "echo ok > thawed", "exit 3"]
        proc.stop()
        for text in (
            proc.log.read_text(),
            repr(objects.get(kube_api, namespace, "vmguardbackups", "hooked")),
        ):
            assert guest["guest_password"] not in text
