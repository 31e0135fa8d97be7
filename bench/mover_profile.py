"""Where the data mover's time goes: repeated runs with CPU accounting and py-spy.

    PYTHONPATH=operator python bench/mover_profile.py --size-gib 2 --rounds 3
    python bench/mover_profile.py --what restore --py-spy /path/to/py-spy   # + top frames
    python bench/mover_profile.py --what backup --levels 1,3               # zstd level
    python bench/mover_profile.py --what scattered --size-gib 8            # merged chunks

The same mixed image as ``bench/mover.py`` (served by nbdkit's file plugin), the lab's
MinIO (started if needed), an encrypted repository. Each round runs, one at a time:

- ``backup``: ``nbdcopy | zstd -1 -T0`` (the ceiling), then a full backup through the
  CLI into a fresh repository per zstd level in ``--levels``, then the *MinIO ingest
  floor*: objects of the sizes that backup stored, PUT again by as many threads as the
  backup's workers (what MinIO alone needs to take those bytes in);
- ``restore``: ``nbdcopy`` image → fresh sparse NBD target (the ceiling), the same
  with ``--flush`` (nbdcopy does not flush by default; a restore must, so this is the
  like-for-like ceiling), then the CLI restore of the full backup into a fresh target
  (checked bit-exact once);
- ``scattered``: a full backup into a fresh repository, then the scattered 1%
  incremental of ``bench/mover.py`` (1% of the 64 KiB blocks rewritten, spread) against
  it, which merges most touched chunks onto the parent's (docs/cbt-chain.md); the row
  notes what the CLI reported (bytes read, chunks read whole and merged, new chunks and
  bytes stored), so the CPU of our process and of MinIO can be set against the full's.
  ``--source-rate N`` serves both disks through nbdkit's rate filter at N MB/s, a
  stand-in for NBD from ESXi (80-200 MB/s per disk), where the source bounds a backup.

Every row reports wall seconds, the CPU seconds of the measured process tree, of the
lab's MinIO and of the target's nbdkit (from ``/proc``), and ``/proc/loadavg`` before
the run: the machine is shared, so a row is only comparable with its neighbours. The
summary keeps the best of the rounds. With ``--py-spy``, each vmguard command runs once
more under py-spy, twice: all threads with idle ones (``--threads --idle``: where each
thread's wall time goes) and the GIL holder only (``--gil``: how busy the GIL is, and
with what); samples are classified by pipeline stage (``STAGES``) per thread role. With
``--perf``, once more under ``perf record -a``: CPU by symbol, kernel included, of our
process, MinIO and the target's nbdkit. Raw profiles stay in the work directory. Not
part of the test run; buckets are removed unless ``--keep``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import re
import resource
import secrets
import subprocess
import tempfile
import time
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mover import (
    GiB,
    MiB,
    Target,
    _empty_bucket,
    _latest,
    cell,
    changed_copy,
    mixed_spec,
    vmguard,
)
from vmguard.engine.pipeline import default_workers
from vmguard.transport.nbd import NbdkitServer
from vmguard_lab.images import DiskImageFactory
from vmguard_lab.imaging.sparse import sha256_sparse
from vmguard_lab.lab import Lab

_TICK = os.sysconf("SC_CLK_TCK")
RATE = 200  # py-spy samples per second


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a live process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Row:
    name: str
    wall: float
    cpu: float
    minio: float
    nbdkit: float
    load: str
    note: str = ""


def measure(
    name: str,
    argv: list[str] | str,
    env: dict[str, str],
    minio_pid: int,
    nbdkit_pid: int | None = None,
) -> Row:
    """Run ``argv`` to completion; wall and CPU of it, of MinIO and of a target nbdkit."""
    # Start without dirty pages: a previous row's writeback (nbdcopy does not flush, MinIO
    # writes through the page cache) would otherwise be charged to this one.
    os.sync()
    load = Path("/proc/loadavg").read_text().split()[0]
    m0, n0, c0 = proc_cpu(minio_pid), proc_cpu(nbdkit_pid) if nbdkit_pid else 0.0, children_cpu()
    start = time.perf_counter()
    shell = isinstance(argv, str)
    done = subprocess.run(
        argv, env=env, shell=shell, executable="/bin/bash" if shell else None, capture_output=True
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}): {done.stderr[-2000:]!r}")
    return Row(
        name,
        wall,
        children_cpu() - c0,
        proc_cpu(minio_pid) - m0,
        (proc_cpu(nbdkit_pid) - n0) if nbdkit_pid else 0.0,
        load,
        _summary(done.stderr),
    )


def _summary(stderr: bytes) -> str:
    """The CLI's one-line account of a backup (``disk backup`` without ``--quiet``)."""
    lines = [line for line in stderr.decode(errors="replace").splitlines() if " read " in line]
    return lines[-1].strip() if lines else ""


