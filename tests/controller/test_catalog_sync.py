"""Catalog sync end to end (issue #6's acceptance): the bucket alone rebuilds the catalog.

Two real backups of a lab VM (a full, then an incremental) are made by the operator;
then every VMGuardBackup object and vmguard's CRDs are deleted, the CRDs reinstalled,
the VCenter, VMGuardRepository and policy re-applied as a GitOps tool would, and a fresh
operator started: the VMGuardBackups come back from the repository, and so does the VM's
ProtectedVM with both points; a new VM restored from one has the disk bytes of the
backup. Then an archive is taken out of the repository: its VMGuardBackup is flagged,
and unflagged when it comes back.

Deleting CRDs reaches every namespace of the shared lab, so the CRDs are put back from
the same source as the session's fixture in a ``finally``, whatever happens.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.conftest import install_crds
from tests.controller import objects
from tests.controller.backup_helpers import (
    create_backup,
    data_vm,
    disk_hashes,
    no_snapshot_left,
    open_repo,
    wait_done,
)
from tests.controller.restore_helpers import create_restore, destroy_vm
from tests.vsphere.helpers import MiB, sha256_file

from vmguard.controller.kube.points import protected_vm_name
from vmguard.controller.repository.catalog import Placement, build_synced_backup, synced_name
from vmguard.store import names
from vmguard.store.prune import retire_archive
from vmguard_lab.procs import eventually

pytestmark = pytest.mark.lab

KINDS = [
    "vcenters",
    "vmguardrepositories",
    "vmprotectionpolicies",
    "vmguardbackups",
    "vmguardrestores",
    "protectedvms",
]
CRDS = [f"{plural}.{objects.G}" for plural in KINDS]
SYNCED = "vmguard.io/synced=true"
UID_LABEL = "vmguard.io/vmbackup-uid"


def reinstall_crds(kube_api: Any, lab: Any, kubectl: Path) -> None:
    """Delete vmguard's CRDs (and so every vmguard object in the lab), then install them
    again from the source the session's fixture uses — also when the deletion fails."""
    ext = client.ApiextensionsV1Api(kube_api)
    custom = objects.custom(kube_api)

    def installed() -> set[str]:
        return {c.metadata.name for c in ext.list_custom_resource_definition().items}

    try:
        # Uninstalling without an operator: nobody is left to release kopf's finalizers
        # (here also on objects earlier tests' operators left behind), so the admin does.
        for plural in KINDS:
            listed = custom.list_cluster_custom_object(objects.G, objects.V, plural)
            for obj in listed.get("items", []):
                if obj["metadata"].get("finalizers"):
                    custom.patch_namespaced_custom_object(
                        objects.G,
                        objects.V,
                        obj["metadata"]["namespace"],
                        plural,
                        obj["metadata"]["name"],
                        {"metadata": {"finalizers": None}},
                    )
        assert set(CRDS) <= installed()
        for crd in CRDS:
            ext.delete_custom_resource_definition(crd)
        eventually(lambda: not set(CRDS) & installed(), timeout=120, what="CRDs deleted")
    finally:
        install_crds(lab, kubectl)
    assert set(CRDS) <= installed()


