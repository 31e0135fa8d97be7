"""The VMGuardRestore controller end to end: the operator as a process, proxy Jobs run by the
lab node agent, the vSphere simulator, nbdkit and MinIO.

Source backups are made by the one-process backup and their VMGuardBackup objects patched
to Completed (tests/controller/restore_helpers.py): the VMGuardBackup controller does not
run in these tests. Every restore is checked by its bytes: a restored disk's sha256
equals the source disk's at the backup (nothing writes to it in between, so the
snapshot-time image is the live one), restored files equal the image's source tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.controller import objects
from tests.controller.restore_helpers import (
    MASTER_KEY,
    completed_backup,
    create_restore,
    destroy_vm,
    encrypted_repository,
    patch_backup_status,
    remove_disk,
    restore_jobs,
)
from tests.controller.scrape import scrape, value
from tests.vsphere.helpers import MiB, borrowed, sha256_file

from vmguard.engine.restore import restore_disk
from vmguard.errors import RestoreRejected
from vmguard.store import HOLE, Repository
from vmguard.store.names import chunk_name
from vmguard.transport.file import FileSink
from vmguard.vm.backup import BackupOptions, backup_vm
from vmguard.vsphere.vmconfig import capture_vm
from vmguard_lab.images import DiskImage, gpt_ext4, small_mixed
from vmguard_lab.procs import eventually
from vmguard_lab.vsim import LabDiskLocator, VSimControl, VSimVM

# completed_backup() commits an archive before it creates the VMGuardBackup that names it
# (a production backup's VMGuardBackup exists first), so catalog sync could recreate the
# archive's VMGuardBackup in between: this module runs the operator without it.
pytestmark = [
    pytest.mark.lab,
    pytest.mark.operator_controllers("vcenters,policies,backups,restores"),
]

TAKEN: set[str] = set()
R = "vmguardrestores"


@pytest.fixture(scope="module")
def vc(lab_state: dict[str, Any]) -> Iterator[Any]:
    from vmguard.vsphere.session import Endpoint, VSphereSession

    vs = lab_state["vsphere"]
    session = VSphereSession(
        Endpoint(vs["sdk_url"], vs["username"], vs["password"], ca_file=vs["ca"])
    )
    yield session
    session.close()


@pytest.fixture(scope="module")
def locator(vsim: VSimControl) -> LabDiskLocator:
    return LabDiskLocator(vsim)


@pytest.fixture
def repo(kube_api: Any, namespace: str, s3_bucket: dict[str, Any], lab_vcenter: str) -> Repository:
    return encrypted_repository(kube_api, namespace, s3_bucket)


def _hashes(vsim: VSimControl, moref: str) -> dict[int, str]:
    return {d.key: sha256_file(d.path) for d in vsim.vm(moref).disks}


@pytest.fixture
def two_disk_vm(vc: Any, vsim: VSimControl, image_factory: Any, tmp_path: Path) -> Iterator[VSimVM]:
    with borrowed(vc, vsim, TAKEN, tmp_path, disks=2, any_power=True) as lab_vm:
        first, second = lab_vm.disks[:2]
        ext4 = image_factory.build(gpt_ext4(), 11, tmp_path / "ext4.img")
        mixed = image_factory.build(small_mixed(), 12, tmp_path / "mixed.img")
        vsim.put_image(lab_vm.moref, first.key, str(ext4.path))
        vsim.put_image(lab_vm.moref, second.key, str(mixed.path))
        yield vsim.vm(lab_vm.moref)


def _completed(kube_api: Any, ns: str, name: str, timeout: float = 240) -> dict[str, Any]:
    obj = objects.wait_phase(kube_api, ns, R, name, {"Completed", "Failed"}, timeout=timeout)
    assert obj["status"]["phase"] == "Completed", obj["status"]
    return obj


def test_new_vm_from_a_backup_is_bit_identical(
    kube_api: Any,
    namespace: str,
    vc: Any,
    vsim: VSimControl,
    repo: Repository,
    locator: LabDiskLocator,
    two_disk_vm: VSimVM,
    s3_bucket: dict[str, Any],
    lab_state: dict[str, Any],
    operator_log: Path,
) -> None:
    vm = two_disk_vm
    at_backup = _hashes(vsim, vm.moref)
    completed_backup(kube_api, namespace, "web-1", vc, repo, vm.moref, locator)
    name = f"restored-{secrets.token_hex(3)}"
    create_restore(
        kube_api,
        namespace,
        "web-1-new",
        "web-1",
        {"newVM": {"name": name, "datastore": "LocalDS_0", "folder": "/DC0/vm", "powerOn": True}},
    )
    obj = _completed(kube_api, namespace, "web-1-new")
    status = obj["status"]
    moref = status["result"]["vm"]["moref"]
    try:
        made = vsim.vm(moref)
        assert made.name == name and made.power_state == "poweredOn"
        restored = {
            d["sourceKey"]: sha256_file(vsim.disk(moref, d["key"]).path)
            for d in status["result"]["disks"]
        }
        assert restored == at_backup
        source_cfg = vc.call(lambda si: capture_vm(si, vm.moref))
        new_cfg = vc.call(lambda si: capture_vm(si, moref))
        for attr in ("num_cpus", "memory_mb", "firmware", "guest_id"):
            assert getattr(new_cfg, attr) == getattr(source_cfg, attr), attr
        assert [d.capacity for d in new_cfg.disks] == [d.capacity for d in source_cfg.disks]
        assert status["progress"]["percent"] == 100
        assert objects.condition(obj, "Ready")["reason"] == "Completed"
        (job,) = restore_jobs(kube_api, namespace, "web-1-new")
        # Secrets reach the proxy as Secret key references only, never as values.
        spec = json.dumps(kube_api.sanitize_for_serialization(job))
        for canary in (MASTER_KEY, s3_bucket["secret_key"], lab_state["vsphere"]["password"]):
            assert canary not in spec
            assert canary not in json.dumps(obj)
    finally:
        destroy_vm(vc, moref)
    assert MASTER_KEY not in operator_log.read_text()
    assert s3_bucket["secret_key"] not in operator_log.read_text()


@pytest.fixture
def one_disk_vm(vc: Any, vsim: VSimControl, image_factory: Any, tmp_path: Path) -> Iterator[VSimVM]:
    """A powered-on VM whose disk holds the mixed-content image."""
    with borrowed(vc, vsim, TAKEN, tmp_path) as lab_vm:
        mixed = image_factory.build(small_mixed(), 13, tmp_path / "one.img")
        vsim.put_image(lab_vm.moref, lab_vm.disks[0].key, str(mixed.path))
        yield vsim.vm(lab_vm.moref)


def test_in_place_after_guest_writes_brings_the_backup_point_back(
    kube_api: Any,
    namespace: str,
    vc: Any,
    vsim: VSimControl,
    repo: Repository,
    locator: LabDiskLocator,
    one_disk_vm: VSimVM,
    operator_log: Path,
) -> None:
    vm = one_disk_vm
    at_backup = _hashes(vsim, vm.moref)
    completed_backup(kube_api, namespace, "db-1", vc, repo, vm.moref, locator)
    disk = vm.disks[0]
    for offset in (3 * MiB + 5, 20 * MiB, disk.capacity - 4096):
        vsim.write(vm.moref, disk.key, offset, os.urandom(4096))
    assert _hashes(vsim, vm.moref) != at_backup
    create_restore(kube_api, namespace, "db-1-back", "db-1", {"inPlace": {"confirm": True}})
    obj = _completed(kube_api, namespace, "db-1-back")
    assert _hashes(vsim, vm.moref) == at_backup
    status = obj["status"]
    assert status["result"]["vm"]["moref"] == vm.moref
    assert status["powerOnAfter"] is True, "the VM was on before the restore"
    assert vsim.vm(vm.moref).power_state == "poweredOn"
    (written,) = status["result"]["disks"]
    assert written["key"] == disk.key and 0 < written["bytesWritten"] < disk.capacity


def test_in_place_through_the_operator_makes_the_next_backup_a_full_scan(
    kube_api: Any,
    namespace: str,
    vc: Any,
    vsim: VSimControl,
    repo: Repository,
    lab_state: dict[str, Any],
    one_disk_vm: VSimVM,
    start_operator: Any,
    tmp_path: Path,
) -> None:
    """The proxy's in-place restore, through a locator that leaves CBT alone (as VDDK
    may), marks the VM before it writes: the next backup, whose parent was taken after
    the restored archive, scans instead of trusting its parent's change id."""
    control = lab_state["vsphere"]["control_url"]
    start_operator(extra_env={"VMGUARD_PROXY_LOCATOR": f"lab:{control},cbt=keep"})
    keep = LabDiskLocator(vsim, cbt="keep")
    vm, disk = one_disk_vm, one_disk_vm.disks[0]
    completed_backup(kube_api, namespace, "db-2", vc, repo, vm.moref, keep)
    vsim.write(vm.moref, disk.key, 8 * MiB, os.urandom(2 * MiB))
    later = backup_vm(vc, repo, vm.moref, keep, BackupOptions(transport="nbd", vcenter="lab"))
    assert later.mode == "incremental", later.mode_reason
    before = vsim.disk(vm.moref, disk.key).change_id
    create_restore(kube_api, namespace, "db-2-back", "db-2", {"inPlace": {"confirm": True}})
    _completed(kube_api, namespace, "db-2-back")
    assert vsim.disk(vm.moref, disk.key).change_id == before, "the restore moved CBT"

    after = backup_vm(vc, repo, vm.moref, keep, BackupOptions(transport="nbd", vcenter="lab"))
    assert _archived_hash(repo, after, disk.key, tmp_path) == sha256_file(
        vsim.disk(vm.moref, disk.key).path
    ), f"the backup after the restore ({after.mode_reason}) does not hold the restored disk"
    assert after.mode == "full-scan", after.mode_reason
    assert "in-place restore since the last backup" in after.reasons[disk.key]


