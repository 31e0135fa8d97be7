"""The admission queue's pure planning (controller/admission.py): order, fairness, limits
counted in disks, stable waiting statuses. No lab: plan() is data in, data out."""

from __future__ import annotations

import datetime as dt
import random

from vmguard.controller.kube.admission import (
    PolicyLimits,
    VCenterLimits,
    Work,
    WorkKind,
    order,
    plan,
    shown_position,
)

T0 = dt.datetime(2026, 12, 6, 1, 0, tzinfo=dt.UTC)
WIDE = PolicyLimits(total=1000, per_host=1000, per_datastore=1000)
ROOMY = VCenterLimits(disks=1000, disks_per_host=1000, disks_per_datastore=1000)


def work(
    name: str,
    *,
    policy: str = "gold",
    priority: int = 0,
    scheduled: int = 0,
    created: int = 0,
    host: str = "",
    disks: tuple[tuple[str, int], ...] = (),
    nfc: bool = True,
    limits: PolicyLimits | None = WIDE,
    kind: WorkKind = WorkKind.BACKUP,
) -> Work:
    return Work(
        uid=f"uid-{name}",
        name=name,
        policy=policy,
        vm=f"vm-{name}",
        host=host or f"host-{name}",
        disks=disks or ((f"ds-{name}", 1),),
        priority=priority,
        scheduled=T0 + dt.timedelta(minutes=scheduled),
        created=T0 + dt.timedelta(seconds=created),
        nfc=nfc,
        policy_limits=limits,
        kind=kind,
    )


def restore(name: str, created: int = 0, **kw: object) -> Work:
    """A restore: no policy, no per-policy limits, first come first served."""
    return work(
        name, policy="", scheduled=0, created=created, limits=None, kind=WorkKind.RESTORE, **kw
    )  # type: ignore[arg-type]


def names(ws: list[Work]) -> list[str]:
    return [w.name for w in ws]


def test_priority_then_schedule_then_first_come() -> None:
    items = [
        work("late-low", scheduled=60, created=0),
        work("early-low-second", scheduled=0, created=2),
        work("early-low-first", scheduled=0, created=1),
        work("late-high", priority=10, scheduled=60, created=3),
    ]
    assert names(order(items)) == [
        "late-high",
        "early-low-first",
        "early-low-second",
        "late-low",
    ]


def test_policies_take_turns_within_one_priority_and_scheduled_time() -> None:
    big = [work(f"big-{i}", policy="big", created=i) for i in range(4)]
    small = [work(f"small-{i}", policy="small", created=100 + i) for i in range(2)]
    # "big" created all of its backups first; first come first served would starve "small".
    assert names(order(big + small)) == [
        "big-0",
        "small-0",
        "big-1",
        "small-1",
        "big-2",
        "big-3",
    ]


def test_order_does_not_depend_on_input_order() -> None:
    rng = random.Random(7)
    items = [
        work(f"w{i}", policy=f"p{i % 3}", priority=i % 2, scheduled=i % 4, created=i)
        for i in range(40)
    ]
    expected = names(order(items))
    for _ in range(5):
        rng.shuffle(items)
        assert names(order(items)) == expected


def test_vcenter_limit_counts_disks_not_vms() -> None:
    lim = VCenterLimits(disks=5, disks_per_host=100, disks_per_datastore=100)
    three = (("ds-a", 2), ("ds-b", 1))
    items = [work(f"vm{i}", created=i, disks=three) for i in range(3)]
    p = plan(items, [], lim, "vc1")
    # 3 + 3 > 5: only one three-disk VM fits although five disks are allowed.
    assert names(p.start) == ["vm0"]
    assert [(w.work.name, w.position) for w in p.waiting] == [("vm1", 1), ("vm2", 2)]
    assert p.waiting[0].reason == "ConcurrencyLimit"
    assert p.waiting[0].message == "vCenter vc1 has its 5 NFC disks in use (NBD)"


def test_host_and_datastore_limits_count_disks_of_running_work() -> None:
    lim = VCenterLimits(disks=100, disks_per_host=4, disks_per_datastore=3)
    running = [work("r", host="esx1", disks=(("ds1", 3),))]
    items = [
        work("same-host", host="esx1", disks=(("ds9", 2),), created=1),
        work("same-ds", host="esx2", disks=(("ds1", 1),), created=2),
        work("elsewhere", host="esx3", disks=(("ds3", 1),), created=3),
    ]
    p = plan(items, running, lim)
    assert names(p.start) == ["elsewhere"]
    why = {w.work.name: w.message for w in p.waiting}
    assert why["same-host"] == "host esx1 has its 4 NFC disks in use (NBD limit per host)"
    assert why["same-ds"] == "datastore ds1 has 3 disks being backed up or restored"


def test_hotadd_work_does_not_count_against_nfc_limits() -> None:
    lim = VCenterLimits(disks=2, disks_per_host=2, disks_per_datastore=100)
    running = [work("nbd", host="esx1", disks=(("ds1", 2),))]
    items = [
        work("hotadd", host="esx1", disks=(("ds2", 2),), nfc=False, created=1),
        work("nbd2", host="esx2", disks=(("ds3", 1),), created=2),
    ]
    p = plan(items, running, lim)
    assert names(p.start) == ["hotadd"]
    assert names([w.work for w in p.waiting]) == ["nbd2"]


