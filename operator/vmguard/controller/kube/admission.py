"""The admission queue of one vCenter, as pure data: which waiting proxy work starts next.

Proxy work of every kind (:class:`WorkKind`: backups and restores today; copies and
verifications plug in the same way, see :mod:`.workqueue`) that has been resolved — its
VM, host and datastores are known — waits here until its limits allow it to start.
:func:`plan` takes what waits and what runs, in memory (built from the watch, never
from a LIST per object), and returns what to start now, in order, and for everything
else why it waits and its position. It does no I/O and keeps no state, so a restarted
operator, or the peer that takes over, plans the same from the same objects.

Invariants:

- **Order within a kind.** Higher policy priority first, then the earlier scheduled
  time, then *fair between policies*: within one priority and one scheduled time the
  policies take turns (the first backup of each policy, then the second of each, …;
  ties by policy name), and within a policy first come first served (creation time,
  then name). Work without a policy (a restore, an ad-hoc backup) has priority 0.
- **Fair between kinds.** The kinds' queues are merged by taking turns: the next place
  goes to the kind with the fewest items running or placed ahead so far; on a tie, the
  kinds rotate in :data:`TURNS` order starting after ``last``, the kind the loop started
  last (restores first when it has started nothing yet). So a restore never waits behind
  a night's queue of backups, nor backups behind a burst of restores: while both wait,
  each kind gets every other free slot, even when slots free one at a time. The order
  is total and deterministic given ``last``.
- **Background kinds go last** (:data:`BACKGROUND`: verifications and copies). They
  take no turns with backups and restores: every waiting item of those is placed before
  them, so a verification or copy never starts ahead of a waiting backup or restore,
  nor takes a place in their queue (among themselves they take turns). They also hold
  nothing those need: they read and write repositories only (no NFC disk, host or
  datastore), and their VM keys are their own (``<moref> verify``, ``<moref> copy to
  <target>``), so one running never makes the VM's backup wait as ``VMBusy``; only
  their own kind's limit in their policy (``verification.concurrency``, and
  ``concurrency.total`` for copies) holds them.
- **Limits, vCenter-wide, in disks** (:class:`VCenterLimits`): at most
  ``disks`` disks open through the vCenter, ``disks_per_host`` on one ESXi host and
  ``disks_per_datastore`` on one datastore. The first two are VMware's NFC limits and
  bind NBD only (docs/scale.md cites the source), so work that reads by hot-add does
  not count against them; the datastore limit bounds snapshot load for every transport.
- **Limits per policy, in backups** (:class:`PolicyLimits`, a policy's
  ``spec.concurrency``): ``total`` running at once, ``per_host`` on one host,
  ``per_datastore`` on one datastore. One VM never has two pieces of work running.
- **No overtaking on the vCenter's capacity**: once an item does not fit the vCenter
  total, nothing behind it starts (a large VM is not starved by small ones). An item
  held by a per-host, per-datastore, per-policy or busy-VM limit does not hold up
  items behind it that need other resources.
- **A single item larger than a limit** (a VM with more disks than a host allows)
  starts when the resource it exceeds is otherwise idle, rather than never.
- **Stable waiting statuses.** What a waiting item is told (:class:`Waiting`) depends on
  the limit that holds it, not on counts that change with every start, and its position
  is exact up to :data:`EXACT_POSITIONS` and then rounded up to the next step of 1-2-5
  (20, 50, 100, 200, …): each waiting item's status changes a bounded number of times
  per factor of ten of queue length, so the status writes per backup stay constant as
  the estate grows.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

EXACT_POSITIONS = 10


class WorkKind(StrEnum):
    """The kinds of proxy work the queue admits."""

    BACKUP = "backup"
    RESTORE = "restore"
    COPY = "copy"
    VERIFY = "verify"


TURNS: tuple[WorkKind, ...] = (WorkKind.RESTORE, WorkKind.BACKUP, WorkKind.COPY, WorkKind.VERIFY)
"""Who goes first when kinds tie for a turn: a person waits for a restore."""

BACKGROUND: frozenset[WorkKind] = frozenset({WorkKind.VERIFY, WorkKind.COPY})
"""Kinds placed after every waiting item of the other kinds (see the module doc)."""

REASON_LIMIT = "ConcurrencyLimit"
REASON_VM_BUSY = "VMBusy"


@dataclass(frozen=True)
class VCenterLimits:
    """How much of one vCenter's NFC capacity, and of each datastore, vmguard may use."""

    disks: int = 52
    disks_per_host: int = 48
    disks_per_datastore: int = 8

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> VCenterLimits:
        """A VCenter's ``spec.limits``, VMware's NBD guidance where not given."""
        given = spec.get("limits") or {}
        d = cls()
        return cls(
            int(given.get("nfcDisks") or d.disks),
            int(given.get("nfcDisksPerHost") or d.disks_per_host),
            int(given.get("disksPerDatastore") or d.disks_per_datastore),
        )


