"""The proxy-pod classifier over what kubelet, the scheduler and the Job controller write.

The dicts are shaped as the API returns them (camelCase, as ``kubectl get -o json``
shows a pod stuck pulling, an unschedulable pod, a crash-looping one, and the Job
controller's ``FailedCreate`` event when Pod Security admission refuses the pod).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from vmguard.controller.kube.proxypods import classify

JOB = "nightly-web-1"


def _pod(status: dict[str, Any], name: str = f"{JOB}-x7k2p") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"job-name": JOB}},
        "status": {"phase": "Pending", **status},
    }


def _waiting(reason: str, message: str) -> dict[str, Any]:
    return _pod(
        {
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [
                {
                    "name": "proxy",
                    "ready": False,
                    "restartCount": 0,
                    "image": "vmguard-proxy:nope",
                    "imageID": "",
                    "state": {"waiting": {"reason": reason, "message": message}},
                }
            ],
        }
    )


PULL_BACKOFF = _waiting("ImagePullBackOff", 'Back-off pulling image "vmguard-proxy:nope"')
ERR_PULL = _waiting(
    "ErrImagePull",
    'failed to pull and unpack image "registry.example/vmguard-proxy:nope": not found',
)
CRASH_LOOP = _waiting(
    "CrashLoopBackOff",
    "back-off 40s restarting failed container=proxy pod=nightly-web-1-x7k2p_ns(1f0c)",
)
UNSCHEDULABLE = _pod(
    {
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 node(s) didn't match Pod's node "
                "affinity/selector. preemption: 0/3 nodes are available: 3 Preemption is "
                "not helpful for scheduling.",
                "lastTransitionTime": "2026-12-06T08:00:00Z",
            }
        ]
    }
)
CREATING = _waiting("ContainerCreating", "")
RUNNING = _pod(
    {
        "phase": "Running",
        "conditions": [{"type": "PodScheduled", "status": "True"}],
        "containerStatuses": [
            {"name": "proxy", "state": {"running": {"startedAt": "2026-12-06T08:00:05Z"}}}
        ],
    }
)
REFUSED = {
    "metadata": {"name": f"{JOB}.187e2a1b"},
    "involvedObject": {"kind": "Job", "name": JOB, "apiVersion": "batch/v1"},
    "reason": "FailedCreate",
    "type": "Warning",
    "source": {"component": "job-controller"},
    "message": f'Error creating: pods "{JOB}-x7k2p" is forbidden: violates PodSecurity '
    '"restricted:latest": privileged (container "proxy" must not set '
    "securityContext.privileged=true), runAsNonRoot != true",
}
QUOTA = {
    **REFUSED,
    "message": f'Error creating: pods "{JOB}-x7k2p" is forbidden: exceeded quota: '
    "compute, requested: pods=1, used: pods=10, limited: pods=10",
}
WEBHOOK_TIMEOUT = {
    **REFUSED,
    "message": 'Error creating: Internal error occurred: failed calling webhook "x": '
    "context deadline exceeded",
}
SUCCESSFUL_CREATE = {**REFUSED, "reason": "SuccessfulCreate", "type": "Normal"}


@pytest.mark.parametrize(
    ("pod", "reason", "in_message"),
    [
        (PULL_BACKOFF, "ImagePullBackOff", "Back-off pulling image"),
        (ERR_PULL, "ErrImagePull", "not found"),
        (CRASH_LOOP, "CrashLoopBackOff", "restarting failed container"),
        (UNSCHEDULABLE, "Unschedulable", "didn't match Pod's node affinity/selector"),
    ],
)
def test_a_pod_that_cannot_start_is_transient_trouble_with_its_reason(
    pod: dict[str, Any], reason: str, in_message: str
) -> None:
    trouble = classify([pod], [SUCCESSFUL_CREATE])
    assert trouble is not None
    assert (trouble.permanent, trouble.reason) == (False, reason)
    assert in_message in trouble.message
    assert trouble.source == f"pod {JOB}-x7k2p"
    assert reason in trouble.text() and in_message in trouble.text()


def test_admission_refusal_is_permanent_with_the_event_message() -> None:
    trouble = classify([], [SUCCESSFUL_CREATE, REFUSED])
    assert trouble is not None
    assert (trouble.permanent, trouble.reason) == (True, "FailedCreate")
    assert 'violates PodSecurity "restricted:latest"' in trouble.message
    assert trouble.source == f"Job {JOB}"


def test_a_full_quota_and_a_webhook_timeout_are_transient() -> None:
    """Both answer FailedCreate, the quota even "forbidden"; both pass on their own."""
    quota = classify([], [QUOTA])
    webhook = classify([], [WEBHOOK_TIMEOUT])
    assert quota is not None and not quota.permanent and "exceeded quota" in quota.message
    assert webhook is not None and not webhook.permanent
    assert webhook.reason == "FailedCreate" and "context deadline exceeded" in webhook.message


def test_permanent_trouble_wins_over_transient() -> None:
    invalid = _waiting("InvalidImageName", 'Failed to apply default image tag "Bad:Name"')
    trouble = classify([PULL_BACKOFF, invalid], [])
    assert trouble is not None
    assert (trouble.permanent, trouble.reason) == (True, "InvalidImageName")


@pytest.mark.parametrize("pods", [[], [CREATING], [RUNNING]])
def test_a_starting_or_running_proxy_is_no_trouble(pods: list[dict[str, Any]]) -> None:
    assert classify(pods, [SUCCESSFUL_CREATE]) is None


def test_an_old_failed_create_is_ignored_once_a_pod_exists() -> None:
    # Events outlive their cause by an hour; once the pod was created, the pod tells.
    assert classify([RUNNING], [REFUSED]) is None
    trouble = classify([UNSCHEDULABLE], [REFUSED])
    assert trouble is not None and trouble.reason == "Unschedulable"


def test_a_finished_pod_is_left_to_the_job_controller() -> None:
    failed = _waiting("CrashLoopBackOff", "back-off")
    failed["status"]["phase"] = "Failed"
    assert classify([failed], []) is None


def _job(created: str) -> dict[str, Any]:
    return {"metadata": {"name": JOB, "creationTimestamp": created}}


def test_transient_trouble_gives_up_only_once_the_job_is_timeout_old() -> None:
    trouble = classify([UNSCHEDULABLE], [])
    assert trouble is not None
    at = dt.datetime(2026, 12, 6, 8, 9, 59, tzinfo=dt.UTC)
    assert trouble.gives_up(_job("2026-12-06T08:00:00Z"), at, 600.0) is None
    text = trouble.gives_up(_job("2026-12-06T08:00:00Z"), at + dt.timedelta(seconds=1), 600.0)
    assert text is not None
    assert "Unschedulable" in text and "did not start within 600s" in text


def test_permanent_trouble_gives_up_at_once() -> None:
    trouble = classify([], [REFUSED])
    assert trouble is not None
    text = trouble.gives_up(
        _job("2026-12-06T08:00:00Z"), dt.datetime(2026, 12, 6, 8, 0, 1, tzinfo=dt.UTC), 600.0
    )
    assert text is not None and "violates PodSecurity" in text
