"""``vmguard operator``: run the operator (kopf) against ``$KUBECONFIG`` or in-cluster.

The controller is imported when the command runs, so no other command pays for kopf
and the Kubernetes client at start-up.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from vmguard.config import Settings
from vmguard.errors import ConfigError


def run(args: argparse.Namespace) -> int:
    from vmguard.controller.main import OperatorOptions, run

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
            # The clock and pace an embedder gave main (the lab's --speedup); else real.
            **({"timing": args.timing} if args.timing is not None else {}),
        )
    )
    return 0


def register(sub: Any) -> None:
    """Add ``operator`` to the top-level sub-parsers."""
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
        " VMGuardBackups without 'backups'; they wait for an operator that runs it",
    )
    op.set_defaults(func=run)
