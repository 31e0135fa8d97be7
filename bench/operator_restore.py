"""A VMGuardRestore to a new VM through the operator, timed and split (issue 16 item 6).

    make bench-operator
    # or: PYTHONPATH=operator python -m pytest -p tests.conftest -p tests.controller.conftest \
    #         bench/operator_restore.py -q -s -o addopts=

Not a test: it asserts nothing about time and prints one row and its split. It borrows
the test suite's lab fixtures (the lab's apiserver, node agent, vCenter simulator and
MinIO; an operator process started as the controller tests start it): a 2-disk VM of
the simulator gets the bench's mixed content on both disks (1 GiB and 512 MiB), is backed
up (untimed, as ``tests/controller/restore_helpers.completed_backup`` does: a Completed
VMGuardBackup naming a real archive), then a VMGuardRestore ``newVM`` is created and
followed to Completed. The split, from this process's clock (polling the API every
50 ms) and the proxy's log (its lines carry milliseconds; same machine, same clock):

- **operator: checks and VM creation** — the VMGuardRestore created → its Job seen
  (the source and target checked, the VM created with its empty disks, the Job made;
  the operator was started, and answered on /metrics, before the restore was created);
- **Job start** — the Job seen → the proxy's ``writing N disk(s)`` line (pod scheduled
  and started by the node agent, interpreter and imports, the VMGuardRestore and the
  archive read);
- **data** — that line → the proxy's ``written`` line (the disks restored, in parallel);
- **completion** — that line → phase Completed seen (the result patched, the Job's end
  noticed by the operator, the restore finished).
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.controller import objects
from tests.controller.restore_helpers import (
    completed_backup,
    create_restore,
    destroy_vm,
    encrypted_repository,
)
from tests.controller.scrape import scrape
from tests.vsphere.helpers import borrowed

from mover import GiB, MiB, mixed_spec
from vmguard.api.kinds import RESTORE
from vmguard_lab.procs import eventually
from vmguard_lab.vsim import LabDiskLocator, VSimControl

pytestmark = [
    pytest.mark.lab,
    pytest.mark.operator_controllers("vcenters,policies,backups,restores"),
]

TAKEN: set[str] = set()
_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ \S+ (.*)$", re.M)


def _log_time(log: str, pattern: str) -> float:
    """Epoch seconds of the first proxy log line whose message matches ``pattern``."""
    for stamp, message in _LINE.findall(log):
        if re.search(pattern, message):
            local = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")
            return local.timestamp()
    raise AssertionError(f"no proxy log line matches {pattern!r}:\n{log[-2000:]}")


def test_operator_restore_of_a_two_disk_vm(
    kube_api: Any,
    namespace: str,
    vc: Any,
    vsim: VSimControl,
    s3_bucket: dict[str, Any],
    lab_vcenter: str,
    image_factory: Any,
    start_operator: Any,
    tmp_path: Path,
) -> None:
    repo = encrypted_repository(kube_api, namespace, s3_bucket)
    locator = LabDiskLocator(vsim)
    with borrowed(vc, vsim, TAKEN, tmp_path, disks=2, any_power=True) as lab_vm:
        sizes = []
        for n, disk in enumerate(lab_vm.disks[:2]):
            size = min(disk.capacity, GiB) // (64 * MiB) * 64 * MiB
            image = image_factory.build(mixed_spec(size), 20 + n, tmp_path / f"d{n}.img")
            vsim.put_image(lab_vm.moref, disk.key, str(image.path))
            sizes.append(image.size)
        completed_backup(kube_api, namespace, "bench-src", vc, repo, lab_vm.moref, locator)
        operator = start_operator()
        # Its /metrics answers once its startup handlers ran: the restore is created after
        # that, so the operator's own start is not in the row.
        eventually(lambda: scrape(operator.metrics_port), timeout=120, what="operator up")
        batch, core = client.BatchV1Api(kube_api), client.CoreV1Api(kube_api)
        name = f"bench-{secrets.token_hex(3)}"
        target = {"newVM": {"name": name, "datastore": "LocalDS_0", "folder": "/DC0/vm"}}
        created = time.time()
        create_restore(kube_api, namespace, "bench-restore", "bench-src", target)
        job_seen = done_seen = 0.0
        deadline = created + 600
        while not done_seen and time.time() < deadline:
            now = time.time()
            if (
                not job_seen
                and batch.list_namespaced_job(
                    namespace, label_selector="vmguard.io/vmrestore=bench-restore"
                ).items
            ):
                job_seen = now
            obj = objects.get(kube_api, namespace, RESTORE.plural, "bench-restore")
            phase = (obj.get("status") or {}).get("phase")
            if phase in ("Completed", "Failed"):
                assert phase == "Completed", obj["status"]
                done_seen = now
            time.sleep(0.05)  # a bench's sampling interval, not a test's synchronisation
        assert done_seen, "the restore did not complete in 10 minutes"
        moref = obj["status"]["result"]["vm"]["moref"]
        destroy_vm(vc, moref)
    (pod,) = core.list_namespaced_pod(
        namespace, label_selector="vmguard.io/vmrestore=bench-restore"
    ).items
    log = core.read_namespaced_pod_log(pod.metadata.name, namespace)
    writing = _log_time(log, r"^writing \d+ disk")
    written = _log_time(log, r"^restore \S+ written")
    total = done_seen - created
    disk_mib = sum(sizes) / MiB
    split = [
        ("operator: checks and VM creation", job_seen - created),
        ("Job start (pod, process, reads)", writing - job_seen),
        ("data (2 disks in parallel)", written - writing),
        ("completion (result, Job end, phase)", done_seen - written),
    ]
    lines = [
        "",
        f"| run | seconds | MiB/s of disk | note |\n|---|---:|---:|---|\n"
        f"| operator restore, new VM, 2 disks ({disk_mib:.0f} MiB) | {total:.1f} |"
        f" {disk_mib / total:.0f} | sampled every 50 ms |",
        "",
        "| part | seconds | share |",
        "|---|---:|---:|",
        *(f"| {part} | {sec:.2f} | {sec / total:.0%} |" for part, sec in split),
    ]
    print("\n".join(lines))
