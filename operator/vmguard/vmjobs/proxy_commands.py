"""``vmguard proxy …``: what a proxy Job runs (started by the operator, not by people).

:func:`register` adds ``proxy restore --namespace NS --name NAME``
(:mod:`vmguard.vmjobs.restore_job`). The lab's disk locator is injected by the CLI
(``lab_locator``), because the lab sits above this layer: with
``VMGUARD_PROXY_LOCATOR=lab:URL`` the proxy reaches disks through the simulator instead
of VDDK.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from vmguard.vmjobs.restore_job import LabLocatorFactory


def register(sub: Any, *, lab_locator: LabLocatorFactory | None = None) -> None:
    proxy = sub.add_parser("proxy", help="run as a proxy Job (the operator starts these)")
    proxy_sub = proxy.add_subparsers(dest="proxy_cmd", required=True)
    restore = proxy_sub.add_parser("restore", help="carry out one VMRestore")
    restore.add_argument("--namespace", required=True)
    restore.add_argument("--name", required=True, help="the VMRestore")
    proxy.set_defaults(func=lambda args: _run(args, lab_locator))


def _run(args: argparse.Namespace, lab_locator: LabLocatorFactory | None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from vmguard.vmjobs.restore_job import run

    return run(args.namespace, args.name, lab=lab_locator)
