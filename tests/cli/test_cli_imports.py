"""What the data commands load at start-up: nothing of the control plane.

Every ``vmguard`` invocation builds the whole parser, so a command module that imports
the Kubernetes client or pyVmomi at module level makes ``vmguard disk backup`` pay for
it (~0.2 s of a 0.3 s incremental; ``docs/benchmarks.md``). The check runs in a fresh
interpreter, as the CLI starts.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit
CONTROL_PLANE = {"kubernetes", "kopf", "pyVmomi", "pyVim", "pydantic"}
# Drawn or asked for only when needed: the progress bar, shell completion, the display
# width of table cells (wcwidth), and the event loop, which only control loops wait on
# (asyncio: ~50 ms of CPU at every start when the store's clock imported it).
ON_DEMAND = {"rich", "argcomplete", "wcwidth", "asyncio"}

_LOADED = """
import json, sys
from vmguard.cli import main as cli
args = cli.build_parser().parse_args(sys.argv[1:])
import vmguard.cli.disk, vmguard.cli.repo, vmguard.store.backend.s3
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def _top_level_modules(*argv: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", _LOADED, *argv], check=True, capture_output=True, text=True
    )
    return set(json.loads(done.stdout))


def test_disk_and_repo_commands_do_not_import_the_control_plane() -> None:
    for argv in (
        ("disk", "backup", "img", "--repo", "s3://h:1/b/p", "--vm", "v"),
        ("disk", "restore", "a", "t", "--repo", "file:///r"),
        ("repo", "ls", "--repo", "file:///r"),
        ("backup", "create", "vm1", "--policy", "p"),
    ):
        loaded = _top_level_modules(*argv)
        assert "vmguard" in loaded and "minio" in loaded  # the probe did run
        assert loaded.isdisjoint(CONTROL_PLANE), (argv, loaded & CONTROL_PLANE)
        assert loaded.isdisjoint(ON_DEMAND), (argv, loaded & ON_DEMAND)
