"""``python -m vmguard_lab.run``: the lab's entry module installs its test hooks into the
product's injection points (``vmguard.hooks``) and then runs ``vmguard`` itself.

The hook registries are process-wide; each test starts from empty ones (monkeypatch)
so that nothing installed here reaches another test. The waits the hooks ask for are
recorded instead of slept: what is checked is how long they would park the caller.
"""

from __future__ import annotations

import asyncio

import pytest

from vmguard import hooks
from vmguard_lab import run

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def no_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hooks, "_backup_step_hooks", [])
    monkeypatch.setattr(hooks, "_transfer_progress_hooks", [])


def test_without_hooks_every_point_is_a_no_op() -> None:
    asyncio.run(hooks.backup_step("snapshotted"))
    hooks.transfer_progress(1 << 30, 1 << 30)


def test_stall_parks_the_backup_only_at_the_points_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(run.asyncio, "sleep", sleep)
    run.install_stall({"finalizing"})
    asyncio.run(hooks.backup_step("snapshotted"))
    assert waits == []
    asyncio.run(hooks.backup_step("finalizing"))
    assert waits == [run.STALL_SECONDS]


def test_stall_refuses_a_point_the_controller_does_not_have() -> None:
    with pytest.raises(SystemExit, match="snapshoted"):
        run.install_stall({"snapshoted"})


def test_throttle_holds_the_transfer_to_its_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr(run.time, "sleep", waits.append)
    run.install_throttle(1000)
    hooks.transfer_progress(0, 10_000)
    hooks.transfer_progress(2000, 10_000)
    assert len(waits) == 1 and 1.5 < waits[0] <= 2.0, waits


def test_main_installs_then_runs_vmguard_with_the_rest(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("VMGUARD_VC_USER", raising=False)
    code = run.main(["--throttle", "5", "--stall", "finalizing", "vm", "ls", "--vcenter", "x"])
    assert code == 2 and "VMGUARD_VC_USER" in capsys.readouterr().err
    assert len(hooks._transfer_progress_hooks) == 1 and len(hooks._backup_step_hooks) == 1
