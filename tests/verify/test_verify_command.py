"""Acceptance (issue 18, items 2 and 5, at the CLI): ``vmguard verify`` run as a user
runs it, a separate process on a real repository.

Five points of one VM; a file matching the user's YARA rule is planted in the third and
stays in the later ones. Scanning the third reports the volume, the path and the rule;
``--latest-clean`` walks back from the newest and names the second. A rule file with a
syntax error is a clear error naming the file and the line, before anything is read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.files.helpers import back_up_image
from vmguard.store import Repository
from vmguard.store.backend import LocalBackend
from vmguard.store.clock import ManualClock
from vmguard_lab import images
from vmguard_lab.images import DiskImageFactory
from vmguard_lab.imaging import damage
from vmguard_lab.imaging.tree import BIG_FILE

pytestmark = pytest.mark.lab

SEED = 1819
MARKER = b"VMGUARD-TEST-MARKER-7f3a9c"
PLANTED = "Users/Public/Downloads/invoice.pdf.exe"
RULES = """\
rule planted_marker
{
    strings:
        $marker = "VMGUARD-TEST-MARKER-7f3a9c"
    condition:
        $marker
}
"""


def vmguard(*argv: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("VMGUARD_", "AWS_"))}
    return subprocess.run(
        [sys.executable, "-m", "vmguard.cli", *argv],
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def five_points(
    disk_factory: DiskImageFactory, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[str]]:
    work = tmp_path_factory.mktemp("five-points")
    # Archive ids carry their start to the second: five points made within one second
    # would have no order. A point a minute: the clock moves only when told to.
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    repo = Repository.init(LocalBackend(work / "repo"), chunk_size=1 << 20, clock=clock)
    spec = images.gpt_ext4()
    archives: list[str] = []
    for number in range(5):
        image = disk_factory.build(spec, SEED, work / f"point{number}.img")
        if number >= 2:  # planted in the third point, and still there in the later ones
            part = image.partition(2)
            payload = b"MZ" + bytes(4094) + MARKER + b"\n" * 100
            damage.plant_ext4_file(image.path, part.offset, part.length, PLANTED, payload, work)
        parent = archives[-1] if archives else None
        archives.append(
            back_up_image(repo, "vm-scan", image.path, parent=parent, vm_name="scan01").archive_id
        )
        image.path.unlink()
        spec = spec.next_point()
        clock.advance(60)
    (work / "rules").mkdir()
    (work / "rules" / "marker.yar").write_text(RULES)
    return work, archives


def test_a_planted_file_is_reported_with_volume_path_and_rule(
    five_points: tuple[Path, list[str]],
) -> None:
    work, archives = five_points
    repo, rules = f"file://{work / 'repo'}", str(work / "rules")

    third = vmguard("verify", archives[2], "--repo", repo, "--yara", rules)
    assert third.returncode == 1, third.stderr
    assert f"p2/{PLANTED}: rule planted_marker" in third.stdout, third.stdout
    assert "NOT CLEAN" in third.stdout

    doc = vmguard("verify", archives[2], "--repo", repo, "--yara", rules, "-o", "json")
    result = json.loads(doc.stdout)
    matches = [
        (r["disk"], r["volume"], f["path"], f["rule"])
        for r in result["results"]
        for f in r["findings"]
        if "rule" in f
    ]
    assert matches == [("2000", "p2", PLANTED, "planted_marker")]

    second = vmguard("verify", archives[1], "--repo", repo, "--yara", rules)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "rule planted_marker" not in second.stdout


def test_latest_clean_resolves_to_the_point_before_the_planted_file(
    five_points: tuple[Path, list[str]],
) -> None:
    work, archives = five_points
    repo, rules = f"file://{work / 'repo'}", str(work / "rules")

    found = vmguard("verify", "scan01", "--latest-clean", "--repo", repo, "--yara", rules)

    assert found.returncode == 0, found.stderr
    assert found.stdout.strip().splitlines()[-1] == f"latest clean point: {archives[1]}"
    # it walked back from the newest: the three infected points were each reported
    for infected in archives[2:]:
        assert f"{infected} (scan01): NOT CLEAN" in found.stdout
    assert archives[0] not in found.stdout
    # an archive id names one point, not a VM to walk back through: a usage error
    wrong = vmguard("verify", archives[4], "--latest-clean", "--repo", repo, "--yara", rules)
    assert wrong.returncode == 2
    assert "give VM or VM@TIME, not an id" in wrong.stderr


def test_a_rule_file_with_a_syntax_error_names_the_file_and_line(
    five_points: tuple[Path, list[str]], tmp_path: Path
) -> None:
    work, archives = five_points
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "good.yar").write_text(RULES)
    bad = rules / "broken.yar"
    lines = ["rule fine { condition: true }", "", "rule broken {", '  strings: $a = "x"']
    bad.write_text("\n".join([*lines, "  condition: $a and", "}", ""]))

    result = vmguard(
        "verify", archives[0], "--repo", f"file://{work / 'repo'}", "--yara", str(rules)
    )

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"{bad} line 6" in result.stderr, result.stderr
    assert result.stdout == ""


def test_files_over_the_size_bound_are_listed_not_scanned(
    five_points: tuple[Path, list[str]],
) -> None:
    work, archives = five_points
    repo, rules = f"file://{work / 'repo'}", str(work / "rules")

    bounded = vmguard(
        "verify", archives[0], "--repo", repo, "--yara", rules, "--max-file-mib", "4", "-o", "json"
    )

    assert bounded.returncode == 0, bounded.stderr
    ext4 = next(r for r in json.loads(bounded.stdout)["results"] if r["volume"] == "p2")
    assert ext4["result"] == "passed"
    assert {"message": f"not scanned: {10 << 20} bytes, over the bound", "path": BIG_FILE} in ext4[
        "findings"
    ]


HELD_CHECKER = """\
#!/bin/sh
for volume; do :; done
while [ -e "$volume" ]; do sleep 0.05; done
exit 8
"""


def _ours(marker: str) -> tuple[list[str], list[int]]:
    """FUSE mounts and processes (nbdkit, nbdfuse, checkers) that name ``marker``."""
    mounts = [line for line in Path("/proc/mounts").read_text().splitlines() if marker in line]
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return mounts, pids


def _wait_for(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {_ours(what)}"
        time.sleep(0.05)


def test_a_killed_verify_leaves_no_mount_and_no_server_behind(
    five_points: tuple[Path, list[str]], tmp_path: Path
) -> None:
    work, archives = five_points
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # The check is held open while its volume is there, so the kill lands in the middle
    # of it: unheld, a fast machine checks this 126 MiB point before a poll sees a mount.
    # It ends as a checker on a vanished volume would (e2fsck's "operational error").
    held = tmp_path / "bin"
    held.mkdir()
    (held / "e2fsck").write_text(HELD_CHECKER)
    (held / "e2fsck").chmod(0o755)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("VMGUARD_", "AWS_"))}
    environ["PATH"] = f"{held}{os.pathsep}{environ.get('PATH', '')}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vmguard.cli",
            "verify",
            archives[0],
            "--fsck",
            "--repo",
            f"file://{work / 'repo'}",
        ],
        env={**environ, "TMPDIR": str(scratch)},
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "stderr").open("wb"),
    )

    def mounted() -> bool:
        ended = proc.poll()
        assert ended is None, f"verify ended ({ended}) before a mount was seen: " + (
            tmp_path / "stderr"
        ).read_text(errors="replace")
        return bool(_ours(str(scratch))[0])

    try:
        # in the middle of a check: a volume's export is mounted
        _wait_for(mounted, str(scratch))
        proc.kill()
        proc.wait()
        _wait_for(lambda: _ours(str(scratch)) == ([], []), str(scratch))
    finally:
        if proc.poll() is None:
            proc.kill()
