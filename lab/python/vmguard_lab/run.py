"""``python -m vmguard_lab.run [--stall POINTS] [--fail-once POINTS] [--stall-restore POINTS]
[--throttle BYTES_PER_S] [--speedup N] [--record-requests FILE] VMGUARD-ARGS...``:
``vmguard`` with test hooks installed (lab only).

Fault tests need the operator parked at a point of a backup, or a proxy slowed down, so
that they can kill it exactly there. The product has no switch for that; it has injection
points (:class:`vmguard.hooks.Hooks`, an argument of :func:`vmguard.cli.main.main`). This
module builds hooks from its own options and runs ``main`` with them and the remaining
arguments, in the same process:

- ``--stall snapshotted,finalizing``: the VMGuardBackup controller waits an hour at those
  points (:data:`vmguard.hooks.BACKUP_STEPS`, logging a warning first), so a test can
  SIGKILL the operator there. Given when starting the operator.
- ``--fail-once snapshotted``: the VMGuardBackup controller's step raises
  :class:`LabFault` the first time it reaches each of those points (a fault in a step:
  logged, posted as an Event on the backup, and the step retried after 30 s).
- ``--stall-restore finalizing``: the same for the VMGuardRestore controller, at
  :data:`vmguard.hooks.RESTORE_STEPS`.
- ``--throttle N``: the backup proxy reads at most N bytes/s on average (measured from
  its first progress report). Given in the operator's ``VMGUARD_PROXY_COMMAND``, so that
  every proxy Job it starts runs with it.
- ``--speedup N``: the operator's schedules and intervals run N times faster
  (:class:`vmguard.controller.kube.timing.Timing`): a cron minute lasts 60/N seconds, a
  vCenter's 30 s ``sweepInterval`` 30/N seconds; the clock stays the real one. Given
  when starting the operator, so that lab tests wait seconds for a scheduled run or a
  sweep, not minutes (docs/lab.md, "Lab time").
- ``--record-requests FILE``: every request the process makes through the Kubernetes
  client library (``kubernetes.client``: everything of the operator's own, not kopf's
  watches and patches, which go through aiohttp) is appended to FILE as one line,
  ``METHOD URL``: a test tells which objects the operator read, and how (a LIST is a GET
  of a collection), without the apiserver's counters, which every client adds to.

Without options it is ``vmguard`` itself.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from vmguard.cli.main import main as vmguard_main
from vmguard.controller.kube.timing import Timing
from vmguard.hooks import BACKUP_STEPS, RESTORE_STEPS, Hooks

log = logging.getLogger("vmguard_lab.run")

STALL_SECONDS = 3600.0


def stall_hook(
    points: set[str], steps: tuple[str, ...] = BACKUP_STEPS, option: str = "--stall"
) -> Callable[[str], Awaitable[None]]:
    """A step hook that waits :data:`STALL_SECONDS` at each of ``points`` (of ``steps``,
    the controller's points; ``option`` names them in an error)."""
    unknown = points - set(steps)
    if unknown:
        raise SystemExit(f"{option}: unknown point(s) {sorted(unknown)}; {steps}")

    async def stall(point: str) -> None:
        if point in points:
            log.warning("lab: stalled at %s (vmguard_lab.run --stall)", point)
            await asyncio.sleep(STALL_SECONDS)

    return stall


class LabFault(RuntimeError):
    """What ``--fail-once`` raises in a step."""


def fail_once_hook(points: set[str]) -> Callable[[str], Awaitable[None]]:
    """A step hook that raises :class:`LabFault` the first time each of ``points`` is
    reached (in this process)."""
    unknown = points - set(BACKUP_STEPS)
    if unknown:
        raise SystemExit(f"--fail-once: unknown point(s) {sorted(unknown)}; {BACKUP_STEPS}")
    left = set(points)

    async def fail(point: str) -> None:
        if point in left:
            left.discard(point)
            raise LabFault(f"lab: a fault at {point} (vmguard_lab.run --fail-once)")

    return fail


def throttle_hook(rate: int) -> Callable[[int, int], None]:
    """A transfer-progress hook that waits until the average rate since its first call is
    at most ``rate`` bytes/s."""
    started: list[float] = []

    def throttle(done: int, total: int) -> None:
        if not started:
            started.append(time.monotonic())
        ahead = done / rate - (time.monotonic() - started[0])
        if ahead > 0:
            time.sleep(ahead)

    return throttle


def record_requests(path: str) -> None:
    """Append ``METHOD URL`` of every request of the Kubernetes client library in this
    process to ``path`` (see the module doc)."""
    from kubernetes.client import rest

    lock = threading.Lock()
    inner = rest.RESTClientObject.request

    def request(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        with lock, open(path, "a", encoding="utf-8") as out:
            out.write(f"{method} {url}\n")
        return inner(self, method, url, *args, **kwargs)

    rest.RESTClientObject.request = request  # type: ignore[method-assign]


def _points(option: str) -> set[str]:
    return {p.strip() for p in option.split(",") if p.strip()}


def parse(argv: list[str] | None) -> tuple[Hooks, Timing | None, list[str]]:
    """The hooks and timing this module's options ask for, and the arguments left for
    vmguard."""
    parser = argparse.ArgumentParser(
        prog="python -m vmguard_lab.run", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--stall", metavar="POINTS", help="comma-separated backup steps")
    parser.add_argument(
        "--fail-once", metavar="POINTS", help="comma-separated backup steps that raise once"
    )
    parser.add_argument("--stall-restore", metavar="POINTS", help="comma-separated restore steps")
    parser.add_argument("--throttle", type=int, metavar="BYTES_PER_S", help="proxy read rate")
    parser.add_argument(
        "--speedup", type=float, metavar="N", help="the operator's schedules run N times faster"
    )
    parser.add_argument(
        "--record-requests", metavar="FILE", help="append the client library's requests"
    )
    parser.add_argument("vmguard_args", nargs=argparse.REMAINDER, help="vmguard's arguments")
    args = parser.parse_args(argv)
    given: dict[str, Any] = {}
    if args.stall and args.fail_once:
        raise SystemExit("--stall and --fail-once: one of them")
    if args.stall:
        given["backup_step"] = stall_hook(_points(args.stall))
    if args.fail_once:
        given["backup_step"] = fail_once_hook(_points(args.fail_once))
    if args.stall_restore:
        given["restore_step"] = stall_hook(
            _points(args.stall_restore), RESTORE_STEPS, "--stall-restore"
        )
    if args.throttle:
        given["transfer_progress"] = throttle_hook(args.throttle)
    if args.record_requests:
        record_requests(args.record_requests)
    timing = None
    if args.speedup:
        try:
            timing = Timing(speedup=args.speedup)
        except ValueError as exc:
            raise SystemExit(f"--speedup: {exc}") from None
    return Hooks(**given), timing, list(args.vmguard_args)


def main(argv: list[str] | None = None) -> int:
    hooks, timing, rest = parse(argv)
    return vmguard_main(rest, hooks=hooks, timing=timing)


if __name__ == "__main__":
    sys.exit(main())
