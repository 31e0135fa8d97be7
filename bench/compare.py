"""Before/after of the data mover: ``bench/mover.py`` of two trees, interleaved.

    python bench/compare.py --before /path/to/old/tree --rounds 5 --size-gib 2

The machine is shared and noisy, so a before/after comparison only means something
when both sides run in the same period, alternately: round *i* runs the old tree's
``bench/mover.py --rounds 1`` and then this tree's (the order flips every round, so
neither side always runs second), each with its own virtualenv (``<tree>/.venv``) and
lab directory. It prints, per row both trees measure, the median and the spread
(min-max) of each side and the ratio of the medians; rows only one side has are listed
with that side's numbers. Not part of the test run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def run_once(tree: Path, size_gib: int, out: Path) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree / "operator"))
    env["VMGUARD_LAB_DIR"] = str(tree / ".lab-bench")
    argv = [str(tree / ".venv/bin/python"), str(tree / "bench/mover.py")]
    argv += ["--rounds", "1", "--size-gib", str(size_gib), "--json", str(out)]
    subprocess.run(argv, env=env, cwd=tree, check=True, stdout=subprocess.DEVNULL)
    times: dict[str, float] = json.loads(out.read_text())["times"]
    return times


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, type=Path, help="the old tree (with .venv)")
    ap.add_argument("--after", type=Path, default=HERE, help="the new tree (default: this)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size-gib", type=int, default=2)
    args = ap.parse_args()
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    got: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            order = ["before", "after"] if i % 2 == 0 else ["after", "before"]
            for side in order:
                times = run_once(sides[side], args.size_gib, Path(tmp) / f"{side}-{i}.json")
                for row, sec in times.items():
                    got[side].setdefault(row, []).append(sec)
                print(f"round {i + 1} {side} done", file=sys.stderr, flush=True)
    print(f"{args.rounds} rounds, {args.size_gib} GiB image, alternating; seconds:")
    print("\n| run | before: median (min-max) | after: median (min-max) | after / before |")
    print("|---|---:|---:|---:|")
    rows = list(got["after"]) + [r for r in got["before"] if r not in got["after"]]
    for row in rows:
        b, a = got["before"].get(row), got["after"].get(row)
        ratio = f"{statistics.median(a) / statistics.median(b):.2f}" if a and b else "-"
        cells = [spread(b) if b else "-", spread(a) if a else "-", ratio]
        print(f"| {row.replace('|', chr(92) + '|')} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
