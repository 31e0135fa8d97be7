"""One vCenter's admission loop: the queue of :mod:`.admission`, fed by the watch.

The operator keeps, from kopf's watch of the backups (a kopf index, filled before any
handler runs, so a restarted operator or a peer taking over starts from the whole
picture), a compact :class:`Queued` record of every backup in flight that has been
resolved (its VM, host and datastores are known) and of every policy's priority and
limits. The loop of one vCenter wakes when a record of that vCenter changes, plans
(:func:`decide`, pure), and writes:

- **starts**, in order: ``phase: Snapshotting``, ``Admitted=True``, no
  ``queuePosition``, sent with the object's ``resourceVersion`` as a precondition, so a
  backup that changed since the record was read (started by a previous instance whose
  write the watch has not delivered yet, deleted and recreated) is not started: the
  apiserver answers Conflict and the next turn sees the fresh object. Nothing is ever
  started twice;
- **waiting statuses** — ``Admitted=False`` with the reason and message of the limit
  that holds it, ``Ready=False`` saying the same, ``queuePosition`` — only where they
  differ from what the object shows (or what this loop wrote and the watch has not
  brought back yet). A turn that changes nothing writes nothing;
- **expiries**: a backup that waited past the backup deadline fails with
  ``DeadlineExceeded``, as it did before the queue.

What this loop admitted and the watch has not yet shown as admitted counts as running
(``started``), so a quick second turn cannot over-admit. No LIST is made: the only
requests are the writes above.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from vmguard.api import (
    BACKUP_ACTIVE,
    LABEL_RUN,
    BackupPhase,
    format_time,
    parse_time,
)
from vmguard.controller.kube.admission import (
    PolicyLimits,
    VCenterLimits,
    Waiting,
    Work,
    plan,
)
from vmguard.controller.kube.conditions import lifecycle_conditions, set_condition
from vmguard.controller.kube.timing import REAL_TIME, Timing

log = logging.getLogger(__name__)

DEBOUNCE = 0.5
"""Seconds a woken loop waits for more changes before it plans (a burst is one turn)."""
IDLE = 60.0
"""Seconds between turns when nothing wakes the loop (waiting backups' deadlines)."""


@dataclass(frozen=True)
class PolicyTerms:
    """What admission needs of a policy: its priority, limits and transport."""

    priority: int = 0
    limits: PolicyLimits = field(default_factory=PolicyLimits)
    nfc: bool = True

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> PolicyTerms:
        c = spec.get("concurrency") or {}
        d = PolicyLimits()
        return cls(
            int(spec.get("priority") or 0),
            PolicyLimits(
                int(c.get("total") or d.total),
                int(c.get("perHost") or d.per_host),
                int(c.get("perDatastore") or d.per_datastore),
            ),
            # NFC limits bind NBD only; "auto" may fall back to NBD, so it counts.
            (spec.get("transport") or "auto") != "hotadd",
        )


def vcenter_limits(spec: Mapping[str, Any]) -> VCenterLimits:
    """A VCenter's ``spec.limits``, VMware's NBD guidance where not given."""
    return VCenterLimits.of(spec)


@dataclass(frozen=True)
class Queued:
    """A resolved backup in flight, as the watch last showed it."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    generation: int | None
    vcenter: str
    policy: str
    vm: str
    host: str
    disks: tuple[tuple[str, int], ...]
    created: dt.datetime | None
    scheduled: dt.datetime | None
    started: dt.datetime | None
    waiting: bool
    """Pending (resolved, not admitted); else it runs (an active phase)."""
    conditions: tuple[Mapping[str, Any], ...] = ()
    position: int | None = None

    @property
    def shown(self) -> tuple[int | None, str, str]:
        """(queuePosition, Admitted reason, Admitted message) as the object shows them."""
        admitted = next((c for c in self.conditions if c.get("type") == "Admitted"), {})
        return self.position, str(admitted.get("reason", "")), str(admitted.get("message", ""))


def _run_time(labels: Mapping[str, str]) -> dt.datetime | None:
    run = labels.get(LABEL_RUN)
    if not run:
        return None
    try:
        return dt.datetime.strptime(run, "%Y%m%dT%H%MZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def queued_of(body: Mapping[str, Any], policy_of_labels: str | None = None) -> Queued | None:
    """The record of a backup in the queue, or None when it is not (yet, or any more):
    not resolved, ended, deleted while waiting, or synced (the caller filters synced
    ones). A running backup being deleted still counts until it is gone: its proxy and
    snapshot are being cleaned up."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    phase = status.get("phase") or BackupPhase.PENDING
    resolved = bool((status.get("vm") or {}).get("moref")) and bool(status.get("vcenter"))
    if not resolved:
        return None
    if phase != BackupPhase.PENDING and phase not in BACKUP_ACTIVE:
        return None
    if meta.get("deletionTimestamp") and phase == BackupPhase.PENDING:
        return None  # deleted while waiting: it will not start (a running one still counts)
    where = status.get("placement") or {}
    disks = tuple(
        (str(d.get("datastore", "")), int(d.get("count") or 1)) for d in where.get("disks") or ()
    ) or tuple((str(ds), 1) for ds in where.get("datastores") or ())
    policy = ((body.get("spec") or {}).get("policyRef") or {}).get("name") or policy_of_labels
    labels = meta.get("labels") or {}
    return Queued(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        resource_version=str(meta.get("resourceVersion", "")),
        generation=meta.get("generation"),
        vcenter=str(status["vcenter"]),
        policy=str(policy or ""),
        vm=str(status["vm"]["moref"]),
        host=str(where.get("host", "")),
        disks=disks,
        created=parse_time(meta.get("creationTimestamp")),
        scheduled=_run_time(labels),
        started=parse_time(status.get("startTime")),
        waiting=phase == BackupPhase.PENDING,
        conditions=tuple(dict(c) for c in status.get("conditions") or ()),
        position=status.get("queuePosition"),
    )


def _work(q: Queued, terms: Mapping[str, PolicyTerms], on_line: Any) -> Work:
    t = terms.get(q.policy) or PolicyTerms()
    scheduled = on_line(q.scheduled) if q.scheduled else None
    return Work(
        uid=q.uid,
        name=q.name,
        policy=q.policy,
        vm=q.vm,
        host=q.host,
        disks=q.disks,
        priority=t.priority,
        scheduled=scheduled,
        created=q.created,
        nfc=t.nfc,
        policy_limits=t.limits,
    )


@dataclass(frozen=True)
class Decision:
    start: list[Queued]
    tell: list[tuple[Queued, Waiting]]
    expire: list[Queued]


@dataclass
class Memory:
    """What this loop wrote that the watch may not have brought back yet."""

    started: dict[str, str] = field(default_factory=dict)
    """uid → resourceVersion it had when this loop started it."""
    told: dict[str, tuple[str, tuple[int | None, str, str]]] = field(default_factory=dict)
    """uid → (resourceVersion before the write, what was written)."""


def decide(
    records: Iterable[Queued],
    terms: Mapping[str, PolicyTerms],
    limits: VCenterLimits,
    memory: Memory,
    *,
    now: dt.datetime,
    deadline: float,
    vcenter: str = "",
    schedule_to_clock: Any = lambda t: t,
) -> Decision:
    """Pure: what one turn starts, tells and expires (see the module doc)."""
    records = list(records)
    seen = {q.uid: q for q in records}
    for uid, rv in list(memory.started.items()):  # the watch caught up, or it is gone
        q = seen.get(uid)
        if q is None or not q.waiting or q.resource_version != rv:
            del memory.started[uid]
    for uid, (rv, _) in list(memory.told.items()):
        q = seen.get(uid)
        if q is None or not q.waiting or q.resource_version != rv:
            del memory.told[uid]
    expire, waiting, running = [], [], []
    for q in records:
        if q.waiting and q.uid not in memory.started:
            if q.started and (now - q.started).total_seconds() > deadline:
                expire.append(q)
            else:
                waiting.append(q)
        else:
            running.append(q)
    by_uid = {q.uid: q for q in waiting}
    p = plan(
        [_work(q, terms, schedule_to_clock) for q in waiting],
        [_work(q, terms, schedule_to_clock) for q in running],
        limits,
        vcenter,
    )
    tell = []
    for w in p.waiting:
        q = by_uid[w.work.uid]
        shown = memory.told[q.uid][1] if q.uid in memory.told else q.shown
        if shown != (w.position, w.reason, w.message):
            tell.append((q, w))
    return Decision([by_uid[w.uid] for w in p.start], tell, expire)


def waiting_status(q: Queued, w: Waiting, now: dt.datetime) -> dict[str, Any]:
    """The status patch telling ``q`` why it waits and where it stands."""
    at = format_time(now)
    conditions = set_condition(
        q.conditions, "Admitted", False, w.reason, w.message, q.generation, at
    )
    conditions = set_condition(conditions, "Ready", False, w.reason, w.message, q.generation, at)
    conditions = lifecycle_conditions(
        conditions,
        BackupPhase.PENDING,
        terminal=False,
        failure=None,
        generation=q.generation,
        at=at,
    )
    return {"queuePosition": w.position, "conditions": conditions}


def start_status(q: Queued, now: dt.datetime) -> dict[str, Any]:
    """The status patch admitting ``q``: it moves on to Snapshotting."""
    at = format_time(now)
    message = "started within the limits"
    conditions = set_condition(
        q.conditions, "Admitted", True, "WithinLimits", message, q.generation, at
    )
    conditions = set_condition(
        conditions,
        "Ready",
        False,
        BackupPhase.SNAPSHOTTING,
        "taking the snapshot",
        q.generation,
        at,
    )
    conditions = lifecycle_conditions(
        conditions,
        BackupPhase.SNAPSHOTTING,
        terminal=False,
        failure=None,
        generation=q.generation,
        at=at,
    )
    return {
        "phase": BackupPhase.SNAPSHOTTING,
        "queuePosition": None,
        "conditions": conditions,
        "observedGeneration": q.generation,
    }


def expired_status(q: Queued, deadline: float, now: dt.datetime) -> dict[str, Any]:
    """The status patch failing ``q``, which waited past the backup deadline."""
    at = format_time(now)
    message = f"the backup did not start within {deadline:.0f}s"
    error = {"reason": "DeadlineExceeded", "message": message, "retryable": False}
    conditions = set_condition(
        q.conditions, "Ready", False, "DeadlineExceeded", message, q.generation, at
    )
    conditions = lifecycle_conditions(
        conditions, BackupPhase.FAILED, terminal=True, failure=error, generation=q.generation, at=at
    )
    out: dict[str, Any] = {
        "phase": BackupPhase.FAILED,
        "error": error,
        "queuePosition": None,
        "completionTime": at,
        "conditions": conditions,
    }
    if q.started:
        out["durationSeconds"] = round((now - q.started).total_seconds(), 1)
    return out


class StatusWriter(Protocol):
    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None: ...

    async def patch_status_if(
        self,
        plural: str,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        resource_version: str,
    ) -> bool: ...


class Waker(Protocol):
    def wait(self) -> Awaitable[object]: ...


@dataclass
class AdmissionLoop:
    """The loop of one vCenter. ``records()`` returns the vCenter's :class:`Queued`
    records and ``terms()`` its namespace's policies, both read from the watch."""

    api: StatusWriter
    plural: str
    namespace: str
    vcenter: str
    records: Callable[[], Iterable[Queued]]
    terms: Callable[[], Mapping[str, PolicyTerms]]
    limits: Callable[[], VCenterLimits]
    timing: Timing = REAL_TIME
    deadline: float = 6 * 3600.0
    memory: Memory = field(default_factory=Memory)
    seen_terms: tuple[dict[str, PolicyTerms], VCenterLimits] | None = None

    async def run(self, wake: asyncio.Event, stopped: Waker) -> None:
        while not getattr(stopped, "is_set", lambda: False)():
            try:
                await self.turn()
            except Exception as exc:  # the loop must outlive any fault of one turn
                log.warning("admission turn for vCenter %s failed: %s", self.vcenter, exc)
            await self.timing.wait(IDLE, wake, stopped)
            if wake.is_set():
                await self.timing.wait(DEBOUNCE, stopped)
            wake.clear()

    async def turn(self) -> Decision:
        now = self.timing.now()
        terms, limits = dict(self.terms()), self.limits()
        if (terms, limits) != self.seen_terms:
            log.info("vCenter %s: planning with %s and policies %s", self.vcenter, limits, terms)
            self.seen_terms = (terms, limits)
        d = decide(
            self.records(),
            terms,
            limits,
            self.memory,
            now=now,
            deadline=self.deadline,
            vcenter=self.vcenter,
            schedule_to_clock=self.timing.off_line,
        )
        for q in d.start:
            if await self.api.patch_status_if(
                self.plural, q.namespace, q.name, start_status(q, now), q.resource_version
            ):
                self.memory.started[q.uid] = q.resource_version
                log.info("%s/%s: admitted", q.namespace, q.name)
        for q in d.expire:
            await self.api.patch_status_if(
                self.plural,
                q.namespace,
                q.name,
                expired_status(q, self.deadline, now),
                q.resource_version,
            )
        for q, w in d.tell:
            await self.api.patch_status(self.plural, q.namespace, q.name, waiting_status(q, w, now))
            self.memory.told[q.uid] = (q.resource_version, (w.position, w.reason, w.message))
        return d
