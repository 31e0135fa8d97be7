"""``vmguard files ls|get|find`` and ``vmguard mount``: file-level restore from the CLI.

Registered on the top-level parser by :mod:`vmguard.cli.main`; each handler opens the
repository the shared options name (:mod:`vmguard.cli.options`), names the archive as
:func:`~vmguard.store.selection.select_archive` reads it, and prints plain lines.

Output rules: names are printed with control characters, backslashes and non-printable
characters escaped as in ``ls -b`` (a file called ``a\\nb`` is one line, ``a\\nb``), so
every output line is one entry; ``--null`` prints raw names separated by NUL for scripts.
Secrets never appear: credentials come from the environment and are not echoed.
"""

from __future__ import annotations

import argparse
import os
import signal
import stat as st
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vmguard.api import format_time
from vmguard.cli.options import add_repository_options, open_repository_from
from vmguard.cli.progress import ProgressDisplay
from vmguard.store.crypto import KEY_ENV
from vmguard.store.location import repository_url


def register(sub: Any) -> None:
    """Add ``files`` and ``mount`` to the top-level sub-parsers."""
    files = sub.add_parser("files", help="list, find and restore files inside a backup")
    # Options may follow positionals (``files ls vm1 --repo R p1``): every leaf parser
    # parses intermixed (vmguard.cli.main.Parser).
    files_sub = files.add_subparsers(dest="files_cmd", required=True)

    ls = files_sub.add_parser("ls", help="list volumes, or a directory of a volume")
    _common(ls)
    ls.add_argument("path", nargs="?", default="", help="VOLUME/path (none: the volumes)")
    ls.add_argument("-l", "--long", action="store_true", help="mode, owner, size, mtime")
    ls.add_argument("-0", "--null", action="store_true", help="raw names, NUL-separated")
    ls.set_defaults(func=_pipe_safe(_ls))

    get = files_sub.add_parser("get", help="restore files and directories into a directory")
    _common(get)
    get.add_argument("paths", nargs="+", help="VOLUME/path or glob (* ? [] **), recursive")
    get.add_argument("--to", required=True, metavar="DIR", help="target directory")
    get.add_argument("--owners", action="store_true", help="restore numeric owners (root)")
    get.set_defaults(func=_get)

    find = files_sub.add_parser("find", help="find entries by name or path glob")
    _common(find)
    find.add_argument("pattern", help="a name glob (*.conf) or a path glob (p2/etc/**/*.conf)")
    find.add_argument("-0", "--null", action="store_true", help="raw paths, NUL-separated")
    find.set_defaults(func=_pipe_safe(_find))

    mount = sub.add_parser("mount", help="serve a backed-up disk as a read-only NBD export")
    _common(mount, tls=False)
    mount.add_argument("--cow", action="store_true", help="writable throw-away overlay")
    mount.add_argument("--cache-mib", type=int, default=256, help="chunk cache (MiB)")
    mount.set_defaults(func=_mount)
    for p in (ls, get, find, mount):
        p.set_defaults(parser=p)


def _common(parser: argparse.ArgumentParser, *, tls: bool = True) -> None:
    parser.add_argument("archive", help="archive id, or VM name/id with @latest or @ISO-TIME")
    add_repository_options(parser, tls=tls)
    parser.add_argument("--disk", help="disk key, label or position (default: the first)")


def _open(args: argparse.Namespace) -> tuple[Any, Any]:
    from vmguard.store.selection import select_archive

    repo = open_repository_from(args)
    return repo, select_archive(repo, args.archive)


def _files(args: argparse.Namespace) -> Any:
    from vmguard.files.browse import DiskFiles

    repo, manifest = _open(args)
    return DiskFiles(repo, manifest, args.disk)


def show(name: str) -> str:
    """``name`` with backslash, control and undecodable characters escaped (``ls -b``)."""
    out = []
    for ch in name:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif 0xDC80 <= ord(ch) <= 0xDCFF:  # a surrogate-escaped byte
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif not ch.isprintable() and ch != " ":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def _emit(text: str, null: bool) -> None:
    if null:
        sys.stdout.buffer.write(os.fsencode(text) + b"\0")
    else:
        print(show(text))


