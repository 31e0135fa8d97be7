"""``vmguard vm``: registered by vmjobs.commands; the CLI only injects the lab's locator."""

from __future__ import annotations

import pytest

from vmguard import cli

pytestmark = pytest.mark.unit

VC = ["--vcenter", "https://vc.example/sdk"]


def test_vm_commands_parse_as_before() -> None:
    args = cli.build_parser().parse_args(
        ["vm", "backup", "db-1", *VC, "--repo", "file:///r", "--transport", "nbd", "--lab"]
    )
    assert (args.cmd, args.vm_cmd, args.vm, args.transport, args.lab) == (
        "vm",
        "backup",
        "db-1",
        "nbd",
        True,
    )
    restore = cli.build_parser().parse_args(
        ["vm", "restore", "a1", *VC, "--repo", "file:///r", "--new-name", "n", "--power-on"]
    )
    assert (restore.archive, restore.new_name, restore.in_place, restore.power_on) == (
        "a1",
        "n",
        False,
        True,
    )


def test_vm_without_vcenter_credentials_fails_with_a_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("VMGUARD_VC_USER", raising=False)
    monkeypatch.delenv("VMGUARD_VC_PASSWORD", raising=False)
    assert cli.main(["vm", "ls", *VC]) == 2
    assert "VMGUARD_VC_USER" in capsys.readouterr().err
