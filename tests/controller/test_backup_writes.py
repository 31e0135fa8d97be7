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

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from tests.controller import objects
from tests.controller.conftest import OperatorProcess
from tests.controller.scrape import scrape, value

from vmguard.api import FINALIZER, format_time
from vmguard.api.kinds import BACKUP
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
