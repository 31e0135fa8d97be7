"""Create a VMGuardBackup or VMGuardRestore and, with ``--wait``, follow it to a terminal phase.

The one shape of ``vmguard backup create`` and ``vmguard restore create``: the object
goes into the namespace the cluster options chose; without ``--wait`` the created
object is printed (``-o``), with it the name goes to stderr and a progress display
follows ``status.progress`` until the phase is terminal. Each verb prints its own
summary of the finished object.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Collection
from typing import Any

from vmguard.api import GROUP
from vmguard.cli.kube import connect, create_object, follow
from vmguard.cli.options import emit
from vmguard.cli.progress import ProgressDisplay


def create_and_follow(
    args: argparse.Namespace,
    plural: str,
    body: dict[str, Any],
    terminal: Collection[str],
    what: str,
) -> dict[str, Any] | None:
    """Create ``body``; the finished object with ``--wait``, else None (printed)."""
    cluster = connect(args)
    body["metadata"]["namespace"] = cluster.namespace
    made = create_object(cluster, plural, body)
    name = made["metadata"]["name"]
    ref = f"{plural[:-1]}.{GROUP}/{name}"
    if not args.wait:
        emit(args, made, f"{ref} created")
        return None
    print(f"{ref} created", file=sys.stderr)
    with ProgressDisplay(f"{what} {name}", enabled=not args.quiet) as display:
        return follow(cluster, plural, name, terminal, display, timeout=args.timeout)
