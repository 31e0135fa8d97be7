"""Discover (and match) a large simulated vSphere inventory; print time and peak RSS.

Starts its own vSphere simulator (the lab's ``vmguard-vcsim``, built if needed) with
--vms VMs in a temporary directory on free loopback ports, then runs a full sweep
(SOAP inventory + REST tags), policy matching, and a second sweep, in this process:

    PYTHONPATH=operator python bench/discovery.py --vms 5000 [--in-flight 2] [--check]

``PYTHONPATH=<another worktree>/operator`` runs that tree's discovery with this script
(before/after comparisons in one sitting).

*cpu s* is this process's CPU time from login to the end of the sweep, *sim cpu s* the
simulator's over the same span, *load* the 1-minute load after the round: on a busy
machine a sweep's wall time is bounded by their sum over the free cores, not by the
larger of the two. Peak RSS is this process's high-water mark (``ru_maxrss``) and its
growth over the baseline measured before the first sweep; the simulator is another
process. BRIEF §8:
5,000 VMs discovered and matched in ≤ 30 s, operator RSS ≤ 300 MiB. Not part of the
test run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pyVmomi import vim

import vmguard
from vmguard.controller.kube import trim
from vmguard.vsphere.inventory import (
    VM_PROPERTIES,
    InventoryTree,
    custom_field_names,
    discover,
    moid,
    record_from_properties,
    retrieve,
)
from vmguard.vsphere.matching import PolicyRef, Selector, assign
from vmguard.vsphere.records import VMRecord
from vmguard.vsphere.session import Endpoint, connect, disconnect
from vmguard.vsphere.tags import TagClient
from vmguard_lab import build
from vmguard_lab.paths import LabPaths
from vmguard_lab.procs import free_port
from vmguard_lab.vsim import PASSWORD_ENV, USERNAME_ENV, vsim_command


def _cpu_of(pid: int) -> float:
    """CPU seconds (user and system) process ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _one_pass(si: vim.ServiceInstance, tags: dict[str, tuple[str, ...]]) -> list[VMRecord]:
    """The records of one paged pass over a ContainerView (discovery before the chunks)."""
    tree, fields = InventoryTree(si), custom_field_names(si)
    found = retrieve(si, [vim.VirtualMachine], {vim.VirtualMachine: VM_PROPERTIES})
    records = [
        record_from_properties(moid(o), p, tree, fields, tags.get(moid(o), ())) for o, p in found
    ]
    return sorted(records, key=lambda vm: (vm.name, vm.moref))


def _one_pass_timed(ep: Endpoint, pid: int) -> None:
    """A sweep as one paged pass (tags left out), its wall and CPU times printed."""
    t0, cpu, sim_cpu = time.perf_counter(), trim.process_cpu(), _cpu_of(pid)
    si = connect(ep)
    records = _one_pass(si, {})
    wall = time.perf_counter() - t0
    cpu, sim_cpu = trim.process_cpu() - cpu, _cpu_of(pid) - sim_cpu
    disconnect(si)
    print(
        f"{'1-pass':>7} {len(records):7} {'':7} {wall:7.2f} {'':7} {'':7} {'':7} {'':12} "
        f"{'':10} {cpu:7.2f} {sim_cpu:9.2f} {os.getloadavg()[0]:5.1f}"
    )


