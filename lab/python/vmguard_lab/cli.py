"""``vmguard-lab``: the local lab of real peers (development, tests, the demo).

``up | down | status | env | build | inventory | demo``. A separate command from the
product's ``vmguard``: the lab is its own distribution, which the product never imports.
A :class:`~vmguard.errors.VmguardError` (the lab's :class:`~vmguard_lab.errors.LabError`
among them) becomes a message and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from vmguard.errors import VmguardError


def _run(args: argparse.Namespace) -> int:
    from vmguard_lab.lab import Lab

    lab = Lab()
    if args.lab_cmd == "up":
        lab.up(vms=args.vms)
        print(f"lab up in {lab.paths.lab}")
        for key, value in lab.env().items():
            if key != "PATH":
                print(f"  {key}={value}")
    elif args.lab_cmd == "down":
        stopped = lab.down()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    elif args.lab_cmd == "status":
        status = lab.status()
        if args.json:
            print(json.dumps(status))
        else:
            for name, running in status.items():
                print(f"{name:26} {'running' if running else 'stopped'}")
        return 0 if all(status.values()) else 3
    elif args.lab_cmd == "env":
        for key, value in lab.env(with_secrets=args.secrets).items():
            print(f"export {key}={shlex.quote(value)}")
    elif args.lab_cmd == "build":
        from vmguard_lab import build

        for name, path in build.ensure_built(lab.paths).items():
            print(f"{name:26} {path}")
    elif args.lab_cmd == "inventory":
        from vmguard_lab.inventory import print_inventory

        print_inventory(lab)
    elif args.lab_cmd == "demo":
        from vmguard_lab.demo import run

        return run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmguard-lab", description="the local lab of real peers (development and tests)"
    )
    lab_sub = parser.add_subparsers(dest="lab_cmd", required=True)
    up = lab_sub.add_parser("up", help="build what is missing and start the lab (idempotent)")
    up.add_argument("--vms", type=int, default=24, help="VMs in the vSphere inventory (≤ 5000)")
    lab_sub.add_parser("down", help="stop every process the lab started")
    status = lab_sub.add_parser("status", help="which lab processes run")
    status.add_argument("--json", action="store_true", help="one JSON object: name → running")
    env = lab_sub.add_parser("env", help="shell exports pointing clients at the lab")
    env.add_argument("--secrets", action="store_true", help="include the lab's credentials")
    lab_sub.add_parser("build", help="build the lab's Go components (cached)")
    lab_sub.add_parser("inventory", help="endpoints, nodes, VMs and buckets of the running lab")
    lab_sub.add_parser("demo", help="the product tour on the lab (make demo)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except VmguardError as exc:
        print(f"vmguard-lab: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