def _spec_of(kube_api: Any, ns: str, plural: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = objects.get(kube_api, ns, plural, name)["spec"]
    return spec


def test_vmguardbackups_come_back_from_the_bucket_after_crds_are_reinstalled(
    lab: Any,
    kube_api: Any,
    kubectl: Path,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    s3_bucket: dict[str, Any],
    start_operator: Any,
    tmp_path: Path,
) -> None:
    ns = namespace
    objects.create_policy(kube_api, ns, "gold", selector={"names": ["catalog-none-*"]})
    with data_vm(vc, vsim, image_factory, tmp_path) as vm:
        # Two backups under the policy, made by the operator (no sweeps: no fail-safe);
        # the VMGuardRepository controller creates the repository they go into.
        first_operator = start_operator("--controllers", "backups,repositories")
        create_backup(kube_api, ns, "first", {"name": vm.name}, policyRef={"name": "gold"})
        full = wait_done(kube_api, ns, "first")["status"]
        assert full["phase"] == "Completed", full
        disk = vm.disks[0]
        vsim.write(vm.moref, disk.key, 5 * MiB + 3, secrets.token_bytes(30_000))
        at_inc = disk_hashes(vsim, vm.moref)
        create_backup(kube_api, ns, "second", {"moref": vm.moref}, policyRef={"name": "gold"})
        inc = wait_done(kube_api, ns, "second")["status"]
        assert inc["phase"] == "Completed" and inc["modeUsed"] == "incremental", inc
        archives = {"first": full["archiveId"], "second": inc["archiveId"]}

        # The cluster forgets: every VMGuardBackup, then the CRDs (and all vmguard objects).
        objects.custom(kube_api).delete_collection_namespaced_custom_object(
            objects.G, objects.V, ns, "vmguardbackups"
        )
        eventually(
            lambda: objects.items(kube_api, ns, "vmguardbackups") == [],
            what="VMGuardBackups deleted",
        )
        first_operator.stop()
        applied = {
            (plural, name): _spec_of(kube_api, ns, plural, name)
            for plural, name in [
                ("vcenters", lab_vcenter),
                ("vmguardrepositories", lab_repository),
                ("vmprotectionpolicies", "gold"),
            ]
        }
        reinstall_crds(kube_api, lab, kubectl)
        # GitOps applies the same manifests again (the Secrets stayed in the namespace).
        kinds = {
            "vcenters": "VCenter",
            "vmguardrepositories": "VMGuardRepository",
            "vmprotectionpolicies": "VMProtectionPolicy",
        }
        for (plural, name), spec in applied.items():
            objects.create(kube_api, ns, plural, kinds[plural], name, spec)
        assert objects.items(kube_api, ns, "vmguardbackups") == []

        def operator() -> Any:
            return start_operator(
                "--controllers",
                "catalog,backups,restores",
                extra_env={"VMGUARD_CATALOG_INTERVAL": "2"},
            )

        second_operator = operator()

        def synced() -> list[dict[str, Any]] | None:
            found = objects.items(kube_api, ns, "vmguardbackups", SYNCED)
            done = [b for b in found if b.get("status", {}).get("phase") == "Completed"]
            return done if len(done) == 2 else None

        back = {
            b["status"]["archiveId"]: b for b in eventually(synced, what="synced VMGuardBackups")
        }
        assert set(back) == set(archives.values())
        for old, archive_id in archives.items():
            obj = back[archive_id]
            meta, spec, status = obj["metadata"], obj["spec"], obj["status"]
            assert meta["name"] == synced_name(vm.name, archive_id)
            assert meta["annotations"]["vmguard.io/archive-id"] == archive_id
            assert meta["annotations"]["vmguard.io/synced-from"] == f"{ns}/{old}"
            assert meta["labels"]["vmguard.io/policy"] == "gold"
            assert meta["labels"]["vmguard.io/vm"] == vm.instance_uuid.lower()
            assert spec["policyRef"] == {"name": "gold"}
            assert spec["vcenterRef"] == {"name": "lab"}
            assert spec["repositoryRef"] == {"name": "repo"}
            assert status["vm"]["moref"] == vm.moref and status["vcenter"] == "lab"
            assert objects.condition(obj, "Ready")["reason"] == "Completed"
            assert objects.condition(obj, "ArchiveAvailable")["reason"] == "Synced"
            # Its point went in before the patch that completed it, which says so.
            assert objects.condition(obj, "PointRecorded")["status"] == "True"

        # The VM's ProtectedVM is rebuilt too: both points, newest first (each added
        # before the patch that completed its synced object).
        def rebuilt() -> dict[str, Any] | None:
            pvm = objects.get(
                kube_api, ns, "protectedvms", protected_vm_name(lab_vcenter, vm.instance_uuid)
            )["status"]
            return pvm if len(pvm.get("points") or []) >= 2 else None

        pvm = eventually(rebuilt, what="the ProtectedVM's two points")
        assert [(p["archiveId"], p["mode"], p["policy"]) for p in pvm["points"]] == [
            (archives["second"], "incremental", "gold"),
            (archives["first"], "full", "gold"),
        ]
        assert pvm["vm"]["instanceUuid"] == vm.instance_uuid and pvm["vcenter"] == "lab"
        synced_inc = back[archives["second"]]["status"]
        assert synced_inc["modeUsed"] == "incremental"
        assert synced_inc["parentArchiveId"] == archives["first"]
        assert synced_inc["totals"]["bytesRead"] == inc["totals"]["bytesRead"]
        assert back[archives["first"]]["status"]["modeUsed"] == "full"

        # The backup controller runs, and never took a synced object for a new backup.
        uids = {b["metadata"]["uid"] for b in back.values()}
        jobs = client.BatchV1Api(kube_api).list_namespaced_job(ns).items
        assert not [j for j in jobs if (j.metadata.labels or {}).get(UID_LABEL) in uids]
        for obj in objects.items(kube_api, ns, "vmguardbackups", SYNCED):
            assert obj["status"]["phase"] == "Completed" and "snapshot" not in obj["status"]
        no_snapshot_left(vc, vm.moref)

        # A restore from a synced VMGuardBackup: a new VM with the incremental's bytes.
        source = back[archives["second"]]["metadata"]["name"]
        new_name = f"catalog-{secrets.token_hex(3)}"
        target = {"newVM": {"name": new_name, "datastore": "LocalDS_0", "folder": "/DC0/vm"}}
        create_restore(kube_api, ns, "rebuilt", source, target)
        restored = objects.wait_phase(
            kube_api, ns, "vmguardrestores", "rebuilt", {"Completed", "Failed"}, timeout=240
        )
        moref = restored["status"].get("result", {}).get("vm", {}).get("moref")
        try:
            assert restored["status"]["phase"] == "Completed", restored["status"]
            got = {
                str(d["sourceKey"]): sha256_file(vsim.disk(moref, d["key"]).path)
                for d in restored["status"]["result"]["disks"]
            }
            assert got == at_inc
        finally:
            if moref:
                destroy_vm(vc, moref)

    # An archive taken out of the repository flags its VMGuardBackup; back, it is cleared.
    repo = open_repo(s3_bucket)
    gone = archives["first"]
    name = back[gone]["metadata"]["name"]
    blob = repo.backend.get(names.manifest_name(gone))
    assert retire_archive(repo, gone) is None

    def reason() -> str:
        obj = objects.get(kube_api, ns, "vmguardbackups", name)
        return str(objects.condition(obj, "ArchiveAvailable").get("reason", ""))

    eventually(lambda: reason() == "ArchiveMissing", what="the VMGuardBackup flagged")
    flagged = objects.get(kube_api, ns, "vmguardbackups", name)
    assert objects.condition(flagged, "ArchiveAvailable")["status"] == "False"
    assert flagged["status"]["phase"] == "Completed"  # what it was stays recorded

    # kopf posts events from a queue of its own, after the status patch: wait for it.
    def evented() -> bool:
        events = client.CoreV1Api(kube_api).list_namespaced_event(ns).items
        return any(e.reason == "ArchiveMissing" and e.involved_object.name == name for e in events)

    eventually(evented, timeout=30, what="an ArchiveMissing event")
    # Nothing was recreated for it, and the other backup is untouched.
    assert len(objects.items(kube_api, ns, "vmguardbackups", SYNCED)) == 2
    other = objects.get(
        kube_api, ns, "vmguardbackups", back[archives["second"]]["metadata"]["name"]
    )
    assert objects.condition(other, "ArchiveAvailable")["reason"] == "Synced"

    repo.backend.put(names.manifest_name(gone), blob)
    eventually(lambda: reason() == "ArchiveFound", what="the flag cleared")

    # An operator that died between creating a synced VMGuardBackup and writing its status
    # leaves one without status: the backup controller must not take it for a Pending
    # backup, and the next pass completes it.
    second_operator.stop()
    objects.custom(kube_api).delete_namespaced_custom_object(
        objects.G, objects.V, ns, "vmguardbackups", name
    )
    eventually(lambda: name not in _names(kube_api, ns), what="deleted")
    placement = Placement("lab", "gold")
    bare = build_synced_backup(
        repo.load_archive(gone), namespace=ns, repository="repo", placement=placement
    )
    objects.custom(kube_api).create_namespaced_custom_object(
        objects.G, objects.V, ns, "vmguardbackups", bare
    )
    operator()
    done = objects.wait_phase(kube_api, ns, "vmguardbackups", name, {"Completed"}, timeout=60)
    assert done["status"]["archiveId"] == gone
    for never in ("snapshot", "placement", "attempts", "jobName", "modeRequested"):
        assert never not in done["status"], done["status"]
    uid = done["metadata"]["uid"]
    jobs = client.BatchV1Api(kube_api).list_namespaced_job(ns).items
    assert not [j for j in jobs if (j.metadata.labels or {}).get(UID_LABEL) == uid]
    log = second_operator.text()  # every operator of the test wrote to this one file
    assert "Traceback" not in log and s3_bucket["secret_key"] not in log
    assert "catalog sync: VMGuardBackups recreated from archives" in log


def _names(kube_api: Any, ns: str) -> set[str]:
    return {b["metadata"]["name"] for b in objects.items(kube_api, ns, "vmguardbackups")}
