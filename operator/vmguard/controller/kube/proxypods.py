"""Why an active proxy Job is not getting anywhere, and when to read a running one (pure).

A Job's own conditions say nothing while its pod cannot start: a pod stuck in
ImagePullBackOff, unschedulable, or crash-looping, or a pod the apiserver refused at
admission (the Job controller then records a ``FailedCreate`` event on the Job and
keeps trying) all leave the Job active until ``activeDeadlineSeconds``. The VM runs on
a snapshot all that time, so the controllers read the Job's pods and events themselves
and :func:`classify` says what they show:

- **permanent** — admission refused (``FailedCreate`` whose message says ``forbidden``
  or ``violates PodSecurity``): retrying cannot help, the backup fails at once;
- **transient** — image pull failure, unschedulable, crash loop, a container that
  cannot be configured yet: the condition names the pod's reason and message at once,
  and the controller waits up to its proxy-start timeout before failing.

Input is what kubelet, the scheduler and the Job controller write, as the API returns
it (camelCase dicts): ``status.containerStatuses[].state.waiting.reason``,
``status.conditions[type=PodScheduled]`` with reason ``Unschedulable``, and Events
whose ``involvedObject`` is the Job.

Once a proxy runs, :func:`running_poll` says how long until its Job is read again (a
backup's or a verification's): backing off with the Job's age to a cap, cut short by
the proxy's report in status (:class:`UntilReport`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vmguard.api import (
    FAILED_CREATE,
    PERMANENT_WAITING,
    TRANSIENT_WAITING,
    UNSCHEDULABLE,
    parse_time,
)
from vmguard.controller.kube.timing import Timing

# What the apiserver's admission answers contain when it refuses a pod for good.
REFUSAL_MARKERS = ("forbidden", "violates podsecurity")


@dataclass(frozen=True)
class ProxyTrouble:
    """Why the proxy is not running: ``reason``/``message`` as the pod or event says."""

    permanent: bool
    reason: str
    message: str
    source: str  # "pod <name>" or "Job <name>"

    def text(self) -> str:
        return f"{self.source}: {self.reason}: {self.message}".rstrip(": ")

    def gives_up(
        self,
        job: Mapping[str, Any],
        now: dt.datetime,
        timeout: float,
        since: dt.datetime | None = None,
    ) -> str | None:
        """The failure message when waiting cannot help any more, else None.

        Permanent trouble gives up at once; transient trouble once ``timeout`` seconds
        have passed since ``since`` (the first Job of a streak of retries), or else since
        ``job`` (the proxy Job) was created — recorded times, so that a restarted
        operator counts on from where its predecessor was.
        """
        if self.permanent:
            return self.text()
        created = since or job_created(job)
        age = (now - created).total_seconds() if created else 0.0
        if age < timeout:
            return None
        return f"{self.text()} (proxy did not start within {timeout:.0f}s)"

    def waiting(self, timeout: float) -> str:
        """The condition message while transient trouble is waited out (stable per poll)."""
        return f"{self.text()} (retried until the Job is {timeout:.0f}s old)"[:4096]


def job_created(job: Mapping[str, Any]) -> dt.datetime | None:
    """A Job's ``creationTimestamp``."""
    return parse_time(str((job.get("metadata") or {}).get("creationTimestamp") or ""))


RUNNING_POLL_CAP = 30.0
"""Seconds at most between two reads of a Job whose proxy runs (divided by the lab's
speed-up): a proxy that ends without writing its result into status (it crashed) is
seen within this. Its result or error in status is seen at once (:class:`UntilReport`)."""


class UntilReport(float):
    """A delay that a report of the proxy cuts short: its task wakes as soon as the
    backup's status shows the proxy's result or error (``backup.handlers.vmbackup_phase``
    nudges it)."""


def running_poll(timing: Timing, created: dt.datetime, poll: float) -> UntilReport:
    """The delay until the next read of the Job of a running proxy, created at
    ``created``: from ``poll`` up to :data:`RUNNING_POLL_CAP` as the Job ages (a quarter
    of its age), so the reads of a run grow with the log of its length, not with it."""
    age = (timing.now() - created).total_seconds()
    return UntilReport(min(timing.interval(RUNNING_POLL_CAP), max(poll, age / 4)))


def _waiting(pod: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    status = pod.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses"):
        for cs in status.get(key) or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason"):
                yield str(waiting["reason"]), str(waiting.get("message") or "")


def pod_trouble(pod: Mapping[str, Any]) -> ProxyTrouble | None:
    """What keeps one proxy pod from running, or None when it is starting or running."""
    meta = pod.get("metadata") or {}
    source = f"pod {meta.get('name', '?')}"
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return None  # finished pods are the Job controller's to judge
    for reason, message in _waiting(pod):
        if reason in PERMANENT_WAITING:
            return ProxyTrouble(True, reason, message, source)
        if reason in TRANSIENT_WAITING:
            return ProxyTrouble(False, reason, message, source)
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == UNSCHEDULABLE
        ):
            return ProxyTrouble(False, UNSCHEDULABLE, str(cond.get("message") or ""), source)
    return None


def event_trouble(event: Mapping[str, Any]) -> ProxyTrouble | None:
    """A Job event that means its pods are refused at admission, or None."""
    if event.get("reason") != FAILED_CREATE:
        return None
    message = str(event.get("message") or "")
    obj = event.get("involvedObject") or {}
    source = f"Job {obj.get('name', '?')}"
    lowered = message.lower()
    # A full ResourceQuota also answers "forbidden", but it frees up as other pods end:
    # failing a night's backups at once over it would page for nothing.
    if "exceeded quota" not in lowered and any(m in lowered for m in REFUSAL_MARKERS):
        return ProxyTrouble(True, FAILED_CREATE, message, source)
    # Other create failures (quota exceeded, a webhook timing out) may pass: transient.
    return ProxyTrouble(False, FAILED_CREATE, message, source)


def classify(
    pods: Iterable[Mapping[str, Any]], events: Iterable[Mapping[str, Any]]
) -> ProxyTrouble | None:
    """The most telling trouble of a Job's pods and events: permanent before transient.

    Events are read only while the Job has no pod: a ``FailedCreate`` outlives the
    problem (events are kept for an hour), and once a pod exists the pod tells.
    """
    pods = list(pods)
    found = [t for t in map(pod_trouble, pods) if t]
    if not pods:
        found += [t for t in map(event_trouble, events) if t]
    permanent = [t for t in found if t.permanent]
    chosen = permanent or found
    return chosen[0] if chosen else None
