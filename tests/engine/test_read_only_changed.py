"""Reading only what changed, end to end: the CLI backs up an nbdkit export into MinIO.

A disk with 4 MiB chunks (the repository default) gets 1% of its 64 KiB blocks
rewritten, scattered over it (CBT's real granularity, as a database writes), and the
incremental is told exactly those areas. nbdkit's own log filter records every read it
served, so what the source was asked for is counted by the peer, not by us; the
engine's count (the manifest's ``bytes_read``) must agree with it. Issue 16's
acceptance: at most twice the changed bytes are read, and the archive restores
bit-exact.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from tests.engine.cli import Cli
from tests.engine.helpers import sha256_file
from vmguard.transport.nbd import NbdkitServer

pytestmark = pytest.mark.lab
MiB = 1 << 20
CHUNK = 4 * MiB
BLOCK = 64 << 10
SIZE = 128 * MiB
_READ = re.compile(r"\bRead id=\d+ offset=0x([0-9a-f]+) count=0x([0-9a-f]+)")


def _served_reads(log: Path) -> list[tuple[int, int]]:
    """(offset, length) of every read nbdkit's log filter recorded."""
    return [(int(m[1], 16), int(m[2], 16)) for m in _READ.finditer(log.read_text())]


def _backup(cli: Cli, disk: Path, log: Path, *extra: str) -> dict[str, Any]:
    with NbdkitServer("file", [f"file={disk}", f"logfile={log}"], filters=["log"]) as server:
        done = cli.run("disk", "backup", server.uri, "--vm", "vm-scattered", "--json", *extra)
    return dict(json.loads(done.stdout))


def test_a_scattered_one_percent_incremental_reads_at_most_twice_what_changed(
    s3_bucket: dict[str, Any], tmp_path: Path
) -> None:
    rng = random.Random(16)
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:  # three chunks of data, then a hole, over and over
        f.truncate(SIZE)
        for number in range(SIZE // CHUNK):
            if number % 4 != 3:
                f.seek(number * CHUNK)
                f.write(rng.randbytes(CHUNK))
    cli = Cli.for_bucket(s3_bucket, "scattered", None)
    cli.run("repo", "init")
    full = _backup(cli, disk, tmp_path / "full.log")
    assert full["stats"]["bytes_read"] == 3 * SIZE // 4

    blocks = sorted(rng.sample(range(SIZE // BLOCK), SIZE // BLOCK // 100))
    with open(disk, "r+b") as f:
        for block in blocks:
            f.seek(block * BLOCK)
            f.write(rng.randbytes(BLOCK))
    changed = [[block * BLOCK, BLOCK] for block in blocks]
    areas = tmp_path / "changed.json"
    areas.write_text(json.dumps(changed))
    log = tmp_path / "incremental.log"
    manifest = _backup(cli, disk, log, "--parent", "latest", "--changed-areas", str(areas))

    changed_bytes = len(blocks) * BLOCK
    served = _served_reads(log)
    assert manifest["mode"] == "incremental"
    assert sum(length for _, length in served) == manifest["stats"]["bytes_read"]
    assert manifest["stats"]["bytes_read"] <= 2 * changed_bytes, (
        f"read {manifest['stats']['bytes_read']} bytes for {changed_bytes} changed"
    )
    touched = {block * BLOCK // CHUNK for block in blocks}
    assert manifest["stats"]["chunks_new"] == len(touched)  # every changed chunk stored

    target = tmp_path / "restored.img"
    cli.run("disk", "restore", manifest["archive_id"], str(target), "--disk", "0", "--quiet")
    assert sha256_file(target) == sha256_file(disk)
