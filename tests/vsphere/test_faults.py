"""Faults around the snapshot cycle and the session: nothing of ours stays behind.

- a transfer that fails (nbdkit's error filter fails every read) leaves no snapshot and
  commits no archive;
- a proxy killed with SIGKILL mid-transfer leaves its snapshot; the orphan sweep
  removes it, and nbdkit went with its parent;
- *auto* falls back to nbd and says why; *hotadd* when impossible is refused clearly;
- a hot-add whose device cannot be read detaches the snapshot's disks from the proxy
  VM, removes the snapshot and commits no archive;
- a wrong thumbprint is refused with a clear message, the right one connects, and the
  password appears in no log line, error or CLI output.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import signal
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import nbd
import pytest
from tests.vsphere.helpers import our_snapshots, pick_vm, restored_afterwards

from vmguard.errors import ConfigError, PermanentError
from vmguard.transport.nbd import NbdkitServer
from vmguard.vm.backup import BackupOptions, backup_vm
from vmguard.vsphere.inventory import discover, vm_record
from vmguard.vsphere.session import Endpoint, VSphereSession, connect, disconnect
from vmguard.vsphere.snapshots import sweep_orphans
from vmguard.vsphere.tags import TagClient
from vmguard_lab.images import small_mixed
from vmguard_lab.vsim import LabDiskLocator, VSimControl, VSimVM

pytestmark = pytest.mark.lab

TAKEN: set[str] = set()


@pytest.fixture
def data_vm(vc: Any, vsim: VSimControl, image_factory: Any, tmp_path: Path) -> Iterator[VSimVM]:
    lab_vm = pick_vm(vsim, TAKEN)
    with restored_afterwards(vc, vsim, lab_vm, tmp_path):
        image = image_factory.build(small_mixed(), 4, tmp_path / "mixed.img")
        vsim.put_image(lab_vm.moref, lab_vm.disks[0].key, str(image.path))
        yield vsim.vm(lab_vm.moref)


class FailingLocator(LabDiskLocator):
    """Serves the frozen disks through nbdkit's error filter: every read fails (EIO)."""

    def snapshot_disk(self, vm_moref: str, snapshot_moref: str, key: int, file_name: str) -> Any:
        frozen = {d.key: d for d in self.control.snapshot_disks(snapshot_moref)}
        return NbdkitServer(
            "file",
            [f"file={frozen[key].path}", "error-pread=EIO", "error-pread-rate=100%"],
            filters=["error"],
        )


def test_failed_transfer_leaves_no_snapshot_and_no_archive(
    vc: Any, vsim: VSimControl, repo: Any, data_vm: VSimVM
) -> None:
    with pytest.raises(nbd.Error, match=r"(?i)input/output error"):
        backup_vm(vc, repo, data_vm.moref, FailingLocator(vsim), BackupOptions(transport="nbd"))
    assert our_snapshots(vc, data_vm.moref) == []
    assert repo.list_archives() == []


