"""The controller's injected clock (controller/kube/timing.py).

The pure half checks the schedule line's arithmetic and the waits. The lab half runs a
policy's scheduler (:class:`~vmguard.controller.policy.runs.PolicyRunner`) in this
process against the lab's real apiserver, on a :class:`~vmguard.store.clock.ManualClock`
whose ``sleep`` moves it exactly as far as the scheduler asks: a scheduled run must
create its VMGuardBackups exactly at the clock's instant of the scheduled time — at the
real pace, and at the lab's speed-up, where a cron minute lasts one clock second. The
sweep's result is handed to the scheduler as data (hand-built VM records): the vCenter
sweeper is not what is under test here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.controller import objects

from vmguard.api import format_time
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.kube.sweeps import LatestSweeps, SweepView
from vmguard.controller.kube.timing import LINE_EPOCH, REAL_TIME, Timing
from vmguard.controller.policy.builders import backup_name, run_label
from vmguard.controller.policy.runs import PolicyRunner
from vmguard.metrics import Metrics
from vmguard.store.clock import ManualClock, SystemClock
from vmguard.vsphere.matching import PolicyRef, assign
from vmguard.vsphere.records import VMRecord

UTC = dt.UTC


@pytest.mark.unit
def test_production_has_one_time_line() -> None:
    at = dt.datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    assert REAL_TIME.speedup == 1.0 and isinstance(REAL_TIME.clock, SystemClock)
    assert REAL_TIME.on_line(at) == at and REAL_TIME.off_line(at) == at
    assert REAL_TIME.interval(30.0) == 30.0


@pytest.mark.unit
def test_the_schedule_line_runs_faster_and_maps_back() -> None:
    timing = Timing(clock=ManualClock(LINE_EPOCH + dt.timedelta(hours=1)), speedup=60)
    # An hour of the clock after the epoch is sixty hours of the schedule line...
    assert timing.line_now() == LINE_EPOCH + dt.timedelta(hours=60)
    # ... so a cron minute lasts one second of the clock, and maps back exactly.
    minute = dt.datetime(2026, 1, 3, 12, 1, tzinfo=UTC)
    assert timing.off_line(minute) - timing.off_line(minute - dt.timedelta(minutes=1)) == (
        dt.timedelta(seconds=1)
    )
    assert timing.on_line(timing.off_line(minute)) == minute
    assert timing.interval(30.0) == 0.5
    with pytest.raises(ValueError, match="at least 1"):
        Timing(speedup=0.5)


@pytest.mark.unit
def test_a_wait_ends_at_its_time_or_at_an_event() -> None:
    clock = ManualClock()
    start = clock.now()

    async def waits() -> tuple[dt.datetime, dt.datetime]:
        await Timing(clock=clock).wait(90.0, asyncio.Event())  # nobody sets it
        after_sleep = clock.now()
        woken = asyncio.Event()
        woken.set()
        await Timing(clock=NeverWakingClock(clock)).wait(3600.0, woken)
        return after_sleep, clock.now()

    slept, woken = asyncio.run(waits())
    assert slept - start == dt.timedelta(seconds=90), "the clock ended the first wait"
    assert woken == slept, "the event ended the second wait, the clock did not move"


class NeverWakingClock:
    """The clock's time, but a sleep that never ends on its own."""

    def __init__(self, base: ManualClock) -> None:
        self.base = base

    def now(self) -> dt.datetime:
        return self.base.now()

    def monotonic(self) -> float:
        return self.base.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.Event().wait()


class RecordingAPI(KubeAPI):
    """The real API; it notes the clock's time of every VMGuardBackup it creates."""

    def __init__(self, api_client: Any, clock: ManualClock) -> None:
        super().__init__(api_client)
        self.clock = clock
        self.created_at: list[dt.datetime] = []

    async def create_object(self, plural: str, namespace: str, body: dict[str, Any]) -> bool:
        if plural == "vmguardbackups":
            self.created_at.append(self.clock.now())
        return await super().create_object(plural, namespace, body)