def ingest_floor(client: Any, bucket: str, prefix: str, threads: int, minio_pid: int) -> Row:
    """PUT objects of the sizes a backup stored under ``prefix`` again, on ``threads``
    threads through the same SDK as the S3 backend: what MinIO alone needs to take in
    that backup's bytes. Payloads are slices of one random buffer (no CPU to make them)."""
    sizes = [o.size for o in client.list_objects(bucket, prefix=prefix + "/", recursive=True)]
    payload = os.urandom(max(sizes))
    os.sync()
    load = Path("/proc/loadavg").read_text().split()[0]

    def put(item: tuple[int, int]) -> None:
        number, size = item
        data = io.BytesIO(memoryview(payload)[:size])
        client.put_object(bucket, f"floor-{prefix}/{number}", data, size)

    usage = resource.getrusage(resource.RUSAGE_SELF)
    m0, c0 = proc_cpu(minio_pid), usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, enumerate(sizes)))
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    name = f"MinIO ingest floor: {sum(sizes) / MiB:.0f} MiB in {len(sizes)} PUTs, {threads} threads"
    cpu = usage.ru_utime + usage.ru_stime - c0
    return Row(name, wall, cpu, proc_cpu(minio_pid) - m0, 0.0, load)


def drop_prefix(client: Any, bucket: str, prefix: str) -> None:
    """Delete what a row stored: at 8 GiB, every round's repositories would fill the disk."""
    from minio.deleteobjects import DeleteObject

    listed = client.list_objects(bucket, prefix=prefix + "/", recursive=True)
    for _ in client.remove_objects(bucket, [DeleteObject(o.object_name) for o in listed]):
        pass


def _prefix(repo: list[str]) -> str:
    return repo[1].rsplit("/", 1)[1]


def print_row(row: Row, size: int) -> None:
    print(
        f"| {cell(row.name)} | {row.load} | {row.wall:.2f} | {size / MiB / row.wall:.0f} |"
        f" {row.cpu:.2f} | {row.minio:.2f} | {row.nbdkit:.2f} | {cell(row.note)} |",
        flush=True,
    )


HEADER = (
    "| run | load | wall s | MiB/s of disk | CPU s (process) | CPU s (MinIO) | CPU s (nbdkit)"
    " | note |\n"
    "|---|---:|---:|---:|---:|---:|---:|---|"
)


# -- py-spy summaries --------------------------------------------------------------------