def _policies() -> list[PolicyRef]:
    return [
        PolicyRef("gold", "vc", 10, selector=Selector.from_spec({"tags": [{"name": "gold"}]})),
        PolicyRef(
            "prod-db",
            "vc",
            5,
            selector=Selector.from_spec({"folders": ["/DC0/vm/Production/Databases"]}),
        ),
        PolicyRef(
            "weekly",
            "vc",
            1,
            selector=Selector.from_spec(
                {"customAttributes": [{"name": "backup", "value": "weekly"}]}
            ),
        ),
        PolicyRef("fail-safe", "vc", default=True),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vms", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--in-flight", type=int, help="requests at a time (default: discover's own)"
    )
    parser.add_argument(
        "--as-operator",
        action="store_true",
        help="glibc's mmap threshold and arena cap as the operator sets them (kube/trim.py),"
        " and the sweep in a thread of its own, as the operator's sweeper runs it",
    )
    parser.add_argument("--chunk", type=int, help="VMs per request (default: discover's own)")
    parser.add_argument(
        "--one-pass-too",
        action="store_true",
        help="each round also sweeps as one paged pass (how discovery read VMs before the"
        " chunks), before the round's sweep in odd rounds and after it in even ones",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="after the rounds, compare the records with those of one paged pass",
    )
    args = parser.parse_args()
    # Passed only when asked for: the same script then runs a tree whose discover() has
    # no such parameter (PYTHONPATH=<other tree>/operator, for before/after runs).
    options = {} if args.in_flight is None else {"in_flight": args.in_flight}
    if args.chunk is not None:
        options["chunk"] = args.chunk
    print(f"vmguard from {Path(vmguard.__file__).parent}")
    if args.as_operator:
        print(f"malloc tuned as the operator's: {trim.tune()}")
    binary = build.ensure_built(LabPaths.default(), only=("vsphere",))["vmguard-vcsim"]
    user, password = "bench@vsphere.local", secrets.token_urlsafe(12)
    with tempfile.TemporaryDirectory(prefix="vmguard-bench-vcsim-") as tmp:
        env = dict(os.environ, **{USERNAME_ENV: user, PASSWORD_ENV: password})
        argv = vsim_command(binary, tmp, free_port(), free_port(), args.vms, 1, 1 << 30)
        started = time.perf_counter()
        with open(Path(tmp) / "vcsim.log", "wb") as log:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            ready = Path(tmp) / "ready.json"
            while not ready.exists():
                if proc.poll() is not None:
                    raise SystemExit((Path(tmp) / "vcsim.log").read_text()[-2000:])
                time.sleep(0.1)
            info = json.loads(ready.read_text())
            print(f"simulator with {args.vms} VMs ready in {time.perf_counter() - started:.1f} s")
            ep = Endpoint(info["sdk_url"], user, password, ca_file=info["tls_cert"])
            baseline = _rss_mib()
            head = ("round", "VMs", "tagged", "soap s", "rest s", "match s", "total s")
            print(
                " ".join(f"{h:>7}" for h in head)
                + f" {'peak RSS MiB':>12} {'growth MiB':>10} {'cpu s':>7} {'sim cpu s':>9}"
                + f" {'load':>5}"
            )
            for n in range(args.rounds):
                if args.one_pass_too and n % 2 == 0:
                    _one_pass_timed(ep, proc.pid)
                t0, cpu, sim_cpu = time.perf_counter(), trim.process_cpu(), _cpu_of(proc.pid)
                si = connect(ep)
                with TagClient(ep) as tags:
                    t1 = time.perf_counter()
                    vm_tags = tags.vm_tags()
                t2 = time.perf_counter()
                if args.as_operator:
                    with ThreadPoolExecutor(1) as thread:
                        records = thread.submit(discover, si, vm_tags, **options).result()
                else:
                    records = discover(si, vm_tags, **options)
                t3 = time.perf_counter()
                cpu, sim_cpu = trim.process_cpu() - cpu, _cpu_of(proc.pid) - sim_cpu
                result = assign(records, _policies(), "vc")
                t4 = time.perf_counter()
                disconnect(si)
                assert len(result.assignments) == len(records)
                soap = (t1 - t0) + (t3 - t2)
                print(
                    f"{n + 1:7} {len(records):7} {len(vm_tags):7} {soap:7.2f} {t2 - t1:7.2f} "
                    f"{t4 - t3:7.2f} {t4 - t0:7.2f} {_rss_mib():12.0f} "
                    f"{_rss_mib() - baseline:10.0f} {cpu:7.2f} {sim_cpu:9.2f} "
                    f"{os.getloadavg()[0]:5.1f}"
                )
                if args.one_pass_too and n % 2 == 1:
                    _one_pass_timed(ep, proc.pid)
                if args.check and n + 1 == args.rounds:
                    si = connect(ep)
                    same = records == _one_pass(si, vm_tags)
                    disconnect(si)
                    print(f"records equal to one paged pass's: {same}")
                    if not same:
                        raise SystemExit(1)
                del records, result
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
