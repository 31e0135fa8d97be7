"""Scheduled verification: a policy whose ``spec.verification.every`` is a cron line has
the newest point of each of its VMs verified again at each of the line's times
(docs/verification.md, "In the cluster").

Runs in the policy's scheduler pass (:mod:`.runs`). Stateless, so a restarted operator
or a peer does the same: with ``tick`` the line's latest time at or before now, a VM's
newest Completed VMGuardBackup (with an archive, not a stand-in for an expired run, not
synced) is asked for again (:func:`vmguard.controller.kube.verifications.again`) when it
completed before ``tick``, no run of it is in flight, and none was asked for at or after
``tick``. A point completed after ``tick`` waits for the next time. The request is one
status patch of the backup; the vCenter's admission queue takes it from there, as for a
backup verified on completion.

:func:`allowance` is how long a VM may go without a verification that passed, what
``VmguardVerificationMissing`` judges (docs/verification.md, "The allowance").
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from vmguard.api import LABEL_VM, BackupPhase, parse_time
from vmguard.api.kinds import BACKUP
from vmguard.api.names import is_synced
from vmguard.controller.kube import points
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.schedule import Schedule, parse
from vmguard.controller.kube.verifications import (
    EACH_BACKUP,
    again,
    every,
    in_flight,
    verification_of,
)
from vmguard.errors import ScheduleError

log = logging.getLogger(__name__)


def _vm(obj: Mapping[str, Any]) -> str:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    status = obj.get("status") or {}
    return str(labels.get(LABEL_VM) or (status.get("vm") or {}).get("instanceUuid") or "").lower()


def due(backups: Iterable[Mapping[str, Any]], tick: dt.datetime) -> list[Mapping[str, Any]]:
    """The backups to verify again for ``tick`` (see the module doc; pure)."""
    # Status times carry whole seconds: a request made within the tick's second reads
    # as that second, and must count as made at or after the tick.
    tick = tick.replace(microsecond=0)
    newest: dict[str, tuple[dt.datetime, Mapping[str, Any]]] = {}
    for obj in backups:
        meta, status = obj.get("metadata") or {}, obj.get("status") or {}
        if points.is_stand_in(obj) or is_synced(meta.get("labels")):
            continue
        if status.get("phase") != BackupPhase.COMPLETED or not status.get("archiveId"):
            continue
        done = parse_time(status.get("completionTime"))
        vm = _vm(obj)
        if done is None or not vm:
            continue
        if vm not in newest or done > newest[vm][0]:
            newest[vm] = (done, obj)
    out = []
    for done, obj in newest.values():
        status = obj.get("status") or {}
        asked = parse_time(verification_of(status).get("requestTime"))
        if done > tick or in_flight(status) or (asked is not None and asked >= tick):
            continue
        out.append(obj)
    return sorted(out, key=lambda o: str(o["metadata"]["name"]))


def allowance(
    policy_spec: Mapping[str, Any], rpo: dt.timedelta | None, schedule: Schedule | None
) -> dt.timedelta | None:
    """How long a VM of the policy may go without a verification that passed, on the
    schedule line (pure): twice the longest gap of ``verification.every``'s cron line (one
    verification may be missed, as the default RPO lets one backup run be missed), or,
    verifying each backup, the RPO plus the backup schedule's longest gap (a verification
    waits behind the next run's backups in the admission queue). None when the policy
    verifies nothing or its lines cannot run (its conditions say why)."""
    line = every(policy_spec)
    if line is None:
        return None
    if line == EACH_BACKUP:
        if rpo is None or schedule is None:
            return None
        return rpo + schedule.gaps()[1]
    try:
        zone = (policy_spec.get("schedule") or {}).get("timeZone") or "UTC"
        return 2 * parse(line, zone).gaps()[1]
    except ScheduleError:
        return None


async def request_due(
    api: KubeAPI,
    policy: Mapping[str, Any],
    backups: Iterable[Mapping[str, Any]],
    tick: dt.datetime,
    now: dt.datetime,
) -> int:
    """Ask for the verifications :func:`due` names; how many were asked for."""
    spec = policy.get("spec") or {}
    asked = 0
    for obj in due(backups, tick):
        previous = verification_of(obj.get("status") or {})
        body = again(spec, now, previous or None)
        if body is None:
            return asked
        meta = obj["metadata"]
        await api.patch_status(
            BACKUP.plural, meta["namespace"], meta["name"], {"verification": body}
        )
        asked += 1
    if asked:
        log.info("%s/%s: verifying %d point(s) again", policy["metadata"]["namespace"],
                 policy["metadata"]["name"], asked)  # fmt: skip
    return asked


__all__ = ["allowance", "due", "request_due"]