def test_policy_limits_count_backups_of_that_policy_only() -> None:
    two = PolicyLimits(total=2, per_host=2, per_datastore=2)
    running = [work("g1", policy="gold", limits=two), work("s1", policy="silver", limits=two)]
    items = [
        work("g2", policy="gold", limits=two, created=1),
        work("g3", policy="gold", limits=two, created=2),
        work("s2", policy="silver", limits=two, created=3),
    ]
    p = plan(items, running, ROOMY)
    assert names(p.start) == ["g2", "s2"]
    assert [(w.work.name, w.message) for w in p.waiting] == [
        ("g3", "policy gold runs at most 2 backups at once (total)")
    ]


def test_policy_per_host_and_per_datastore() -> None:
    lim = PolicyLimits(total=10, per_host=1, per_datastore=1)
    running = [work("r", host="esx1", disks=(("ds1", 1),), limits=lim)]
    items = [
        work("host", host="esx1", disks=(("ds2", 1),), limits=lim, created=1),
        work("ds", host="esx2", disks=(("ds1", 1),), limits=lim, created=2),
    ]
    p = plan(items, running, ROOMY)
    assert p.start == []
    assert [w.message for w in p.waiting] == [
        "policy gold runs at most 1 backups on host esx1 (perHost)",
        "policy gold runs at most 1 backups on datastore ds1 (perDatastore)",
    ]


def test_one_vm_never_runs_twice() -> None:
    running = [work("a")]
    again = Work(**{**running[0].__dict__, "uid": "uid-other", "name": "a-again"})
    p = plan([again], running, ROOMY)
    assert p.start == []
    assert p.waiting[0].reason == "VMBusy"


def test_no_overtaking_on_the_vcenter_total_but_past_a_busy_host() -> None:
    lim = VCenterLimits(disks=4, disks_per_host=2, disks_per_datastore=100)
    running = [work("r", host="esx1", disks=(("ds0", 2),))]
    items = [
        work("host-full", host="esx1", disks=(("ds1", 1),), created=1),  # held by its host
        work("big", host="esx2", disks=(("ds2", 3),), created=2),  # 2 + 3 > 4: vCenter full
        work("small", host="esx3", disks=(("ds3", 1),), created=3),  # would fit, must not pass
    ]
    p = plan(items, running, lim)
    assert p.start == []
    assert [w.work.name for w in p.waiting] == ["host-full", "big", "small"]
    assert "NBD limit per host" in p.waiting[0].message
    assert "NFC disks in use (NBD)" in p.waiting[2].message


def test_work_larger_than_a_limit_starts_when_the_resource_is_idle() -> None:
    lim = VCenterLimits(disks=4, disks_per_host=4, disks_per_datastore=4)
    huge = work("huge", host="esx1", disks=(("ds1", 6),))
    assert names(plan([huge], [], lim).start) == ["huge"]
    p = plan([huge], [work("r", host="esx2", disks=(("ds2", 1),))], lim)
    assert p.start == [] and "vCenter" in p.waiting[0].message


def test_shown_position_is_exact_then_1_2_5() -> None:
    shown = [shown_position(n) for n in (1, 10, 11, 20, 21, 50, 51, 100, 101, 4999)]
    assert shown == [1, 10, 20, 20, 50, 50, 100, 100, 200, 5000]


def test_waiting_status_changes_a_bounded_number_of_times() -> None:
    """Drain 1,000 waiting backups five at a time: what each waiting status shows
    (position, reason, message) changes at most ~20 times per backup, not ~200."""
    five = PolicyLimits(total=5, per_host=5, per_datastore=5)
    items = [work(f"w{i:04d}", created=i, limits=five) for i in range(1000)]
    shown: dict[str, tuple[int, str, str]] = {}
    changes: dict[str, int] = {}
    running: list[Work] = []
    while items:
        p = plan(items, running, ROOMY)
        for w in p.waiting:
            now = (w.position, w.reason, w.message)
            if shown.get(w.work.name) != now:
                changes[w.work.name] = changes.get(w.work.name, 0) + 1
                shown[w.work.name] = now
        started = {w.uid for w in p.start}
        items = [w for w in items if w.uid not in started]
        running = p.start  # the running ones finish before the next turn
    assert max(changes.values()) <= 20
    assert sum(changes.values()) / len(changes) < 20


def test_random_estates_never_exceed_a_limit() -> None:
    """Random estates, started and finished in random order: at every turn what runs is
    within every limit (oversized VMs alone on their resource)."""
    rng = random.Random(13)
    lim = VCenterLimits(disks=12, disks_per_host=6, disks_per_datastore=4)
    pl = PolicyLimits(total=5, per_host=3, per_datastore=2)
    for _ in range(30):
        items = [
            work(
                f"w{i}",
                policy=f"p{rng.randrange(3)}",
                priority=rng.randrange(2),
                scheduled=rng.randrange(3),
                created=i,
                host=f"esx{rng.randrange(4)}",
                disks=tuple((f"ds{d}", rng.randrange(1, 4)) for d in rng.sample(range(5), 2)),
                nfc=rng.random() < 0.8,
                limits=pl,
            )
            for i in range(60)
        ]
        running: list[Work] = []
        while items or running:
            p = plan(items, running, lim)
            running += p.start
            started = {w.uid for w in p.start}
            items = [w for w in items if w.uid not in started]
            _check(running, lim, pl)
            if running:
                running.pop(rng.randrange(len(running)))


