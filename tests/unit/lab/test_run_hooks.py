"""``python -m vmguard_lab.run``: the lab's entry module builds test hooks
(``vmguard.hooks.Hooks``) from its options and hands them to ``vmguard``'s ``main``.

The waits the hooks ask for are recorded instead of slept: what is checked is how long
they would park the caller. That the operator and the proxy really call them is shown by
tests/controller/test_backup_faults.py, which parks and slows them through this module.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from vmguard.cli import main as cli
from vmguard.controller.kube.timing import Timing
from vmguard.hooks import NO_HOOKS, Hooks
from vmguard.store.clock import SystemClock
from vmguard_lab import run

pytestmark = pytest.mark.unit


def test_production_hooks_do_nothing() -> None:
    assert asyncio.run(NO_HOOKS.backup_step("snapshotted")) is None
    assert asyncio.run(NO_HOOKS.restore_step("finalizing")) is None
    assert NO_HOOKS.transfer_progress(1 << 30, 1 << 30) is None


def test_stall_parks_the_backup_only_at_the_points_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(run.asyncio, "sleep", sleep)
    hooks, timing, rest = run.parse(["--stall", "finalizing", "operator", "--namespace", "ns"])
    assert timing is None, "without --speedup the operator keeps the real clock's pace"
    assert rest == ["operator", "--namespace", "ns"]
    asyncio.run(hooks.backup_step("snapshotted"))
    assert waits == []
    asyncio.run(hooks.backup_step("finalizing"))
    assert waits == [run.STALL_SECONDS]
    assert hooks.transfer_progress is NO_HOOKS.transfer_progress


def test_stall_refuses_a_point_the_controller_does_not_have() -> None:
    with pytest.raises(SystemExit, match="snapshoted"):
        run.parse(["--stall", "snapshoted", "operator"])
    with pytest.raises(SystemExit, match=r"--stall-restore: unknown point.*snapshotted"):
        run.parse(["--stall-restore", "snapshotted", "operator"])


def test_stall_restore_parks_the_restore_not_the_backup(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(run.asyncio, "sleep", sleep)
    hooks, _, rest = run.parse(["--stall-restore", "finalizing", "operator"])
    assert rest == ["operator"]
    asyncio.run(hooks.backup_step("finalizing"))
    assert waits == [], "a backup's Finalizing is not the restore's"
    asyncio.run(hooks.restore_step("finalizing"))
    assert waits == [run.STALL_SECONDS]


def test_throttle_holds_the_transfer_to_its_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr(run.time, "sleep", waits.append)
    hooks, _, _ = run.parse(["--throttle", "1000", "proxy", "backup"])
    hooks.transfer_progress(0, 10_000)
    hooks.transfer_progress(2000, 10_000)
    assert len(waits) == 1 and 1.5 < waits[0] <= 2.0, waits


def test_main_hands_the_hooks_and_the_rest_to_vmguard(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def vmguard_main(argv: list[str], hooks: Hooks, timing: Timing | None) -> int:
        seen.update(argv=argv, hooks=hooks, timing=timing)
        return 7

    monkeypatch.setattr(run, "vmguard_main", vmguard_main)
    assert run.main(["--throttle", "5", "vm", "ls"]) == 7
    assert seen["argv"] == ["vm", "ls"]
    assert seen["hooks"].transfer_progress is not NO_HOOKS.transfer_progress
    assert seen["timing"] is None


def test_speedup_hands_the_operator_a_faster_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def vmguard_main(argv: list[str], hooks: Hooks, timing: Timing | None) -> int:
        seen.update(argv=argv, timing=timing)
        return 0

    monkeypatch.setattr(run, "vmguard_main", vmguard_main)
    assert run.main(["--speedup", "12", "operator", "--namespace", "ns"]) == 0
    assert seen["argv"] == ["operator", "--namespace", "ns"]
    timing: Timing = seen["timing"]
    assert timing.speedup == 12 and timing.interval(30.0) == 2.5
    assert isinstance(timing.clock, SystemClock), "the clock itself stays the real one"


def test_speedup_refuses_to_slow_the_operator_down() -> None:
    with pytest.raises(SystemExit, match="--speedup: speedup must be at least 1"):
        run.parse(["--speedup", "0.5", "operator"])


def test_vmguard_gives_each_command_the_hooks_it_was_handed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    given = Hooks(transfer_progress=lambda done, total: None)
    seen: list[Hooks] = []
    monkeypatch.setattr(
        "vmguard.proxy.backup.run_backup", lambda ns, n, hooks: seen.append(hooks) or 0
    )
    assert cli.main(["proxy", "backup", "--namespace", "ns", "--name", "b"], hooks=given) == 0
    assert cli.main(["proxy", "backup", "--namespace", "ns", "--name", "b"]) == 0
    assert seen == [given, NO_HOOKS]


def test_vmguard_hands_the_operator_the_timing_it_was_handed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vmguard.controller import main as controller_main
    from vmguard.controller.kube.timing import REAL_TIME

    seen: list[Any] = []
    monkeypatch.setattr(controller_main, "run", seen.append)
    given = Timing(speedup=6)
    assert cli.main(["operator", "--namespace", "ns"], timing=given) == 0
    assert cli.main(["operator", "--namespace", "ns"]) == 0
    assert [options.timing for options in seen] == [given, REAL_TIME]
