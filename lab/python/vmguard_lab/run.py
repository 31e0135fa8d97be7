"""``python -m vmguard_lab.run [--stall POINTS] [--throttle BYTES_PER_S] VMGUARD-ARGS...``:
``vmguard`` with test hooks installed (lab only).

Fault tests need the operator parked at a point of a backup, or a proxy slowed down, so
that they can kill it exactly there. The product has no switch for that; it has injection
points (:mod:`vmguard.hooks`). This module installs hooks into them from its own options,
then runs :func:`vmguard.cli.main` with the remaining arguments in the same process:

- ``--stall snapshotted,finalizing``: the VMBackup controller waits an hour at those
  points (:data:`vmguard.hooks.BACKUP_STEPS`, logging a warning first), so a test can
  SIGKILL the operator there. Given when starting the operator.
- ``--throttle N``: the backup proxy reads at most N bytes/s on average (measured from
  its first progress report). Given in the operator's ``VMGUARD_PROXY_COMMAND``, so that
  every proxy Job it starts runs with it.

Without options it is ``vmguard`` itself.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

from vmguard import hooks
from vmguard.cli import main as vmguard_main

log = logging.getLogger("vmguard_lab.run")

STALL_SECONDS = 3600.0


def install_stall(points: set[str]) -> None:
    """The backup controller waits :data:`STALL_SECONDS` at each of ``points``."""
    unknown = points - set(hooks.BACKUP_STEPS)
    if unknown:
        raise SystemExit(f"--stall: unknown point(s) {sorted(unknown)}; {hooks.BACKUP_STEPS}")

    async def stall(point: str) -> None:
        if point in points:
            log.warning("lab: stalled at %s (vmguard_lab.run --stall)", point)
            await asyncio.sleep(STALL_SECONDS)

    hooks.add_backup_step_hook(stall)


def install_throttle(rate: int) -> None:
    """The proxy's transfer waits until its average rate is at most ``rate`` bytes/s."""
    started: list[float] = []

    def throttle(done: int, total: int) -> None:
        if not started:
            started.append(time.monotonic())
        ahead = done / rate - (time.monotonic() - started[0])
        if ahead > 0:
            time.sleep(ahead)

    hooks.add_transfer_progress_hook(throttle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vmguard_lab.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--stall", metavar="POINTS", help="comma-separated backup steps")
    parser.add_argument("--throttle", type=int, metavar="BYTES_PER_S", help="proxy read rate")
    parser.add_argument("vmguard_args", nargs=argparse.REMAINDER, help="vmguard's arguments")
    args = parser.parse_args(argv)
    if args.stall:
        install_stall({p.strip() for p in args.stall.split(",") if p.strip()})
    if args.throttle:
        install_throttle(args.throttle)
    return vmguard_main(args.vmguard_args)


if __name__ == "__main__":
    sys.exit(main())
