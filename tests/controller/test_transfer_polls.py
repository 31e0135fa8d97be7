"""A running transfer's or verification's polls read its Job and nothing else (issue #13,
docs/scale.md).

While a backup's proxy Job runs, its task polls it. Each poll used to resolve every ref
again (policy, VCenter, repository) and list the Job's pods and events: ≈ 6 requests
a poll, ≈ 300 polls in a 10-minute transfer. Once the proxy has reported progress, a poll
is one GET of the Job (its namespace from status), and the polls back off to a cap.

Lab test with a real apiserver: the VMGuardBackup and its VCenter and repository are
real objects, the proxy Job a real, suspended one (it runs no pod; the controller reads
a Job without a Complete or Failed condition as active). The state machine's step is
called directly, on a :class:`~vmguard.store.clock.ManualClock` ten minutes after the
Job's creation; every request of its API client is counted. A verification's Job (its
checks run for minutes on a large disk) is read the same way.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from kubernetes import client
from tests.controller import objects

from vmguard.api import format_time, parse_time
from vmguard.api.kinds import BACKUP
from vmguard.config import BackupSettings, ProxySettings
from vmguard.controller.backup import reconcile, verification
from vmguard.controller.kube.jobs import JobAPI
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.proxypods import RUNNING_POLL_CAP, UntilReport
from vmguard.controller.kube.timing import Timing
from vmguard.store.clock import ManualClock

pytestmark = pytest.mark.lab

UUID = "4201aaaa-bbbb-cccc-dddd-eeeeffff0077"


def _counting(kube_api: Any) -> tuple[Any, list[tuple[str, str]]]:
    """A client of the lab's apiserver that records (method, path) of every request."""
    api = client.ApiClient(kube_api.configuration)
    seen: list[tuple[str, str]] = []
    rest = api.rest_client
    request = rest.request

    def counted(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        seen.append((method, url.split("?")[0].removeprefix(api.configuration.host)))
        return request(method, url, *args, **kwargs)

    rest.request = counted
    return api, seen


def _context_ten_minutes_in(
    kube_api: Any, created: dt.datetime
) -> tuple[reconcile.BackupContext, list[tuple[str, str]], ManualClock]:
    """The backups' context on a counting client and a clock ten minutes after
    ``created`` (the Job's creation)."""
    api, seen = _counting(kube_api)
    clock = ManualClock(start=created + dt.timedelta(minutes=10))
    proxy = ProxySettings(
        image="unused", command=("vmguard",), locator="", service_account="", image_pull_policy=""
    )
    ctx = reconcile.BackupContext(
        KubeAPI(api), JobAPI(api), proxy, BackupSettings(), timing=Timing(clock=clock)
    )
    return ctx, seen, clock


def _three_polls_read_the_job_at_the_cap(
    kube_api: Any,
    namespace: str,
    step: Callable[[reconcile.BackupContext, dict[str, Any]], Coroutine[Any, Any, float | None]],
    ctx: reconcile.BackupContext,
    seen: list[tuple[str, str]],
    clock: ManualClock,
    job_path: str,
) -> None:
    """Three polls of a long run of backup ``b``'s proxy: each reads the Job and nothing
    else, and waits the cap, cut short by the proxy's report."""
    for _ in range(3):
        obj = objects.get(kube_api, namespace, BACKUP.plural, "b")
        seen.clear()
        delay = asyncio.run(step(ctx, obj))
        assert seen == [("GET", job_path)]
        assert delay == RUNNING_POLL_CAP  # ten minutes in: the cap
        assert isinstance(delay, UntilReport)  # the proxy's report wakes it
        clock.advance(delay)


def _backup_and_job(
    kube_api: Any, namespace: str, vcenter: str, repository: str, job_name: str
) -> dt.datetime:
    """Backup ``b`` of the lab's VCenter and repository, and its proxy Job ``job_name``
    (suspended); returns the Job's creation."""
    spec = {
        "vm": {"instanceUuid": UUID},
        "vcenterRef": {"name": vcenter},
        "repositoryRef": {"name": repository},
    }
    objects.create(kube_api, namespace, BACKUP.plural, BACKUP.kind, "b", spec)
    job = _suspended_job(kube_api, namespace, job_name)
    created = parse_time(job["metadata"]["creationTimestamp"])
    assert created is not None
    return created


def _suspended_job(kube_api: Any, ns: str, name: str) -> dict[str, Any]:
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "suspend": True,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "proxy", "image": "unused"}],
                }
            },
        },
    }
    job = client.BatchV1Api(kube_api).create_namespaced_job(ns, body)
    return dict(client.ApiClient().sanitize_for_serialization(job))


