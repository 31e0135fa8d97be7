"""``vmguard proxy``: parsing, the request read from status, errors, log lines (no lab)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from vmguard.cli import main as cli
from vmguard.errors import AuthenticationError, ConfigError, RetryableError, VMNotFoundError
from vmguard.proxy.backup import failure, request_from
from vmguard.store import ArchiveManifest, VmIdentity
from vmguard.store.lineage import decide_mode

pytestmark = pytest.mark.unit

OBJ = {
    "metadata": {"uid": "u-1", "name": "b", "namespace": "ns"},
    "status": {
        "vm": {"moref": "vm-7"},
        "vcenter": "lab",
        "snapshot": {"moref": "snapshot-9", "removed": False},
        "modeRequested": "incremental",
        "parentArchiveId": "a-1",
        "modeReason": "incremental from a-1",
        "disks": [{"key": 2000, "backing": "[ds] vm/disk.vmdk"}],
    },
}


def test_proxy_command_parses() -> None:
    args = cli.build_parser().parse_args(["proxy", "backup", "--namespace", "n", "--name", "b"])
    assert (args.cmd, args.proxy_cmd, args.namespace, args.name) == ("proxy", "backup", "n", "b")


def test_request_from_status() -> None:
    req = request_from(OBJ, {"VMGUARD_TRANSPORT": "nbd"})
    assert (req.vm_moref, req.snapshot_moref, req.backup_uid, req.parent) == (
        "vm-7",
        "snapshot-9",
        "u-1",
        "a-1",
    )
    assert req.transport == "nbd" and req.vcenter == "lab" and req.mode_reason == ""
    assert req.backings == {2000: "[ds] vm/disk.vmdk"}
    # The manifest names its VMGuardBackup, so catalog sync can rebuild it from the bucket.
    assert req.labels == {"vmguard.io/namespace": "ns", "vmguard.io/vmbackup": "b"}
    with_policy = {**OBJ, "spec": {"policyRef": {"name": "gold"}}}
    assert request_from(with_policy, {}).labels["vmguard.io/policy"] == "gold"
    full = {**OBJ, "status": {**OBJ["status"], "modeRequested": "full", "modeReason": "asked"}}
    req = request_from(full, {})
    assert req.parent is None and req.mode_reason == "asked" and req.transport == "auto"
    with pytest.raises(ConfigError, match="no snapshot yet"):
        request_from({"metadata": {"uid": "u"}, "status": {}}, {})


def test_failure_reasons_and_retryability() -> None:
    assert failure(VMNotFoundError("x"))["reason"] == "VMNotFound"
    assert failure(AuthenticationError("k"))["retryable"] is False
    assert failure(RetryableError("s3 down"))["retryable"] is True
    assert failure(OSError("EIO")) == {
        "reason": "TransferFailed",
        "message": "OSError: EIO",
        "retryable": True,
    }


def test_mode_decision() -> None:
    when = datetime(2025, 1, 1, tzinfo=UTC)
    parent = ArchiveManifest("a-1", VmIdentity("vc:1"), (), when, when)
    assert (decide_mode(None).mode, decide_mode(None).reason) == ("full", "first backup of this VM")
    inc = decide_mode(parent)
    assert (inc.mode, inc.parent) == ("incremental", "a-1")
    assert decide_mode(parent, "full").parent is None
    assert decide_mode(parent, "auto", full_every=3, since_full=1).mode == "incremental"
    every = decide_mode(parent, "auto", full_every=3, since_full=2)
    assert (every.mode, every.reason) == ("full", "fullEvery 3 reached")


def test_a_restore_proxy_logs_what_it_wrote() -> None:
    from vmguard.proxy.restore import written_summary

    disks = {"disks": [{"sourceKey": 2000, "bytesWritten": 7}, {"sourceKey": 2001}]}
    assert written_summary(disks) == "2 disk(s), 7 bytes"
    assert written_summary({"filesRestored": 3, "bytesRestored": 12}) == "3 file(s), 12 bytes"
    assert written_summary({}) == "0 disk(s), 0 bytes"
