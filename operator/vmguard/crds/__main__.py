"""``python -m vmguard.crds [--check] [DIR] [--chart CHART_DIR]``: write (or check) the
CRD manifests and the chart's CRD templates.

DIR defaults to ``crds``, CHART_DIR to ``charts/vmguard/templates/crds`` (``--chart ''``:
no templates). ``--check`` writes nothing and exits 1 when a file is missing or
differs, for CI.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vmguard.crds.render import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmguard.crds", description=__doc__)
    parser.add_argument("directory", nargs="?", default="crds", type=Path)
    parser.add_argument(
        "--chart",
        default="charts/vmguard/templates/crds",
        help="the chart's CRD templates ('' for none)",
    )
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    return run(args.directory, check=args.check, chart=Path(args.chart) if args.chart else None)


if __name__ == "__main__":
    sys.exit(main())
