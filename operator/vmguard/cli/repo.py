"""``vmguard repo ...``: create, inspect, verify and maintain a repository without a cluster.

Exit codes: 0 success; 1 verify found problems, lock-check left a retention short, or
any other failure (printed by :mod:`vmguard.cli.main`); 2 a usage error. Every
sub-command takes the repository options of :mod:`vmguard.cli.options` (``repo init``
also the URL as its argument) and ``-o table|json|yaml``.
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from vmguard.cli.options import (
    KEY_HELP,
    UsageError,
    add_output_option,
    add_repository_options,
    emit,
    new_key_file,
    open_repository_from,
    repository_key,
)
from vmguard.cli.progress import ProgressDisplay, human_bytes
from vmguard.config import S3_ACCESS_ENV, S3_SECRET_ENV
from vmguard.engine.pipeline import default_workers
from vmguard.errors import ConfigError
from vmguard.store import ObjectLockPolicy, Repository, names
from vmguard.store.config import DEFAULT_CHUNK_SIZE
from vmguard.store.crypto import DEFAULT_KDF_LIMITS, FORMAT_KDF_LIMITS, KEY_ENV
from vmguard.store.location import master_key, open_location, open_repository, repository_url


def add_repo_options(parser: argparse.ArgumentParser) -> None:
    """The shared repository options and ``-o``."""
    add_repository_options(parser)
    add_output_option(parser)


def open_repo(args: argparse.Namespace) -> Repository:
    return open_repository_from(args)


def _emit(args: argparse.Namespace, doc: dict[str, Any], text: str) -> None:
    emit(args, doc, text)


def _quiet(args: argparse.Namespace) -> bool:
    """A document on stdout: no progress display on stderr either (as before ``-o``)."""
    return bool(args.output != "table")


def _init(args: argparse.Namespace) -> int:
    backend = open_location(
        repository_url(args.url or args.repo),
        create=True,
        insecure_http=args.insecure_http,
        ca_file=args.ca_file,
    )
    key = None
    if args.encrypt:
        if args.key_file:
            key = new_key_file(args.key_file)
        else:
            key = repository_key(args)
            if key is None:
                raise UsageError(
                    "--encrypt needs --key-file FILE (created if absent) or VMGUARD_KEY"
                )
    lock = ObjectLockPolicy(args.lock_mode, args.lock_days) if args.lock_days else None
    repo = Repository.init(
        backend,
        master_key=key,
        chunk_size=args.chunk_size,
        compression_level=args.compression_level,
        object_lock=lock,
    )
    doc = {"id": repo.config.id, "location": backend.location, "encrypted": repo.encrypted}
    _emit(args, doc, f"created repository {repo.config.id} at {backend.location}")
    return 0


def _info(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    config = repo.config
    doc = {
        "id": config.id,
        "location": repo.backend.location,
        "created": config.created,
        "chunk_size": config.chunk_size,
        "compression_level": config.compression_level,
        "encrypted": repo.encrypted,
        "object_lock": asdict(config.object_lock) if config.object_lock else None,
        "features": list(config.features),
        "config_source": repo.source,
        "archives": len(repo.list_archives()),
    }
    _emit(args, doc, "\n".join(f"{k:18} {v}" for k, v in doc.items()))
    return 0


def _ls(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    rows: list[dict[str, Any]] = []
    for ref in repo.list_archives(args.vm):
        manifest = repo.load_archive(ref.archive_id)
        rows.append(
            {
                "archive_id": ref.archive_id,
                "vm": manifest.vm.id,
                "vm_name": manifest.vm.name,
                "started": names.format_time(manifest.started),
                "mode": manifest.mode,
                "disks": [d.key for d in manifest.disks],
                "logical_bytes": manifest.stats.logical_bytes,
                "bytes_stored": manifest.stats.bytes_stored,
            }
        )
    lines = [f"{'ARCHIVE':48} {'VM':24} {'MODE':11} {'DISKS':6} {'LOGICAL':>10} {'NEW':>10}"]
    for r in rows:
        lines.append(
            f"{r['archive_id']:48} {r['vm'][:24]:24} {r['mode']:11} {len(r['disks']):<6}"
            f" {human_bytes(r['logical_bytes']):>10} {human_bytes(r['bytes_stored']):>10}"
        )
    _emit(args, {"archives": rows}, "\n".join(lines))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from vmguard.store.verify import verify

    repo = open_repo(args)
    display = ProgressDisplay("deep verify", enabled=args.deep and not _quiet(args), unit="chunks")
    with display:
        report = verify(repo, deep=args.deep, workers=args.workers, progress=display)
    if args.deep and not _quiet(args):
        display.finish()
    lines = [
        f"{'deep' if args.deep else 'quick'} verify: {report.archives} archives,"
        f" {report.chunks} chunks, {human_bytes(report.bytes_read)} read"
    ]
    for p in report.chunk_problems:
        lines.append(f"chunk {p.chunk_id} {p.kind}: {p.detail}; archives: {', '.join(p.archives)}")
    for a in report.archive_problems:
        lines.append(f"archive {a.archive_id}: {a.detail}")
    lines.append("OK" if report.ok else f"{len(report.affected_archives())} archive(s) damaged")
    _emit(args, asdict(report) | {"ok": report.ok}, "\n".join(lines))
    return 0 if report.ok else 1


def _lock_check(args: argparse.Namespace) -> int:
    from vmguard.store.lockcheck import lock_check

    repo = open_repo(args)
    display = ProgressDisplay("lock-check", enabled=not _quiet(args), unit="objects")
    with display:
        report = lock_check(repo, repair=not args.dry_run, workers=args.workers, progress=display)
        if not _quiet(args):
            display.finish()
    if not report.object_lock:
        _emit(args, asdict(report) | {"ok": True}, "the repository does not use Object Lock")
        return 0
    lines = [
        f"lock-check: {report.archives} archive(s) under retention, {report.objects} objects,"
        f" {len(report.shortfalls)} short, {report.repaired} repaired"
        f" ({report.retention_requests} retention requests)"
    ]
    for s in report.shortfalls:
        until = names.format_time(s.until) if s.until else "none"
        state = "repaired" if s.repaired else ("short" if not s.detail else s.detail)
        lines.append(
            f"{s.name}: retained until {until}, needs {names.format_time(s.needed)}: {state};"
            f" archives: {', '.join(s.archives)}"
        )
    lines += report.problems
    lines.append("OK" if report.ok else "retentions remain short")
    _emit(args, asdict(report) | {"ok": report.ok}, "\n".join(lines))
    return 0 if report.ok else 1


def _prune(args: argparse.Namespace) -> int:
    from vmguard.store.prune import RetentionPolicy, prune

    policy = RetentionPolicy(
        keep_last=args.keep_last,
        keep_hourly=args.keep_hourly,
        keep_daily=args.keep_daily,
        keep_weekly=args.keep_weekly,
        keep_monthly=args.keep_monthly,
        keep_yearly=args.keep_yearly,
    )
    report = prune(open_repo(args), policy, vm_id=args.vm, dry_run=args.dry_run)
    verb = "would prune" if args.dry_run else "pruned"
    lines = [f"kept {a} ({', '.join(why)})" for a, why in sorted(report.kept.items())]
    lines += [f"{verb} {a}" for a in report.pruned]
    lines += [
        f"locked {a}: Object Lock retains it until {names.format_time(until)}; not pruned"
        for a, until in report.locked
    ]
    _emit(args, asdict(report), "\n".join(lines) or "no archives")
    return 0


def _gc(args: argparse.Namespace) -> int:
    from vmguard.store.gc import collect_garbage

    report = collect_garbage(open_repo(args), dry_run=args.dry_run, assume_sole_gc=args.sole_gc)
    text = (
        f"candidates {report.candidates}, fossilised {report.fossilised}, deleted"
        f" {report.deleted} ({human_bytes(report.deleted_bytes)}), resurrected"
        f" {report.resurrected}, waiting for {len(report.waiting_for)} backup(s)"
    )
    _emit(args, asdict(report), "\n".join([text, *report.messages]))
    return 0


def _stats(args: argparse.Namespace) -> int:
    from vmguard.store.stats import repository_stats

    stats = repository_stats(open_repo(args))
    doc = {
        "archives": stats.archives,
        "chunks": stats.chunks,
        "stored_bytes": stats.stored_bytes,
        "logical_bytes": stats.logical_bytes,
        "dedup_ratio": stats.dedup_ratio,
    }
    ratio = f"{stats.dedup_ratio:.1f}x" if stats.dedup_ratio is not None else "-"
    text = (
        f"{stats.archives} archives, {human_bytes(stats.logical_bytes)} logical,"
        f" {stats.chunks} chunks, {human_bytes(stats.stored_bytes)} stored, ratio {ratio}"
    )
    _emit(args, doc, text)
    return 0


def _rotate_key(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    new = new_key_file(args.new_key_file)
    repo.rotate_master_key(new, keep_old=args.keep_old)
    _emit(
        args, {"rotated": True}, f"the master key in {args.new_key_file} now opens the repository"
    )
    return 0


def _upgrade(args: argparse.Namespace) -> int:
    from datetime import timedelta

    repo = open_repo(args)
    if repo.encrypted and repository_key(args) is None:  # open() already refused
        raise ConfigError("upgrading an encrypted repository needs its master key")
    now = repo.server_now()
    gone_after = timedelta(seconds=repo.config.gc.lease_ttl_seconds + repo.config.gc.grace_seconds)
    running = [i.name for i in repo.backend.list(names.LEASES) if now - i.modified <= gone_after]
    if running and not args.force:
        raise ConfigError(
            f"{len(running)} backup(s) may still run under the previous rules"
            f" ({', '.join(running[:3])}{' …' if len(running) > 3 else ''}): wait until they"
            " finish (a lease is gone ttl + grace after its last refresh), or --force"
        )
    added = repo.upgrade()
    doc = {"added": list(added), "features": list(repo.config.features), "running": running}
    text = (
        f"added {', '.join(added)}; releases that do not know them can no longer open it"
        if added
        else "already up to date: " + ", ".join(repo.config.features)
    )
    _emit(args, doc, text)
    return 0


TO_KEY_ENV = "VMGUARD_TO_KEY"
"""The copy target's master key when ``--to-key-file`` is not given."""
TO_S3_ENVS = ("VMGUARD_TO_S3_ACCESS_KEY", "VMGUARD_TO_S3_SECRET_KEY")
"""The copy target's S3 credentials, when they differ from the source's."""