# What a sample is doing, by the Python frame nearest the leaf that names a stage. The
# first pattern found walking from the leaf to the root wins.
STAGES: tuple[tuple[str, str], ...] = (
    ("S3 GET (request + body)", "S3Backend._get"),
    ("S3 PUT", "S3Backend.put"),
    ("decrypt (AES-GCM)", "AESGCM.decrypt"),
    ("encrypt (AES-GCM)", "AESGCM.encrypt"),
    ("decompress (zstd)", "Envelope._decompress"),
    ("compress (zstd)", "Envelope.seal"),
    ("hash (BLAKE3)", "ChunkCodec.chunk_id"),
    ("envelope checks/joins", "Envelope.open"),
    ("copy for libnbd (bytearray + Buffer)", "Buffer.from_bytearray"),
    ("idle sink connection", "Queue.get"),
    ("NBD write or zero, sent and acknowledged", "_Lane._run"),
    ("NBD wait for write slot", "_Lane.put"),
    ("NBD wait for the connections' writes", "_Lane.drain"),
    ("NBD flush", "NbdSink.flush"),
    ("NBD wait for write slot", "NbdSink._wait_oldest"),
    ("NBD write submit", "NbdSink.write"),
    ("NBD zero submit", "NbdSink.zero"),
    ("NBD read", "NbdSource.read_many"),
    ("zero-run scan", "_data_runs"),
    ("zero check", "is_zero"),
    ("wait for pipeline result", "Future.result"),
    ("wait for pipeline result", "bounded_map"),
    ("idle pool thread", "_worker (concurrent"),
    ("interpreter start, imports", "_find_and_load"),
    ("interpreter start, imports", "<module>"),
)


def _stage(frames: list[str]) -> str:
    for frame in reversed(frames):
        for label, pattern in STAGES:
            if pattern in frame:
                return label
    return "other: " + re.sub(r" \(.*", "", frames[-1]) if frames else "other"


def summarize_raw(path: Path, rate: int, top: int = 8, by_role: bool = True) -> str:
    """Per thread role: wall seconds sampled, and the share of each stage in them."""
    roles: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    threads: dict[str, set[str]] = collections.defaultdict(set)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        head, *frames = stack.split(";")
        # "thread (1234): restore_2" or "thread (1234): MainThread"
        tid, _, name = head.partition(": ")
        role = (re.sub(r"_\d+$", "", name) or "?") if by_role else "any thread"
        threads[role].add(tid)
        roles[role][_stage(frames)] += int(count_text)
    out = []
    for role, counter in sorted(roles.items(), key=lambda kv: -sum(kv[1].values())):
        n = sum(counter.values())
        out.append(f"{role} ({len(threads[role])} threads, {n / rate:.2f} thread-seconds sampled):")
        out += [
            f"  {100 * k / n:5.1f}%  {label}"
            for label, k in counter.most_common(top)
            if k * 100 >= n
        ]
    return "\n".join(out)


def pyspy(py_spy: str, out: Path, argv: list[str], env: dict[str, str]) -> str:
    """Two recordings of ``argv``: every thread, idle included (where the wall time
    goes); then only the thread holding the GIL (how busy the GIL is, and with what)."""
    texts = []
    for mode in ("--idle", "--gil"):
        raw = out.with_suffix(f".{mode.strip('-')}.raw")
        cmd = [py_spy, "record", "--threads", mode, "--rate", str(RATE)]
        cmd += ["--format", "raw", "--output", str(raw), "--", *argv]
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"py-spy failed: {done.stderr[-2000:]}")
        if mode == "--idle":
            texts.append(f"all threads, idle included ({wall:.1f} s under py-spy):")
        else:
            held = summarize_raw(raw, RATE, by_role=False)
            texts.append(f"GIL holder only ({wall:.1f} s under py-spy):")
        texts.append(summarize_raw(raw, RATE) if mode == "--idle" else held)
    return "\n".join(texts)


