"""One vCenter's admission loop over every kind of proxy work, fed by the watch.

The pure queue is :mod:`.admission`; this module is its loop and the interface each
kind of proxy work plugs into it (docs/admission.md, "Kinds of work"):

- A kind keeps a kopf index of its resolved work in flight, keyed by (namespace,
  vCenter), each value a :class:`Queued` record (its kind, VM, host, disks per
  datastore, whether it waits). The index function is the kind's own (it knows its
  status), and wakes the vCenter's loop (``kube.handlers.admission_wakeup``).
- A kind hands the loop a :class:`Lane`: which index holds its records, which
  controller (``--controllers``) runs it, and the three status patches that start one
  of its records, tell one why it waits and where it stands, and fail one that waited
  past the lane's deadline. ``main`` collects the lanes into the operator memo; the
  daemon that runs one loop per VCenter (``vcenter.handlers``) reads them from there,
  so no kind's package imports another's.

The loop of one vCenter wakes when a record of that vCenter changes, plans
(:func:`decide`, pure) over the records of all lanes together (limits are shared:
a restore and a backup on one host count against the same NFC disks), and writes:

- **starts**, in order, with the object's ``resourceVersion`` as a precondition, so an
  object that changed since the record was read (started by a previous instance whose
  write the watch has not delivered yet, deleted and recreated) is not started: the
  apiserver answers Conflict and the next turn sees the fresh object. Nothing is ever
  started twice;
- **waiting statuses** (``Admitted=False``, reason, message, ``queuePosition``) only
  where they differ from what the object shows (or what this loop wrote and the watch
  has not brought back yet). A turn that changes nothing writes nothing;
- **expiries**: work that waited past its lane's deadline fails with
  ``DeadlineExceeded``.

What this loop admitted and the watch has not yet shown as admitted counts as running
(``Memory.started``), so a quick second turn cannot over-admit. Records of a lane whose
controller this operator does not run are counted when they run and never planned. No
LIST is made: the only requests are the writes above.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from vmguard.api import LABEL_RUN, format_time
from vmguard.controller.kube.admission import (
    PolicyLimits,
    VCenterLimits,
    Waiting,
    Work,
    WorkKind,
    plan,
)
from vmguard.controller.kube.conditions import set_condition
from vmguard.controller.kube.timing import REAL_TIME, Timing

log = logging.getLogger(__name__)

DEBOUNCE = 0.5
"""Seconds a woken loop waits for more changes before it plans (a burst is one turn)."""
IDLE = 60.0
"""Seconds between turns when nothing wakes the loop (waiting work's deadlines)."""


@dataclass(frozen=True)
class PolicyTerms:
    """What admission needs of a policy: its priority, limits and transport."""

    priority: int = 0
    limits: PolicyLimits = field(default_factory=PolicyLimits)
    nfc: bool = True
    verifications: int = 2
    """``spec.verification.concurrency``: the policy's verifications running at once."""

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
            int((spec.get("verification") or {}).get("concurrency") or 2),
        )


def vcenter_limits(spec: Mapping[str, Any]) -> VCenterLimits:
    """A VCenter's ``spec.limits``, VMware's NBD guidance where not given."""
    return VCenterLimits.of(spec)


@dataclass(frozen=True)
class Queued:
    """A resolved piece of proxy work in flight, as the watch last showed its object."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    generation: int | None
    vcenter: str
    policy: str
    vm: str
    """The VM it reads or writes (moref): one VM never has two pieces of work running."""
    host: str
    disks: tuple[tuple[str, int], ...]
    """(datastore, disks on it), one entry per datastore."""
    created: dt.datetime | None
    scheduled: dt.datetime | None
    started: dt.datetime | None
    waiting: bool
    """Resolved, not admitted; else it runs."""
    conditions: tuple[Mapping[str, Any], ...] = ()
    position: int | None = None
    kind: WorkKind = WorkKind.BACKUP
    nfc: bool | None = None
    """Whether it moves data over NBD; None: its policy's transport decides (backups)."""

    @property
    def shown(self) -> tuple[int | None, str, str]:
        """(queuePosition, Admitted reason, Admitted message) as the object shows them."""
        admitted = next((c for c in self.conditions if c.get("type") == "Admitted"), {})
        return self.position, str(admitted.get("reason", "")), str(admitted.get("message", ""))


