"""``vmguard vm backup`` and ``vmguard vm restore`` as a user runs them, with no cluster:
separate processes against the lab's simulator, nbdkit and MinIO, credentials in the
environment only.

A VM's disk gets known content; a full backup over nbd, guest writes, an incremental
(auto transport, which picks hot-add: the CLI claims to run on another lab VM) that reads
only a little of the disk and leaves that VM's disks as they were; the incremental restored as a
new VM is bit-identical to the disk at that point; the full restored in place rolls
the writes back. A datastore that does not exist is refused before anything is made. The repository
``repo init`` made with the key file opens with it in ``vmguard vm`` (one key rule).
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any

import pytest

from tests.engine.cli import Cli
from tests.vsphere.helpers import our_snapshots, pick_vm, restored_afterwards
from tests.vsphere.helpers import sha256_file as sha256_of
from vmguard.vsphere import restore as vrestore
from vmguard.vsphere.inventory import vm_record
from vmguard.vsphere.session import Endpoint
from vmguard_lab.images import small_mixed
from vmguard_lab.vsim import VSimControl

pytestmark = pytest.mark.lab

TAKEN: set[str] = set()


def _archive(out: str) -> str:
    found = re.search(r"^archive (\S+)$", out, re.M)
    assert found, out
    return found.group(1)


def _bytes_read(out: str) -> int:
    return sum(int(n) for n in re.findall(r"read (\d+) B", out))


def test_vm_backup_and_restore_commands(
    vc: Any,
    vc_endpoint: Endpoint,
    vsim: VSimControl,
    image_factory: Any,
    s3_bucket: dict[str, Any],
    tmp_path: Path,
) -> None:
    lab_vm = pick_vm(vsim, TAKEN)
    disk = lab_vm.disks[0]
    with restored_afterwards(vc, vsim, lab_vm, tmp_path):
        image = image_factory.build(small_mixed(), 4, tmp_path / "mixed.img")
        vsim.put_image(lab_vm.moref, disk.key, str(image.path))
        capacity = vsim.disk(lab_vm.moref, disk.key).capacity
        at_full = sha256_of(vsim.disk(lab_vm.moref, disk.key).path)
        key_file = tmp_path / "master.key"
        # A passphrase with a leading blank, written with echo: the blank is part of the
        # key and the one trailing newline is not (format §4.3), for `vm` as for `repo`.
        key_file.write_text(f" {secrets.token_hex(32)}\n")
        cli = Cli.for_bucket(s3_bucket, "cli", key_file)
        cli.env.update(
            VMGUARD_VC_USER=vc_endpoint.username, VMGUARD_VC_PASSWORD=vc_endpoint.password
        )
        assert vc_endpoint.ca_file
        where = (
            "--vcenter",
            vc_endpoint.url,
            "--vcenter-ca-file",
            vc_endpoint.ca_file,
            "--locator",
            "lab",
        )

        # vm backup never creates a repository (a mistyped --repo must fail): init first.
        cli.run("repo", "init", "--encrypt")
        full = cli.run("vm", "backup", lab_vm.name, *where, "--transport", "nbd")
        assert re.search(r"^  mode +full ", full.stdout, re.M), full.stdout
        assert re.search(r"^  transport +nbd ", full.stdout, re.M), full.stdout
        full_id = _archive(full.stdout)
        # Progress on stderr, which is not a terminal here: plain lines in binary units.
        done_line = rf"^backup {re.escape(lab_vm.name)}: [\d.]+ [KMG]iB of [\d.]+ [KMG]iB \(100%\)"
        assert re.search(done_line, full.stderr, re.M), full.stderr

        for offset in (0, capacity // 3 + 4096, capacity - 512):  # guest writes
            vsim.write(lab_vm.moref, disk.key, offset, os.urandom(512))
        at_inc = sha256_of(vsim.disk(lab_vm.moref, disk.key).path)
        assert at_inc != at_full
        # The CLI runs "on" another lab VM (the locator claims its BIOS UUID): auto picks
        # hot-add, which attaches the snapshot's disk to that VM and detaches it again.
        proxy = pick_vm(vsim, TAKEN, any_power=True)
        proxy_uuid = vc.call(lambda si: vm_record(si, proxy.moref)).bios_uuid
        hot = (*where[:-1], f"lab:proxy={proxy_uuid}")
        inc = cli.run("vm", "backup", lab_vm.moref, *hot)
        assert re.search(r"^  mode +incremental ", inc.stdout, re.M), inc.stdout
        assert re.search(r"^  transport +hotadd ", inc.stdout, re.M), inc.stdout
        assert [d.key for d in vsim.vm(proxy.moref).disks] == [d.key for d in proxy.disks]
        assert 0 < _bytes_read(inc.stdout) <= capacity // 4, inc.stdout
        inc_id = _archive(inc.stdout)
        assert our_snapshots(vc, lab_vm.moref) == []

        listed = cli.run("repo", "ls", "--json")
        assert {full_id, inc_id} <= set(re.findall(r'"archive_id": "([^"]+)"', listed.stdout))

        name = f"vmguard-cli-{secrets.token_hex(3)}"
        bad = cli.run(
            "vm", "restore", inc_id, *where, "--new-name", name, "--datastore", "nope", check=False
        )
        assert bad.returncode == 1 and "no datastore named 'nope'" in bad.stderr, bad.stderr
        assert not [v for v in vsim.vms() if v.name == name], "nothing was created"
        made = cli.run("vm", "restore", inc_id, *where, "--new-name", name)
        found = re.search(rf"^restored {re.escape(inc_id)} as {name} \((\S+)\)$", made.stdout, re.M)
        assert found, made.stdout
        new_moref = found.group(1)
        restored_line = rf"^restore disk {disk.key}: [\d.]+ [KMG]iB of [\d.]+ [KMG]iB \(100%\)"
        assert re.search(restored_line, made.stderr, re.M), made.stderr
        try:
            new_vm = vsim.vm(new_moref)
            source = vsim.vm(lab_vm.moref)
            assert [d.capacity for d in new_vm.disks] == [d.capacity for d in source.disks]
            assert sha256_of(vsim.disk(new_moref, new_vm.disks[0].key).path) == at_inc
        finally:
            vrestore.destroy(vc, new_moref)

        back = cli.run("vm", "restore", full_id, *where, "--in-place", "--power-off")
        assert f"disk {disk.key}:" in back.stdout, back.stdout
        assert sha256_of(vsim.disk(lab_vm.moref, disk.key).path) == at_full

        for done in (full, inc, made, back):
            assert vc_endpoint.password not in done.stdout + done.stderr
            assert s3_bucket["secret_key"] not in done.stdout + done.stderr
