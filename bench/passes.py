"""The seven policies' first passes at estate scale, in process: CPU and peak memory
(issue #13; results in docs/scale.md, "The policies' first passes"). Not part of the test run.

What a start of the operator on the 5,000-VM estate does after the first sweep, without
a lab: for each of the seven policies of ``bench/estate.py`` (six name prefixes and the
default), one ``PolicyRunner.pass_on_points`` (its runs and a stand-in per expired point,
retention, copies, scheduled verification, status, RPO states, metrics), one policy at a
time as the namespace's pass lock makes them; then one fail-safe pass
(``failsafe.protect``) over the same sweep. The objects are ``bench/estate.py``'s own
(``estate_items``: a ProtectedVM with ``--points`` daily points per VM, last night's
Completed run for each VM, built with the operator's builders), served by an in-memory
stand-in for the apiserver (``ProbeAPI``, below: no apiserver runs in process; each
LIST decodes JSON afresh, as the client does). The shared read of the ProtectedVMs
(``held.read_held``) is timed on its own, then shared by the passes, as in the operator.

Measured per worker process (``time.process_time``; ``tracemalloc`` in a second,
separate run of the same passes, since tracing slows them): CPU of the held read, of the
seven passes and of the fail-safe pass; the traced size of the held read; the peak
traced memory above what was held before the passes (the held read and the estate's
source objects).

    .venv/bin/python bench/passes.py [--vms 4999] [--points 30]          # this tree
    .venv/bin/python bench/passes.py --compare /tmp/base --rounds 3      # interleaved
    .venv/bin/python bench/passes.py --profile 25                        # cProfile

``--compare DIR``: DIR holds another tree's ``operator/`` (e.g. ``git archive main
operator | tar -x -C DIR``); each round runs one worker on this tree and one on DIR,
alternating, each in a fresh process with that tree first on ``PYTHONPATH``, and the
table shows each figure's median.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import gc
import json
import logging
import os
import pstats
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "estate"
HOUR = 1


def estate(vms: int, per_vm: int) -> tuple[list[Any], list[dict[str, Any]], list[Any]]:
    """(VM records, the seven policies, (etcd key, object) items) as bench/estate.py
    builds them; VM names spread over its prefixes, a quarter matching none (default)."""
    sys.path.insert(0, str(REPO / "bench"))
    import estate as bench_estate
    from vmguard.vsphere.records import VMRecord

    names = [*bench_estate.PREFIXES, "app", "other"]
    records = [
        VMRecord(
            moref=f"vm-{i}",
            name=f"{names[i % len(names)]}-{i:05d}",
            instance_uuid=f"{i:08x}-0000-4000-8000-{i:012x}",
        )
        for i in range(vms)
    ]
    policies = bench_estate.estate_policies(NAMESPACE, HOUR, keep_daily=35)
    for n, p in enumerate(policies):
        p["metadata"].update(uid=f"uid-{n}", generation=1, creationTimestamp="2026-01-01T00:00:00Z")
    items, _ = bench_estate.estate_items(records, policies, per_vm, vms, HOUR)
    return records, policies, items


class ProbeAPI:
    """An in-memory stand-in for the apiserver (no apiserver runs in process): LISTs
    answer freshly decoded JSON, as the client's; writes are counted, not applied."""

    def __init__(self, objects: dict[str, list[dict[str, Any]]]) -> None:
        self.stored = {plural: [json.dumps(o) for o in objs] for plural, objs in objects.items()}
        self.labels = {
            plural: [o["metadata"].get("labels") or {} for o in objs]
            for plural, objs in objects.items()
        }
        self.writes = 0

    async def list_objects(
        self, plural: str, namespace: str, label_selector: str = "", page: int = 500
    ) -> list[dict[str, Any]]:
        """Every page at once, as ``KubeAPI.list_objects``."""
        return [
            o async for got in self.list_pages(plural, namespace, label_selector, page) for o in got
        ]

    async def list_pages(
        self, plural: str, namespace: str, label_selector: str = "", page: int = 500
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Filtered by one ``key=value`` label before decoding, as the apiserver does;
        ``page`` objects a page."""
        key, _, value = (label_selector or "").partition("=")
        stored = self.stored.get(plural, [])
        labels = self.labels.get(plural, [])
        chosen = [
            s for s, got in zip(stored, labels, strict=True) if not key or got.get(key) == value
        ]
        for at in range(0, len(chosen), page):
            yield [json.loads(s) for s in chosen[at : at + page]]

    async def get_object(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The VCenter and the repository the policies name exist (the judgement's reads)."""
        return {"metadata": {"name": name, "namespace": namespace}, "spec": {}}

    async def patch_status(self, *args: Any, **kwargs: Any) -> None:
        self.writes += 1

    async def patch_status_if(self, *args: Any, **kwargs: Any) -> bool:
        self.writes += 1
        return True

    async def create_object(self, *args: Any, **kwargs: Any) -> bool:
        self.writes += 1
        return True


async def run_passes(vms: int, per_vm: int, traced: bool, profile: int) -> dict[str, Any]:
    from vmguard.api.kinds import BACKUP, POLICY
    from vmguard.controller.kube import held as held_mod
    from vmguard.controller.kube.sweeps import LatestSweeps, SweepView
    from vmguard.controller.policy import failsafe, judgement
    from vmguard.controller.policy.runs import PolicyRunner
    from vmguard.metrics import Metrics
    from vmguard.vsphere.matching import Assignment, MatchResult

    records, policies, items = estate(vms, per_vm)
    objs: dict[str, list[dict[str, Any]]] = {}
    for key, obj in items:
        objs.setdefault(key.split("/")[3], []).append(obj)
    objs[POLICY.plural] = policies
    api: Any = ProbeAPI(objs)
    del items, objs
    now = dt.datetime.now(dt.UTC)
    from estate import estate_policy_of

    result = MatchResult([Assignment(vm, estate_policy_of(vm.name), "Matched") for vm in records])
    view = SweepView(now, 30.0, result)
    sweeps = LatestSweeps()
    sweeps.publish(NAMESPACE, "vc1", view)
    metrics = Metrics()
    out: dict[str, Any] = {"runs": len(api.stored[BACKUP.plural])}
    gc.collect()

    if traced:
        tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0] if traced else 0
    cpu = time.process_time()
    held = await held_mod.read_held(api, NAMESPACE)
    out["held_cpu"] = time.process_time() - cpu
    out["points"] = sum(len(h.points) for h in held)
    if traced:
        gc.collect()
        out["held_mib"] = (tracemalloc.get_traced_memory()[0] - base) / 2**20
    reader = held_mod.ProtectedVMReader(1e9)
    reader._cache[NAMESPACE] = (reader.timing.monotonic(), held)
    if traced:
        gc.collect()
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
    profiler = cProfile.Profile() if profile else None
    cpu = time.process_time()
    if profiler is not None:
        profiler.enable()
    for policy in policies:
        runner = PolicyRunner(
            api,
            policy,
            sweeps,
            asyncio.Event(),
            False,
            logging.getLogger("probe"),
            metrics=metrics,
            protected_vms=reader,
        )
        spec = policy["spec"]
        assessment = judgement.assess_spec(spec, True, True)
        await runner.pass_on_points(policy, assessment, view, now, now)
    out["passes_cpu"] = time.process_time() - cpu
    if traced:
        out["passes_peak_mib"] = (tracemalloc.get_traced_memory()[1] - before) / 2**20
        gc.collect()
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
    cpu = time.process_time()
    await failsafe.protect(api, NAMESPACE, view, policies, now, reader)
    out["failsafe_cpu"] = time.process_time() - cpu
    if profiler is not None:
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(profile)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(profile)
    if traced:
        out["failsafe_peak_mib"] = (tracemalloc.get_traced_memory()[1] - before) / 2**20
        tracemalloc.stop()
    out["writes"] = api.writes
    return out