def _archived_hash(repo: Repository, result: Any, key: int, tmp: Path) -> str:
    """sha256 of disk ``key`` as the archive holds it (restored into a fresh file)."""
    out = tmp / f"{result.manifest.archive_id}-{key}.img"
    sink = FileSink.create(out, result.manifest.disk(str(key)).length)
    try:
        restore_disk(repo, result.manifest, str(key), sink)
    finally:
        sink.close()
    return sha256_file(str(out))


def test_a_disk_attached_to_another_vm_is_bit_identical(
    kube_api: Any,
    namespace: str,
    vc: Any,
    vsim: VSimControl,
    repo: Repository,
    locator: LabDiskLocator,
    one_disk_vm: VSimVM,
    tmp_path: Path,
    operator_log: Path,
) -> None:
    source = one_disk_vm
    at_backup = _hashes(vsim, source.moref)[source.disks[0].key]
    completed_backup(kube_api, namespace, "app-1", vc, repo, source.moref, locator)
    with borrowed(vc, vsim, TAKEN, tmp_path) as other:
        from vmguard.vsphere import restore as vrestore

        vrestore.power(vc, other.moref, on=False)
        target = {
            "disks": [
                {
                    "source": {"label": source.disks[0].label},
                    "attachTo": {"vm": {"moref": other.moref}},
                }
            ]
        }
        create_restore(kube_api, namespace, "app-1-disk", "app-1", target)
        obj = _completed(kube_api, namespace, "app-1-disk")
        (written,) = obj["status"]["result"]["disks"]
        try:
            assert written["vm"] == other.moref and written["sourceKey"] == source.disks[0].key
            assert {d.key for d in vsim.vm(other.moref).disks} == {d.key for d in other.disks} | {
                written["key"]
            }
            assert sha256_file(vsim.disk(other.moref, written["key"]).path) == at_backup
        finally:
            remove_disk(vc, other.moref, written["key"])


