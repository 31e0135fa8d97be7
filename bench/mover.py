"""The data mover against its ceilings and against restic, in one run (BRIEF §8).

    make bench                      # or: PYTHONPATH=operator python bench/mover.py
    python bench/mover.py --size-gib 2 --keep   # smaller; keep buckets and images
    python bench/mover.py --rounds 3            # what docs/benchmarks.md records

One mixed image (text, random, repeated and zero-written regions and holes; about 56%
allocated) is served by nbdkit's file plugin, and the lab's MinIO (started if needed)
holds every repository. Each round measures, in this order, into fresh buckets:

- native ceilings: ``nbdcopy`` to ``null:``; ``nbdcopy`` into ``zstd -1 -T0``; ``nbdcopy``
  from the image into a fresh sparse target served by nbdkit (the restore ceiling), and
  the same with ``--flush`` (a restore flushes its target; plain nbdcopy does not);
- vmguard (encrypted repository, defaults otherwise, through the CLI): full backup;
  incremental with 1% of the disk's 4 MiB blocks rewritten (clustered, as CBT reports
  real guest writes); the scattered 1% incremental: 1% of its 64 KiB blocks rewritten,
  scattered (CBT's granularity; touches ~half the 4 MiB chunks, the worst case for
  fixed chunks), printing the bytes it read from the source against the bytes CBT
  reported changed (merged chunks read only their changed areas, docs/cbt-chain.md);
  restore of the
  full backup into the same NBD target, and into a new local file (the kind of target
  restic restores into: the two are a row each); the *repository-read ceiling*
  (``bench/repo_read.py``): the same disk backed up, untimed, into an unencrypted
  repository in the same MinIO, its chunk objects fetched at the restore's concurrency,
  envelope stripped, decompressed and written into the same kind of NBD target — what a
  restore cannot do without; a full backup and the clustered 1% incremental
  into a repository with Object Lock (GOVERNANCE, 1 day, in a lock-enabled bucket),
  printing the retention requests each made (format §9.1: none while the parent's
  lock horizon covers the new archive);
- copies (``copy_rows``; ``--no-copy`` skips them): the full backup's repository copied
  to the lab's second MinIO, first as raw objects (``bench/raw_copy.py``: list, GET,
  PUT, no decoding, at the copy's concurrency — the ceiling, what ``mc mirror`` does),
  then by ``vmguard repo copy`` of the full archive into an encrypted repository of
  its own key there (read, decrypt, re-encrypt, write; issue 17, BRIEF §8 at least 0.8 times);
- the proxy (``proxy_rows``; ``--no-proxy`` skips it): the path the product runs, one
  process for every disk of a VM. A VM of the lab's vCenter simulator gets the image on
  two disks; ``bench/proxy_transfer.py`` (the backup proxy's process without its
  Kubernetes calls) is timed for a full and for an incremental after 1% of each disk's
  4 MiB blocks were rewritten; the snapshots are taken and removed outside the timing,
  as the operator does;
- restic (Debian's; compression auto): first backup, second backup of the image with
  the clustered 1% change, restore of the first snapshot (into a local file);
- a VM of 4 disks (``vm_rows``; ``--no-vm`` skips them), each a copy of a mixed image of
  ``--vm-disk-size`` (2 GiB, at most the image's size): 4 ``nbdcopy`` into 4 fresh NBD
  targets at once, against the VM's restore as the proxy and the CLI run it
  (``bench/vm_restore.py``: its disks in parallel, the product's default at once).

``--size 256M`` (a multiple of 64 MiB) runs every row on a small image, to see them work.

The machine is shared, so each row keeps its best round and the 1-minute load average
it ran under. ``bench/mover_profile.py`` says where the time of a row goes.
Prints a table with the BRIEF's ratios. Not part of the test run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vmguard.transport.nbd import NbdkitServer
from vmguard_lab.images import DiskImage, DiskImageFactory, ImageSpec, PartitionSpec, RawRegion
from vmguard_lab.imaging.sparse import sha256_sparse
from vmguard_lab.lab import Lab

MiB = 1 << 20
GiB = 1 << 30
CHUNK = 4 * MiB


def mixed_spec(size: int) -> ImageSpec:
    """Per GiB: 256 MiB text, 192 MiB random, 64 MiB repeated, 64 MiB zeros, 448 MiB hole
    (a disk smaller than a GiB, a multiple of 64 MiB, gets the same unit scaled down)."""
    scale = min(size, GiB) // (64 * MiB)  # sixteenths of the GiB unit
    sixteenth = scale * 4 * MiB
    unit = (
        RawRegion("compressible", 4 * sixteenth),
        RawRegion("hole", 2 * sixteenth),
        RawRegion("random", 3 * sixteenth),
        RawRegion("repeat", sixteenth),
        RawRegion("hole", 3 * sixteenth),
        RawRegion("zeros", sixteenth),
        RawRegion("hole", 2 * sixteenth),
    )
    layout = unit * max(1, size // GiB)
    return ImageSpec(size, None, (PartitionSpec("raw", None, layout=layout),))


def parse_size(text: str) -> int:
    """``256M``, ``2G`` or a number of GiB: bytes, a multiple of 64 MiB."""
    units = {"M": MiB, "G": GiB}
    size = (
        int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text) * GiB
    )
    if size <= 0 or size % (64 * MiB) or (size > GiB and size % GiB):
        raise SystemExit(f"--size {text}: a multiple of 64 MiB up to 1G, of 1 GiB beyond")
    return size


def changed_copy(src: Path, dst: Path, block: int, seed: int) -> list[list[int]]:
    """Copy ``src`` (sparse) and rewrite 1% of its ``block``-sized blocks with random data."""
    subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(src), str(dst)], check=True)
    size = src.stat().st_size
    rng = random.Random(seed)
    blocks = sorted(rng.sample(range(size // block), max(1, size // block // 100)))
    with open(dst, "r+b") as f:
        for b in blocks:
            f.seek(b * block)
            f.write(rng.randbytes(block))
    return [[b * block, block] for b in blocks]


def timed(argv: list[str] | str, env: dict[str, str] | None = None, shell: bool = False) -> float:
    return timed_output(argv, env, shell)[0]


def timed_output(
    argv: list[str] | str, env: dict[str, str] | None = None, shell: bool = False
) -> tuple[float, str]:
    """Seconds the command took, and what it printed on stdout."""
    start = time.perf_counter()
    done = subprocess.run(
        argv,
        env=env,
        shell=shell,
        executable="/bin/bash" if shell else None,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{argv!r} failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed, done.stdout


def load() -> float:
    """The 1-minute load average: the machine is shared, each row says what it ran under."""
    return float(Path("/proc/loadavg").read_text().split()[0])


class Timings:
    """Seconds per row over rounds; keeps the best of each row and the load it ran under."""

    def __init__(self) -> None:
        self.best: dict[str, tuple[float, float]] = {}
        self.notes: dict[str, str] = {}
        """Row → what it reported beside its time (e.g. retention requests)."""
        self.counts: dict[str, tuple[int, int]] = {}
        """Row → (bytes read from the source, bytes CBT reported changed), last round."""

    def __setitem__(self, name: str, seconds: float) -> None:
        print(f"[bench]   {name}: {seconds:.2f} s", file=sys.stderr)
        if name not in self.best or seconds < self.best[name][0]:
            self.best[name] = (seconds, self._load)

    def __getitem__(self, name: str) -> float:
        return self.best[name][0]

    def run(self, name: str, argv: list[str] | str, env: dict[str, str] | None = None) -> str:
        # Start without dirty pages: a previous row's writeback (nbdcopy does not flush,
        # MinIO writes through the page cache) would otherwise be charged to this one.
        os.sync()
        self._load = load()
        self[name], out = timed_output(argv, env, shell=isinstance(argv, str))
        return out


class Target:
    """A fresh sparse restore target served read-write by nbdkit."""

    def __init__(self, path: Path, size: int) -> None:
        self.path, self.size = path, size
        self.server: NbdkitServer | None = None

    def __enter__(self) -> str:
        self.path.unlink(missing_ok=True)
        with open(self.path, "wb") as f:
            f.truncate(self.size)
        self.server = NbdkitServer.file(self.path, readonly=False)
        return self.server.uri

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


def vmguard(*args: str) -> list[str]:
    return [sys.executable, "-m", "vmguard.cli", *args]


def run(args: argparse.Namespace) -> dict[str, Any]:
    lab = Lab()
    if not all(lab.status().values()):
        # 24, the lab's default estate: it holds VMs with two disks for the proxy rows
        # (the simulator gives ~15 % of its VMs a second disk; the first 4 have none).
        lab.up(vms=24)
    minio = lab.state().data["minio"]
    second = lab.state().data.get("minio2")
    if second is None and not args.no_copy:
        raise SystemExit("bench: the lab has no second MinIO for the copy rows: `make lab-down`")
    work = Path(args.work or tempfile.mkdtemp(prefix="vmguard-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    size = parse_size(args.size) if args.size else args.size_gib * GiB
    results: dict[str, Any] = {"size": size, "work": str(work), "rounds": args.rounds}

    print(f"[bench] building the {size / GiB:g} GiB mixed image", file=sys.stderr)
    factory = DiskImageFactory(lab.paths.cache / "images")
    image = factory.build(mixed_spec(size), seed=1, out_path=work / "disk0.img")
    results["allocated"] = image.allocated
    vm_size = min(parse_size(args.vm_disk_size), size)
    vm_image = image
    if vm_size != size:
        vm_image = factory.build(mixed_spec(vm_size), seed=1, out_path=work / "vmdisk.img")
    results["vm_disk_size"] = vm_size
    clustered = changed_copy(image.path, work / "disk1.img", CHUNK, seed=2)
    scattered = changed_copy(image.path, work / "disk2.img", 64 << 10, seed=3)
    (work / "changed1.json").write_text(json.dumps(clustered))
    (work / "changed2.json").write_text(json.dumps(scattered))

    from minio import Minio

    client = Minio(
        minio["endpoint"],
        access_key=minio["access_key"],
        secret_key=minio["secret_key"],
        secure=False,
    )
    buckets: list[str] = []
    copy_to = None
    if not args.no_copy:
        assert second is not None
        copy_to = SecondMinio(
            Minio(
                second["endpoint"],
                access_key=second["access_key"],
                secret_key=second["secret_key"],
                secure=False,
            ),
            second,
        )
    t = Timings()
    try:
        for round_ in range(args.rounds):
            print(f"[bench] round {round_ + 1} of {args.rounds}", file=sys.stderr)
            results["restore_exact"] = results.get("restore_exact", True) & one_round(
                t, client, buckets, minio, work, image, size, keep=args.keep, copy_to=copy_to
            )
            if not args.no_vm:
                results["restore_exact"] &= vm_rows(t, client, buckets, minio, work, vm_image)
            if not args.no_proxy:
                proxy_rows(t, lab, client, buckets, minio, work, image, keep=args.keep)
    finally:
        if not args.keep:
            for name in buckets:
                _empty_bucket(client, name)
            if copy_to is not None:
                for name in list(copy_to.buckets):
                    _empty_bucket(copy_to.client, name)
            shutil.rmtree(work, ignore_errors=True)
    results["times"] = {name: sec for name, (sec, _) in t.best.items()}
    results["notes"] = dict(t.notes)
    results["counts"] = dict(t.counts)
    results["loads"] = {name: avg for name, (_, avg) in t.best.items()}
    return results


def one_round(
    t: Timings,
    client: Any,
    buckets: list[str],
    minio: dict[str, str],
    work: Path,
    image: DiskImage,
    size: int,
    *,
    keep: bool,
    copy_to: SecondMinio | None = None,
) -> bool:
    """Every row once, into fresh buckets; True if the restore was bit-exact."""
    bucket = f"bench-{secrets.token_hex(4)}"
    client.make_bucket(bucket)
    buckets.append(bucket)
    env = dict(os.environ)
    env.update(VMGUARD_S3_ACCESS_KEY=minio["access_key"], VMGUARD_S3_SECRET_KEY=minio["secret_key"])
    repo = [
        "--repo",
        f"s3+http://{minio['endpoint']}/{bucket}/vmguard",
        "--key-file",
        str(work / "master.key"),
    ]
    target = Target(work / "target.img", size)

    with (
        NbdkitServer.file(image.path) as s0,
        NbdkitServer.file(work / "disk1.img") as s1,
        NbdkitServer.file(work / "disk2.img") as s2,
    ):
        print("[bench] native ceilings", file=sys.stderr)
        t.run("nbdcopy → null", ["nbdcopy", s0.uri, "null:"])
        t.run(
            "nbdcopy | zstd -1 -T0",
            f"set -o pipefail; nbdcopy '{s0.uri}' - | zstd -1 -T0 -q -c > /dev/null",
        )
        with target as turi:
            t.run("nbdcopy → NBD target", ["nbdcopy", s0.uri, turi])
        with target as turi:
            # nbdcopy leaves the target's writes in the page cache unless told to flush; a
            # restore flushes before it reports success, so this is the like-for-like row.
            t.run("nbdcopy --flush → NBD target", ["nbdcopy", "--flush", s0.uri, turi])

        print("[bench] vmguard", file=sys.stderr)
        subprocess.run(
            vmguard("repo", "init", "--encrypt", *repo), env=env, check=True, capture_output=True
        )
        backup = ["disk", "backup", "--vm", "bench", "--quiet", *repo]
        t.run("vmguard full backup", vmguard(*backup, s0.uri), env)
        full_id = _latest(repo, env)
        if copy_to is not None:  # while the repository holds the full backup alone
            copy_rows(t, copy_to, work, env, repo[1], full_id, keep=keep)
        t.run(
            "vmguard incr. 1% (4 MiB blocks)",
            vmguard(
                *backup, s1.uri, "--parent", full_id, "--changed-areas", str(work / "changed1.json")
            ),
            env,
        )
        scattered(t, backup, env, s2.uri, full_id, work / "changed2.json")
        with target as turi:
            restore = ["disk", "restore", full_id, turi, "--target-is-zeroed", "--quiet", *repo]
            t.run(RESTORE_NBD, vmguard(*restore), env)
        exact = sha256_sparse(target.path) == image.sha256
        local = work / "restored.img"  # against restic's restore into a local file
        local.unlink(missing_ok=True)
        t.run(RESTORE_FILE, vmguard("disk", "restore", full_id, str(local), "--quiet", *repo), env)
        exact &= sha256_sparse(local) == image.sha256
        local.unlink()
        exact &= repository_read(t, client, buckets, minio, work, env, s0.uri, target, image)
        locked(t, client, buckets, minio, work, env, s0.uri, s1.uri)
    # A round's data goes before the next part: at 8 GiB the images, a restored target, a
    # repository and restic's (non-sparse) restore would not fit beside three rounds'.
    if not keep:
        target.path.unlink()
        _drop_bucket(client, buckets, bucket)

    print("[bench] restic", file=sys.stderr)
    rbucket = f"restic-{secrets.token_hex(4)}"
    client.make_bucket(rbucket)
    buckets.append(rbucket)
    renv = dict(os.environ)
    renv.update(
        RESTIC_REPOSITORY=f"s3:http://{minio['endpoint']}/{rbucket}",
        RESTIC_PASSWORD="bench password",
        AWS_ACCESS_KEY_ID=minio["access_key"],
        AWS_SECRET_ACCESS_KEY=minio["secret_key"],
        RESTIC_CACHE_DIR=str(work / "restic-cache"),
    )
    rdir = work / "restic"
    shutil.rmtree(rdir, ignore_errors=True)
    shutil.rmtree(work / "restic-cache", ignore_errors=True)
    rdir.mkdir()
    subject = rdir / "disk.img"
    timed(["restic", "init"], renv)
    os.link(image.path, subject)
    t.run("restic first backup", ["restic", "backup", "--host", "bench", str(subject)], renv)
    subject.unlink()
    os.link(work / "disk1.img", subject)
    t.run("restic second backup (1%)", ["restic", "backup", "--host", "bench", str(subject)], renv)
    snaps = json.loads(
        subprocess.run(
            ["restic", "snapshots", "--json"], env=renv, capture_output=True, check=True, text=True
        ).stdout
    )
    first = sorted(snaps, key=lambda s: s["time"])[0]["short_id"]
    out = work / "restic-restore"
    shutil.rmtree(out, ignore_errors=True)
    t.run("restic restore", ["restic", "restore", first, "--target", str(out)], renv)
    shutil.rmtree(out, ignore_errors=True)
    if not keep:
        _drop_bucket(client, buckets, rbucket)
    return exact


RESTORE_NBD = "vmguard restore → NBD target"
RESTORE_FILE = "vmguard restore → local file"
REPO_READ = "repository read (unencrypted) → NBD target"
VM_DISKS = 4
NBDCOPY_VM = f"{VM_DISKS} nbdcopys → NBD targets, in parallel"
RESTORE_VM = f"vmguard {VM_DISKS}-disk VM restore → {VM_DISKS} NBD targets"


def repository_read(
    t: Timings,
    client: Any,
    buckets: list[str],
    minio: dict[str, str],
    work: Path,
    env: dict[str, str],
    uri: str,
    target: Target,
    image: DiskImage,
) -> bool:
    """The repository-read ceiling (``bench/repo_read.py``): the same disk backed up
    (untimed) into an unencrypted repository in the same MinIO, its chunk objects fetched
    at the restore's concurrency, envelope stripped, decompressed and written into the
    same kind of NBD target. True if that target came out bit-exact."""
    bucket = f"bench-plain-{secrets.token_hex(4)}"
    client.make_bucket(bucket)
    buckets.append(bucket)
    plain = ["--repo", f"s3+http://{minio['endpoint']}/{bucket}/vmguard"]
    subprocess.run(vmguard("repo", "init", *plain), env=env, check=True, capture_output=True)
    subprocess.run(
        vmguard("disk", "backup", "--vm", "bench", "--quiet", *plain, uri),
        env=env,
        check=True,
        capture_output=True,
    )
    archive = _latest(plain, env)
    driver = str(Path(__file__).with_name("repo_read.py"))
    with target as turi:
        t.run(REPO_READ, [sys.executable, driver, plain[1], archive, turi], env)
    exact = sha256_sparse(target.path) == image.sha256
    _drop_bucket(client, buckets, bucket)
    return exact


def vm_rows(
    t: Timings,
    client: Any,
    buckets: list[str],
    minio: dict[str, str],
    work: Path,
    image: DiskImage,
) -> bool:
    """A VM of ``VM_DISKS`` disks, each a copy of ``image``: ``VM_DISKS`` nbdcopys into
    fresh NBD targets at once (the ceiling), then the VM's restore from an encrypted
    repository as the proxy and the CLI run it (``bench/vm_restore.py``: its disks in
    parallel, as many at once as the product's default). True if every disk came out
    bit-exact."""
    env = dict(os.environ)
    env.update(VMGUARD_S3_ACCESS_KEY=minio["access_key"], VMGUARD_S3_SECRET_KEY=minio["secret_key"])
    targets = [Target(work / f"vm-target{n}.img", image.size) for n in range(VM_DISKS)]
    driver = str(Path(__file__).with_name("vm_restore.py"))
    bucket = f"bench-vm-{secrets.token_hex(4)}"
    client.make_bucket(bucket)
    buckets.append(bucket)
    url = f"s3+http://{minio['endpoint']}/{bucket}/vmguard"
    key = str(work / "master.key")
    subprocess.run(
        vmguard("repo", "init", "--encrypt", "--repo", url, "--key-file", key),
        env=env,
        check=True,
        capture_output=True,
    )
    with NbdkitServer.file(image.path) as source:
        print(f"[bench] {VM_DISKS}-disk VM", file=sys.stderr)
        with contextlib.ExitStack() as stack:
            uris = [stack.enter_context(target) for target in targets]
            copies = " ".join(
                f"nbdcopy '{source.uri}' '{u}' & p{n}=$!;" for n, u in enumerate(uris)
            )
            waits = " ".join(f"wait $p{n};" for n in range(VM_DISKS))
            t.run(NBDCOPY_VM, f"set -e; {copies} {waits}")
        archive = subprocess.run(
            [sys.executable, driver, "backup", url, key, source.uri, "--disks", str(VM_DISKS)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    with contextlib.ExitStack() as stack:
        uris = [stack.enter_context(target) for target in targets]
        t.run(RESTORE_VM, [sys.executable, driver, "restore", url, key, archive, *uris], env)
    exact = all(sha256_sparse(target.path) == image.sha256 for target in targets)
    for target in targets:
        target.path.unlink()
    _drop_bucket(client, buckets, bucket)
    return exact


class SecondMinio:
    """The lab's second MinIO (where copies go): a client, its lab state, the buckets
    made in it (emptied at the end)."""

    def __init__(self, client: Any, info: dict[str, str]) -> None:
        self.client, self.info = client, info
        self.buckets: list[str] = []

    def bucket(self, stem: str) -> str:
        name = f"{stem}-{secrets.token_hex(4)}"
        self.client.make_bucket(name)
        self.buckets.append(name)
        return name

    def drop(self, name: str) -> None:
        _empty_bucket(self.client, name)
        self.buckets.remove(name)


RAW_COPY = "raw object copy → 2nd MinIO"
COPY = "vmguard repo copy (full) → 2nd MinIO"


def copy_rows(
    t: Timings,
    second: SecondMinio,
    work: Path,
    env: dict[str, str],
    source: str,
    archive: str,
    *,
    keep: bool,
) -> None:
    """The copy ceiling and the copy: the source repository (holding the full backup
    alone) copied object by object to a bucket of the second MinIO, then the full
    archive copied by ``vmguard repo copy`` into an encrypted repository there (its own
    key: every chunk decrypted and sealed again). Both read the same objects from the
    first MinIO, hot from the backup alike."""
    print("[bench] copies to the second MinIO", file=sys.stderr)
    cenv = dict(env)
    cenv.update(
        VMGUARD_TO_S3_ACCESS_KEY=second.info["access_key"],
        VMGUARD_TO_S3_SECRET_KEY=second.info["secret_key"],
    )
    raw = second.bucket("bench-rawcopy")
    driver = str(Path(__file__).with_name("raw_copy.py"))
    where = f"s3+http://{second.info['endpoint']}"
    out = json.loads(t.run(RAW_COPY, [sys.executable, driver, source, f"{where}/{raw}/raw"], cenv))
    t.notes[RAW_COPY] = f"{out['objects']} objects, {out['bytes'] / MiB:.0f} MiB"
    print(f"[bench]   {RAW_COPY}: {t.notes[RAW_COPY]}", file=sys.stderr)
    if not keep:
        second.drop(raw)

    bucket = second.bucket("bench-copy")
    target = f"{where}/{bucket}/vmguard"
    tenv = dict(env)
    tenv.update(
        VMGUARD_S3_ACCESS_KEY=second.info["access_key"],
        VMGUARD_S3_SECRET_KEY=second.info["secret_key"],
    )
    init = ["repo", "init", "--encrypt", "--repo", target, "--key-file", str(work / "copy.key")]
    subprocess.run(vmguard(*init), env=tenv, check=True, capture_output=True)
    argv = vmguard(
        "repo",
        "copy",
        "--from",
        source,
        "--to",
        target,
        "--from-key-file",
        str(work / "master.key"),
        "--to-key-file",
        str(work / "copy.key"),
        "--json",
        archive,
    )
    (result,) = json.loads(t.run(COPY, argv, cenv))["copies"]
    t.notes[COPY] = (
        f"{result['chunks_read']} chunks read, {result['chunks_uploaded']} uploaded,"
        f" {result['bytes_stored'] / MiB:.0f} MiB stored"
    )
    print(f"[bench]   {COPY}: {t.notes[COPY]}", file=sys.stderr)
    if not keep:
        second.drop(bucket)


SCATTERED = "vmguard incr. 1% (64 KiB, scattered)"
"""The scattered 1% incremental (its name kept, so bench/compare.py pairs it with older trees)."""


def scattered(
    t: Timings, backup: list[str], env: dict[str, str], uri: str, parent: str, areas: Path
) -> None:
    """The scattered 1% incremental, noting the bytes read from the source (the engine's
    count, the manifest's ``bytes_read``) against the bytes CBT reported changed."""
    argv = vmguard(*backup, "--json", uri, "--parent", parent, "--changed-areas", str(areas))
    manifest = json.loads(t.run(SCATTERED, argv, env))
    changed = sum(length for _, length in json.loads(areas.read_text()))
    read = manifest["stats"]["bytes_read"]
    t.notes[SCATTERED] = (
        f"read {read / MiB:.1f} MiB from the source for {changed / MiB:.1f} MiB"
        f" CBT changed ({read / changed:.2f} times)"
    )
    t.counts[SCATTERED] = (read, changed)
    print(f"[bench]   {SCATTERED}: {t.notes[SCATTERED]}", file=sys.stderr)


def locked(
    t: Timings,
    client: Any,
    buckets: list[str],
    minio: dict[str, str],
    work: Path,
    env: dict[str, str],
    full_uri: str,
    changed_uri: str,
) -> None:
    """The Object Lock rows: a full and a 1% incremental, with their retention requests."""
    print("[bench] vmguard with Object Lock", file=sys.stderr)
    bucket = f"bench-lock-{secrets.token_hex(4)}"
    client.make_bucket(bucket, object_lock=True)
    buckets.append(bucket)
    repo = [
        "--repo",
        f"s3+http://{minio['endpoint']}/{bucket}/vmguard",
        "--key-file",
        str(work / "master.key"),
    ]
    subprocess.run(
        vmguard("repo", "init", "--encrypt", "--lock-days", "1", *repo),
        env=env,
        check=True,
        capture_output=True,
    )
    backup = ["disk", "backup", "--vm", "bench", "--quiet", "--json", *repo]
    for name, argv in (
        ("vmguard full backup (Object Lock)", vmguard(*backup, full_uri)),
        (
            "vmguard incr. 1% (Object Lock)",
            vmguard(
                *backup,
                changed_uri,
                "--parent",
                "latest",
                "--changed-areas",
                str(work / "changed1.json"),
            ),
        ),
    ):
        manifest = json.loads(t.run(name, argv, env))
        t.notes[name] = f"{manifest['stats']['retention_requests']} retention requests"
        print(f"[bench]   {name}: {t.notes[name]}", file=sys.stderr)
    _drop_bucket(client, buckets, bucket)


PROXY_DISKS = 2
PROXY_FULL = f"vmguard proxy full, {PROXY_DISKS} disks, one process"
PROXY_INCR = f"vmguard proxy incr. 1%, {PROXY_DISKS} disks, one process"


def proxy_rows(
    t: Timings,
    lab: Lab,
    client: Any,
    buckets: list[str],
    minio: dict[str, str],
    work: Path,
    image: DiskImage,
    *,
    keep: bool,
) -> None:
    """The path the product runs: one proxy process moves every disk of a VM.

    A VM of the lab's vCenter simulator gets a copy of the image on each of
    ``PROXY_DISKS`` disks; as the operator would, this process takes the snapshot
    (``vm.cycle.prepare``: CBT on, parent, mode) and removes it afterwards, untimed, and
    ``bench/proxy_transfer.py`` — the proxy's process without its Kubernetes calls: its
    imports, vCenter login, CBT queries, nbdkit per disk through the lab's locator, the
    engine, one archive — is timed, for a full and then for an incremental after 1% of
    each disk's 4 MiB blocks were rewritten by the simulator's guest writes.
    """
    from vmguard.store import MasterKey
    from vmguard.store.location import open_repository
    from vmguard.vm.cycle import finish, prepare
    from vmguard.vsphere.session import Endpoint, VSphereSession
    from vmguard_lab.vsim import VSimControl

    print("[bench] vmguard proxy (lab vCenter simulator)", file=sys.stderr)
    vs = lab.state().data["vsphere"]
    vsim = VSimControl(vs["control_url"])
    vm = next(
        (
            v
            for v in reversed(vsim.vms())
            if not v.template and len(v.disks) >= PROXY_DISKS and not v.name.startswith("vmguard-")
        ),
        None,
    )
    if vm is None:
        raise SystemExit(
            f"bench: the lab's simulator has no VM with {PROXY_DISKS} disks for the proxy rows"
            " (a lab started elsewhere with a smaller estate? `make lab-down` and run again)"
        )
    disks = vm.disks[:PROXY_DISKS]
    copies = [work / f"proxy-disk{n}.img" for n in range(PROXY_DISKS)]
    for disk, copy in zip(disks, copies, strict=True):
        subprocess.run(["cp", "--sparse=always", str(image.path), str(copy)], check=True)
        vsim.put_image(vm.moref, disk.key, str(copy))
    bucket = f"bench-proxy-{secrets.token_hex(4)}"
    client.make_bucket(bucket)
    buckets.append(bucket)
    url = f"s3+http://{minio['endpoint']}/{bucket}/vmguard"
    env = dict(os.environ)
    env.update(
        VMGUARD_S3_ACCESS_KEY=minio["access_key"],
        VMGUARD_S3_SECRET_KEY=minio["secret_key"],
        VMGUARD_REPO=url,
        VMGUARD_KEY_FILE=str(work / "master.key"),
        VMGUARD_VC_URL=vs["sdk_url"],
        VMGUARD_VC_USER=vs["username"],
        VMGUARD_VC_PASSWORD=vs["password"],
        VMGUARD_VC_CA_FILE=vs["ca"],
        VMGUARD_PROXY_LOCATOR=f"lab:{vs['control_url']}",
        VMGUARD_TRANSPORT="nbd",
    )
    subprocess.run(
        vmguard("repo", "init", "--encrypt", "--repo", url, "--key-file", str(work / "master.key")),
        env=env,
        check=True,
        capture_output=True,
    )
    repo = open_repository(url, MasterKey.from_file(str(work / "master.key")), env)
    endpoint = Endpoint(vs["sdk_url"], vs["username"], vs["password"], ca_file=vs["ca"])
    session = VSphereSession(endpoint)
    driver = str(Path(__file__).with_name("proxy_transfer.py"))
    try:
        for row in (PROXY_FULL, PROXY_INCR):
            if row == PROXY_INCR:
                rng = random.Random(4)
                for disk in disks:
                    capacity = vsim.disk(vm.moref, disk.key).capacity
                    for block in rng.sample(range(capacity // CHUNK), capacity // CHUNK // 100):
                        vsim.write(vm.moref, disk.key, block * CHUNK, rng.randbytes(CHUNK))
            uid = secrets.token_hex(8)
            prepared = prepare(session, repo, vm.moref, uid, vcenter="bench")
            decision = prepared.decision
            request = {
                "vm_moref": vm.moref,
                "snapshot_moref": prepared.snapshot.moref,
                "backup_uid": uid,
                "parent": decision.parent,
                "vcenter": "bench",
                "transport": "nbd",
                "mode_reason": "" if decision.mode == "incremental" else decision.reason,
                "backings": {str(d.key): d.backing_file for d in prepared.vm.disks},
            }
            try:
                out = json.loads(t.run(row, [sys.executable, driver, json.dumps(request)], env))
            finally:
                finish(session, vm.moref, uid)
            t.notes[row] = f"{out['mode']}, read {out['bytes_read'] / MiB:.0f} MiB"
            print(f"[bench]   {row}: {t.notes[row]}", file=sys.stderr)
    finally:
        session.close()
        keep_dir = lab.paths.lab / "bench"  # outlives the work directory
        keep_dir.mkdir(exist_ok=True)
        for disk in disks:  # the VM's disks back to empty images of their old size
            empty = keep_dir / f"{vm.moref}-{disk.key}.img"
            with open(empty, "wb") as f:
                f.truncate(disk.capacity)
            vsim.put_image(vm.moref, disk.key, str(empty))
        vsim.close()
        for copy in copies:
            copy.unlink(missing_ok=True)
        if not keep:
            _drop_bucket(client, buckets, bucket)


def _drop_bucket(client: Any, buckets: list[str], name: str) -> None:
    _empty_bucket(client, name)
    buckets.remove(name)


def _latest(repo: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        vmguard("repo", "ls", "--json", *repo),
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return str(json.loads(done.stdout)["archives"][-1]["archive_id"])


def _empty_bucket(client: Any, bucket: str) -> None:
    """Remove every version, also those under a GOVERNANCE lock (the lab's root user may
    bypass it: a bench must not leave locked gigabytes behind)."""
    from minio.deleteobjects import DeleteObject

    names = [
        DeleteObject(o.object_name, o.version_id)
        for o in client.list_objects(bucket, recursive=True, include_version=True)
    ]
    for error in client.remove_objects(bucket, names, bypass_governance_mode=True):
        raise SystemExit(f"cannot empty bucket {bucket}: {error}")
    client.remove_bucket(bucket)


def cell(text: str) -> str:
    """Text for a Markdown table cell (a row name may hold a shell pipe)."""
    return text.replace("|", "\\|")


def table(results: dict[str, Any]) -> str:
    t, size, loads = results["times"], results["size"], results["loads"]

    def row_size(name: str) -> int:
        """Disk bytes a row moves: the VM rows move VM_DISKS disks."""
        if name in (NBDCOPY_VM, RESTORE_VM):
            return VM_DISKS * int(results["vm_disk_size"])
        return int(size)

    lines = [
        f"disk {size / GiB:g} GiB, {results['allocated'] / GiB:.2f} GiB allocated;"
        f" restore bit-exact: {results['restore_exact']}; best of {results['rounds']} rounds",
        "",
        "| run | seconds | MiB/s of disk | load | note |",
        "|---|---:|---:|---:|---|",
    ]
    notes = results.get("notes", {})
    lines += [
        f"| {cell(name)} | {sec:.1f} | {row_size(name) / MiB / sec:.0f} | {loads[name]:.1f}"
        f" | {notes.get(name, '')} |"
        for name, sec in t.items()
    ]
    full = t["vmguard full backup"]
    incr = t["vmguard incr. 1% (4 MiB blocks)"]
    restore = t[RESTORE_NBD]
    read, changed = results["counts"][SCATTERED]
    checks = [
        ("full ÷ zstd ceiling (speed)", t["nbdcopy | zstd -1 -T0"] / full, "≥ 0.8"),
        ("full ÷ restic first (speed)", t["restic first backup"] / full, "≥ 2"),
        ("incremental time ÷ full time", incr / full, "≤ 0.05"),
        ("scattered incremental time ÷ full time", t[SCATTERED] / full, "≤ 0.25"),
        ("scattered: bytes read from source ÷ CBT changed", read / changed, "≤ 2"),
        ("incremental ÷ restic second (speed)", t["restic second backup (1%)"] / incr, "≥ 20"),
        ("restore ÷ nbdcopy write (speed)", t["nbdcopy → NBD target"] / restore, "≥ 0.8"),
        (
            "restore ÷ nbdcopy --flush write (speed)",
            t["nbdcopy --flush → NBD target"] / restore,
            "-",
        ),
    ]
    checks += [
        ("restore ÷ repository-read ceiling (speed)", t[REPO_READ] / restore, "≥ 0.9"),
        (
            "restore → local file ÷ restic restore (speed)",
            t["restic restore"] / t[RESTORE_FILE],
            "≥ 1.2",
        ),
    ]
    if COPY in t:
        checks.append(("copy ÷ raw object copy (speed)", t[RAW_COPY] / t[COPY], "≥ 0.8"))
    if RESTORE_VM in t:
        checks.append(
            (
                f"{VM_DISKS}-disk VM restore ÷ {VM_DISKS} parallel nbdcopys (speed)",
                t[NBDCOPY_VM] / t[RESTORE_VM],
                "≥ 0.8",
            )
        )
    if PROXY_INCR in t:
        checks.append(
            ("proxy incremental time ÷ proxy full time", t[PROXY_INCR] / t[PROXY_FULL], "-")
        )
    lines += ["", "| ratio | measured | target |", "|---|---:|---|"]
    lines += [f"| {name} | {value:.2f} | {goal} |" for name, value, goal in checks]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gib", type=int, default=8)
    parser.add_argument("--size", help="instead of --size-gib: e.g. 256M, 2G")
    parser.add_argument(
        "--vm-disk-size",
        default="2G",
        help="size of each disk of the 4-disk VM restore rows (at most the image's size)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat; keep each row's best")
    parser.add_argument("--work", help="directory for images and targets (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep images and buckets")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--no-proxy", action="store_true", help="skip the proxy rows (lab vCenter simulator)"
    )
    parser.add_argument("--no-vm", action="store_true", help="skip the 4-disk VM restore rows")
    parser.add_argument(
        "--no-copy", action="store_true", help="skip the copy rows (the lab's second MinIO)"
    )
    args = parser.parse_args()
    results = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
