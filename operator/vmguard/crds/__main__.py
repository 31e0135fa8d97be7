"""``python -m vmguard.crds [--check] [DIR]``: write (or check) the CRD manifests.

DIR defaults to ``crds``. ``--check`` writes nothing and exits 1 when a file is
missing or differs, for CI.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vmguard.crds.render import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmguard.crds", description=__doc__)
    parser.add_argument("directory", nargs="?", default="crds", type=Path)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    return run(args.directory, check=args.check)


if __name__ == "__main__":
    sys.exit(main())
