"""What the operator writes into a VMGuardBackup on its own account (docs/scale.md).

kopf keeps state in the objects it serves: a finalizer while a deletion handler or a
daemon needs one, and a diff-base annotation when a handler compares an old state with
a new one. A ``status.phase`` field handler made it PATCH that annotation into every
backup at first sight and at each phase change: a request per backup and phase, for
nothing the operator reads. Lab test, with a real apiserver and operator: a backup
created as a policy creates it (with the finalizer) and moved through its phases gets
no write from kopf, and its outcome is still seen.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from tests.controller import objects
from tests.controller.conftest import OperatorProcess
from tests.controller.scrape import scrape, value

from vmguard.api import FINALIZER, format_time
from vmguard.api.kinds import BACKUP
from vmguard.config import BackupSettings, ProxySettings
from vmguard.controller.backup import reconcile
from vmguard.controller.kube.jobs import JobAPI
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard_lab.procs import eventually

UUID = "4201aaaa-bbbb-cccc-dddd-eeeeffff0042"


@pytest.mark.lab
def test_kopf_writes_nothing_into_a_backup_moving_through_its_phases(
    kube_api: Any, namespace: str, start_operator: Callable[..., OperatorProcess]
) -> None:
    """The operator drives no backups here (``--controllers restores``), but kopf serves
    every handler of the kind all the same; the test moves the status. Once /metrics
    counts the outcome, the object shows no request of the operator: no diff-base
    annotation, no kopf entry in ``managedFields``."""
    port = start_operator("--controllers", "restores").metrics_port
    spec = {
        "vm": {"instanceUuid": UUID},
        "vcenterRef": {"name": "lab"},
        "repositoryRef": {"name": "repo"},
    }
    objects.create(
        kube_api, namespace, BACKUP.plural, BACKUP.kind, "b1", spec, finalizers=[FINALIZER]
    )
    now = dt.datetime.now(dt.UTC)
    for phase in ("Pending", "Snapshotting", "Transferring", "Finalizing"):
        objects.patch_status(kube_api, namespace, BACKUP.plural, "b1", {"phase": phase})
    done = {
        "phase": "Completed",
        "vcenter": "lab",
        "repository": "repo",
        "vm": {"instanceUuid": UUID, "name": "web-42"},
        "archiveId": "archive-b1",
        "startTime": format_time(now),
        # After the operator's start whenever it comes up: /metrics counts only backups
        # that finished since (the count is this test's sign that the operator saw it).
        "completionTime": format_time(now + dt.timedelta(minutes=10)),
    }
    objects.patch_status(kube_api, namespace, BACKUP.plural, "b1", done)
    labels = {"namespace": namespace, "vcenter": "lab", "policy": "", "outcome": "Completed"}

    def counted() -> float | None:
        return value(scrape(port), "vmguard_backups_total", **labels)

    assert eventually(counted, timeout=60, what="the outcome in /metrics") == 1
    obj = objects.get(kube_api, namespace, BACKUP.plural, "b1")
    annotations = obj["metadata"].get("annotations") or {}
    assert "vmguard.io/last-handled-configuration" not in annotations
    managers = {m.get("manager", "") for m in obj["metadata"].get("managedFields") or []}
    assert not [m for m in managers if m.startswith("kopf")], managers
    assert obj["metadata"]["finalizers"] == [FINALIZER]


@pytest.mark.lab
def test_a_backups_first_write_never_overwrites_a_status_written_since_it_was_read(
    kube_api: Any, namespace: str
) -> None:
    """The state machine's first step reads a new backup and writes its start (phase
    Pending, startTime). A status written in between — here Completed, as a test, an
    administrator or a restore of the object with its status writes it — is kept: that
    write is sent only onto the status the step read, and the step then asks for a
    fresh read instead of going on with a stale one. Real apiserver, the step called
    directly on the stale object."""
    spec = {
        "vm": {"instanceUuid": UUID},
        "vcenterRef": {"name": "lab"},
        "repositoryRef": {"name": "repo"},
    }
    objects.create(kube_api, namespace, BACKUP.plural, BACKUP.kind, "b2", spec)
    stale = objects.get(kube_api, namespace, BACKUP.plural, "b2")
    done = {"phase": "Completed", "archiveId": "archive-b2", "vcenter": "lab"}
    objects.patch_status(kube_api, namespace, BACKUP.plural, "b2", done)
    settings = BackupSettings()
    proxy = ProxySettings(
        image="unused", command=("vmguard",), locator="", service_account="", image_pull_policy=""
    )
    ctx = reconcile.BackupContext(KubeAPI(kube_api), JobAPI(kube_api), proxy, settings)

    delay = asyncio.run(reconcile.reconcile(ctx, stale))

    assert delay == 0.0  # read it again
    status = objects.get(kube_api, namespace, BACKUP.plural, "b2")["status"]
    assert (status["phase"], status["archiveId"]) == ("Completed", "archive-b2")
    assert "startTime" not in status
    # Read afresh, the Completed backup is over: the step does nothing and says so.
    fresh = objects.get(kube_api, namespace, BACKUP.plural, "b2")
    assert asyncio.run(reconcile.reconcile(ctx, fresh)) is None