def object_fields(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of :class:`Queued` that name its object, from the object's metadata."""
    return {
        "namespace": str(meta.get("namespace", "")),
        "name": str(meta.get("name", "")),
        "uid": str(meta.get("uid", "")),
        "resource_version": str(meta.get("resourceVersion", "")),
        "generation": meta.get("generation"),
    }


def run_time(labels: Mapping[str, str]) -> dt.datetime | None:
    """The scheduled run a policy's object belongs to (label ``vmguard.io/run``)."""
    run = labels.get(LABEL_RUN)
    if not run:
        return None
    try:
        return dt.datetime.strptime(run, "%Y%m%dT%H%MZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def placement_disks(where: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    """``status.placement``'s disks per datastore (the older ``datastores`` list: one each)."""
    return tuple(
        (str(d.get("datastore", "")), int(d.get("count") or 1)) for d in where.get("disks") or ()
    ) or tuple((str(ds), 1) for ds in where.get("datastores") or ())


class Lane(Protocol):
    """What one kind of proxy work plugs into the queue (the interface of this module).

    ``index`` names the kopf index (keyed (namespace, vCenter), values :class:`Queued`
    of this ``kind``); ``controller`` the ``--controllers`` entry that runs the kind;
    ``plural`` its objects' plural; ``deadline`` the seconds a record may wait (from
    ``Queued.started``) before :meth:`expired_status` fails it. The three methods return
    status patches (pure: no I/O)."""

    @property
    def kind(self) -> WorkKind: ...

    @property
    def plural(self) -> str: ...

    @property
    def index(self) -> str: ...

    @property
    def controller(self) -> str: ...

    @property
    def deadline(self) -> float: ...

    def start_status(self, q: Queued, now: dt.datetime) -> dict[str, Any]: ...

    def waiting_status(self, q: Queued, w: Waiting, now: dt.datetime) -> dict[str, Any]: ...

    def expired_status(self, q: Queued, now: dt.datetime) -> dict[str, Any]: ...


def admitted_conditions(
    q: Queued, ready_reason: str, ready_message: str, now: dt.datetime
) -> list[Any]:
    """``q``'s conditions with ``Admitted=True`` and Ready=False saying what comes next."""
    at = format_time(now)
    conditions = set_condition(
        q.conditions,
        "Admitted",
        True,
        "WithinLimits",
        "started within the limits",
        q.generation,
        at,
    )
    return set_condition(conditions, "Ready", False, ready_reason, ready_message, q.generation, at)


def waiting_conditions(q: Queued, w: Waiting, now: dt.datetime) -> list[Any]:
    """``q``'s conditions with ``Admitted=False`` and ``Ready=False`` naming what holds it."""
    at = format_time(now)
    conditions = set_condition(
        q.conditions, "Admitted", False, w.reason, w.message, q.generation, at
    )
    return set_condition(conditions, "Ready", False, w.reason, w.message, q.generation, at)


def _work(q: Queued, terms: Mapping[str, PolicyTerms], on_line: Any) -> Work:
    if q.kind == WorkKind.BACKUP:
        t = terms.get(q.policy) or PolicyTerms()
        priority, limits, nfc = t.priority, t.limits, t.nfc
    elif q.kind == WorkKind.VERIFY:  # its own share of its policy; reads no vCenter disk
        n = (terms.get(q.policy) or PolicyTerms()).verifications
        priority, limits, nfc = 0, PolicyLimits(n, n, n), False
    elif q.kind == WorkKind.COPY:  # its own share of its policy's total; no vCenter disk
        n = (terms.get(q.policy) or PolicyTerms()).limits.total
        priority, limits, nfc = 0, PolicyLimits(n, n, n), False
    else:  # policies' terms are for their backups; other kinds have no per-policy limits
        priority, limits, nfc = 0, None, True
    return Work(
        uid=q.uid,
        name=q.name,
        policy=q.policy,
        vm=q.vm,
        host=q.host,
        disks=q.disks,
        priority=priority,
        scheduled=on_line(q.scheduled) if q.scheduled else None,
        created=q.created,
        nfc=nfc if q.nfc is None else q.nfc,
        policy_limits=limits,
        kind=q.kind,
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
    last: WorkKind | None = None
    """The kind this loop started last: kinds take turns from it (a restart forgets it,
    and the first tie goes to restores)."""


def decide(
    records: Iterable[Queued],
    terms: Mapping[str, PolicyTerms],
    limits: VCenterLimits,
    memory: Memory,
    *,
    now: dt.datetime,
    deadline: float | Mapping[WorkKind, float],
    vcenter: str = "",
    schedule_to_clock: Any = lambda t: t,
    planned: Callable[[Queued], bool] = lambda q: True,
) -> Decision:
    """Pure: what one turn starts, tells and expires (see the module doc). ``deadline``
    is one for all kinds or one per kind; ``planned`` says which waiting records this
    loop may start or tell (the others are left alone)."""
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
            if not planned(q):
                continue
            limit = deadline if isinstance(deadline, float | int) else deadline[q.kind]
            if q.started and (now - q.started).total_seconds() > limit:
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
        memory.last,
    )
    tell = []
    for w in p.waiting:
        q = by_uid[w.work.uid]
        shown = memory.told[q.uid][1] if q.uid in memory.told else q.shown
        if shown != (w.position, w.reason, w.message):
            tell.append((q, w))
    return Decision([by_uid[w.uid] for w in p.start], tell, expire)


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
    records of every kind and ``terms()`` its namespace's policies, both read from the
    watch; ``lanes`` are the kinds this operator runs (records of other kinds only count)."""

    api: StatusWriter
    namespace: str
    vcenter: str
    lanes: Mapping[WorkKind, Lane]
    records: Callable[[], Iterable[Queued]]
    terms: Callable[[], Mapping[str, PolicyTerms]]
    limits: Callable[[], VCenterLimits]
    timing: Timing = REAL_TIME
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
            deadline={k: lane.deadline for k, lane in self.lanes.items()},
            vcenter=self.vcenter,
            schedule_to_clock=self.timing.off_line,
            planned=lambda q: q.kind in self.lanes,
        )
        for q in d.start:
            lane = self.lanes[q.kind]
            if await self.api.patch_status_if(
                lane.plural, q.namespace, q.name, lane.start_status(q, now), q.resource_version
            ):
                self.memory.started[q.uid] = q.resource_version
                self.memory.last = q.kind
                log.info("%s/%s: admitted", q.namespace, q.name)
        for q in d.expire:
            lane = self.lanes[q.kind]
            await self.api.patch_status_if(
                lane.plural, q.namespace, q.name, lane.expired_status(q, now), q.resource_version
            )
        for q, w in d.tell:
            lane = self.lanes[q.kind]
            await self.api.patch_status(
                lane.plural, q.namespace, q.name, lane.waiting_status(q, w, now)
            )
            self.memory.told[q.uid] = (q.resource_version, (w.position, w.reason, w.message))
        return d
