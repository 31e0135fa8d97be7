"""The ``vmguard`` command line: the parser, its conventions, and how errors become exit
codes.

One module per command group registers its parser and implements it (``repo``,
``disk``, ``status``, ``vm``, ``files`` and ``mount`` in :mod:`.files`, ``verify``, ``backup`` and
``restore`` (cluster verbs), ``completion``, ``proxy``, ``operator``, ``crds``);
options shared by several groups are declared once in :mod:`.options`, the cluster
connection in :mod:`.kube`. This module assembles the parser and keeps the conventions
every command follows (``docs/cli.md``):

- options and positionals in any order (``disk restore ARCHIVE --disk D TARGET``):
  every leaf parser parses intermixed (:class:`Parser`);
- exit code 0 on success, 1 when something failed at run time (any
  :class:`vmguard.errors.VmguardError`, never a traceback), 2 for a usage error
  (argparse's, or :class:`~vmguard.cli.options.UsageError`), 130 on Ctrl-C;
- ``--kubeconfig``, ``--context`` and ``-n`` select the cluster for every cluster verb,
  before or after the command (``kubectl vmguard --context X status``);
- shell completion through argcomplete (``vmguard completion bash``), imported only
  when the shell asks for completions.

A program that embeds vmguard may pass :class:`vmguard.hooks.Hooks` to :func:`main`;
commands find them as ``args.hooks`` (production: none, :data:`vmguard.hooks.NO_HOOKS`).
It may also pass the operator's clock and pace
(:class:`vmguard.controller.kube.timing.Timing`, found as ``args.timing``; production: None,
the real clock).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from vmguard import __version__
from vmguard.cli import (
    backup,
    completion,
    crds,
    disk,
    files,
    kube,
    operator,
    proxy,
    repo,
    restore,
    status,
    verify,
    vm,
)
from vmguard.cli.options import UsageError
from vmguard.errors import VmguardError
from vmguard.hooks import NO_HOOKS, Hooks

if TYPE_CHECKING:
    from vmguard.controller.kube.timing import Timing


DESCRIPTION = """\
Back up VMware vSphere VMs into a deduplicated, encrypted repository on S3/MinIO, and
restore whole VMs, single disks or single files from it.

With a cluster running the vmguard operator (also as `kubectl vmguard ...`):
  status                      which VMs are protected, their last good backup, RPO state
  backup create|get|describe|logs   ad-hoc backups (VMGuardBackup objects) and what they did
  restore create              restore a backup as a new VM, in place, disks or files

Without a cluster (the repository and vCenter directly):
  repo                        create, list, verify, prune and garbage-collect a repository
  vm                          list, back up and restore vSphere VMs
  files, mount                browse and copy files out of a backup, serve a disk over NBD
  verify                      check a backup's file systems, scan its files with YARA rules
  disk                        back up or restore one disk image or NBD export

Exit codes: 0 success, 1 failure, 2 usage error. `vmguard COMMAND --help` for more.
"""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose leaf commands take options and positionals in any
    order: plain argparse binds an optional positional to nothing when an option
    interrupts the positionals (``disk restore A --disk D T`` was "unrecognized
    arguments: T"). Parsers with sub-commands parse as usual (argparse's intermixed
    mode cannot), and sub-parsers are of this class too (``add_subparsers`` default)."""

    _intermixing = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._intermixing or self._subparsers is not None:
            return super().parse_known_args(args, namespace)
        self._intermixing = True  # parse_known_intermixed_args calls back in here
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="vmguard",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vmguard {__version__}")
    kube.add_cluster_options(parser, top_level=True)
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    status.add_parser(sub)
    backup.register(sub)
    restore.register(sub)
    repo.add_parser(sub)
    vm.register(sub)
    files.register(sub)
    verify.register(sub)
    disk.add_parser(sub)
    operator.register(sub)
    proxy.register(sub)
    crds.register(sub)
    completion.register(sub)
    return parser


def main(
    argv: list[str] | None = None, hooks: Hooks = NO_HOOKS, timing: Timing | None = None
) -> int:
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions: answer, exit
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    args.hooks, args.timing = hooks, timing
    try:
        return int(args.func(args))
    except UsageError as exc:
        parser_of = getattr(args, "parser", parser)
        parser_of.print_usage(sys.stderr)
        print(f"vmguard: error: {exc}", file=sys.stderr)
        return 2
    except VmguardError as exc:
        print(f"vmguard: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `vmguard vm ls | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
