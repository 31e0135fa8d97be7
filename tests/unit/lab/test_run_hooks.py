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
from vmguard.hooks import NO_HOOKS, Hooks
from vmguard_lab import run

pytestmark = pytest.mark.unit


def test_production_hooks_do_nothing() -> None:
    assert asyncio.run(NO_HOOKS.backup_step("snapshotted")) is None
    assert NO_HOOKS.transfer_progress(1 << 30, 1 << 30) is None


def test_stall_parks_the_backup_only_at_the_points_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(run.asyncio, "sleep", sleep)
    hooks, rest = run.parse(["--stall", "finalizing", "operator", "--namespace", "ns"])
    assert rest == ["operator", "--namespace", "ns"]
    asyncio.run(hooks.backup_step("snapshotted"))
    assert waits == []
    asyncio.run(hooks.backup_step("finalizing"))
    assert waits == [run.STALL_SECONDS]
    assert hooks.transfer_progress is NO_HOOKS.transfer_progress


def test_stall_refuses_a_point_the_controller_does_not_have() -> None:
    with pytest.raises(SystemExit, match="snapshoted"):
        run.parse(["--stall", "snapshoted", "operator"])


def test_throttle_holds_the_transfer_to_its_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr(run.time, "sleep", waits.append)
    hooks, _ = run.parse(["--throttle", "1000", "proxy", "backup"])
    hooks.transfer_progress(0, 10_000)
    hooks.transfer_progress(2000, 10_000)
    assert len(waits) == 1 and 1.5 < waits[0] <= 2.0, waits


def test_main_hands_the_hooks_and_the_rest_to_vmguard(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def vmguard_main(argv: list[str], hooks: Hooks) -> int:
        seen.update(argv=argv, hooks=hooks)
        return 7

    monkeypatch.setattr(run, "vmguard_main", vmguard_main)
    assert run.main(["--throttle", "5", "vm", "ls"]) == 7
    assert seen["argv"] == ["vm", "ls"]
    assert seen["hooks"].transfer_progress is not NO_HOOKS.transfer_progress


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
