"""Objects made under the kinds' old names survive the rename (controller/migration.py).

The lab apiserver gets the old CRDs (``vmbackups``, ``vmrestores``,
``backuprepositories``: today's schemas under the old names, which is what an older
release installed), objects of the old kinds are created in the test's namespace with
statuses and finalizers as an older operator left them, and a real operator is started.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from tests.controller import objects

from vmguard.api import FINALIZER, GROUP, VERSION
from vmguard.api.kinds import BACKUP, LEGACY, REPOSITORY, RESTORE
from vmguard.controller.kube import migration
from vmguard.controller.kube.migration import ANNOTATION_MIGRATED_FROM, MIGRATED
from vmguard.controller.vcenter.orphans import finished_uids, keep
from vmguard.crds import KINDS
from vmguard_lab.procs import eventually

pytestmark = [pytest.mark.lab, pytest.mark.operator_controllers("repositories,restores")]

OLD_BACKUP, OLD_RESTORE, OLD_REPOSITORY = LEGACY[BACKUP], LEGACY[RESTORE], LEGACY[REPOSITORY]


def legacy_crd(new_kind: str) -> dict[str, Any]:
    crd = next(k for k in KINDS if k.kind == new_kind).crd()
    old = next(o for n, o in LEGACY.items() if n.kind == new_kind)
    crd = copy.deepcopy(crd)
    crd["metadata"]["name"] = f"{old.plural}.{GROUP}"
    crd["spec"]["names"].update(
        kind=old.kind,
        listKind=f"{old.kind}List",
        plural=old.plural,
        singular=old.singular,
        shortNames=list(old.short_names),
    )
    return crd


@pytest.fixture
def legacy_crds(kube_api: Any) -> Iterator[None]:
    ext = client.ApiextensionsV1Api(kube_api)
    made = [legacy_crd(k.kind) for k in LEGACY]
    for crd in made:
        ext.create_custom_resource_definition(crd)

    def established() -> bool:
        for crd in made:
            got = ext.read_custom_resource_definition(crd["metadata"]["name"])
            conds = {c.type: c.status for c in got.status.conditions or []}
            if conds.get("Established") != "True":
                return False
        return True

    eventually(established, timeout=60, what="the old CRDs established")
    yield
    api = objects.custom(kube_api)
    for old in LEGACY.values():  # what a test kept: its finalizer would hold the CRD
        for obj in api.list_cluster_custom_object(GROUP, VERSION, old.plural)["items"]:
            meta = obj["metadata"]
            api.patch_namespaced_custom_object(
                GROUP, VERSION, meta["namespace"], old.plural, meta["name"],
                {"metadata": {"finalizers": None}},
            )  # fmt: skip
    for crd in made:
        ext.delete_custom_resource_definition(crd["metadata"]["name"])

    def deleted() -> bool:  # the next test installs them again
        return not any(_exists(ext, c) for c in made)

    eventually(deleted, timeout=60, what="the old CRDs deleted")


def _exists(ext: client.ApiextensionsV1Api, crd: dict[str, Any]) -> bool:
    try:
        ext.read_custom_resource_definition(crd["metadata"]["name"])
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def create_old(
    kube_api: Any, ns: str, old: Any, name: str, spec: dict[str, Any], **meta: Any
) -> dict[str, Any]:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": old.kind,
        "metadata": {"name": name, "finalizers": [FINALIZER], **meta},
        "spec": spec,
    }
    api = objects.custom(kube_api)
    made: dict[str, Any] = api.create_namespaced_custom_object(GROUP, VERSION, ns, old.plural, body)
    return made


def set_status(kube_api: Any, ns: str, old: Any, name: str, status: dict[str, Any]) -> None:
    objects.custom(kube_api).patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, old.plural, name, {"status": status}
    )


def gone(kube_api: Any, ns: str, plural: str, name: str) -> bool:
    try:
        objects.get(kube_api, ns, plural, name)
    except client.ApiException as exc:
        return exc.status == 404
    return False


def test_objects_of_the_old_kinds_are_moved_to_the_new_ones_at_start(
    kube_api: Any,
    namespace: str,
    legacy_crds: None,
    s3_bucket: dict[str, Any],
    start_operator: Any,
) -> None:
    ns = namespace
    objects.secret(
        kube_api,
        ns,
        "repo-s3",
        {"accessKeyID": s3_bucket["access_key"], "secretAccessKey": s3_bucket["secret_key"]},
    )
    repo_spec = {
        "s3": {"endpoint": s3_bucket["endpoint"], "bucket": s3_bucket["bucket"], "insecure": True},
        "credentialsSecretRef": {"name": "repo-s3"},
    }
    repo = create_old(kube_api, ns, OLD_REPOSITORY, "repo", repo_spec, labels={"team": "a"})
    owner = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": OLD_REPOSITORY.kind,
        "name": "repo",
        "uid": repo["metadata"]["uid"],
    }
    vm = {"instanceUuid": "4211c3e0-9b2f-4c57-a1d6-2e5f0c6a7b81", "moref": "vm-42", "name": "db"}
    backup_spec = {"vm": vm, "policyRef": {"name": "gold"}, "repositoryRef": {"name": "repo"}}
    labels = {"vmguard.io/policy": "gold"}
    done = create_old(
        kube_api, ns, OLD_BACKUP, "done", backup_spec, labels=labels, ownerReferences=[owner]
    )
    done_status = {
        "phase": "Completed",
        "archiveId": "a" * 64,
        "completionTime": "2026-12-01T02:10:00Z",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Completed",
                "message": "Completed",
                "lastTransitionTime": "2026-12-01T02:10:00Z",
            }
        ],
    }
    set_status(kube_api, ns, OLD_BACKUP, "done", done_status)
    running = create_old(kube_api, ns, OLD_BACKUP, "running", backup_spec, labels=labels)
    set_status(kube_api, ns, OLD_BACKUP, "running", {"phase": "Transferring"})
    restore_spec = {"source": {"backupRef": {"name": "done"}}, "target": {"newVM": {"name": "x"}}}
    restore = create_old(kube_api, ns, OLD_RESTORE, "restored", restore_spec)
    set_status(kube_api, ns, OLD_RESTORE, "restored", {"phase": "Completed"})

    # Being deleted (e.g. with its namespace) and held by the old operator's finalizer.
    create_old(kube_api, ns, OLD_BACKUP, "deleting", backup_spec, labels=labels)
    objects.custom(kube_api).delete_namespaced_custom_object(
        GROUP, VERSION, ns, OLD_BACKUP.plural, "deleting"
    )

    start_operator()

    def moved() -> bool:
        return all(
            gone(kube_api, ns, old.plural, name)
            for old, name in (
                (OLD_REPOSITORY, "repo"),
                (OLD_BACKUP, "done"),
                (OLD_BACKUP, "running"),
                (OLD_RESTORE, "restored"),
                (OLD_BACKUP, "deleting"),
            )
        )

    eventually(moved, timeout=120, what="the old objects removed after their copies")

    new_repo = objects.get(kube_api, ns, REPOSITORY.plural, "repo")
    assert new_repo["spec"] == repo["spec"]  # as stored, with the schema's defaults
    assert new_repo["metadata"]["labels"] == {"team": "a"}
    assert new_repo["metadata"]["annotations"][ANNOTATION_MIGRATED_FROM] == (
        f"BackupRepository/{repo['metadata']['uid']}"
    )

    new_done = objects.get(kube_api, ns, BACKUP.plural, "done")
    assert new_done["kind"] == "VMGuardBackup"
    assert new_done["spec"] == done["spec"]
    assert new_done["metadata"]["labels"] == labels
    assert {k: new_done["status"][k] for k in done_status} == done_status
    assert new_done["metadata"]["annotations"][ANNOTATION_MIGRATED_FROM] == (
        f"VMBackup/{done['metadata']['uid']}"
    )
    # Its owner is the copy of the repository, not the deleted old one.
    assert [(r["kind"], r["uid"]) for r in new_done["metadata"]["ownerReferences"]] == [
        ("VMGuardRepository", new_repo["metadata"]["uid"])
    ]

    # Work under way cannot go on (its Job belonged to the old object): Failed, Stalled.
    new_running = objects.get(kube_api, ns, BACKUP.plural, "running")
    assert new_running["status"]["phase"] == "Failed"
    assert new_running["status"]["error"]["reason"] == MIGRATED
    assert objects.condition(new_running, "Stalled")["reason"] == MIGRATED
    assert objects.condition(new_running, "Ready")["status"] == "False"
    assert new_running["metadata"]["annotations"][ANNOTATION_MIGRATED_FROM] == (
        f"VMBackup/{running['metadata']['uid']}"
    )

    assert gone(kube_api, ns, BACKUP.plural, "deleting")  # released, not copied

    new_restore = objects.get(kube_api, ns, RESTORE.plural, "restored")
    assert new_restore["spec"] == restore["spec"]
    assert new_restore["status"]["phase"] == "Completed"


def gc_collects(kube_api: Any, ns: str, old: Any) -> None:
    """Wait until the garbage collector handles objects of the old kind, as it long has in
    a cluster that ran an older operator (it discovers a new CRD within about 30 s):
    an object of it owned by a deleted ConfigMap is collected."""
    core = client.CoreV1Api(kube_api)
    cm = core.create_namespaced_config_map(ns, {"metadata": {"name": "gc-probe"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "gc-probe", "uid": cm.metadata.uid}
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": old.kind,
        "metadata": {"name": "gc-probe", "ownerReferences": [ref]},
        "spec": {"vm": {"moref": "vm-0"}, "policyRef": {"name": "gold"}},
    }
    objects.custom(kube_api).create_namespaced_custom_object(GROUP, VERSION, ns, old.plural, body)
    core.delete_namespaced_config_map("gc-probe", ns)
    eventually(
        lambda: gone(kube_api, ns, old.plural, "gc-probe"),
        timeout=120,
        what=f"the garbage collector collecting a {old.kind}",
    )


def test_every_backup_a_migrated_repository_owns_is_copied(
    kube_api: Any, namespace: str, legacy_crds: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The old repository owns its backups. Were it deleted before they are listed, the
    # garbage collector would mark them deleted, and a backup being deleted is released,
    # not copied: a CI run of 2026-12-06 lost one that way, the collector being quicker
    # than the migration's next LIST. Here the LIST waits for whatever the collector does.
    ns = namespace
    gc_collects(kube_api, ns, OLD_BACKUP)
    repo_spec = {
        "s3": {"endpoint": "127.0.0.1:9", "bucket": "none", "insecure": True},
        "credentialsSecretRef": {"name": "none"},
    }
    repo = create_old(kube_api, ns, OLD_REPOSITORY, "repo", repo_spec)
    owner = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": OLD_REPOSITORY.kind,
        "name": "repo",
        "uid": repo["metadata"]["uid"],
    }
    names = [f"b{i}" for i in range(5)]
    for i, name in enumerate(names):
        vm = {"instanceUuid": f"4211c3e0-9b2f-4c57-a1d6-{i:012d}", "moref": f"vm-{i}"}
        spec = {"vm": vm, "policyRef": {"name": "gold"}, "repositoryRef": {"name": "repo"}}
        create_old(kube_api, ns, OLD_BACKUP, name, spec, ownerReferences=[owner])
        set_status(kube_api, ns, OLD_BACKUP, name, {"phase": "Failed"})

    def collected() -> bool:
        if not gone(kube_api, ns, OLD_REPOSITORY.plural, "repo"):
            return True  # their owner is there: the collector leaves them alone
        found = [objects.get(kube_api, ns, OLD_BACKUP.plural, n) for n in names]
        return all(o["metadata"].get("deletionTimestamp") for o in found)

    real_list = migration._list

    def list_after_the_collector(custom: Any, old: Any, namespaces: Any) -> Any:
        if old is OLD_BACKUP:
            eventually(collected, timeout=120, what="the garbage collector's turn")
        return real_list(custom, old, namespaces)

    monkeypatch.setattr(migration, "_list", list_after_the_collector)
    done = migration.migrate(kube_api, [ns], dt.datetime.now(dt.UTC))

    assert done.released == []
    copied = objects.custom(kube_api).list_namespaced_custom_object(
        GROUP, VERSION, ns, BACKUP.plural
    )
    assert sorted(o["metadata"]["name"] for o in copied["items"]) == names
    assert all(gone(kube_api, ns, OLD_BACKUP.plural, n) for n in names)
    assert gone(kube_api, ns, OLD_REPOSITORY.plural, "repo")


def test_a_new_object_of_the_same_name_is_never_overwritten(
    kube_api: Any, namespace: str, legacy_crds: None, start_operator: Any
) -> None:
    ns = namespace
    vm = {"instanceUuid": "4211c3e0-9b2f-4c57-a1d6-2e5f0c6a7b82", "moref": "vm-43", "name": "web"}
    spec = {"vm": vm, "policyRef": {"name": "gold"}}
    made = create_old(kube_api, ns, OLD_BACKUP, "clash", spec)
    set_status(kube_api, ns, OLD_BACKUP, "clash", {"phase": "Completed"})
    newer = objects.create(
        kube_api, ns, BACKUP.plural, BACKUP.kind, "clash", {**spec, "vm": {**vm, "name": "web-new"}}
    )

    proc = start_operator()
    eventually(
        lambda: "is not a copy of VMBackup" in proc.text(),
        timeout=60,
        what="the operator's refusal in its log",
    )
    assert objects.get(kube_api, ns, BACKUP.plural, "clash")["spec"] == newer["spec"]
    old = objects.get(kube_api, ns, OLD_BACKUP.plural, "clash")
    assert old["spec"] == made["spec"]  # kept, for the administrator to resolve


def test_the_snapshot_of_a_stopped_migrated_backup_counts_as_finished() -> None:
    # The orphan sweep removes snapshots named after finished backups' UIDs; a backup
    # stopped by the migration made its snapshot under the old object's UID.
    copied = {
        "metadata": {
            "uid": "new-uid",
            "annotations": {ANNOTATION_MIGRATED_FROM: "VMBackup/old-uid"},
        },
        "status": {"phase": "Failed"},
    }
    running = {"metadata": {"uid": "run-uid"}, "status": {"phase": "Transferring"}}
    finished = finished_uids([copied, running])
    assert finished == {"new-uid", "old-uid"}
    assert not keep("old-uid", finished)
    assert keep("run-uid", finished)