def test_a_running_proxys_polls_read_its_job_only_and_back_off(
    kube_api: Any, namespace: str, lab_vcenter: str, lab_repository: str
) -> None:
    created = _backup_and_job(kube_api, namespace, lab_vcenter, lab_repository, "b-1")
    reported = format_time(dt.datetime.now(dt.UTC))  # the proxy reports after its Job exists
    running = {
        "phase": "Transferring",
        "startTime": format_time(created),
        "vm": {"instanceUuid": UUID, "moref": "vm-77"},
        "vcenter": lab_vcenter,
        "repository": lab_repository,
        "attempts": 1,
        "jobName": "b-1",
        "progress": {"percent": 40, "bytesDone": 4, "bytesTotal": 10, "updateTime": reported},
    }
    objects.patch_status(kube_api, namespace, BACKUP.plural, "b", running)
    ctx, seen, clock = _context_ten_minutes_in(kube_api, created)
    settings = ctx.settings
    job_path = f"/apis/batch/v1/namespaces/{namespace}/jobs/b-1"

    _three_polls_read_the_job_at_the_cap(
        kube_api, namespace, reconcile.reconcile, ctx, seen, clock, job_path
    )

    # The proxy has written its result: its Job ends any moment, read at ``poll`` again.
    objects.patch_status(kube_api, namespace, BACKUP.plural, "b", {"archiveId": "a-77"})
    obj = objects.get(kube_api, namespace, BACKUP.plural, "b")
    seen.clear()
    delay = asyncio.run(reconcile.reconcile(ctx, obj))
    assert len(seen) == 1 and delay == settings.poll
    status = objects.get(kube_api, namespace, BACKUP.plural, "b")["status"]
    assert status["phase"] == "Transferring" and status["attempts"] == 1


def test_a_running_verifications_polls_read_its_job_only_and_back_off(
    kube_api: Any, namespace: str, lab_vcenter: str, lab_repository: str
) -> None:
    """It was read every 2 s however long its checks ran: ≈ 300 GETs of the backup and
    of its Job in a 10-minute verification."""
    created = _backup_and_job(kube_api, namespace, lab_vcenter, lab_repository, "b-verify-1")
    verifying: dict[str, Any] = {
        "phase": "Completed",
        "archiveId": "a-77",
        "vm": {"instanceUuid": UUID, "moref": "vm-77"},
        "vcenter": lab_vcenter,
        "repository": lab_repository,
        "verification": {
            "phase": "Verifying",
            "run": 1,
            "checks": ["fsck"],
            "jobName": "b-verify-1",
            "startTime": format_time(created),
        },
    }
    objects.patch_status(kube_api, namespace, BACKUP.plural, "b", verifying)
    ctx, seen, clock = _context_ten_minutes_in(kube_api, created)
    job_path = f"/apis/batch/v1/namespaces/{namespace}/jobs/b-verify-1"

    _three_polls_read_the_job_at_the_cap(
        kube_api, namespace, verification.step, ctx, seen, clock, job_path
    )

    # The proxy has written its result: its Job ends any moment, read at the poll again.
    objects.patch_status(
        kube_api,
        namespace,
        BACKUP.plural,
        "b",
        {"verification": {**verifying["verification"], "result": "Passed"}},
    )
    obj = objects.get(kube_api, namespace, BACKUP.plural, "b")
    seen.clear()
    delay = asyncio.run(verification.step(ctx, obj))
    assert seen == [("GET", job_path)] and delay == verification.POLL
    assert not isinstance(delay, UntilReport)