def disks_at_once(disk_count: int, limits: VCenterLimits, *, nfc: bool, wanted: int) -> int:
    """How many of one item's disks its Job may have open at once: at most ``wanted``
    and its ``disk_count``, and never more than a vCenter limit allows on one resource.

    An item is admitted with all its disks counted, or — larger than a limit — alone on
    the resource it exceeds; in that case its Job must still not open more disks at a
    time than the limit, so the bound here is the smallest limit that applies (the NFC
    ones only when it reads or writes through NFC).
    """
    bound = min(wanted, max(disk_count, 1), limits.disks_per_datastore)
    if nfc:
        bound = min(bound, limits.disks, limits.disks_per_host)
    return max(bound, 1)


@dataclass(frozen=True)
class PolicyLimits:
    """A policy's own limits, in backups (``spec.concurrency``)."""

    total: int = 8
    per_host: int = 4
    per_datastore: int = 2


@dataclass(frozen=True)
class Work:
    """One piece of proxy work, waiting or running."""

    uid: str
    name: str
    policy: str
    vm: str
    host: str
    disks: tuple[tuple[str, int], ...]
    """(datastore, disks of the VM on it), one entry per datastore."""
    priority: int = 0
    scheduled: dt.datetime | None = None
    created: dt.datetime | None = None
    nfc: bool = True
    """Whether it moves data through NFC (NBD), so the NFC limits apply."""
    policy_limits: PolicyLimits | None = field(default_factory=PolicyLimits)
    """None: no per-policy limits (a restore)."""
    kind: WorkKind = WorkKind.BACKUP

    @property
    def disk_count(self) -> int:
        return sum(n for _, n in self.disks) or 1


@dataclass(frozen=True)
class Waiting:
    """Why an item does not start now, and where it stands (1: next)."""

    work: Work
    position: int
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    start: list[Work]
    waiting: list[Waiting]


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def order(
    items: Iterable[Work], running: Iterable[Work] = (), last: WorkKind | None = None
) -> list[Work]:
    """Waiting items in the order they start (see the module's invariants): each kind's
    own order, merged by turns that count what already runs of each kind, ties rotating
    after ``last``."""
    items = list(items)
    first = [w for w in items if w.kind not in BACKGROUND]
    later = [w for w in items if w.kind in BACKGROUND]
    running = list(running)
    return _turns(first, running, last) + _turns(
        later, [w for w in running if w.kind in BACKGROUND], None
    )


def _turns(items: list[Work], running: list[Work], last: WorkKind | None) -> list[Work]:
    """``items`` (of any kinds) merged by the kinds' turns (see :func:`order`)."""
    by_kind: dict[WorkKind, list[Work]] = {}
    for w in items:
        by_kind.setdefault(w.kind, []).append(w)
    if not by_kind:
        return []
    if len(by_kind) == 1:
        return _kind_order(next(iter(by_kind.values())))
    queues = {k: _kind_order(ws) for k, ws in by_kind.items()}
    held = Counter(w.kind for w in running)
    out: list[Work] = []
    heads = dict.fromkeys(queues, 0)
    while len(out) < sum(len(q) for q in queues.values()):
        after = TURNS.index(last) + 1 if last in TURNS else 0
        rank = {k: (i - after) % len(TURNS) for i, k in enumerate(TURNS)}
        kind = min(
            (k for k in queues if heads[k] < len(queues[k])),
            key=lambda k: (held[k], rank[k]),
        )
        out.append(queues[kind][heads[kind]])
        heads[kind] += 1
        held[kind] += 1
        last = kind
    return out


def _kind_order(items: list[Work]) -> list[Work]:
    """One kind's items in order: priority, scheduled time, policies' turns, FIFO."""
    groups: dict[tuple[int, dt.datetime], dict[str, list[Work]]] = {}
    for w in items:
        key = (-w.priority, w.scheduled or w.created or _EPOCH)
        groups.setdefault(key, {}).setdefault(w.policy, []).append(w)
    ranked: list[tuple[tuple[int, dt.datetime], int, str, Work]] = []
    for key, by_policy in groups.items():
        for policy, ws in by_policy.items():
            ws.sort(key=lambda w: (w.created or _EPOCH, w.name))
            ranked.extend((key, turn, policy, w) for turn, w in enumerate(ws))
    ranked.sort(key=lambda r: (r[0], r[1], r[2]))
    return [r[3] for r in ranked]


