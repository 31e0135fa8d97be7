"""``vmguard verify``: check a restore point's file systems and scan it for malware,
from the repository alone (no cluster).

``vmguard verify ARCHIVE [--fsck] [--yara RULES]`` runs the checks of
:mod:`vmguard.verify` on every volume of every disk of the archive and prints one line
per check and volume, with the tool's own findings under it (``-o json|yaml`` for the
structured results). ``--latest-clean`` takes a VM (``VM[@ISO-TIME]``) and walks its
points from the newest back until one passes every check, and prints that point's id:
the point to restore. Exit codes: 0 when the point (or, with ``--latest-clean``, some
point) is clean, 1 otherwise or on a run-time error (a rule file that does not compile
is one, naming the file and the line, before anything is read), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from vmguard.cli.options import add_output_option, add_repository_options, emit
from vmguard.cli.progress import ProgressDisplay
from vmguard.store.crypto import KEY_ENV
from vmguard.store.location import repository_url

_MIB = 1 << 20


def register(sub: Any) -> None:
    verify = sub.add_parser(
        "verify",
        help="check a backup's file systems (fsck) and scan its files with YARA rules",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    verify.add_argument("archive", help="archive id, or VM name/id with @latest or @ISO-TIME")
    add_repository_options(verify, tls=False)
    verify.add_argument(
        "--fsck",
        action="store_true",
        help="run each file system's own checker (the default when --yara is not given)",
    )
    verify.add_argument(
        "--yara",
        metavar="RULES",
        help="a YARA rule file, or a directory of *.yar/*.yara files, to scan every file with",
    )
    verify.add_argument(
        "--latest-clean",
        action="store_true",
        help="walk the VM's points from the newest back; print the first that passes",
    )
    verify.add_argument(
        "--max-file-mib",
        type=int,
        default=64,
        help="files larger than this are not scanned, and are listed (default: 64)",
    )
    verify.add_argument(
        "--file-timeout", type=int, default=30, help="seconds a file's scan may take (default: 30)"
    )
    add_output_option(verify)
    verify.set_defaults(func=_verify, parser=verify)


def _verify(args: argparse.Namespace) -> int:
    from vmguard.cli.options import UsageError, open_repository_from
    from vmguard.store.names import is_archive_id
    from vmguard.store.selection import select_archive, select_points
    from vmguard.verify.runner import VerifyOptions, verify_point
    from vmguard.verify.scan import compile_rules

    rules = compile_rules(Path(args.yara)) if args.yara else None  # before anything is read
    options = VerifyOptions(
        fsck=args.fsck or rules is None,
        rules=rules,
        max_file_bytes=args.max_file_mib * _MIB,
        file_timeout=args.file_timeout,
    )
    repo = open_repository_from(args)
    env = dict(os.environ)
    if args.key_file:
        env[KEY_ENV] = Path(args.key_file).read_text()
    url = repository_url(args.repo)
    if args.latest_clean:
        if is_archive_id(args.archive):
            raise UsageError("--latest-clean walks a VM's points: give VM or VM@TIME, not an id")
        ids = [r.archive_id for r in reversed(select_points(repo, args.archive))]
    else:
        ids = [select_archive(repo, args.archive).archive_id]
    points = []
    clean = None
    for archive_id in ids:
        manifest = repo.load_archive(archive_id)
        with ProgressDisplay(f"verify {archive_id}") as display:
            point = verify_point(
                repo,
                manifest,
                options,
                repo_url=url,
                env=env,
                progress=lambda done, total, what: display(done, total),
            )
            display.finish()
        points.append(point)
        if args.output == "table":
            print(_table(point), flush=True)
        if point.clean:
            clean = point
            break
    if args.latest_clean:
        doc: Any = {
            "latestClean": clean.archive_id if clean else None,
            "points": [p.to_dict() for p in points],
        }
        text = f"latest clean point: {clean.archive_id}" if clean else "no clean point"
        emit(args, doc, text)
        if args.output == "table" and clean is None:
            print(f"vmguard: none of {len(points)} points passed", file=sys.stderr)
    elif args.output != "table":
        emit(args, points[0].to_dict(), "")
    return 0 if clean is not None else 1


def _table(point: Any) -> str:
    lines = [f"{point.archive_id} ({point.vm}): {'clean' if point.clean else 'NOT CLEAN'}"]
    for r in point.results:
        what = f"{r.check} disk {r.disk} {r.volume} ({r.fs or '-'})"
        by = f" by {r.tool}" if r.tool else ""
        lines.append(f"  {str(r.result).upper():8} {what}{by} in {r.duration:.1f}s")
        for finding in r.findings:
            if "rule" in finding:
                lines.append(f"    {r.volume}/{finding['path']}: rule {finding['rule']}")
            elif "path" in finding:
                lines.append(f"    {r.volume}/{finding['path']}: {finding['message']}")
            else:
                lines.append(f"    {finding['message']}")
    return "\n".join(lines)
