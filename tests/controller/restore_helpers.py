"""Source backups for VMGuardRestore tests, made without the VMGuardBackup controller.

VMGuardBackups are made to work elsewhere; these tests need Completed ones now. So the
one-process backup (:func:`vmguard.vm.backup.backup_vm`, real simulator, nbdkit and
MinIO) writes a real archive into the namespace's repository, and a VMGuardBackup object is
created and its status patched to Completed with that archive — what the VMGuardBackup
controller will do. No VMGuardBackup controller runs in these tests.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client
from pyVmomi import vim
from tests.controller import objects

from vmguard.api.kinds import BACKUP
from vmguard.store import ArchiveManifest, MasterKey, Repository, ScryptParams
from vmguard.store.backend.s3 import S3Backend
from vmguard.vm.backup import BackupOptions, backup_vm
from vmguard.vsphere.inventory import find_vm
from vmguard.vsphere.session import wait_for

MASTER_KEY = "restore tests master key, canary 7c1e"
REPO_PREFIX = "repo"


def encrypted_repository(kube_api: Any, ns: str, bucket: dict[str, Any]) -> Repository:
    """A VMGuardRepository ``repo`` (encrypted, under :data:`REPO_PREFIX`) and its store."""
    objects.create_repository(kube_api, ns, "repo", bucket, key=MASTER_KEY, prefix=REPO_PREFIX)
    return init_store(bucket)


def init_store(bucket: dict[str, Any]) -> Repository:
    """The store of such a VMGuardRepository, created as its controller would."""
    backend = S3Backend(
        bucket["endpoint"],
        bucket["bucket"],
        access_key=bucket["access_key"],
        secret_key=bucket["secret_key"],
        prefix=REPO_PREFIX,
        secure=False,
    )
    return Repository.init(
        backend, master_key=MasterKey(MASTER_KEY.encode()), kdf=ScryptParams(n=2**10)
    )


def completed_backup(
    kube_api: Any,
    ns: str,
    name: str,
    vc: Any,
    repo: Repository,
    vm_moref: str,
    locator: Any,
) -> ArchiveManifest:
    """Back ``vm_moref`` up and make VMGuardBackup ``name`` say Completed with that archive."""
    done = backup_vm(vc, repo, vm_moref, locator, BackupOptions(transport="nbd", vcenter="lab"))
    manifest = done.manifest
    objects.create(
        kube_api,
        ns,
        "vmguardbackups",
        "VMGuardBackup",
        name,
        {
            "vm": {"moref": vm_moref},
            "vcenterRef": {"name": "lab"},
            "repositoryRef": {"name": "repo"},
        },
    )
    patch_backup_status(
        kube_api,
        ns,
        name,
        {
            "phase": "Completed",
            "archiveId": manifest.archive_id,
            "repository": "repo",
            "vcenter": "lab",
            "vm": {"moref": vm_moref, "name": manifest.vm.name},
        },
    )
    return manifest


def patch_backup_status(kube_api: Any, ns: str, name: str, status: dict[str, Any]) -> None:
    objects.patch_status(kube_api, ns, BACKUP.plural, name, status)


def create_restore(kube_api: Any, ns: str, name: str, backup: str, target: dict[str, Any]) -> None:
    objects.create(
        kube_api,
        ns,
        "vmguardrestores",
        "VMGuardRestore",
        name,
        {"source": {"backupRef": {"name": backup}}, "target": target},
    )


def restore_jobs(kube_api: Any, ns: str, name: str) -> list[Any]:
    jobs = client.BatchV1Api(kube_api).list_namespaced_job(
        ns, label_selector=f"vmguard.io/vmrestore={name}"
    )
    return list(jobs.items)


def remove_disk(vc: Any, moref: str, key: int) -> None:
    """Detach and delete a disk a test restore added to a shared lab VM."""
    vm = vc.call(lambda si: find_vm(si, moref))
    dev = next(d for d in vm.config.hardware.device if d.key == key)
    change = vim.vm.device.VirtualDeviceSpec(
        operation="remove", fileOperation="destroy", device=dev
    )
    wait_for(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=[change])))


def destroy_vm(vc: Any, moref: str) -> None:
    vm = vc.call(lambda si: find_vm(si, moref))
    if vm.runtime.powerState == "poweredOn":
        wait_for(vm.PowerOffVM_Task())
    wait_for(vm.Destroy_Task())
