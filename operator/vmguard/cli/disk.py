"""``vmguard disk backup|restore``: one disk between a file or NBD export and a repository.

``disk backup SOURCE --repo URL --vm ID [--disk KEY] [--parent latest|ARCHIVE]
[--changed-areas FILE]`` prints the new archive id on stdout. Without
``--changed-areas`` a backup with a parent is a full-scan incremental (every
allocated chunk read, only new ones uploaded); with it, only the chunks the listed
``[offset, length]`` ranges touch are read.

``disk restore ARCHIVE --disk KEY TARGET`` (options anywhere) writes the disk into a
new sparse file, a block device or an NBD export; a chunk that fails verification stops
it with exit code 1 and a message naming the chunk.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vmguard.cli.options import UsageError, emit
from vmguard.cli.progress import ProgressDisplay, human_bytes
from vmguard.cli.repo import add_repo_options, open_repo
from vmguard.engine.backup import DiskInput, DiskOutcome, back_up
from vmguard.engine.restore import restore_disk
from vmguard.errors import ConfigError
from vmguard.store import Repository, VmIdentity
from vmguard.transport.extents import BlockSink, BlockSource, Extent
from vmguard.transport.file import FileSink, FileSource


def is_nbd_uri(text: str) -> bool:
    return text.startswith(("nbd://", "nbd+unix://", "nbds://", "nbds+unix://"))


def open_source(text: str) -> BlockSource:
    """A block source: an ``nbd://``/``nbd+unix://`` URI, or a file or block device."""
    if is_nbd_uri(text):
        from vmguard.transport.nbd import NbdSource  # libnbd: only for an NBD source

        return NbdSource(text)
    return FileSource(text)


def open_sink(text: str, size: int, *, overwrite: bool) -> tuple[BlockSink, bool]:
    """A block sink for a restore of ``size`` bytes, and whether its holes need zeroing.

    A new (or, with ``overwrite``, re-created) file is sparse and reads as zeros, so
    holes need no writes. An NBD export or a block device may hold old data: its holes
    are zeroed.
    """
    if is_nbd_uri(text):
        from vmguard.transport.nbd import NbdSink

        return NbdSink(text), True
    path = Path(text)
    if path.is_block_device():
        return FileSink(path), True
    return FileSink.create(path, size, overwrite=overwrite), False


def read_changed_areas(path: str) -> list[Extent]:
    """A JSON list of ``[offset, length]`` pairs, as ``--changed-areas`` takes."""
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
        areas = [Extent(int(offset), int(length)) for offset, length in doc]
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"--changed-areas {path}: expected [[offset, length], ...]: {exc}"
        ) from None
    if any(a.offset < 0 or a.length < 0 for a in areas):
        raise ConfigError(f"--changed-areas {path}: negative offset or length")
    return areas


def resolve_parent(repo: Repository, vm_id: str, disk: str, parent: str | None) -> str | None:
    """``latest`` is the newest archive of the VM that has the disk; None if there is none."""
    if parent != "latest":
        return parent
    for ref in reversed(repo.list_archives(vm_id)):
        manifest = repo.load_archive(ref.archive_id)
        if manifest.vm.id == vm_id and any(d.key == disk for d in manifest.disks):
            return ref.archive_id
    return None


