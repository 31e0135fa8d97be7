"""``vmguard proxy backup|restore|verify --namespace NS --name NAME`` and ``vmguard proxy
copy --archive ID``: what a proxy Job runs.

The sub-command names are :mod:`vmguard.proxy.contract`'s, the ones the Job builders
write. The work is :func:`vmguard.proxy.backup.run_backup` (given the embedder's
:class:`~vmguard.hooks.Hooks`, ``args.hooks``), :func:`vmguard.proxy.restore.run`,
:func:`vmguard.proxy.copy.run_copy` and :func:`vmguard.proxy.verify.run_verify`,
imported when the command runs (they bring pyVmomi, NBD and the Kubernetes client,
which no other command should pay for at start-up).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from vmguard.proxy.contract import BACKUP, COMMAND, COPY, RESTORE, VERIFY

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def register(sub: Any) -> None:
    """Add ``proxy backup|restore`` to the top-level sub-parsers."""
    proxy = sub.add_parser(COMMAND, help="run as a proxy Job: move one VM's data (in-cluster)")
    proxy_sub = proxy.add_subparsers(dest="proxy_cmd", required=True)
    backup = proxy_sub.add_parser(BACKUP, help="transfer the snapshot of one VMGuardBackup")
    backup.add_argument("--namespace", required=True, help="namespace of the VMGuardBackup")
    backup.add_argument("--name", required=True, help="the VMGuardBackup")
    backup.set_defaults(func=_backup)
    restore = proxy_sub.add_parser(RESTORE, help="write the data of one VMGuardRestore")
    restore.add_argument("--namespace", required=True, help="namespace of the VMGuardRestore")
    restore.add_argument("--name", required=True, help="the VMGuardRestore")
    restore.set_defaults(func=_restore)
    copy = proxy_sub.add_parser(COPY, help="copy one archive to the Job's copy target")
    copy.add_argument("--archive", required=True, help="the archive id in the source")
    copy.set_defaults(func=_copy)
    verify = proxy_sub.add_parser(VERIFY, help="verify the archive of one completed VMGuardBackup")
    verify.add_argument("--namespace", required=True, help="namespace of the VMGuardBackup")
    verify.add_argument("--name", required=True, help="the VMGuardBackup")
    verify.add_argument("--fsck", action="store_true", help="check every file system")
    verify.add_argument("--yara", metavar="RULES", help="scan every file with these YARA rules")
    verify.add_argument(
        "--fsck-refused",
        metavar="WHY",
        default="",
        help="file systems were asked for but may not be checked here: report why (Error)",
    )
    verify.set_defaults(func=_verify)


def _backup(args: argparse.Namespace) -> int:
    from vmguard.proxy import backup

    return backup.run_backup(args.namespace, args.name, args.hooks)


def _copy(args: argparse.Namespace) -> int:
    from vmguard.proxy.copy import run_copy

    return run_copy(args.archive)


def _verify(args: argparse.Namespace) -> int:
    from vmguard.proxy.verify import run_verify

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    return run_verify(
        args.namespace,
        args.name,
        fsck=args.fsck,
        rules_dir=args.yara,
        fsck_refused=args.fsck_refused,
    )


def _restore(args: argparse.Namespace) -> int:
    from vmguard.proxy.restore import run

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    return run(args.namespace, args.name)