@pytest.fixture
def ext4_vm(
    vc: Any, vsim: VSimControl, image_factory: Any, tmp_path: Path
) -> Iterator[tuple[VSimVM, DiskImage]]:
    """A VM whose disk holds a GPT disk with a FAT partition and an ext4 root (p2)."""
    with borrowed(vc, vsim, TAKEN, tmp_path) as lab_vm:
        image = image_factory.build(gpt_ext4(), 14, tmp_path / "ext4.img")
        vsim.put_image(lab_vm.moref, lab_vm.disks[0].key, str(image.path))
        yield vsim.vm(lab_vm.moref), image


def _files_of(image: DiskImage, number: int) -> dict[str, Any]:
    return {p: e for p, e in image.partition(number).manifest.items() if e.type == "file"}


def test_files_to_an_s3_prefix_equal_the_image_source_tree(
    kube_api: Any,
    namespace: str,
    vc: Any,
    vsim: VSimControl,
    repo: Repository,
    locator: LabDiskLocator,
    ext4_vm: tuple[VSimVM, DiskImage],
    s3_bucket: dict[str, Any],
    minio_client: Any,
    operator_log: Path,
) -> None:
    vm, image = ext4_vm
    completed_backup(kube_api, namespace, "fs-1", vc, repo, vm.moref, locator)
    disk = {"key": vm.disks[0].key}
    files = {"disk": disk, "partition": 2, "paths": ["/**"], "to": {"s3": {"prefix": "out/1"}}}
    create_restore(kube_api, namespace, "fs-1-files", "fs-1", {"files": files})
    obj = _completed(kube_api, namespace, "fs-1-files")
    result = obj["status"]["result"]
    assert result["location"] == f"s3://{s3_bucket['bucket']}/out/1"
    expected = _files_of(image, 2)
    symlinks = [e for e in image.partition(2).manifest.values() if e.type == "symlink"]
    assert result["filesRestored"] == len(expected) + len(symlinks)
    assert result["bytesRestored"] == sum(e.size for e in expected.values())
    bucket = s3_bucket["bucket"]
    for path, entry in expected.items():
        got = minio_client.get_object(bucket, f"out/1/p2/{path}")
        try:
            data = got.read()
            meta = got.headers
        finally:
            got.close()
            got.release_conn()
        assert hashlib.sha256(data).hexdigest() == entry.sha256, path
        assert int(meta["x-amz-meta-mtime-ns"]) == entry.mtime * 10**9, path
        assert int(meta["x-amz-meta-mode"], 8) == entry.mode, path
    assert obj["status"]["progress"]["percent"] == 100

    # A prefix inside the repository's own prefix is refused before any Job runs.
    inside = {"paths": ["/etc"], "to": {"s3": {"prefix": "repo/restored"}}}
    create_restore(kube_api, namespace, "fs-1-inside", "fs-1", {"files": inside})
    refused = objects.wait_phase(kube_api, namespace, R, "fs-1-inside", {"Failed"}, timeout=60)
    cond = objects.condition(refused, "TargetReady")
    assert (cond["status"], cond["reason"]) == ("False", "TargetInsideRepository")
    assert refused["status"]["error"]["reason"] == "TargetInsideRepository"
    assert restore_jobs(kube_api, namespace, "fs-1-inside") == []