def perf_profile(out: Path, argv: list[str], env: dict[str, str], pids: dict[str, int]) -> str:
    """``perf record -a`` (CPU clock) while ``argv`` runs; top symbols of our process,
    MinIO and the target's nbdkit, kernel included (page faults, copies, file system)."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rec = subprocess.Popen(
        ["perf", "record", "-a", "-F", "499", "-o", str(out), "--", "sleep", "3600"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, err = proc.communicate()
    rec.send_signal(2)  # perf writes its file on SIGINT
    rec.wait()
    if proc.returncode != 0:
        raise SystemExit(f"profiled run failed: {err[-2000:]!r}")
    per_pid = collections.Counter(
        subprocess.run(
            ["perf", "script", "-i", str(out), "-F", "pid"], capture_output=True, text=True
        ).stdout.split()
    )
    out_lines = []
    for role, pid in {"vmguard": proc.pid, **pids}.items():
        report_argv = ["perf", "report", "-i", str(out), "--stdio", "--no-children"]
        report_argv += ["--percentage", "relative", "--percent-limit", "2"]
        report = subprocess.run(
            [*report_argv, f"--pid={pid}", "--sort", "dso,sym"], capture_output=True, text=True
        ).stdout
        rows = [
            re.sub(r"\s+", " ", line.strip())
            for line in report.splitlines()
            if line.strip() and not line.startswith("#")
        ]
        out_lines.append(f"{role}: {per_pid[str(pid)] / 499:.2f} CPU s sampled")
        out_lines += [f"  {row}" for row in rows[:10]]
    return "\n".join(out_lines)


# -- the runs ----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> None:
    lab = Lab()
    if not all(lab.status().values()):
        lab.up(vms=4)
    minio = lab.state().data["minio"]
    minio_pid = int((lab.paths.run / "minio.pid").read_text().split()[0])
    work = Path(args.work or tempfile.mkdtemp(prefix="vmguard-prof-"))
    work.mkdir(parents=True, exist_ok=True)
    size = args.size_gib * GiB
    factory = DiskImageFactory(lab.paths.cache / "images")
    image = factory.build(mixed_spec(size), seed=1, out_path=work / "disk0.img")
    print(
        f"disk {args.size_gib} GiB, {image.allocated / GiB:.2f} GiB allocated;"
        f" {os.cpu_count()} CPUs; workers {args.workers or 'default'}",
        flush=True,
    )

    from minio import Minio

    client = Minio(
        minio["endpoint"],
        access_key=minio["access_key"],
        secret_key=minio["secret_key"],
        secure=False,
    )
    bucket = f"prof-{secrets.token_hex(4)}"
    client.make_bucket(bucket)
    env = dict(os.environ)
    env.update(VMGUARD_S3_ACCESS_KEY=minio["access_key"], VMGUARD_S3_SECRET_KEY=minio["secret_key"])
    key = ["--key-file", str(work / "master.key")]
    levels = [int(x) for x in args.levels.split(",")]
    workers = ["--workers", str(args.workers)] if args.workers else []
    summaries: dict[str, str] = {}
    perfs: dict[str, str] = {}
    best: dict[str, Row] = {}
    fresh = iter(range(1_000))
    # (label, environment) per code version: with --baseline, every vmguard row runs
    # twice in a row, once with the baseline's source tree, under the same load.
    versions = [("", env)]
    if args.baseline:
        before = dict(env, PYTHONPATH=str(Path(args.baseline).resolve()))
        versions = [(" [before]", before), (" [after]", env)]

    def new_repo(level: int) -> list[str]:
        # Every full backup goes into a repository of its own: a second one into the same
        # repository would deduplicate every chunk and upload nothing.
        repo = ["--repo", f"s3+http://{minio['endpoint']}/{bucket}/r{next(fresh)}", *key]
        init = ["repo", "init", "--encrypt", "--compression-level", str(level), *repo]
        subprocess.run(vmguard(*init), env=env, check=True, capture_output=True)
        return repo

    def fresh_repo() -> list[str]:
        return new_repo(levels[-1])

    def keep(row: Row) -> None:
        print_row(row, size)
        if row.name not in best or row.wall < best[row.name].wall:
            best[row.name] = row

    try:
        print(HEADER, flush=True)
        target = Target(work / "target.img", size)
        with NbdkitServer.file(image.path) as source:
            backup = ["disk", "backup", "--vm", "bench", "--quiet", *workers, source.uri]
            restore_repo: list[str] = []
            for round_ in range(args.rounds):
                if args.what in ("backup", "both"):
                    ceiling = f"set -o pipefail; nbdcopy '{source.uri}' - | zstd -1 -T0 -q -c"
                    keep(measure("nbdcopy | zstd -1 -T0", ceiling + " > /dev/null", env, minio_pid))
                if args.what in ("backup", "both") or (args.what, round_) == ("restore", 0):
                    for level in levels:
                        for label, venv in versions:
                            repo = new_repo(level)
                            name = f"vmguard full backup, zstd {level}{label}"
                            keep(measure(name, vmguard(*backup, *repo), venv, minio_pid))
                            if restore_repo:  # only the newest repository is still needed
                                drop_prefix(client, bucket, _prefix(restore_repo))
                            restore_repo = repo
                        prefix = _prefix(restore_repo)
                        threads = args.workers or default_workers()
                        keep(ingest_floor(client, bucket, prefix, threads, minio_pid))
                        drop_prefix(client, bucket, f"floor-{prefix}")
                if args.what in ("restore", "both"):
                    with target as turi:
                        assert target.server is not None
                        copy = ["nbdcopy", source.uri, turi]
                        nbdkit = target.server.proc.pid
                        keep(measure("nbdcopy → NBD target", copy, env, minio_pid, nbdkit))
                    with target as turi:
                        assert target.server is not None
                        copy = ["nbdcopy", "--flush", source.uri, turi]
                        nbdkit = target.server.proc.pid
                        name = "nbdcopy --flush → NBD target"
                        keep(measure(name, copy, env, minio_pid, nbdkit))
                    for label, venv in versions:
                        with target as turi:
                            assert target.server is not None
                            nbdkit = target.server.proc.pid
                            restore = _restore_argv(restore_repo, turi, workers, env)
                            name = f"vmguard restore → NBD target{label}"
                            keep(measure(name, restore, venv, minio_pid, nbdkit))
                        if round_ == 0 and sha256_sparse(target.path) != image.sha256:
                            raise SystemExit(f"restore{label} is not bit-exact")
                if args.what == "scattered":
                    rows = scattered_rows(
                        work, image.path, backup, versions, fresh_repo, env, args.source_rate
                    )
                    for name, argv, venv in rows:
                        keep(measure(name, argv, venv, minio_pid))
            if args.py_spy:
                if args.what == "scattered":
                    with scattered_argv(work, image.path, backup, fresh_repo, env) as argv:
                        summaries["scattered incremental"] = pyspy(
                            args.py_spy, work / "scattered.raw", argv, env
                        )
                if args.what in ("backup", "both"):
                    argv = vmguard(*backup, *new_repo(levels[-1]))
                    summaries["full backup"] = pyspy(args.py_spy, work / "backup.raw", argv, env)
                if args.what in ("restore", "both"):
                    with target as turi:
                        argv = _restore_argv(restore_repo, turi, workers, env)
                        summaries["restore"] = pyspy(args.py_spy, work / "restore.raw", argv, env)
            if args.perf:
                if args.what in ("backup", "both"):
                    argv = vmguard(*backup, *new_repo(levels[-1]))
                    pids = {"minio": minio_pid}
                    perfs["full backup"] = perf_profile(work / "backup.perf", argv, env, pids)
                if args.what in ("restore", "both"):
                    with target as turi:
                        assert target.server is not None
                        argv = _restore_argv(restore_repo, turi, workers, env)
                        pids = {"minio": minio_pid, "nbdkit": target.server.proc.pid}
                        perfs["restore"] = perf_profile(work / "restore.perf", argv, env, pids)
    finally:
        if not args.keep:
            _empty_bucket(client, bucket)
            for name in ("disk0.img", "target.img", "disk2.img"):
                (work / name).unlink(missing_ok=True)
    print("\nbest of", args.rounds, "rounds (wall):")
    print(HEADER)
    for row in best.values():
        print_row(row, size)
    for name, text in summaries.items():
        print(f"\npy-spy, {name} (raw stacks in {work}):\n{text}")
    for name, text in perfs.items():
        print(f"\nperf, {name} (CPU clock, system-wide, by process):\n{text}")


def serve(path: Path, rate: int | None) -> NbdkitServer:
    """nbdkit's file plugin over ``path``; with ``rate`` (MB/s), through nbdkit's rate
    filter, as a stand-in for NBD from ESXi (80-200 MB/s per disk in production)."""
    if rate is None:
        return NbdkitServer.file(path)
    return NbdkitServer("file", [f"file={path}", f"rate={rate * 8}M"], filters=["rate"])


def scattered_rows(
    work: Path,
    image: Path,
    backup: list[str],
    versions: list[tuple[str, dict[str, str]]],
    new_repo: Any,
    env: dict[str, str],
    rate: int | None = None,
) -> Generator[tuple[str, list[str], dict[str, str]], None, None]:
    """(name, argv, environment) of a full backup and of the scattered incremental on
    top of it, per code version, each version in a repository of its own (a second
    version's incremental would find the first's chunks and upload nothing). Both read
    from a server of their own, limited to ``rate`` MB/s when given."""
    changed = work / "changed2.json"
    if not changed.exists():
        changed.write_text(json.dumps(changed_copy(image, work / "disk2.img", 64 << 10, seed=3)))
    loud = [arg for arg in backup[:-1] if arg != "--quiet"]  # without the source's URI
    where = f", source {rate} MB/s" if rate else ""
    for label, venv in versions:
        repo = new_repo()
        with serve(image, rate) as full_disk:
            yield f"vmguard full backup{where}{label}", vmguard(*loud, full_disk.uri, *repo), venv
        parent = _latest(repo, env)
        with serve(work / "disk2.img", rate) as changed_disk:
            argv = vmguard(*loud, changed_disk.uri, "--parent", parent)
            argv += ["--changed-areas", str(changed), *repo]
            yield f"vmguard scattered incr. 1% (64 KiB){where}{label}", argv, venv


@contextlib.contextmanager
def scattered_argv(
    work: Path, image: Path, backup: list[str], new_repo: Any, env: dict[str, str]
) -> Iterator[list[str]]:
    """A scattered incremental to profile (its source served meanwhile), its full
    backup made untimed first."""
    rows = scattered_rows(work, image, backup, [("", env)], new_repo, env)
    with contextlib.closing(rows):
        _, full, _ = next(rows)
        subprocess.run(full, env=env, check=True, capture_output=True)
        _, argv, _ = next(rows)
        yield argv


def _restore_argv(
    repo: list[str], target: str, workers: list[str], env: dict[str, str]
) -> list[str]:
    archive = _latest(repo, env)
    restore = ["disk", "restore", archive, target, "--target-is-zeroed", "--quiet"]
    return vmguard(*restore, *workers, *repo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gib", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--what", choices=("backup", "restore", "both", "scattered"), default="both"
    )
    parser.add_argument("--levels", default="3", help="zstd levels for backups, e.g. 1,3")
    parser.add_argument("--workers", type=int, help="passed to the CLI's --workers")
    parser.add_argument("--py-spy", help="path of a py-spy binary: also record a profile")
    parser.add_argument("--perf", action="store_true", help="also record with perf -a")
    parser.add_argument(
        "--baseline", help="another source root (its operator/ dir): run every row with it too"
    )
    parser.add_argument(
        "--source-rate",
        type=int,
        help="--what scattered: serve the disks at most this many MB/s (NBD from ESXi)",
    )
    parser.add_argument("--work", help="directory for images and profiles")
    parser.add_argument("--keep", action="store_true", help="keep the bucket and images")
    args = parser.parse_args()
    run(args)


if __name__ == "__main__":
    main()
