"""``vmguard vm``: registered by cli.vm; ``--locator`` names how disks are reached."""

from __future__ import annotations

import pytest

from vmguard.cli import main as cli

pytestmark = pytest.mark.unit

VC = ["--vcenter", "https://vc.example/sdk"]


def test_vm_commands_parse_as_before() -> None:
    args = cli.build_parser().parse_args(
        [
            "vm",
            "backup",
            "db-1",
            *VC,
            "--repo",
            "file:///r",
            "--transport",
            "nbd",
            "--locator",
            "lab",
        ]
    )
    assert (args.cmd, args.vm_cmd, args.vm, args.transport, args.locator) == (
        "vm",
        "backup",
        "db-1",
        "nbd",
        "lab",
    )
    restore = cli.build_parser().parse_args(
        ["vm", "restore", "a1", *VC, "--repo", "file:///r", "--new-name", "n", "--power-on"]
    )
    # --new-name is the hidden, older spelling of --new-vm (the flag restore create uses).
    assert (restore.archive, restore.new_vm, restore.in_place, restore.power_on) == (
        "a1",
        "n",
        False,
        True,
    )
    assert restore.locator == "vddk", "production's locator unless --locator says otherwise"


def test_vm_without_vcenter_credentials_fails_with_a_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("VMGUARD_VC_USER", raising=False)
    monkeypatch.delenv("VMGUARD_VC_PASSWORD", raising=False)
    # Exit 1: the command line is right, the environment lacks what it needs.
    assert cli.main(["vm", "ls", *VC]) == 1
    assert "VMGUARD_VC_USER" in capsys.readouterr().err


def test_the_product_cli_has_no_lab_command_or_lab_flags(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The lab is its own distribution (``vmguard-lab``): nothing of it in ``vmguard``."""
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "cmd").choices
    assert commands is not None and "lab" not in commands and "vm" in commands
    for flag in ("--lab", "--lab-proxy-uuid=x"):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(["vm", "backup", "db-1", *VC, "--repo", "file:///r", flag])
        assert exit_.value.code == 2
        assert "unrecognized arguments" in capsys.readouterr().err
