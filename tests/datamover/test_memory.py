"""Memory of a backup is bounded by the pipeline depth, not by the disk size (BRIEF §8).

Two sparse disks with the same allocated data (same bytes, same number of extents) —
one of 8 GiB, one of 64 GiB — are backed up by the CLI in fresh processes; their peak
RSS (``getrusage``) must differ by less than 20%.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
GiB = 1 << 30
MiB = 1 << 20
PIECES = 12
PIECE = 8 * MiB

_MEASURE = """
import resource, sys
from vmguard.cli import main
rc = main(sys.argv[1:])
print("RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, rc)
"""


def _sparse_disk(path: Path, size: int) -> None:
    rng = random.Random(1)
    with open(path, "wb") as f:
        f.truncate(size)
        for n in range(PIECES):
            f.seek(n * (size // PIECES))
            f.write(rng.randbytes(PIECE))


def _peak_rss_kib(tmp: Path, size: int) -> int:
    disk = tmp / f"disk-{size // GiB}g.img"
    _sparse_disk(disk, size)
    repo = f"file://{tmp}/repo-{size // GiB}"
    subprocess.run(
        [sys.executable, "-m", "vmguard.cli", "repo", "init", repo], check=True, capture_output=True
    )
    args = ["disk", "backup", str(disk), "--repo", repo, "--vm", "vm", "--quiet"]
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, *args], check=True, capture_output=True, text=True
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("RSS"))
    _, rss, rc = line.split()
    assert rc == "0"
    disk.unlink()
    return int(rss)


def test_peak_rss_does_not_grow_with_disk_size(tmp_path: Path) -> None:
    small = _peak_rss_kib(tmp_path, 8 * GiB)
    large = _peak_rss_kib(tmp_path, 64 * GiB)
    assert abs(large - small) / small < 0.20, (small, large)