def shown_position(position: int) -> int:
    """The position a waiting status shows: exact up to EXACT_POSITIONS, then rounded up
    to the next 1-2-5 step."""
    if position <= EXACT_POSITIONS:
        return position
    step = 10
    while True:
        for m in (1, 2, 5):
            if position <= step * m:
                return step * m
        step *= 10


@dataclass
class _Usage:
    """What runs (and what this plan starts), counted the ways the limits count."""

    vcenter_disks: int = 0
    host_disks: Counter[str] = field(default_factory=Counter)
    datastore_disks: Counter[str] = field(default_factory=Counter)
    policy_total: Counter[tuple[str, str]] = field(default_factory=Counter)
    policy_host: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    policy_datastore: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    vms: set[str] = field(default_factory=set)

    def add(self, w: Work) -> None:
        if w.nfc:
            self.vcenter_disks += w.disk_count
            if w.host:
                self.host_disks[w.host] += w.disk_count
        for ds, n in w.disks:
            self.datastore_disks[ds] += n
            self.policy_datastore[(w.kind, w.policy, ds)] += 1
        self.policy_total[(w.kind, w.policy)] += 1
        if w.host:
            self.policy_host[(w.kind, w.policy, w.host)] += 1
        self.vms.add(w.vm)


def _over(used: int, need: int, limit: int) -> bool:
    """Whether ``need`` more exceeds ``limit``; an idle resource takes anything."""
    return used > 0 and used + need > limit


def _local_blocker(w: Work, use: _Usage, lim: VCenterLimits) -> tuple[str, str] | None:
    """What holds ``w`` other than the vCenter's total: (reason, message) or None."""
    if w.vm in use.vms:
        return REASON_VM_BUSY, f"another backup or restore of {w.vm} is running"
    pl, p = w.policy_limits, w.policy
    if pl is not None:
        who = f"policy {p}" if p else "work without a policy"
        if use.policy_total[(w.kind, p)] >= pl.total:
            noun = {WorkKind.VERIFY: "verifications", WorkKind.COPY: "copies"}.get(
                w.kind, "backups"
            )
            return REASON_LIMIT, f"{who} runs at most {pl.total} {noun} at once (total)"
        if w.host and use.policy_host[(w.kind, p, w.host)] >= pl.per_host:
            return (
                REASON_LIMIT,
                f"{who} runs at most {pl.per_host} backups on host {w.host} (perHost)",
            )
        for ds, _ in w.disks:
            if use.policy_datastore[(w.kind, p, ds)] >= pl.per_datastore:
                return (
                    REASON_LIMIT,
                    f"{who} runs at most {pl.per_datastore} backups on datastore {ds}"
                    " (perDatastore)",
                )
    if w.nfc and w.host and _over(use.host_disks[w.host], w.disk_count, lim.disks_per_host):
        return (
            REASON_LIMIT,
            f"host {w.host} has its {lim.disks_per_host} NFC disks in use (NBD limit per host)",
        )
    for ds, n in w.disks:
        if _over(use.datastore_disks[ds], n, lim.disks_per_datastore):
            return (
                REASON_LIMIT,
                f"datastore {ds} has {lim.disks_per_datastore} disks being backed up or restored",
            )
    return None


def plan(
    waiting: Iterable[Work],
    running: Sequence[Work],
    limits: VCenterLimits,
    vcenter: str = "",
    last: WorkKind | None = None,
) -> Plan:
    """What starts now, in order, and why the rest waits (pure; see the module doc).
    ``last``: the kind this vCenter's loop started last (ties between kinds rotate)."""
    use = _Usage()
    for r in running:
        use.add(r)
    start: list[Work] = []
    held: list[tuple[Work, str, str]] = []
    full = False
    who = f"vCenter {vcenter}" if vcenter else "the vCenter"
    for w in order(waiting, running, last):
        blocked = _local_blocker(w, use, limits)
        if blocked is None and w.nfc:
            full = full or _over(use.vcenter_disks, w.disk_count, limits.disks)
            if full:
                blocked = (REASON_LIMIT, f"{who} has its {limits.disks} NFC disks in use (NBD)")
        if blocked is None:
            start.append(w)
            use.add(w)
        else:
            held.append((w, *blocked))
    return Plan(
        start,
        [Waiting(w, shown_position(i + 1), r, m) for i, (w, r, m) in enumerate(held)],
    )