def _nbdkit_children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid), "nbdkit"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_killed_proxy_leaves_a_snapshot_the_orphan_sweep_removes(
    vc: Any,
    vsim: VSimControl,
    vc_endpoint: Endpoint,
    s3_bucket: dict[str, Any],
    data_vm: VSimVM,
    lab_state: dict[str, Any],
) -> None:
    # A proxy in its own process, reading slowly (nbdkit's delay filter), killed mid-way.
    script = textwrap.dedent(
        f"""
        import os, sys
        from vmguard_lab.vsim import LabDiskLocator, VSimControl
        from vmguard.store import Repository
        from vmguard.store.backend import S3Backend
        from vmguard.transport.nbd import NbdkitServer
        from vmguard.vm.backup import BackupOptions, backup_vm
        from vmguard.vsphere.session import Endpoint, VSphereSession

        class Slow(LabDiskLocator):
            def snapshot_disk(self, vm, snap, key, file_name):
                frozen = {{d.key: d for d in self.control.snapshot_disks(snap)}}
                return NbdkitServer("file", [f"file={{frozen[key].path}}", "rdelay=2"],
                                    filters=["delay"])

        ep = Endpoint({vc_endpoint.url!r}, {vc_endpoint.username!r},
                      os.environ["VC_PASSWORD"], ca_file={vc_endpoint.ca_file!r})
        backend = S3Backend({s3_bucket["endpoint"]!r}, {s3_bucket["bucket"]!r},
                            access_key=os.environ["S3_ACCESS"], secret_key=os.environ["S3_SECRET"],
                            secure=False)
        repo = Repository.init(backend)
        backup_vm(VSphereSession(ep), repo, {data_vm.moref!r},
                  Slow(VSimControl({lab_state["vsphere"]["control_url"]!r})),
                  BackupOptions(transport="nbd", backup_uid="killed-proxy"))
        """
    )
    env = dict(
        os.environ,
        PYTHONPATH=str(Path(__file__).resolve().parents[2] / "operator"),
        VC_PASSWORD=vc_endpoint.password,
        S3_ACCESS=s3_bucket["access_key"],
        S3_SECRET=s3_bucket["secret_key"],
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 60
        while not _nbdkit_children(proc.pid):
            assert proc.poll() is None, "the proxy ended before its transfer started"
            assert time.monotonic() < deadline, "the proxy never started nbdkit"
            time.sleep(0.05)
        servers = _nbdkit_children(proc.pid)
        assert [s.backup_uid for s in our_snapshots(vc, data_vm.moref)] == ["killed-proxy"]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    # nbdkit exits with its parent; the snapshot stays until the sweep.
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{p}") for p in servers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(os.path.exists(f"/proc/{p}") for p in servers)
    assert [s.backup_uid for s in our_snapshots(vc, data_vm.moref)] == ["killed-proxy"]

    records = [r for r in vc.call(discover) if r.moref == data_vm.moref]
    result = sweep_orphans(vc, records, backup_running=lambda uid: False, max_age=timedelta(1))
    assert [(s.backup_uid, s.removed) for s in result.swept] == [("killed-proxy", True)]
    assert our_snapshots(vc, data_vm.moref) == []
    assert not vsim.vm(data_vm.moref).disks[0].file_name.endswith("-killed-proxy.vmdk")


def test_auto_falls_back_to_nbd_and_says_why(
    vc: Any, vsim: VSimControl, repo: Any, data_vm: VSimVM
) -> None:
    no_vm = LabDiskLocator(vsim, proxy_uuid="")
    result = backup_vm(vc, repo, data_vm.moref, no_vm, BackupOptions(transport="auto"))
    assert result.transport.transport == "nbd"
    assert "not a virtual machine" in result.transport.reason
    assert result.manifest.labels["transport"] == "nbd"
    assert "fell back to nbd" in result.manifest.labels["transport_reason"]
    unknown = LabDiskLocator(vsim, proxy_uuid="00000000-0000-0000-0000-000000000000")
    with pytest.raises(ConfigError, match="hot-add requested but impossible: no VM"):
        backup_vm(vc, repo, data_vm.moref, unknown, BackupOptions(transport="hotadd"))
    assert our_snapshots(vc, data_vm.moref) == []


class UnreadableDevice(LabDiskLocator):
    """Hot-add attaches for real, but the block device the proxy finds fails (EIO)."""

    def attached_device(self, proxy_moref: str, disk: Any) -> str:
        super().attached_device(proxy_moref, disk)  # the disk really is attached
        raise OSError(errno.EIO, "Input/output error", disk.file_name)


def test_a_failed_hotadd_read_detaches_and_leaves_no_snapshot(
    vc: Any, vsim: VSimControl, repo: Any, data_vm: VSimVM
) -> None:
    proxy = next(v for v in reversed(vsim.vms()) if v.moref != data_vm.moref and not v.template)
    before = [d.file_name for d in vsim.vm(proxy.moref).disks]
    bios_uuid = str(vc.call(lambda si: vm_record(si, proxy.moref)).bios_uuid)
    locator = UnreadableDevice(vsim, proxy_uuid=bios_uuid)
    with pytest.raises(OSError, match="Input/output error"):
        backup_vm(vc, repo, data_vm.moref, locator, BackupOptions(transport="hotadd"))
    assert [d.file_name for d in vsim.vm(proxy.moref).disks] == before
    assert our_snapshots(vc, data_vm.moref) == []
    assert repo.list_archives() == []


def _sha256_of_server(url: str) -> str:
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    der = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((host, int(port))))
    return hashlib.sha256(der).hexdigest()


def test_thumbprint_pinning_and_no_password_in_logs(
    vc_endpoint: Endpoint, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    password = vc_endpoint.password
    right = _sha256_of_server(vc_endpoint.url)
    wrong = Endpoint(vc_endpoint.url, vc_endpoint.username, password, thumbprint="ab" * 32)
    with pytest.raises(PermanentError) as refused:
        connect(wrong)
    message = str(refused.value)
    assert "thumbprint" in message and "not the pinned one" in message
    assert right in message.replace(":", "").lower(), "the message names the actual thumbprint"
    with pytest.raises(PermanentError, match="certificate not the pinned one"):
        TagClient(wrong)
    # Neither a CA nor a pin: the system trust store does not know the lab's CA.
    with pytest.raises(PermanentError, match="not trusted"):
        connect(Endpoint(vc_endpoint.url, vc_endpoint.username, password))

    pinned = Endpoint(vc_endpoint.url, vc_endpoint.username, password, thumbprint=right)
    si = connect(pinned)
    try:
        assert si.content.about.apiType == "VirtualCenter"
    finally:
        disconnect(si)
    colons = ":".join(right[i : i + 2] for i in range(0, len(right), 2)).upper()
    session = VSphereSession(
        Endpoint(vc_endpoint.url, vc_endpoint.username, password, thumbprint=colons)
    )
    try:
        assert session.call(discover)
        with TagClient(session.endpoint) as tags:
            assert tags.vm_tags()
    finally:
        session.close()
    with pytest.raises(PermanentError, match="refused the login"):
        connect(Endpoint(vc_endpoint.url, vc_endpoint.username, password + "x", thumbprint=right))

    # The CLI, end to end, with the password in its environment only.
    env = dict(
        os.environ,
        PYTHONPATH=str(Path(__file__).resolve().parents[2] / "operator"),
        VMGUARD_VC_USER=vc_endpoint.username,
        VMGUARD_VC_PASSWORD=password,
        VMGUARD_LOG_LEVEL="DEBUG",
    )
    cli = [sys.executable, "-m", "vmguard.cli", "vm", "ls", "--vcenter", vc_endpoint.url]
    ok = subprocess.run([*cli, "--thumbprint", right], env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and "web-" in ok.stdout, ok.stderr
    bad = subprocess.run([*cli, "--thumbprint", "cd" * 32], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "not the pinned one" in bad.stderr
    captured = capfd.readouterr()
    for text in (
        caplog.text,
        ok.stdout,
        ok.stderr,
        bad.stdout,
        bad.stderr,
        captured.out,
        captured.err,
    ):
        assert password not in text
    assert password not in repr(pinned) and password not in message