def _pipe_safe(handler: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """A listing piped into ``head`` ends quietly when the reader goes away."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0

    return run


def _ls(args: argparse.Namespace) -> int:
    with _files(args) as files:
        if not args.path.strip("/"):
            print(
                f"archive {files.manifest.archive_id}  disk {files.disk.key} ({files.disk.label})"
            )
            for v in files.volumes:
                offset = "-" if v.offset is None else str(v.offset)
                print(
                    f"{v.name:12} {v.fs or '-':6} {v.size:>14} {offset:>12}"
                    f"  {v.scheme:4} {show(v.type)}  {show(v.label)}"
                )
            return 0
        for located in files.listdir(args.path):
            name = located.path
            if args.long and not args.null:
                print(_long(located.stat, show(name)))
            else:
                _emit(name, args.null)
    return 0


def _long(s: Any, name: str) -> str:
    kind = {"file": "-", "dir": "d", "symlink": "l"}.get(s.kind, "?")
    mode = st.filemode(s.mode)[1:] if s.mode is not None else "?????????"
    owner = f"{s.uid}:{s.gid}" if s.uid is not None else "-"
    when = format_time(datetime.fromtimestamp(s.mtime_ns / 1e9, UTC))
    return f"{kind}{mode} {owner:>11} {s.size:>12} {when} {name}"


def _find(args: argparse.Namespace) -> int:
    found = 0
    with _files(args) as files:
        for located in files.find(args.pattern):
            _emit(located.path, args.null)
            found += 1
    return 0 if found else 1


def _get(args: argparse.Namespace) -> int:
    from vmguard.files.restore import DirectorySink, RestoreProgress, restore_paths

    started = time.monotonic()
    display = ProgressDisplay("files")

    def progress(p: RestoreProgress) -> None:
        display(p.bytes_done, p.bytes_total)

    with _files(args) as files, display:
        sink = DirectorySink(args.to, owners=args.owners)
        report = restore_paths(
            files.view.repo, files.manifest, args.paths, sink, files=files, progress=progress
        )
        display.finish()
    for error in report.errors:
        print(f"vmguard: error: {show(str(error))}", file=sys.stderr)
    print(
        f"restored {len(report.restored)} files ({report.bytes_restored} bytes) from"
        f" {report.archive_id} disk {report.disk} into {args.to} in"
        f" {time.monotonic() - started:.1f}s; fetched {report.bytes_fetched} bytes of chunks;"
        f" {len(report.errors)} errors"
    )
    return 0 if report.ok else 1


def _mount(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM, then stop nbdkit and remove its socket directory.

    Both signals only set a flag, so one that arrives while nbdkit starts cannot leave a
    half-started server behind: the loop sees it once ``serve`` has returned and the
    ``finally`` stops the server. Python's default SIGTERM would end the process without
    running ``finally`` (nbdkit would die with its parent, but its socket would stay).
    """
    from vmguard.files.mount import serve

    repo_url = repository_url(args.repo)
    env = dict(os.environ)
    if args.key_file:
        env[KEY_ENV] = Path(args.key_file).read_text()
    stopped: list[int] = []

    def stop(signum: int, frame: object) -> None:
        stopped.append(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server = serve(
            repo_url,
            args.archive,
            args.disk,
            cow=args.cow,
            cache_bytes=args.cache_mib << 20,
            env=env,
        )
        try:
            mode = "writable overlay (discarded on exit)" if args.cow else "read-only"
            print(f"serving {args.archive} ({mode}) at {server.uri}", flush=True)
            print("stop with Ctrl-C", flush=True)
            while not stopped and server.proc.poll() is None:
                time.sleep(0.2)  # a stop is seen within 0.2 s
            if stopped:  # Ctrl-C in a terminal also reaches nbdkit: not a failure
                return 0
            print(f"nbdkit exited with status {server.proc.returncode}", file=sys.stderr)
            return 1
        finally:
            server.close()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
