"""``python -m vmguard.crds [--check] [DIR]``: write (or check) the CRD manifests.

DIR defaults to ``crds``. ``--check`` writes nothing and exits 1 when a file is
missing or differs, for CI.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vmguard.crds.render import stale, write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmguard.crds", description=__doc__)
    parser.add_argument("directory", nargs="?", default="crds", type=Path)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale(args.directory)
        for name in out_of_date:
            print(f"{args.directory / name}: out of date", file=sys.stderr)
        return 1 if out_of_date else 0
    for path in write(args.directory):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
