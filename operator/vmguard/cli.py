"""The ``vmguard`` command line.

Sub-commands are registered here and implemented in their own modules; this file
only parses arguments and turns :class:`vmguard.errors.VmguardError` into a message
and a non-zero exit code (never a traceback for an expected failure). A program that
embeds vmguard may pass :class:`vmguard.hooks.Hooks` to :func:`main`; commands find
them as ``args.hooks`` (production: none, :data:`vmguard.hooks.NO_HOOKS`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vmguard.errors import VmguardError
from vmguard.hooks import NO_HOOKS, Hooks


def _crds(args: argparse.Namespace) -> int:
    from vmguard.crds.render import run

    return run(Path(args.check or args.write), check=bool(args.check))


def _operator(args: argparse.Namespace) -> int:
    import logging

    from vmguard.config import Settings
    from vmguard.controller.main import OperatorOptions, run
    from vmguard.errors import ConfigError

    level = Settings.from_env().log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"VMGUARD_LOG_LEVEL={level!r}: use DEBUG, INFO, WARNING or ERROR")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run(
        OperatorOptions(
            namespaces=args.namespace or [],
            clusterwide=args.all_namespaces,
            liveness=args.liveness,
            peering=args.peering,
            priority=args.priority,
            peering_lifetime=args.peering_lifetime,
            metrics_port=None if args.metrics_port < 0 else args.metrics_port,
            metrics_address=args.metrics_address,
            controllers=frozenset(c.strip() for c in args.controllers.split(",") if c.strip()),
            hooks=args.hooks,
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmguard", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    op = sub.add_parser(
        "operator", help="run the operator (kopf) against $KUBECONFIG or in-cluster"
    )
    op.add_argument("--namespace", action="append", help="watch this namespace (repeatable)")
    op.add_argument("--all-namespaces", action="store_true", help="watch the whole cluster")
    op.add_argument("--liveness", help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz")
    op.add_argument("--peering", help="kopf peering name: of several replicas exactly one acts")
    op.add_argument(
        "--priority",
        type=int,
        help="peering priority (the highest live one acts; default: random, distinct per replica)",
    )
    op.add_argument(
        "--peering-lifetime",
        type=int,
        default=60,
        metavar="SECONDS",
        help="how long a silent replica counts as alive (a SIGKILLed one's successor waits it out)",
    )
    op.add_argument(
        "--metrics-port", type=int, default=8080, help="serve /metrics here (-1: do not serve)"
    )
    op.add_argument("--metrics-address", default="0.0.0.0", help="bind address for /metrics")
    op.add_argument(
        "--controllers",
        default="vcenters,policies,backups,restores,repositories,catalog",
        help="which controllers act (comma-separated; default all). A policy still creates"
        " VMBackups without 'backups'; they wait for an operator that runs it",
    )
    op.set_defaults(func=_operator)

    crds = sub.add_parser("crds", help="write or check the CRD manifests (crds/*.yaml)")
    target = crds.add_mutually_exclusive_group(required=True)
    target.add_argument("--write", metavar="DIR", help="write one YAML file per kind into DIR")
    target.add_argument("--check", metavar="DIR", help="exit 1 if DIR's manifests are stale")
    crds.set_defaults(func=_crds)

    from vmguard.commands import disk, repo

    repo.add_parser(sub)
    disk.add_parser(sub)
    from vmguard.commands.status import add_parser as add_status  # vmguard status

    add_status(sub)

    # vSphere VMs without a cluster: vmguard vm ls|backup|restore.
    from vmguard.vmjobs.commands import register as register_vm

    register_vm(sub)

    # The proxy Job's entry point: vmguard proxy backup --namespace NS --name VMBACKUP.
    from vmguard.vmjobs.proxy import register as register_proxy

    register_proxy(sub)

    # File-level restore and instant access: vmguard files ls|get|find, vmguard mount.
    from vmguard.files.commands import register as register_files

    register_files(sub)
    return parser


def main(argv: list[str] | None = None, hooks: Hooks = NO_HOOKS) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.hooks = hooks
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
