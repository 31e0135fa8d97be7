"""A restore waits in its vCenter's admission queue like a backup (issue "Estate scale",
scope 1: every kind of proxy work goes through the queue; docs/admission.md).

The lab vCenter allows one NFC disk at a time. A backup runs and holds it (the operator
is parked after the snapshot, ``--stall snapshotted``); a restore to a new VM is
prepared and then waits, saying why (``Admitted=False``, its position) and with no Job;
the backup is deleted, the slot frees, the restore starts, completes, and the new VM's
disk equals the source disk at the backup. At every sample at most one piece of work
runs. Real apiserver, simulator, nbdkit, MinIO and a proxy Job run by the node agent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.controller import objects
from tests.controller.restore_helpers import (
    completed_backup,
    create_restore,
    destroy_vm,
    encrypted_repository,
    restore_jobs,
)
from tests.vsphere.helpers import borrowed, sha256_file

from vmguard.api import BACKUP_ACTIVE
from vmguard.api.kinds import BACKUP, RESTORE, VCENTER
from vmguard.store import Repository
from vmguard_lab.images import small_mixed
from vmguard_lab.procs import eventually
from vmguard_lab.vsim import LabDiskLocator, VSimControl, VSimVM

pytestmark = [
    pytest.mark.lab,
    pytest.mark.operator_controllers("vcenters,backups,restores"),
]

TAKEN: set[str] = set()


@pytest.fixture
def vc(lab_state: dict[str, Any]) -> Iterator[Any]:
    from vmguard.vsphere.session import Endpoint, VSphereSession

    vs = lab_state["vsphere"]
    session = VSphereSession(
        Endpoint(vs["sdk_url"], vs["username"], vs["password"], ca_file=vs["ca"])
    )
    yield session
    session.close()


@pytest.fixture
def source_vm(vc: Any, vsim: VSimControl, image_factory: Any, tmp_path: Path) -> Iterator[VSimVM]:
    with borrowed(vc, vsim, TAKEN, tmp_path, any_power=True) as lab_vm:
        mixed = image_factory.build(small_mixed(), 21, tmp_path / "src.img")
        vsim.put_image(lab_vm.moref, lab_vm.disks[0].key, str(mixed.path))
        yield vsim.vm(lab_vm.moref)


@pytest.fixture
def busy_vm(vc: Any, vsim: VSimControl, tmp_path: Path) -> Iterator[VSimVM]:
    with borrowed(vc, vsim, TAKEN, tmp_path) as lab_vm:
        yield lab_vm


def _running(kube_api: Any, ns: str) -> list[str]:
    """Backups and restores holding a slot now (a restore from admission to its Job's end)."""
    backups = [
        o["metadata"]["name"]
        for o in objects.items(kube_api, ns, BACKUP.plural)
        if (o.get("status") or {}).get("phase") in BACKUP_ACTIVE
    ]
    restores = [
        o["metadata"]["name"]
        for o in objects.items(kube_api, ns, RESTORE.plural)
        if (o.get("status") or {}).get("phase") == "Restoring"
    ]
    return backups + restores


def test_a_restore_waits_for_the_slot_a_backup_holds_then_restores_bit_exact(
    kube_api: Any,
    namespace: str,
    vc: Any,
    vsim: VSimControl,
    s3_bucket: dict[str, Any],
    lab_vcenter: str,
    source_vm: VSimVM,
    busy_vm: VSimVM,
    start_operator: Any,
) -> None:
    ns = namespace
    repo: Repository = encrypted_repository(kube_api, ns, s3_bucket)
    at_backup = {d.key: sha256_file(d.path) for d in source_vm.disks}
    completed_backup(kube_api, ns, "src", vc, repo, source_vm.moref, LabDiskLocator(vsim))
    objects.custom(kube_api).patch_namespaced_custom_object(
        objects.G, objects.V, ns, VCENTER.plural, lab_vcenter, {"spec": {"limits": {"nfcDisks": 1}}}
    )
    start_operator(stall="snapshotted")
    objects.create(
        kube_api,
        ns,
        BACKUP.plural,
        BACKUP.kind,
        "holder",
        {
            "vm": {"moref": busy_vm.moref},
            "vcenterRef": {"name": lab_vcenter},
            "repositoryRef": {"name": "repo"},
        },
    )
    objects.wait_phase(kube_api, ns, BACKUP.plural, "holder", set(BACKUP_ACTIVE), timeout=60)
    create_restore(
        kube_api,
        ns,
        "back",
        "src",
        {"newVM": {"name": f"queued-{ns}", "datastore": "LocalDS_0", "folder": "/DC0/vm"}},
    )

    def told() -> dict[str, Any] | None:
        obj = objects.get(kube_api, ns, RESTORE.plural, "back")
        return obj if (obj.get("status") or {}).get("queuePosition") else None

    waiting = eventually(told, timeout=60, what="the restore told why it waits")
    moref = waiting["status"]["result"]["vm"]["moref"]
    try:
        assert waiting["status"]["phase"] == "Pending"
        assert waiting["status"]["queuePosition"] == 1
        admitted = objects.condition(waiting, "Admitted")
        assert (admitted["status"], admitted["reason"]) == ("False", "ConcurrencyLimit")
        assert admitted["message"] == f"vCenter {lab_vcenter} has its 1 NFC disks in use (NBD)"
        assert restore_jobs(kube_api, ns, "back") == []
        assert _running(kube_api, ns) == ["holder"]

        objects.custom(kube_api).delete_namespaced_custom_object(
            objects.G, objects.V, ns, BACKUP.plural, "holder"
        )
        samples: list[list[str]] = []

        def done() -> dict[str, Any] | None:
            samples.append(_running(kube_api, ns))
            obj = objects.get(kube_api, ns, RESTORE.plural, "back")
            phase = (obj.get("status") or {}).get("phase")
            return obj if phase in ("Completed", "Failed") else None

        obj = eventually(done, timeout=120, what="the restore finished")
        assert obj["status"]["phase"] == "Completed", obj["status"]
        assert max(len(s) for s in samples) <= 1, samples
        assert ["back"] in samples, "the restore was never seen running"
        assert objects.condition(obj, "Admitted")["status"] == "True"
        assert "queuePosition" not in obj["status"] or obj["status"]["queuePosition"] is None
        restored = {
            d["sourceKey"]: sha256_file(vsim.disk(moref, d["key"]).path)
            for d in obj["status"]["result"]["disks"]
        }
        assert restored == at_backup
    finally:
        destroy_vm(vc, moref)
