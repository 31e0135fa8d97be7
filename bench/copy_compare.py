"""Before/after of ``vmguard repo copy``, interleaved in one run against its ceiling.

    PYTHONPATH=operator python bench/copy_compare.py --before /path/to/old/tree --rounds 5

``bench/mover.py`` times the copy once per round beside every other row; comparing two
trees' copies through ``bench/compare.py`` costs a whole mover run per side and round.
This runs only the copy rows, all on one lab: one full backup of the mixed image (the
bench's, ``--size``) into an encrypted repository of the lab's MinIO, then per round,
in an order that rotates every round, the raw object copy of that repository to a fresh
bucket of the second MinIO (``bench/raw_copy.py``, the ceiling), the old tree's ``vmguard
repo copy`` and this tree's, each into a fresh encrypted repository of its own key
there. Both trees read the same source objects from the same MinIO and run on this
Python (``PYTHONPATH=<tree>/operator``); only their code differs. Prints the median and
spread of each, the CPU seconds of its process (median), and the copy ÷ raw speed ratio
of each tree's medians. Not part of the
test run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from minio import Minio

import mover  # the bench's image, lab and bucket helpers (this script's directory)
from vmguard.transport.nbd import NbdkitServer

HERE = Path(__file__).resolve().parent.parent
RAW, BEFORE, AFTER = "raw object copy", "before: vmguard repo copy", "after: vmguard repo copy"


def cli(*args: str) -> list[str]:
    """A vmguard CLI command as ``bench/mover.py`` runs it; the tree is the env's
    ``PYTHONPATH`` (:func:`tree_env`)."""
    return [sys.executable, "-m", "vmguard.cli", *args]


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Seconds the command took, the CPU seconds it used (user + system, its children
    included), and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds, out = mover.timed_output(argv, env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, out


def tree_env(env: dict[str, str], tree: Path) -> dict[str, str]:
    return dict(env, PYTHONPATH=str(tree / "operator"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, type=Path, help="the old tree")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", default="1G", help="the mixed image's size (default 1G)")
    args = ap.parse_args()
    before, after = args.before.resolve(), HERE
    lab = mover.Lab()
    if not all(lab.status().values()):
        lab.up(vms=24)
    minio, second = lab.state().data["minio"], lab.state().data.get("minio2")
    if second is None:
        raise SystemExit("the lab has no second MinIO: `make lab-down` and up again")
    src = Minio(minio["endpoint"], minio["access_key"], minio["secret_key"], secure=False)
    dst = mover.SecondMinio(
        Minio(second["endpoint"], second["access_key"], second["secret_key"], secure=False),
        second,
    )
    work = Path(tempfile.mkdtemp(prefix="vmguard-copybench-"))
    size = mover.parse_size(args.size)
    image = mover.DiskImageFactory(lab.paths.cache / "images").build(
        mover.mixed_spec(size), seed=1, out_path=work / "disk0.img"
    )
    bucket = f"bench-{secrets.token_hex(4)}"
    src.make_bucket(bucket)
    env = dict(os.environ)
    env.update(VMGUARD_S3_ACCESS_KEY=minio["access_key"], VMGUARD_S3_SECRET_KEY=minio["secret_key"])
    source = f"s3+http://{minio['endpoint']}/{bucket}/vmguard"
    repo = ["--repo", source, "--key-file", str(work / "master.key")]
    aenv = tree_env(env, after)
    got: dict[str, list[float]] = {RAW: [], BEFORE: [], AFTER: []}
    cpu: dict[str, list[float]] = {RAW: [], BEFORE: [], AFTER: []}
    notes: dict[str, str] = {}
    try:
        subprocess.run(cli("repo", "init", "--encrypt", *repo), env=aenv, check=True)
        with NbdkitServer.file(image.path) as s0:
            backup = ["disk", "backup", "--vm", "bench", "--quiet", *repo, s0.uri]
            subprocess.run(cli(*backup), env=aenv, check=True)
        listed = subprocess.run(
            cli("repo", "ls", "--json", *repo), env=aenv, check=True, capture_output=True
        )
        archive = str(json.loads(listed.stdout)["archives"][-1]["archive_id"])
        where = f"s3+http://{second['endpoint']}"
        cenv = dict(
            env,
            VMGUARD_TO_S3_ACCESS_KEY=second["access_key"],
            VMGUARD_TO_S3_SECRET_KEY=second["secret_key"],
        )
        tenv = dict(
            env,
            VMGUARD_S3_ACCESS_KEY=second["access_key"],
            VMGUARD_S3_SECRET_KEY=second["secret_key"],
        )
        order = [RAW, BEFORE, AFTER]
        for i in range(args.rounds):
            for row in order[i % 3 :] + order[: i % 3]:
                os.sync()
                if row == RAW:
                    name = dst.bucket("bench-rawcopy")
                    driver = str(after / "bench" / "raw_copy.py")
                    argv = [sys.executable, driver, source, f"{where}/{name}/raw"]
                    seconds, used, out = timed(argv, tree_env(cenv, after))
                    notes[RAW] = out.strip()
                else:
                    tree = before if row == BEFORE else after
                    name = dst.bucket("bench-copy")
                    target = f"{where}/{name}/vmguard"
                    key = work / f"copy-{i}-{row[:5]}.key"
                    init = ["repo", "init", "--encrypt", "--repo", target, "--key-file", str(key)]
                    subprocess.run(
                        cli(*init), env=tree_env(tenv, after), check=True, capture_output=True
                    )
                    argv = cli(
                        "repo", "copy", "--from", source, "--to", target,
                        "--from-key-file", str(work / "master.key"), "--to-key-file", str(key),
                        "--json", archive,
                    )  # fmt: skip
                    seconds, used, out = timed(argv, tree_env(cenv, tree))
                    (result,) = json.loads(out)["copies"]
                    notes[row] = (
                        f"{result['chunks_uploaded']} chunks, "
                        f"{result['bytes_stored'] / mover.MiB:.0f} MiB stored"
                    )
                got[row].append(seconds)
                cpu[row].append(used)
                dst.drop(name)
                print(f"[copybench] round {i + 1} {row}: {seconds:.2f} s", file=sys.stderr)
    finally:
        mover._empty_bucket(src, bucket)
        for name in list(dst.buckets):
            dst.drop(name)
    print(f"{args.rounds} rounds, {size / mover.GiB:g} GiB mixed image, rotating order; seconds:")
    print(f"1-minute load average at the end: {os.getloadavg()[0]:.1f}")
    print(
        "\n| run | median (min-max) | CPU s (median) | copy ÷ raw (speed) | note |"
        "\n|---|---:|---:|---:|---|"
    )
    raw = statistics.median(got[RAW])
    for row, times in got.items():
        med = statistics.median(times)
        ratio = "-" if row == RAW else f"{raw / med:.2f}"
        spread = f"{med:.2f} ({min(times):.2f}-{max(times):.2f})"
        used = statistics.median(cpu[row])
        print(f"| {row} | {spread} | {used:.2f} | {ratio} | {notes.get(row, '')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
