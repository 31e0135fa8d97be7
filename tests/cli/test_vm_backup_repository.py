"""``vmguard vm backup`` with a mistyped ``--repo`` fails and creates nothing: no
repository at the typo, no snapshot on the VM, nothing in the real repository. Run as
a user runs it: a separate process against the lab's simulator and MinIO.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.engine.cli import Cli
from tests.vsphere.helpers import our_snapshots, pick_vm

from vmguard.vsphere.session import Endpoint
from vmguard_lab.vsim import VSimControl

pytestmark = pytest.mark.lab

TAKEN: set[str] = set()


def test_vm_backup_to_a_mistyped_repository_fails_and_creates_none(
    vc: Any,
    vc_endpoint: Endpoint,
    vsim: VSimControl,
    minio_client: Any,
    s3_bucket: dict[str, Any],
    tmp_path: Path,
) -> None:
    real = Cli.for_bucket(s3_bucket, "prod", None)
    assert real.run("repo", "init").returncode == 0
    typo = Cli.for_bucket(s3_bucket, "prdo", None)
    typo.env.update(VMGUARD_VC_USER=vc_endpoint.username, VMGUARD_VC_PASSWORD=vc_endpoint.password)
    lab_vm = pick_vm(vsim, TAKEN)
    assert vc_endpoint.ca_file
    done = typo.run(
        "vm", "backup", lab_vm.name, "--vcenter", vc_endpoint.url,
        "--vcenter-ca-file", vc_endpoint.ca_file, "--locator", "lab",
        check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "prdo" in done.stderr and "repo init" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    bucket = s3_bucket["bucket"]
    assert list(minio_client.list_objects(bucket, prefix="prdo/", recursive=True)) == []
    assert our_snapshots(vc, lab_vm.moref) == []
    assert real.run("repo", "ls", "-o", "json").stdout.count("archive_id") == 0