def _check(running: list[Work], lim: VCenterLimits, pl: PolicyLimits) -> None:
    nfc = [w for w in running if w.nfc]
    if len(nfc) > 1:
        assert sum(w.disk_count for w in nfc) <= lim.disks
    for host in {w.host for w in nfc}:
        on = [w for w in nfc if w.host == host]
        assert len(on) == 1 or sum(w.disk_count for w in on) <= lim.disks_per_host
    for ds in {d for w in running for d, _ in w.disks}:
        on_ds = [n for w in running for d, n in w.disks if d == ds]
        assert len(on_ds) == 1 or sum(on_ds) <= lim.disks_per_datastore
    for policy in {w.policy for w in running}:
        mine = [w for w in running if w.policy == policy]
        assert len(mine) <= pl.total
        for host in {w.host for w in mine}:
            assert sum(1 for w in mine if w.host == host) <= pl.per_host
    assert len({w.vm for w in running}) == len(running)


def test_a_restore_does_not_wait_behind_a_night_of_backups_nor_backups_behind_restores() -> None:
    backups = [work(f"b{i:03d}", scheduled=0, created=i) for i in range(200)]
    restores = [restore(f"r{i}", created=1000 + i) for i in range(3)]
    # Created last, the first restore is still first in line (restores go first on a tie).
    assert names(order(backups + restores)[:6]) == ["r0", "b000", "r1", "b001", "r2", "b002"]
    # A restore runs: the next free slot goes to a backup, then they alternate again.
    running = [restore("r-running")]
    assert names(order(backups[:3] + restores[:2], running)) == ["b000", "r0", "b001", "r1", "b002"]
    # Many restores running do not keep backups behind every new restore for ever:
    # the kind with fewer running gets the turns until they are even.
    running = [restore(f"x{i}") for i in range(2)]
    assert names(order(backups[:3] + restores, running)[:4]) == ["b000", "b001", "r0", "b002"]


def test_one_slot_alternates_between_kinds_as_it_frees() -> None:
    """With room for one at a time, the kinds take turns slot by slot (no starvation)."""
    one = VCenterLimits(disks=1, disks_per_host=1000, disks_per_datastore=1000)
    waiting = [work(f"b{i}", created=i) for i in range(4)] + [
        restore(f"r{i}", created=10 + i) for i in range(4)
    ]
    started: list[Work] = []
    while waiting:
        # The one started last runs: nothing else starts, and the other kind is next.
        last = started[-1] if started else None
        if last is not None:
            held = plan(waiting, [last], one, "vc1", last.kind)
            assert held.start == [] and held.waiting[0].work.kind != last.kind
            assert held.waiting[0].message == "vCenter vc1 has its 1 NFC disks in use (NBD)"
        # It finished: the slot is free and nothing runs.
        p = plan(waiting, [], one, "vc1", last.kind if last else None)
        assert len(p.start) == 1
        started += p.start
        waiting = [w for w in waiting if w not in p.start]
    assert names(started) == ["r0", "b0", "r1", "b1", "r2", "b2", "r3", "b3"]


def test_restores_share_the_vcenter_host_and_datastore_limits_and_no_policy_share() -> None:
    lim = VCenterLimits(disks=100, disks_per_host=2, disks_per_datastore=2)
    one = PolicyLimits(total=1, per_host=1, per_datastore=1)
    running = [work("b-run", policy="", host="esx1", disks=(("ds1", 1),), limits=one)]
    items = [
        restore("same-host", host="esx1", disks=(("ds9", 2),), created=1),
        restore("same-ds", host="esx2", disks=(("ds1", 2),), created=2),
        restore("free", host="esx3", disks=(("ds3", 1),), created=3),
        # An ad-hoc backup (no policy) is held by its own share, not by the restores.
        work("b-adhoc", policy="", host="esx4", disks=(("ds4", 1),), limits=one, created=4),
    ]
    p = plan(items, running, lim)
    assert names(p.start) == ["free"]
    why = {w.work.name: w.message for w in p.waiting}
    assert why["same-host"] == "host esx1 has its 2 NFC disks in use (NBD limit per host)"
    assert why["same-ds"] == "datastore ds1 has 2 disks being backed up or restored"
    assert why["b-adhoc"] == "work without a policy runs at most 1 backups at once (total)"


def test_a_restore_into_a_vm_being_backed_up_waits() -> None:
    running = [work("a")]
    into = Work(**{**restore("r").__dict__, "vm": running[0].vm})
    p = plan([into], running, ROOMY)
    assert p.start == [] and p.waiting[0].reason == "VMBusy"
