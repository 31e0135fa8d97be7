"""``vmguard crds --write DIR | --check DIR``: the CRD manifests, generated from Python data."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def run(args: argparse.Namespace) -> int:
    from vmguard.crds.render import run

    return run(Path(args.check or args.write), check=bool(args.check))


def register(sub: Any) -> None:
    """Add ``crds`` to the top-level sub-parsers."""
    crds = sub.add_parser("crds", help="write or check the CRD manifests (crds/*.yaml)")
    target = crds.add_mutually_exclusive_group(required=True)
    target.add_argument("--write", metavar="DIR", help="write one YAML file per kind into DIR")
    target.add_argument("--check", metavar="DIR", help="exit 1 if DIR's manifests are stale")
    crds.set_defaults(func=run)
