"""Verification throughput: the file-system check and the YARA scan of a 16 GiB ext4
point, against the same tools on a local copy of the same point; prints a table.

    PYTHONPATH=operator python bench/verify.py [--work DIR]

Builds the factory's 16 GiB ext4 image (cached), backs it up into a local repository
(the real engine, default 4 MiB chunks), then times

- **fsck**: ``verify_point`` with ``--fsck`` (nbdkit + cow + offset, nbdfuse, e2fsck
  with the journal replay) against the ceiling ``e2fsck -fn`` on the local image
  (``FILE?offset=N``: the partition in place, no copy);
- **scan**: ``verify_point`` with one YARA rule over every file, against the ceiling of
  YARA-X scanning the same files restored to a local directory (``scan_file``).

The local image stands for "a locally restored copy": a restore is bit-exact (BRIEF §9,
invariant 1), so its bytes are the image's. Throughput is MiB/s of file data (the sum of
the volume's regular file sizes). Not part of the test run; results go to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yara_x
from tests.files.helpers import back_up_image

from vmguard.files.restore import DirectorySink, restore_paths
from vmguard.store import Repository
from vmguard.store.backend import LocalBackend
from vmguard.verify.runner import VerifyOptions, verify_point
from vmguard.verify.scan import compile_rules
from vmguard_lab import images
from vmguard_lab.images import DiskImageFactory
from vmguard_lab.paths import LabPaths

MiB = 1 << 20
SEED = 11
RULE = 'rule bench_marker { strings: $a = "VMGUARD-BENCH-NEVER-PRESENT-41d" condition: $a }\n'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="work directory (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-verify-", dir=args.work) as tmp:
        run(Path(tmp))


def run(work: Path) -> None:
    factory = DiskImageFactory(LabPaths.default().cache / "images")
    image = factory.build(images.large_ext4(), SEED, work / "large.img")
    part = image.partition(1)
    file_bytes = sum(e.size for e in part.manifest.values() if e.type == "file")
    repo_dir = work / "repo"
    repo = Repository.init(LocalBackend(repo_dir))
    manifest = back_up_image(repo, "vm-bench", image.path)
    rules_file = work / "bench.yar"
    rules_file.write_text(RULE)
    rules = compile_rules(rules_file)
    rows = []

    started = time.monotonic()
    point = verify_point(
        repo, manifest, VerifyOptions(fsck=True), repo_url=str(repo_dir), env=os.environ
    )
    fsck_s = time.monotonic() - started
    assert point.clean, point.to_dict()
    fetched = sum(r.bytes_fetched for r in point.results)
    started = time.monotonic()
    native = subprocess.run(
        ["e2fsck", "-fn", f"{image.path}?offset={part.offset}"], capture_output=True, text=True
    )
    native_s = time.monotonic() - started
    assert native.returncode == 0, native.stdout
    rows.append(("fsck (e2fsck)", fsck_s, native_s, fetched))

    started = time.monotonic()
    point = verify_point(
        repo,
        manifest,
        VerifyOptions(fsck=False, rules=rules),
        repo_url=str(repo_dir),
        env=os.environ,
    )
    scan_s = time.monotonic() - started
    scanned = sum(r.bytes_scanned for r in point.results)
    fetched = sum(r.bytes_fetched for r in point.results)
    restored = work / "restored"
    report = restore_paths(repo, manifest, ["p1"], DirectorySink(restored))
    assert report.ok, report.errors
    scanner = yara_x.Scanner(rules.rules)
    started = time.monotonic()
    for path in restored.rglob("*"):
        if path.is_file() and not path.is_symlink():
            scanner.scan_file(str(path))
    local_s = time.monotonic() - started
    rows.append(("scan (YARA-X)", scan_s, local_s, fetched))

    print(
        f"16 GiB ext4 point: {file_bytes / MiB:.0f} MiB of file data,"
        f" {scanned / MiB:.0f} MiB scanned"
    )
    print(
        f"{'check':16} {'vmguard MiB/s':>14} {'local MiB/s':>12} {'ratio':>6} {'fetched MiB':>12}"
    )
    for name, ours, local, fetched in rows:
        print(
            f"{name:16} {file_bytes / MiB / ours:14.1f} {file_bytes / MiB / local:12.1f}"
            f" {local / ours:6.2f} {fetched / MiB:12.1f}"
        )


if __name__ == "__main__":
    main()
