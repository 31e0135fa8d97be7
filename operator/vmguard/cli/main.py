"""The ``vmguard`` command line: the parser, and how errors become exit codes.

One module per command group registers its parser and implements it (``repo``,
``disk``, ``status``, ``vm``, ``files`` and ``mount`` in :mod:`.files`, ``proxy``,
``operator``, ``crds``); options shared by several groups are declared once in
:mod:`.options`. This module only assembles the parser and turns
:class:`vmguard.errors.VmguardError` into a message and a non-zero exit code (never a
traceback for an expected failure). A program that embeds vmguard may pass
:class:`vmguard.hooks.Hooks` to :func:`main`; commands find them as ``args.hooks``
(production: none, :data:`vmguard.hooks.NO_HOOKS`). It may also pass the operator's
clock and pace (:class:`vmguard.controller.timing.Timing`, found as ``args.timing``;
production: None, the real clock).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from vmguard.cli import crds, disk, files, operator, proxy, repo, status, vm
from vmguard.errors import VmguardError
from vmguard.hooks import NO_HOOKS, Hooks

if TYPE_CHECKING:
    from vmguard.controller.timing import Timing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmguard", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    operator.register(sub)
    crds.register(sub)
    repo.add_parser(sub)
    disk.add_parser(sub)
    status.add_parser(sub)  # vmguard status
    # vSphere VMs without a cluster: vmguard vm ls|backup|restore.
    vm.register(sub)
    # The proxy Job's entry point: vmguard proxy backup --namespace NS --name VMBACKUP.
    proxy.register(sub)
    # File-level restore and instant access: vmguard files ls|get|find, vmguard mount.
    files.register(sub)
    return parser


def main(
    argv: list[str] | None = None, hooks: Hooks = NO_HOOKS, timing: Timing | None = None
) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.hooks, args.timing = hooks, timing
    try:
        return int(args.func(args))
    except VmguardError as exc:
        print(f"vmguard: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `vmguard vm ls | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