def worker(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    timed = asyncio.run(run_passes(args.vms, args.points, False, args.profile))
    if not args.profile:
        traced = asyncio.run(run_passes(args.vms, args.points, True, 0))
        timed.update({k: v for k, v in traced.items() if k.endswith("_mib")})
    print(json.dumps(timed))


FIGURES = (
    ("held_cpu", "held read, CPU s"),
    ("held_mib", "held read, traced MiB"),
    ("passes_cpu", "7 passes, CPU s"),
    ("passes_peak_mib", "7 passes, peak traced MiB above held"),
    ("failsafe_cpu", "fail-safe pass, CPU s"),
    ("failsafe_peak_mib", "fail-safe pass, peak traced MiB"),
)


def spawn(operator: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(operator))
    cmd = [sys.executable, __file__, "--worker", "--vms", str(args.vms)]
    got = subprocess.run(
        [*cmd, "--points", str(args.points)], env=env, check=True, capture_output=True, text=True
    )
    return dict(json.loads(got.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=4999)
    parser.add_argument("--points", type=int, default=30)
    parser.add_argument("--compare", type=Path, help="another tree (its operator/ directory)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--profile", type=int, default=0, help="cProfile: rows to print")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker or args.profile:
        worker(args)
        return 0
    trees = {"this tree": REPO / "operator"}
    if args.compare is not None:
        trees[str(args.compare)] = args.compare / "operator"
    got: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for n in range(args.rounds):
        for name, operator in trees.items():
            got[name].append(spawn(operator, args))
            print(f"round {n + 1} {name}: {got[name][-1]}", file=sys.stderr)
    first = next(iter(got.values()))[0]
    print(
        f"{args.vms} VMs, {first['points']} points, {first['runs']} runs; medians of {args.rounds}"
    )
    print("| figure | " + " | ".join(trees) + " |")
    print("|---|" + "---|" * len(trees))
    for key, label in FIGURES:
        row = [f"{statistics.median(r[key] for r in got[name]):.2f}" for name in trees]
        print(f"| {label} | " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
