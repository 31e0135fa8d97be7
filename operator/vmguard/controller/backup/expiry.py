"""A finished VMGuardBackup expires: one backup run is deleted ``ttlSecondsAfterFinished``
after it finished, like a Job (docs/resource-model.md, "VMGuardBackup").

The TTL is the backup's ``spec.ttlSecondsAfterFinished``, else its policy's, else 24 h
(:func:`~vmguard.controller.kube.policy_spec.backup_ttl`), counted from
``status.completionTime`` on the controller's clock (:mod:`~vmguard.controller.kube.timing`;
at the lab's speed-up it is an interval, divided like the others).

Invariants:

- **The point stays, the archive stays.** Expiry never opens the repository. A
  Completed backup's point is made sure of in its VM's ProtectedVM (added if it is not
  there: a backup that completed before ProtectedVMs existed is folded in now), and its
  ``backup`` field is cleared, which tells catalog sync that the run expired — it then
  does not bring the object back as a synced VMGuardBackup, as it does for one a person
  deleted. Only then is the object deleted, with its UID as a precondition (a new object
  of the same name is left alone). A Failed backup has no point: it is just deleted.
- **Nothing is deleted whose point could not be written**: an apiserver fault leaves
  the object for the next try (:data:`RETRY`). A backup whose status names no VM or
  vCenter (so no ProtectedVM can be named) is deleted like a Failed one; catalog sync
  brings its archive back as a synced VMGuardBackup, as it does today for any deleted one.
- Synced VMGuardBackups (catalog sync) never expire: they stand for archives, not runs.
- **A run waits for its copies.** While its policy names a copy target whose copy of
  the run is not settled (made, pruned there, or given up after its attempts;
  :func:`~vmguard.controller.kube.copies.awaited`), the run is kept past its TTL — a
  copy Job is owned by its run, and an expired run's point is never copied (no object
  is left to own its Job) — but at most :data:`COPY_HOLD` past its TTL and the targets'
  longest ``delay`` (a target the policy's ``CopiesValid`` refuses is never copied to).
  A TTL of 0 therefore no longer loses the copies (docs/copies.md).
- Restart safe: the wait is recomputed from the recorded completion time; every step
  is idempotent.
- **Waiting costs the apiserver nothing**: the loop reads what kopf's watch keeps of
  each run (:func:`record`, in a kopf index) and the policy's TTL from kopf's index of
  policies; it reads the object once, when it is due (a run of last night's 5,000 used
  to GET itself and its policy at every start and every hour: 10,000 requests,
  docs/scale.md).
- **One loop per operator, not a task per run**: :func:`loop` walks every finished
  run's record at each turn and sleeps until the earliest is due (at most
  :data:`RECHECK`), or until the index changes. A kopf daemon per finished run cost
  ≈ 20 KB each (its task and kopf's machinery around it: ≈ 100 MB for one night's
  5,000 runs, docs/scale.md).
- **Only the replica that acts expires**: the loop runs while its ``acting`` gate is
  open (:class:`~vmguard.controller.kube.handlers.Presence`: always without peering;
  with peering, while kopf runs this replica's daemons — kopf stops them all on a
  pause). It checks the gate before each read and each expiry. Two replicas expiring
  the same run in the moment of a hand-over is harmless: every step is idempotent and
  the delete carries the UID.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from vmguard.api import BACKUP_TERMINAL, BackupPhase, RestorePoint, parse_time
from vmguard.api.kinds import BACKUP, POLICY
from vmguard.api.names import is_synced
from vmguard.controller.backup import verification
from vmguard.controller.kube import copies, points
from vmguard.controller.kube.bodies import backup_spec, backup_status, ref_name
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.policy_spec import backup_ttl
from vmguard.controller.kube.timing import Timing, Waitable
from vmguard.errors import ConfigError, RetryableError

RETRY = 30.0
COPY_HOLD = 7 * 24 * 3600.0
"""Longest a run is kept past its TTL (and its copy targets' delay) for its copies."""
RECHECK = 3600.0
"""Longest wait before the TTL is read again (a policy's TTL may have been changed)."""
SETTLE = 1.0
"""Seconds the loop lets a burst of index changes settle before it looks again."""

log = logging.getLogger(__name__)


class Stopped(Waitable, Protocol):
    """kopf's ``stopped``: true once the daemon is to end, and awaitable until then."""

    def __bool__(self) -> bool: ...


def expires(status: Any, labels: Any) -> bool:
    """Whether a VMGuardBackup is one that expires: finished and not synced. A backup whose
    verification waits or runs expires once it has ended (its Job is the backup's)."""
    return (
        not is_synced(labels)
        and (status or {}).get("phase") in BACKUP_TERMINAL
        and not verification.in_flight(status or {})
    )


def due(
    obj: dict[str, Any],
    ttl: int,
    timing: Timing,
    policy_spec: Mapping[str, Any] | None = None,
) -> dt.datetime | None:
    """When the backup expires; None when it records no completion time (pure). While
    a copy its policy asks for is not settled: the hold's end (see the module doc), or
    an hour from now (to look again) if that is earlier."""
    done = parse_time(backup_status(obj).get("completionTime"))
    if done is None:
        return None
    at = done + dt.timedelta(seconds=timing.interval(float(ttl)))
    if backup_status(obj).get("phase") != BackupPhase.COMPLETED or not copies.awaited(
        obj, policy_spec
    ):
        return at
    hold = timing.interval(copies.longest_delay(policy_spec) + COPY_HOLD)
    until = at + dt.timedelta(seconds=hold)
    look = timing.now() + dt.timedelta(seconds=timing.interval(RECHECK))
    return max(at, min(until, look))


async def ttl_of(api: KubeAPI, obj: dict[str, Any]) -> tuple[int, Mapping[str, Any] | None]:
    """The backup's TTL, and its policy's spec (None: none, or not read: the backup has
    a TTL of its own and its phase is not Completed, so no copy can hold it)."""
    spec = backup_spec(obj)
    policy_name = ref_name(spec.get("policyRef"))
    policy = None
    needed = spec.get("ttlSecondsAfterFinished") is None or (
        backup_status(obj).get("phase") == BackupPhase.COMPLETED
    )
    if needed and policy_name:
        policy = await api.get_object(POLICY.plural, obj["metadata"]["namespace"], policy_name)
    policy_spec = (policy or {}).get("spec")
    return backup_ttl(spec, policy_spec), policy_spec


def _run_expired(point: RestorePoint) -> RestorePoint | None:
    if "backup" not in point:
        return None
    out = dict(point)
    del out["backup"]
    return out  # type: ignore[return-value]


async def expire(api: KubeAPI, obj: dict[str, Any]) -> bool:
    """Record the point as the expired run's (if Completed), then delete the object.
    True when it was deleted (or gone); RetryableError leaves it for the next try."""
    meta, status = obj["metadata"], backup_status(obj)
    if status.get("phase") == BackupPhase.COMPLETED and status.get("archiveId"):
        try:
            key = points.backup_key(obj)
        except ConfigError as exc:
            log.warning("%s/%s expires without a point: %s", meta["namespace"], meta["name"], exc)
        else:
            await points.add_point(api, key, points.backup_point(obj), vm=status.get("vm") or {})
            await points.update_point(api, key, status["archiveId"], _run_expired)
    await api.delete_object(BACKUP.plural, meta["namespace"], meta["name"], meta["uid"])
    log.info("%s/%s expired (ttlSecondsAfterFinished)", meta["namespace"], meta["name"])
    return True


PolicySpec = Callable[[str, str], Mapping[str, Any] | None]
"""``(namespace, policy name)`` → what is known of that policy's spec (its TTL and copy
targets), or None."""


async def _due(
    api: KubeAPI,
    obj: dict[str, Any],
    policy_spec: PolicySpec | None,
    timing: Timing,
    looked_up: Looked | None = None,
) -> dt.datetime | None:
    if policy_spec is None:
        ttl, known = await ttl_of(api, obj)
    else:
        known = (looked_up or _look_up(obj, policy_spec))[1]
        ttl = backup_ttl(backup_spec(obj), known)
    return due(obj, ttl, timing, known)


Looked = tuple[str, Mapping[str, Any] | None]
"""What a run's due time reads of its policy, and its repr (to tell a change)."""


def _look_up(obj: Mapping[str, Any], policy_spec: PolicySpec | None) -> Looked:
    if policy_spec is None:
        return "", None
    name = ref_name(backup_spec(obj).get("policyRef"))
    known = policy_spec(obj["metadata"]["namespace"], name) if name else None
    return repr(known), known


RECORD_FIELDS = {
    "metadata": ("namespace", "name", "uid", "deletionTimestamp"),
    "spec": ("ttlSecondsAfterFinished", "policyRef"),
    "status": ("phase", "completionTime", "copies"),
}
"""What :func:`due` and :func:`ttl_of` read of a run: all the loop keeps of one."""


def record(body: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a finished run the loop waits on (pure; kopf's index keeps it)."""
    out: dict[str, Any] = {}
    for part, keys in RECORD_FIELDS.items():
        src = body.get(part) or {}
        out[part] = {k: src[k] for k in keys if src.get(k) is not None}
    return out


class Gate(Waitable, Protocol):
    """Open while this replica acts (:class:`~vmguard.controller.kube.handlers.Presence`)."""

    def is_set(self) -> bool: ...


class Open:
    """A gate that is always open (no peering, or a test)."""

    def is_set(self) -> bool:
        return True

    async def wait(self) -> bool:
        return True


OPEN = Open()


@dataclass
class Counts:
    """What :func:`loop` did: its turns, and the runs it looked at afresh in them (a
    record kopf has not replaced is not looked at again before its time)."""

    turns: int = 0
    looks: int = 0


async def loop(
    api: KubeAPI,
    timing: Timing,
    runs: Callable[[], Iterable[Mapping[str, Any]]],
    stopped: Stopped,
    policy_spec: PolicySpec | None = None,
    *,
    wake: asyncio.Event | None = None,
    acting: Gate = OPEN,
    expired: Callable[[str], None] = lambda namespace: None,
    until_empty: bool = False,
) -> Counts:
    """Expire every finished run when it is due: one loop for all of them.

    ``runs`` gives the finished runs' records as the watch keeps them (kopf's index of
    :func:`record`); ``wake`` is set when that changes; ``acting`` is the gate (see the
    module doc); ``expired(namespace)`` is called after each run expired. Each turn
    reads nothing but the records and the policies' TTLs, GETs a run once it is due and
    expires it if it still is, then sleeps until the next one is due (at most
    :data:`RECHECK`). ``until_empty`` ends the loop when no run is left to wait for
    (a single run's wait, :func:`run`). Returns what it did (:class:`Counts`).
    """
    counts = Counts()
    done: set[str] = set()  # gone, being deleted, or never due (no completion time)
    retry_at: dict[str, dt.datetime] = {}
    # uid → (the record as the index held it, its policy's spec, when to look): a record
    # kopf has not replaced is not computed again until then (a turn is O(runs) dict
    # lookups, not O(runs) due-time computations: the index wakes the loop at every
    # change, 5,000 times as the operator starts).
    looks: dict[str, tuple[Mapping[str, Any], str, dt.datetime]] = {}
    while not stopped:
        if not acting.is_set():
            await timing.wait(timing.interval(RECHECK), stopped, acting)
            continue
        if wake is not None:
            wake.clear()
        counts.turns += 1
        current = list(runs())
        present = {str(r["metadata"]["uid"]) for r in current}
        done &= present
        retry_at = {uid: at for uid, at in retry_at.items() if uid in present}
        looks = {uid: v for uid, v in looks.items() if uid in present}
        nearest: dt.datetime | None = None
        waiting = 0
        now = timing.now()
        for held in current:
            uid = str(held["metadata"]["uid"])
            if uid in done or not acting.is_set() or stopped:
                continue
            obj = dict(held)  # as it is now: the live body may change under a wait
            looked_up = _look_up(obj, policy_spec)
            seen = looks.get(uid)
            if seen is not None and seen[0] is held and seen[1] == looked_up[0] and seen[2] > now:
                at: dt.datetime | None = seen[2]
            else:
                counts.looks += 1
                at = await _turn(api, obj, policy_spec, timing, retry_at, done, expired, looked_up)
                if at is not None:
                    looks[uid] = (held, looked_up[0], at)
            if at is not None:
                waiting += 1
                nearest = at if nearest is None else min(nearest, at)
        if until_empty and not waiting:
            break
        left = timing.interval(RECHECK)
        if nearest is not None:
            left = min(left, max(0.0, (nearest - timing.now()).total_seconds()))
        await timing.wait(left, stopped, *([wake] if wake is not None else []))
        if wake is not None and wake.is_set():
            # Changes come in bursts (kopf's first LIST, a night's runs finishing): one
            # turn after the burst, not one per change.
            await timing.wait(SETTLE, stopped)
    return counts


async def _turn(
    api: KubeAPI,
    obj: dict[str, Any],
    policy_spec: PolicySpec | None,
    timing: Timing,
    retry_at: dict[str, dt.datetime],
    done: set[str],
    expired: Callable[[str], None],
    looked_up: Looked | None = None,
) -> dt.datetime | None:
    """One run's look: None when it is done with (expired, gone, or never due), else
    when to look again. ``looked_up``: its policy as the turn looked it up."""
    meta = obj["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], str(meta["uid"])
    if meta.get("deletionTimestamp"):
        done.add(uid)
        return None
    at = await _due(api, obj, policy_spec, timing, looked_up)
    if at is None:
        done.add(uid)
        return None
    if uid in retry_at:
        at = max(at, retry_at[uid])
    if at > timing.now():
        return at
    fresh = await api.get_object(BACKUP.plural, namespace, name)
    if (
        fresh is None
        or fresh["metadata"]["uid"] != uid
        or fresh["metadata"].get("deletionTimestamp")
    ):
        done.add(uid)
        return None
    at = await _due(api, fresh, policy_spec, timing)
    if at is None:
        done.add(uid)
        return None
    if at > timing.now():
        return at
    try:
        await expire(api, fresh)
    except (RetryableError, points.PointNotFound) as exc:
        log.warning("%s/%s: expiring: %s; retrying", namespace, name, exc)
        retry_at[uid] = timing.now() + dt.timedelta(seconds=RETRY)
        return retry_at[uid]
    done.add(uid)
    retry_at.pop(uid, None)
    expired(namespace)
    return None


async def run(
    api: KubeAPI,
    timing: Timing,
    obj: Mapping[str, Any],
    stopped: Stopped,
    policy_spec: PolicySpec | None = None,
) -> None:
    """Wait until one backup expires, then expire it: :func:`loop` over that one run.
    ``obj`` is the object as the watch keeps it (read afresh at each look); without
    ``policy_spec`` the policy is read when the backup names no TTL of its own."""
    await loop(api, timing, lambda: [obj], stopped, policy_spec, until_empty=True)
