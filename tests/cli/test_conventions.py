"""The command line's conventions (kubectl's and Velero's), each checked as a user meets
it: ``vmguard`` run as a separate process on a real repository in a temporary directory.

``--version``; ``-o yaml`` documents that parse; options and positionals in any order
(the documented ``disk restore ARCHIVE --disk D TARGET``); exit code 2 for a usage
error and 1 for a run-time failure; a shell completion script, and completions
answered by the program; help text on every option of every command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vmguard import __version__
from vmguard.cli.main import build_parser

pytestmark = pytest.mark.unit

# Hidden on purpose: deprecated spellings kept for the scripts that use them (docs/cli.md).
HIDDEN = {"--json", "--new-name"}


def vmguard(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("VMGUARD_", "AWS_"))}
    return subprocess.run(
        [sys.executable, "-m", "vmguard.cli", *argv],
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def backed_up(tmp_path: Path) -> tuple[str, str, bytes]:
    """A file repository holding one backup of a small image: (repo URL, archive, data)."""
    repo = f"file://{tmp_path / 'repo'}"
    assert vmguard("repo", "init", repo).returncode == 0
    data = os.urandom(1 << 20) + bytes(3 << 20) + b"tail" * 1024
    image = tmp_path / "disk.img"
    image.write_bytes(data)
    done = vmguard("disk", "backup", str(image), "--repo", repo, "--vm", "vm1", "--quiet")
    assert done.returncode == 0, done.stderr
    return repo, done.stdout.strip(), data


def test_version() -> None:
    done = vmguard("--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"vmguard {__version__}")


def test_output_yaml_parses(backed_up: tuple[str, str, bytes]) -> None:
    repo, archive, _ = backed_up
    listed = vmguard("repo", "ls", "--repo", repo, "-o", "yaml")
    assert listed.returncode == 0, listed.stderr
    doc = yaml.safe_load(listed.stdout)
    assert [a["archive_id"] for a in doc["archives"]] == [archive]
    assert doc["archives"][0]["vm"] == "vm1"
    info = yaml.safe_load(vmguard("repo", "info", "--repo", repo, "-o", "yaml").stdout)
    assert info["archives"] == 1 and info["encrypted"] is False
    # The same data as -o json, and --json (the deprecated spelling) still gives JSON.
    as_json = json.loads(vmguard("repo", "ls", "--repo", repo, "-o", "json").stdout)
    assert as_json == doc
    assert json.loads(vmguard("repo", "ls", "--repo", repo, "--json").stdout) == doc


def test_options_between_positionals_for_disk_restore(
    backed_up: tuple[str, str, bytes], tmp_path: Path
) -> None:
    """The documented form: ``disk restore ARCHIVE --disk D TARGET`` (with --repo last)."""
    repo, archive, data = backed_up
    target = tmp_path / "restored.img"
    done = vmguard("disk", "restore", archive, "--disk", "0", str(target), "--repo", repo)
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == data


def test_usage_errors_exit_2_and_failures_exit_1(tmp_path: Path) -> None:
    missing = f"file://{tmp_path / 'nothing-here'}"
    usage = [
        ("repo", "ls", "--no-such-option"),  # argparse
        ("disk", "restore", "a1", "--repo", missing),  # no target
        ("repo", "ls"),  # no repository named
        ("backup", "create", "vm1"),  # neither --policy nor --vcenter and --repository
    ]
    for argv in usage:
        done = vmguard(*argv)
        assert done.returncode == 2, (argv, done.stderr)
        assert "usage: vmguard" in done.stderr and "error:" in done.stderr, done.stderr
    failed = vmguard("repo", "ls", "--repo", missing)  # a right command, nothing there
    assert failed.returncode == 1 and "no repository" in failed.stderr.lower(), failed.stderr
    assert "Traceback" not in failed.stderr


def test_completion_script_is_generated_and_the_program_answers(tmp_path: Path) -> None:
    script = vmguard("completion", "bash")
    assert script.returncode == 0, script.stderr
    assert "complete " in script.stdout and "vmguard" in script.stdout
    assert "kubectl-vmguard" in script.stdout
    path = tmp_path / "vmguard.bash"
    path.write_text(script.stdout)
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    # What the script does on <TAB>: run vmguard with argcomplete's variables; the
    # answers come on file descriptor 8.
    line = "vmguard disk re"
    env = dict(
        os.environ,
        _ARGCOMPLETE="1",
        _ARGCOMPLETE_IFS="\n",
        COMP_LINE=line,
        COMP_POINT=str(len(line)),
    )
    asked = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m vmguard.cli 8>&1 9>/dev/null"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.split() == ["restore"], asked.stdout
    zsh = vmguard("completion", "zsh")
    assert zsh.returncode == 0 and "vmguard" in zsh.stdout


def _parsers(
    parser: argparse.ArgumentParser, path: str = "vmguard"
) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # an alias (backup list) is the same parser
                    seen.add(id(sub))
                    found += _parsers(sub, f"{path} {name}")
    return found


def test_every_option_of_every_command_has_help() -> None:
    missing = []
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            name = action.option_strings[-1] if action.option_strings else action.dest
            if action.help == argparse.SUPPRESS:
                assert name in HIDDEN, f"{path} {name} is hidden"
            elif not (action.help or "").strip():
                missing.append(f"{path} {name}")
    assert missing == [], missing
    assert len(_parsers(build_parser())) > 30  # the walk did reach the leaf commands
