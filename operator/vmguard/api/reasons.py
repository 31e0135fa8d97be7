"""Failure reasons that say a proxy Job's pod never ran, or its process died unheard.

The controllers write these as ``status.error.reason`` of a VMGuardBackup or
VMGuardRestore (:mod:`vmguard.controller.kube.proxypods` classifies the pod's and Job's
state; the backup and restore controllers add the Job's own failure); the metrics count
them as proxy
failures (``vmguard_proxy_failures_total``), apart from failures the proxy reported
itself (a repository or vCenter fault), which are the backup's or restore's and are
alerted on per policy. Defined once here so that the two never drift apart.
"""

from __future__ import annotations

from typing import Final

TRANSIENT_WAITING: Final = frozenset(
    {
        "ImagePullBackOff",
        "ErrImagePull",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
"""kubelet's waiting reasons that mean "this container will not start by itself soon".
``ContainerCreating`` / ``PodInitializing`` are normal progress and are not listed."""

PERMANENT_WAITING: Final = frozenset({"InvalidImageName", "ErrImageNeverPull"})
"""Waiting reasons no retry can fix: the image reference itself is malformed or forbidden."""

UNSCHEDULABLE: Final = "Unschedulable"
"""The scheduler's reason on a pod no node can take."""

FAILED_CREATE: Final = "FailedCreate"
"""The Job controller's event when the apiserver refused the Job's pod."""

PROXY_FAILED: Final = "ProxyFailed"
"""The Job failed and its process reported no reason (killed, out of memory)."""

PROXY_REPORTED_NOTHING: Final = "ProxyReportedNothing"
"""The Job succeeded without writing its result."""

PROXY_FAILURE_REASONS: Final = frozenset(
    {*TRANSIENT_WAITING, *PERMANENT_WAITING, UNSCHEDULABLE, FAILED_CREATE}
    | {PROXY_FAILED, PROXY_REPORTED_NOTHING}
)
"""Every reason above: the proxy, not the backup's or restore's peers, failed."""
