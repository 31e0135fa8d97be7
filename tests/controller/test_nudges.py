"""Which backup events wake a waiting task at once (controller/backup/handlers.py).

A backup's task waits up to 30 s between reads of its running proxy's Job, and a
verification's task the same (kube/proxypods.py, ``running_poll``); the proxy's report in
status cuts the wait short (``vmbackup_phase`` nudges the task). Progress alone must not:
a proxy reports progress every few seconds, and each nudge is a read (pure).
"""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from vmguard.controller.backup import handlers

pytestmark = pytest.mark.unit

PROGRESS = {"percent": 40, "bytesDone": 4, "bytesTotal": 10, "updateTime": "2026-12-07T04:00:00Z"}


def _body(status: dict[str, Any]) -> kopf.Body:
    return kopf.Body({"metadata": {"name": "b", "namespace": "n", "uid": "u"}, "status": status})


@pytest.mark.parametrize(
    ("status", "nudged"),
    [
        ({"phase": "Transferring", "progress": PROGRESS}, False),
        ({"phase": "Transferring", "progress": PROGRESS, "archiveId": "a-1"}, True),
        ({"phase": "Transferring", "error": {"reason": "ProxyFailed"}}, True),
        ({"phase": "Finalizing", "archiveId": "a-1"}, False),  # its task reads on its own
        ({"phase": "Completed", "archiveId": "a-1"}, False),
    ],
)
def test_a_backups_task_is_nudged_by_its_proxys_result_or_error(
    status: dict[str, Any], nudged: bool
) -> None:
    assert handlers._proxy_reported(_body(status)) is nudged


@pytest.mark.parametrize(
    ("verification", "nudged"),
    [
        ({"phase": "Verifying", "jobName": "b-verify-1"}, False),
        ({"phase": "Verifying", "jobName": "b-verify-1", "result": "Passed"}, True),
        ({"phase": "Verifying", "jobName": "b-verify-1", "result": "Infected"}, True),
        ({"phase": "Pending"}, False),
        ({"phase": "Completed", "result": "Passed"}, False),  # ended: no task
    ],
)
def test_a_verifications_task_is_nudged_by_its_proxys_result(
    verification: dict[str, Any], nudged: bool
) -> None:
    status = {"phase": "Completed", "archiveId": "a-1", "verification": verification}
    assert handlers._verification_reported(_body(status)) is nudged
