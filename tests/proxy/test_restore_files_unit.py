"""Unit tests of the files-mode plumbing that needs no lab: CRD paths to restore patterns,
and the per-disk layout under a destination (a real DirectorySink in a temp dir)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmguard.files.fs import Stat
from vmguard.files.restore import DirectorySink
from vmguard.proxy.restore_files import _Under, patterns

pytestmark = pytest.mark.unit


def test_paths_become_volume_patterns() -> None:
    assert patterns(["/etc/**", "/srv/a.txt", "/"], 2) == ["p2/etc/**", "p2/srv/a.txt", "p2"]
    assert patterns(["/etc/hosts"], None) == ["*/etc/hosts"]


def test_every_disk_lands_under_its_key(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path)
    stat = Stat("file", 5, mtime_ns=1_700_000_000 * 10**9, mode=0o640)
    under = _Under(sink, "2000")
    assert under.file("p1/etc/hosts", [b"hello"], stat) == 5
    under.finish()
    written = tmp_path / "2000" / "p1" / "etc" / "hosts"
    assert written.read_bytes() == b"hello"
    assert written.stat().st_mtime_ns == stat.mtime_ns and written.stat().st_mode & 0o777 == 0o640