def _target_env() -> dict[str, str]:
    """The environment the target is opened with: the source's, except for the target's
    own S3 credentials and key when they are set (never from the command line)."""
    env = dict(os.environ)
    access, secret = (os.environ.get(name) for name in TO_S3_ENVS)
    if access and secret:
        env[S3_ACCESS_ENV], env[S3_SECRET_ENV] = access, secret
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.pop(name, None)
    env.pop(KEY_ENV, None)
    if os.environ.get(TO_KEY_ENV):
        env[KEY_ENV] = os.environ[TO_KEY_ENV]
    return env


def _copy(args: argparse.Namespace) -> int:
    from vmguard.store.copy import (
        check_compatible,
        check_distinct,
        copied_archives,
        copy_archive,
        select_archives,
    )

    if not (args.archives or args.vm or args.all):
        raise UsageError("name the archives to copy, or use --vm VM or --all")
    if (args.archives and (args.vm or args.all)) or (args.vm and args.all):
        raise UsageError("give archive ids, --vm or --all, only one of them")
    check_distinct(args.source, args.target)
    limits = FORMAT_KDF_LIMITS if args.allow_costly_kdf else DEFAULT_KDF_LIMITS
    env = _target_env()
    if args.bandwidth_limit is not None and args.bandwidth_limit <= 0:
        raise UsageError("--bandwidth-limit is in MiB per second and must be positive")
    wrap = None
    if args.bandwidth_limit:
        from vmguard.store import names
        from vmguard.store.backend.limiter import LimitedBackend, TokenBucket

        rate = args.bandwidth_limit * (1 << 20)
        wrap = lambda b: LimitedBackend(b, TokenBucket(rate), names.CHUNKS)  # noqa: E731
    # Both opened at once: each derives its key (scrypt, ~0.1-0.2 s of CPU outside
    # the GIL) and reads its config over the network.
    with ThreadPoolExecutor(2, thread_name_prefix="vmguard-open") as pool:
        opening = pool.submit(
            open_repository,
            args.source,
            master_key(args.from_key_file),
            insecure_http=args.insecure_http,
            ca_file=args.from_ca_file,
            kdf_limits=limits,
        )
        target = open_repository(
            args.target,
            master_key(args.to_key_file, env),
            env,
            insecure_http=args.insecure_http,
            ca_file=args.to_ca_file,
            kdf_limits=limits,
            wrap=wrap,
        )
        source = opening.result()
    check_compatible(source, target)
    ids = select_archives(source, args.archives, vm_id=args.vm)
    copied = copied_archives(target)
    results = []
    lines = []
    for archive_id in ids:
        display = ProgressDisplay(f"copy {archive_id}", enabled=not _quiet(args), unit="chunks")
        with display:
            result = copy_archive(
                source, target, archive_id, copied=copied, progress=display, workers=args.workers
            )
        if not result.skipped and not _quiet(args):
            display.finish()
        results.append(result)
        if result.skipped:
            lines.append(f"{archive_id} already copied as {result.target_archive}")
        else:
            lines.append(
                f"{archive_id} -> {result.target_archive}: {result.chunks_read} of"
                f" {result.chunks_total} chunks read, {result.chunks_mapped} mapped from"
                f" {result.based_on or 'no earlier copy'}, {result.chunks_uploaded} uploaded,"
                f" {human_bytes(result.bytes_stored)} stored"
            )
    _emit(args, {"copies": [asdict(r) for r in results]}, "\n".join(lines) or "nothing to copy")
    return 0