class StopAfter:
    """kopf's ``stopped`` for a loop on a manual clock: true once the clock passes ``at``."""

    def __init__(self, clock: ManualClock, at: dt.datetime) -> None:
        self.clock, self.at = clock, at

    def __bool__(self) -> bool:
        return self.clock.now() >= self.at

    async def wait(self) -> None:
        await asyncio.Event().wait()


@pytest.mark.lab
@pytest.mark.parametrize("speedup", [1.0, 60.0])
def test_a_scheduled_run_fires_exactly_at_its_time_on_the_clock(
    kube_api: Any, namespace: str, lab_vcenter: str, lab_repository: str, speedup: float
) -> None:
    real_now = dt.datetime.now(UTC)
    if speedup == 1.0:
        # Daily, two days ahead: yesterday's slot is long past its catch-up window.
        run = (real_now + dt.timedelta(days=2)).replace(second=0, microsecond=0)
        cron = f"{run.minute} {run.hour} * * *"
        start = run - dt.timedelta(seconds=20)
    else:
        # Every cron minute, i.e. every second of the clock; the clock starts 45 s of
        # the line after a slot (past its catch-up half), 0.25 s of the clock before the
        # next one.
        cron = "* * * * *"
        line = Timing(speedup=speedup).on_line(real_now + dt.timedelta(hours=1))
        run = line.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        start = Timing(speedup=speedup).off_line(run) - dt.timedelta(seconds=0.25)
    clock = ManualClock(start)
    timing = Timing(clock=clock, speedup=speedup)
    fires_at = timing.off_line(run)

    objects.create_policy(kube_api, namespace, "timed", default=True, schedule={"cron": cron})
    policy = objects.get(kube_api, namespace, "vmprotectionpolicies", "timed")
    vms = [
        VMRecord(moref=f"vm-{n}", name=f"timed-{n}", instance_uuid=str(uuid.uuid4()))
        for n in (1, 2)
    ]
    sweeps = LatestSweeps()
    matched = assign(vms, [PolicyRef.from_object(policy)], "lab")
    sweeps.publish(namespace, "lab", SweepView(clock.now(), 30.0, matched))
    api = RecordingAPI(kube_api, clock)
    metrics = Metrics(clock=lambda: timing.now().timestamp())
    runner = PolicyRunner(
        api,
        policy,
        sweeps,
        asyncio.Event(),
        StopAfter(clock, fires_at + dt.timedelta(seconds=0.1)),
        logging.getLogger(__name__),
        timing=timing,
        metrics=metrics,
    )
    asyncio.run(runner.loop())

    assert api.created_at == [fires_at, fires_at], "both VMs' backups, exactly at the run"
    made = objects.items(kube_api, namespace, "vmguardbackups")
    assert sorted(b["metadata"]["name"] for b in made) == sorted(
        backup_name("timed", vm.instance_uuid, run, "schedule") for vm in vms
    )
    assert {b["metadata"]["labels"]["vmguard.io/run"] for b in made} == {run_label(run)}
    status = objects.get(kube_api, namespace, "vmprotectionpolicies", "timed")["status"]
    assert status["lastScheduleTime"] == format_time(run)
    assert status["nextScheduleTime"] > status["lastScheduleTime"]
    # The scheduler's pass feeds the metrics: each VM of the policy, its deadline (no
    # backup yet: one RPO from its first sighting), the policy's RPO and its queue.
    seen = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.exposition())
        for s in family.samples
    }
    pol = (("namespace", namespace), ("policy", "timed"), ("vcenter", "lab"))
    rpo = seen[("vmguard_policy_rpo_seconds", pol)]
    assert rpo > 0
    assert (
        seen[("vmguard_policy_backups_in_progress", (*pol[:1], ("phase", "Pending"), *pol[1:]))]
        == 2
    )
    for vm in vms:
        key = tuple(sorted({**dict(pol), "vm_uuid": vm.instance_uuid}.items()))
        deadline = seen[("vmguard_vm_backup_deadline_timestamp_seconds", key)]
        assert start.timestamp() + rpo <= deadline <= timing.now().timestamp() + rpo
        info = tuple(sorted({**dict(key), "vm": vm.name, "moref": vm.moref}.items()))
        assert seen[("vmguard_vm_info", info)] == 1