def _backup(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    parent = resolve_parent(repo, args.vm, args.disk, args.parent)
    changed = read_changed_areas(args.changed_areas) if args.changed_areas else None
    display = ProgressDisplay("backup", enabled=not args.quiet and args.output == "table")
    source = open_source(args.source)
    outcomes: list[DiskOutcome] = []
    try:
        disk = DiskInput(args.disk, source, label=args.label or args.disk, changed=changed)
        manifest = back_up(
            repo,
            VmIdentity(id=args.vm, name=args.vm_name or args.vm),
            [disk],
            parent=parent,
            progress=display,
            workers=args.workers,
            on_disk=outcomes.append,
        )
        display.finish()
    finally:
        source.close()
        display.close()
    if args.output != "table":
        emit(args, json.loads(manifest.to_json()), "")
    else:
        s = manifest.stats
        print(manifest.archive_id)
        if not args.quiet:
            ratio = f", compressibility {s.compressibility:.2f}" if s.compressibility else ""
            why = f" ({manifest.mode_reason})" if manifest.mode_reason else ""
            [outcome] = outcomes
            cbt = ""
            if outcome.changed_bytes is not None:
                damaged = (
                    f", {outcome.merges_refused} merges refused on a damaged parent chunk"
                    f" and {outcome.carried_reread} unchanged chunks naming one read again"
                    if outcome.merges_refused
                    else ""
                )
                cbt = (
                    f" of {human_bytes(outcome.changed_bytes)} in changed areas"
                    f" ({outcome.chunks_read} chunks read whole, {outcome.chunks_merged} merged"
                    f"{damaged})"
                )
            print(
                f"{manifest.mode}{why}:"
                f" read {human_bytes(s.bytes_read)}{cbt}, changed {human_bytes(s.bytes_changed)},"
                f" stored {human_bytes(s.bytes_stored)}; chunks new {s.chunks_new},"
                f" reused {s.chunks_reused}, holes {s.chunks_hole}{ratio}",
                file=sys.stderr,
            )
    return 0


def _restore(args: argparse.Namespace) -> int:
    target = args.to or args.target
    if not target:
        raise UsageError("give a target: a file path, a block device or an nbd:// URI")
    repo = open_repo(args)
    manifest = repo.load_archive(args.archive)
    keys = [d.key for d in manifest.disks]
    disk = args.disk or (keys[0] if len(keys) == 1 else None)
    if disk not in keys:
        raise UsageError(f"archive {args.archive} has disks {keys}; choose one with --disk")
    length = manifest.disk(disk).length
    sink, zero = open_sink(target, length, overwrite=args.overwrite)
    display = ProgressDisplay("restore", enabled=not args.quiet and args.output == "table")
    try:
        stats = restore_disk(
            repo,
            manifest,
            disk,
            sink,
            zero_holes=zero and not args.target_is_zeroed,
            progress=display,
            workers=args.workers,
        )
        display.finish()
    finally:
        sink.close()
        display.close()
    text = (
        f"restored {human_bytes(stats.length)} ({human_bytes(stats.bytes_written)} written,"
        f" {stats.holes} hole chunks) to {target}"
    )
    emit(args, asdict(stats), text)
    return 0


def add_parser(sub: Any) -> None:
    disk = sub.add_parser("disk", help="back up or restore one disk (file or NBD export)")
    cmds = disk.add_subparsers(dest="disk_cmd", required=True)

    backup = cmds.add_parser("backup", help="back up a disk image or NBD export")
    add_repo_options(backup)
    backup.add_argument("source", help="image file, block device, or nbd:// / nbd+unix:// URI")
    backup.add_argument("--vm", required=True, help="stable VM id the archive belongs to")
    backup.add_argument("--vm-name", help="display name (default: the id)")
    backup.add_argument("--disk", default="0", help="disk key within the VM (default: 0)")
    backup.add_argument("--label", help="disk label (default: the key)")
    backup.add_argument("--parent", help="'latest' or an archive id to back up incrementally")
    backup.add_argument("--changed-areas", metavar="FILE", help="JSON [[offset, length], ...]")
    backup.add_argument("--workers", type=int, default=None, help="pipeline threads")
    backup.add_argument("--quiet", action="store_true", help="no progress output")
    backup.set_defaults(func=_backup, parser=backup)

    restore = cmds.add_parser("restore", help="restore one disk of an archive")
    add_repo_options(restore)
    restore.add_argument("archive", help="archive id (see repo ls)")
    restore.add_argument("target", nargs="?", help="file, block device or nbd:// URI")
    restore.add_argument("--to", help="the target, as an option")
    restore.add_argument("--disk", help="disk key (default: the archive's only disk)")
    restore.add_argument("--overwrite", action="store_true", help="replace an existing file")
    restore.add_argument(
        "--target-is-zeroed",
        action="store_true",
        help="an NBD or device target already reads as zeros: do not zero holes",
    )
    restore.add_argument("--workers", type=int, default=None, help="pipeline threads")
    restore.add_argument("--quiet", action="store_true", help="no progress output")
    restore.set_defaults(func=_restore, parser=restore)