def _add_copy_parser(cmds: Any) -> None:
    p: argparse.ArgumentParser = cmds.add_parser(
        "copy",
        help="copy archives to another repository (re-encrypted; resumable, idempotent)",
    )
    p.set_defaults(func=_copy, parser=p)
    p.add_argument("archives", nargs="*", metavar="ARCHIVE", help="archive ids to copy")
    p.add_argument("--vm", help="every archive of this VM id")
    p.add_argument("--all", action="store_true", help="every archive of the source")
    p.add_argument("--from", dest="source", required=True, metavar="URL", help="source repository")
    p.add_argument("--to", dest="target", required=True, metavar="URL", help="target repository")
    p.add_argument("--from-key-file", help=KEY_HELP)
    p.add_argument(
        "--to-key-file",
        help=f"file holding the target's master key (else ${TO_KEY_ENV});"
        " exactly one trailing newline is stripped",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help=f"chunks copied at once (default: {default_workers()})",
    )
    p.add_argument(
        "--bandwidth-limit",
        type=float,
        metavar="MIB_PER_S",
        help="at most this many MiB per second of chunks uploaded to the target",
    )
    p.add_argument("--from-ca-file", help="CA bundle of the source's S3 endpoint")
    p.add_argument("--to-ca-file", help="CA bundle of the target's S3 endpoint")
    p.add_argument(
        "--insecure-http", action="store_true", help="plain-HTTP S3 endpoints (as s3+http://)"
    )
    p.add_argument(
        "--allow-costly-kdf",
        action="store_true",
        help="open configs whose key derivation is above the default bound (format §4.3)",
    )
    add_output_option(p)