@pytest.fixture
def lab_pvc(kube_api: Any, namespace: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A claim bound to a hostPath PersistentVolume over a fresh directory (lab only:
    the lab has no provisioner; real objects, bound by the real PV controller)."""
    core = client.CoreV1Api(kube_api)
    root = tmp_path / "pv"
    root.mkdir()
    pv_name = f"{namespace}-restored"
    core.create_persistent_volume(
        {
            "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": str(root)},
                "claimRef": {"namespace": namespace, "name": "restored"},
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": "restored"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "volumeName": pv_name,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    eventually(
        lambda: (
            core.read_namespaced_persistent_volume_claim("restored", namespace).status.phase
            == "Bound"
        ),
        timeout=60,
        what="claim bound",
    )
    yield "restored", root
    core.delete_persistent_volume(pv_name)


def test_files_to_a_pvc_equal_the_image_source_tree(
    kube_api: Any,
    namespace: str,
    vc: Any,
    vsim: VSimControl,
    repo: Repository,
    locator: LabDiskLocator,
    ext4_vm: tuple[VSimVM, DiskImage],
    lab_pvc: tuple[str, Path],
    operator_log: Path,
) -> None:
    vm, image = ext4_vm
    claim, root = lab_pvc
    completed_backup(kube_api, namespace, "fs-2", vc, repo, vm.moref, locator)
    files = {
        "disk": {"key": vm.disks[0].key},
        "paths": ["/**"],
        "to": {"pvc": {"claimName": claim, "path": "restores/today"}},
    }
    create_restore(kube_api, namespace, "fs-2-pvc", "fs-2", {"files": files})
    obj = _completed(kube_api, namespace, "fs-2-pvc")
    assert obj["status"]["result"]["location"] == f"pvc/{claim}:/restores/today"
    out = root / "restores" / "today"
    for number in (1, 2):  # no partition given: every file system of the disk
        for path, entry in _files_of(image, number).items():
            got = out / f"p{number}" / path
            assert sha256_file(str(got)) == entry.sha256, path
            assert got.stat().st_mtime_ns == entry.mtime * 10**9, path
    restored = obj["status"]["result"]["filesRestored"]
    assert restored >= len(_files_of(image, 1)) + len(_files_of(image, 2))


def test_bad_sources_and_a_taken_name_are_conditions_not_jobs(
    kube_api: Any,
    namespace: str,
    vc: Any,
    vsim: VSimControl,
    repo: Repository,
    locator: LabDiskLocator,
    one_disk_vm: VSimVM,
    start_operator: Any,
    tmp_path: Path,
) -> None:
    operator = start_operator()
    new_vm = {"newVM": {"name": f"never-{secrets.token_hex(3)}"}}
    create_restore(kube_api, namespace, "no-source", "does-not-exist", new_vm)
    objects.create(
        kube_api,
        namespace,
        "vmguardbackups",
        "VMGuardBackup",
        "running",
        {"vm": {"name": "x"}, "vcenterRef": {"name": "lab"}, "repositoryRef": {"name": "repo"}},
    )
    patch_backup_status(kube_api, namespace, "running", {"phase": "Transferring"})
    create_restore(kube_api, namespace, "not-yet", "running", new_vm)

    def reason(name: str, type_: str) -> str:
        obj = objects.get(kube_api, namespace, R, name)
        return str(objects.condition(obj, type_).get("reason", ""))

    eventually(lambda: reason("no-source", "SourceReady") == "SourceNotFound", what="no source")
    eventually(lambda: reason("not-yet", "SourceReady") == "SourceNotCompleted", what="running")
    for name in ("no-source", "not-yet"):
        obj = objects.get(kube_api, namespace, R, name)
        assert obj["status"]["phase"] == "Pending"
        assert objects.condition(obj, "Ready")["status"] == "False"
        reconciling = objects.condition(obj, "Reconciling")  # kstatus: in progress
        assert (reconciling.get("status"), reconciling.get("reason")) == ("True", "Pending")
        assert obj["status"].get("observedGeneration") == obj["metadata"]["generation"]
        assert restore_jobs(kube_api, namespace, name) == []

    # A backup that failed fails its restores; one that completes lets them go on.
    patch_backup_status(kube_api, namespace, "running", {"phase": "Failed"})
    failed = objects.wait_phase(kube_api, namespace, R, "not-yet", {"Failed"}, timeout=60)
    assert failed["status"]["error"]["reason"] == "SourceFailed"
    stalled = objects.condition(failed, "Stalled")  # kstatus: Failed, not in progress
    assert (stalled.get("status"), stalled.get("reason")) == ("True", "SourceFailed"), stalled
    assert objects.condition(failed, "Reconciling").get("status") == "False"

    # A new VM may not take the name of an existing one.
    completed_backup(kube_api, namespace, "ok-1", vc, repo, one_disk_vm.moref, locator)
    taken = {"newVM": {"name": one_disk_vm.name}}
    create_restore(kube_api, namespace, "name-taken", "ok-1", taken)
    refused = objects.wait_phase(kube_api, namespace, R, "name-taken", {"Failed"}, timeout=60)
    cond = objects.condition(refused, "TargetReady")
    assert (cond["status"], cond["reason"]) == ("False", "TargetExists")
    assert one_disk_vm.moref in cond["message"]
    assert restore_jobs(kube_api, namespace, "name-taken") == []
    assert [v.moref for v in vsim.vms() if v.name == one_disk_vm.name] == [one_disk_vm.moref]

    # kopf posts events from a queue of its own, after the status patch: wait for it.
    def evented() -> bool:
        events = client.CoreV1Api(kube_api).list_namespaced_event(namespace).items
        return any(
            e.reason == "TargetExists" and e.involved_object.name == "name-taken" for e in events
        )

    eventually(evented, timeout=30, what="a TargetExists event")
    # /metrics counts the two failed restores by reason (VmguardRestoreFailed fires on it).
    ns = {"namespace": namespace}

    def counted() -> Any:
        samples = scrape(operator.metrics_port)
        done = value(samples, "vmguard_restores_total", **ns, outcome="Failed")
        return samples if done == 2 else None

    samples = eventually(counted, timeout=30, what="the failed restores in /metrics")
    for why in ("SourceFailed", "TargetExists"):
        assert value(samples, "vmguard_restore_failures_total", **ns, reason=why) == 1
    assert operator.alive()


def test_operator_killed_while_restoring_makes_one_vm(
    kube_api: Any,
    namespace: str,
    vc: Any,
    vsim: VSimControl,
    repo: Repository,
    locator: LabDiskLocator,
    two_disk_vm: VSimVM,
    start_operator: Any,
) -> None:
    """Killed while the Job writes, and again in Finalizing (parked there, before the
    power-on): one VM, one Job, the disks bit-identical, and the VM powered on by the
    operator that finishes."""
    vm = two_disk_vm
    at_backup = _hashes(vsim, vm.moref)
    completed_backup(kube_api, namespace, "crash-1", vc, repo, vm.moref, locator)
    operator = start_operator()
    name = f"crash-{secrets.token_hex(3)}"
    target = {"newVM": {"name": name, "powerOn": True}}
    create_restore(kube_api, namespace, "crash-1-new", "crash-1", target)

    def restoring() -> bool:
        obj = objects.get(kube_api, namespace, R, "crash-1-new")
        phase = obj.get("status", {}).get("phase")
        assert phase not in ("Completed", "Failed"), "the restore ended before the kill"
        return phase == "Restoring"

    eventually(restoring, timeout=120, what="Restoring")
    operator.kill()
    operator = start_operator(stall_restore="finalizing")
    finalizing = objects.wait_phase(
        kube_api, namespace, R, "crash-1-new", {"Finalizing", "Completed", "Failed"}
    )
    assert finalizing["status"]["phase"] == "Finalizing", finalizing["status"]
    parked = finalizing["status"]["result"]["vm"]["moref"]
    assert vsim.vm(parked).power_state != "poweredOn", "powered on before Finalizing ran"
    operator.kill()
    start_operator()
    obj = _completed(kube_api, namespace, "crash-1-new")
    moref = obj["status"]["result"]["vm"]["moref"]
    try:
        assert moref == parked and vsim.vm(moref).power_state == "poweredOn"
        assert [v.moref for v in vsim.vms() if v.name == name] == [moref]
        assert len(restore_jobs(kube_api, namespace, "crash-1-new")) == 1
        restored = {
            d["sourceKey"]: sha256_file(vsim.disk(moref, d["key"]).path)
            for d in obj["status"]["result"]["disks"]
        }
        assert restored == at_backup
    finally:
        destroy_vm(vc, moref)


def test_preparing_twice_adopts_what_the_first_attempt_made(
    kube_api: Any,
    namespace: str,
    vc: Any,
    vsim: VSimControl,
    repo: Repository,
    locator: LabDiskLocator,
    one_disk_vm: VSimVM,
    tmp_path: Path,
) -> None:
    """What an operator killed between "create" and "record it" finds on its restart."""
    from vmguard.controller.restore import targets

    manifest = completed_backup(kube_api, namespace, "twice", vc, repo, one_disk_vm.moref, locator)
    uid = secrets.token_hex(8)
    name = f"twice-{uid[:6]}"
    first = targets.prepare_new_vm(vc, manifest, {"name": name}, uid)
    try:
        again = targets.prepare_new_vm(vc, manifest, {"name": name}, uid)
        assert again.vm == first.vm and again.disks == first.disks
        assert [v.moref for v in vsim.vms() if v.name == name] == [first.vm["moref"]]
        with pytest.raises(RestoreRejected) as refused:  # another restore: the name is taken
            targets.prepare_new_vm(vc, manifest, {"name": name}, secrets.token_hex(8))
        assert refused.value.reason == "TargetExists"
    finally:
        destroy_vm(vc, first.vm["moref"])

    with borrowed(vc, vsim, TAKEN, tmp_path) as other:
        from vmguard.vsphere import restore as vrestore

        vrestore.power(vc, other.moref, on=False)
        items = [
            {
                "source": {"key": one_disk_vm.disks[0].key},
                "attachTo": {"vm": {"moref": other.moref}},
            }
        ]
        made = targets.prepare_disks(vc, manifest, items, uid, None)
        try:
            assert targets.prepare_disks(vc, manifest, items, uid, None).disks == made.disks
            assert len(vsim.vm(other.moref).disks) == len(other.disks) + 1
        finally:
            remove_disk(vc, other.moref, made.disks[0]["key"])


def test_a_failed_new_vm_restore_destroys_the_half_made_vm(
    kube_api: Any,
    namespace: str,
    vc: Any,
    vsim: VSimControl,
    repo: Repository,
    locator: LabDiskLocator,
    one_disk_vm: VSimVM,
    s3_bucket: dict[str, Any],
    minio_client: Any,
    operator_log: Path,
) -> None:
    manifest = completed_backup(kube_api, namespace, "lost-1", vc, repo, one_disk_vm.moref, locator)
    index = repo.load_index(manifest, manifest.disks[0].key)
    lost = next(index[n] for n in range(len(index)) if index[n] != HOLE)
    minio_client.remove_object(s3_bucket["bucket"], f"repo/{chunk_name(lost)}")
    name = f"lost-{secrets.token_hex(3)}"
    create_restore(kube_api, namespace, "lost-1-new", "lost-1", {"newVM": {"name": name}})
    obj = objects.wait_phase(kube_api, namespace, R, "lost-1-new", {"Completed", "Failed"})
    error = obj["status"]["error"]
    assert obj["status"]["phase"] == "Failed", obj["status"]
    assert error["reason"] == "RepositoryDamaged", error
    assert lost.hex() in error["message"] and "was destroyed" in error["message"]
    assert [v for v in vsim.vms() if v.name == name] == []
    assert objects.condition(obj, "Ready")["reason"] == "RepositoryDamaged"