def add_parser(sub: Any) -> None:
    repo = sub.add_parser("repo", help="create, inspect and maintain a backup repository")
    cmds = repo.add_subparsers(dest="repo_cmd", required=True)

    def command(name: str, func: Any, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = cmds.add_parser(name, help=help)
        add_repo_options(p)
        p.set_defaults(func=func, parser=p)
        return p

    init = command("init", _init, "create a repository")
    init.add_argument("url", nargs="?", help="repository URL (or --repo)")
    init.add_argument("--encrypt", action="store_true", help="AES-256-GCM under a master key")
    init.add_argument(
        "--chunk-size",
        type=int,
        default=DEFAULT_CHUNK_SIZE,
        metavar="BYTES",
        help=f"fixed chunk size (default: {DEFAULT_CHUNK_SIZE >> 20} MiB)",
    )
    init.add_argument("--compression-level", type=int, default=3, help="zstd level")
    init.add_argument("--lock-days", type=int, default=0, help="Object Lock retention days")
    init.add_argument(
        "--lock-mode",
        default="GOVERNANCE",
        choices=["GOVERNANCE", "COMPLIANCE"],
        help="Object Lock mode with --lock-days (default: GOVERNANCE)",
    )
    command("info", _info, "the repository's configuration")
    ls = command("ls", _ls, "list archives")
    ls.add_argument("--vm", help="only archives of this VM id")
    verify = command("verify", _verify, "check that every archive can be restored")
    verify.add_argument("--deep", action="store_true", help="read, decrypt and hash every chunk")
    verify.add_argument("--workers", type=int, default=4, help="parallel reads (default: 4)")
    lock = command(
        "lock-check", _lock_check, "find and extend Object Lock retentions shorter than promised"
    )
    lock.add_argument("--dry-run", action="store_true", help="report shortfalls, change nothing")
    lock.add_argument("--workers", type=int, default=16, help="parallel requests")
    prune = command("prune", _prune, "retire archives a retention policy does not keep")
    for period in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        what = "newest archives" if period == "last" else f"newest archive of each {period[:-2]}"
        what = what.replace("dai", "day")
        prune.add_argument(
            f"--keep-{period}", type=int, default=0, metavar="N", help=f"keep the N {what}"
        )
    prune.add_argument("--vm", help="only archives of this VM id")
    prune.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    gc = command("gc", _gc, "delete chunks no archive references (safe with running backups)")
    gc.add_argument("--dry-run", action="store_true", help="count what would go, delete nothing")
    gc.add_argument(
        "--sole-gc",
        action="store_true",
        help="run on a store without atomic create-if-absent: you promise no other GC runs",
    )
    command("stats", _stats, "stored versus logical bytes")
    rotate = command("rotate-key", _rotate_key, "wrap the data key under a new master key")
    rotate.add_argument("--new-key-file", required=True, help="created with a new key if absent")
    rotate.add_argument("--keep-old", action="store_true", help="the old key keeps working too")
    upgrade = command(
        "upgrade",
        _upgrade,
        "add this release's format features (docs/repository-format.md §10); needs the key",
    )
    upgrade.add_argument(
        "--force", action="store_true", help="upgrade even while backups hold leases"
    )
    _add_copy_parser(cmds)
