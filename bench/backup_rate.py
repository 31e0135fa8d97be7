"""Backups per hour through real proxy Jobs at N slots, split; a night of 5,000 VMs projected.

    make bench-rate                      # RATE_VMS=200 RATE_SLOTS=2,4,8 by default
    make bench-rate RATE_SLOTS=1,2,4,8   # docs/scale.md's record
    # or: RATE_VMS=200 RATE_SLOTS=2,8 PYTHONPATH=operator python -m pytest -p tests.conftest \
    #         -p tests.controller.conftest bench/backup_rate.py -q -s -o addopts=

Issue 13 ("Estate scale"), scope item 5, third bullet. Not a test: it asserts nothing
about time (only that every backup completed, or its numbers would mean nothing) and
prints tables. It borrows the test suite's lab fixtures as ``bench/operator_restore.py``
does (the lab's apiserver, node agent and MinIO; an operator process started as the
controller tests start it, ``--controllers backups,repositories``) and, as
``tests/controller/test_admission_lab.py`` does, starts a vSphere simulator of its own
with ``RATE_VMS`` VMs (default 200; 15 % of them get a second disk of half the size, the
simulator's draw) on disks of ``RATE_DISK_MIB`` (default 64 MiB), so the lab's shared VMs
are left alone. The simulator's process and state directory go with the bench.

1. **Content**: an eighth of each disk is written through the simulator's control API
   (half random, half compressible text), the rest stays unallocated.
2. **Full round** (a row of its own): one VMGuardBackup per VM, all created at once,
   with the policy's concurrency (the proxy slots) at the largest N asked for.
3. **One incremental round per N** (``RATE_SLOTS``, default ``2,4,8``): the operator is
   stopped, the policy's ``concurrency`` set to ``total = perHost = perDatastore = N``
   (the vCenter's NFC limits are set out of the way, 64 disks), 1 % of every disk is
   changed (one random write of ``capacity / 100`` at a random offset: clustered, the
   benchmarks' "1 %"), the operator is started again and, once its ``/metrics`` answers,
   one VMGuardBackup per VM is created at once.

A round's wall is from the first create to the last ``Completed`` seen; backups per
hour are the round's count over that wall. Each backup's split comes from this
process's clock (one watch of the namespace's VMGuardBackups: the instant each phase,
and the Job's name, is first seen) and the proxy's log (its lines carry milliseconds;
same machine, same clock):

- **queue**: created → ``Snapshotting`` seen (admitted: waiting for a slot);
- **snapshot**: ``Snapshotting`` → ``Transferring`` seen (the operator opens the
  repository, turns CBT on, finds the parent, takes the snapshot);
- **Job start**: ``Transferring`` → the proxy's ``backup NS/NAME: snapshot …`` line (the
  Job created, the pod scheduled and started by the node agent, interpreter and
  imports, the VMGuardBackup, the repository's config and a vSphere login read);
- **transfer**: that line → the proxy's ``archive … committed`` line (CBT query, reads
  over NBD, chunks to MinIO, indexes and manifest, the status patch);
- **finalize**: that line → ``Completed`` seen (the Job's end noticed — the lab's
  operator looks every 0.5 s —, the snapshot removed, the point added to the VM's
  ProtectedVM, the phase written).

Beside the split, per backup: CPU seconds by process from /proc (the proxies through the
node agent, which reaps their processes; the operator; apiserver and etcd; MinIO; the
simulator; the machine as a whole, other work included) and apiserver requests by verb
and resource (``apiserver_request_total`` before and after the round, every client).

The slot time of a backup is snapshot + Job start + transfer + finalize. The projection
for one night of 5,000 VMs at 1 % change uses the round's rate (hours at N slots, as
measured here) and the mean slot time (slots needed for an 8-hour window, if every
slot had a core of its own), and then the same with the transfer a production VM
would add (1 % of ``RATE_PROD_VM_GIB``, default 100 GiB, at ``RATE_PROD_MIBPS``,
default 100 MiB/s per slot: *assumed*, printed as such).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import random
import re
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from tests.controller import objects
from tests.controller.own_vcsim import own_vcsim
from tests.controller.scrape import scrape

from vmguard.api import BACKUP_TERMINAL
from vmguard.api.kinds import BACKUP, POLICY, VCENTER
from vmguard.api.names import LABEL_ATTEMPT, LABEL_VMBACKUP
from vmguard_lab.procs import eventually
from vmguard_lab.vsim import VSimControl, VSimVM

MiB = 1 << 20
VMS = int(os.environ.get("RATE_VMS", "200"))
SLOTS = [int(n) for n in os.environ.get("RATE_SLOTS", "2,4,8").split(",") if n]
DISK = int(os.environ.get("RATE_DISK_MIB", "64")) * MiB
PROD_VM_GIB = float(os.environ.get("RATE_PROD_VM_GIB", "100"))
PROD_MIBPS = float(os.environ.get("RATE_PROD_MIBPS", "100"))
ROUND_TIMEOUT = float(os.environ.get("RATE_ROUND_TIMEOUT", "1800"))

pytestmark = [
    pytest.mark.lab,
    pytest.mark.operator_controllers("backups,repositories"),
    # Bounded, but not by the suite's 900 s per test: every round has its own bound.
    pytest.mark.timeout(int(ROUND_TIMEOUT * (len(SLOTS) + 1) + 600)),
]
NIGHT, WINDOW_H, CHANGE = 5000, 8.0, 0.01
PLURAL, KIND = BACKUP.plural, BACKUP.kind
# The vCenter's own limits out of the way: the policy's concurrency is the slot count.
OPEN_VCENTER = {"nfcDisks": 64, "nfcDisksPerHost": 64, "disksPerDatastore": 64}
_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ \S+ (.*)$", re.M)
PARTS = ("queue", "snapshot", "Job start", "transfer", "finalize")


@pytest.fixture
def rate_vcenter(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A simulator of its own with ``VMS`` VMs: endpoint, CA, credentials, control URL."""
    with own_vcsim(tmp_path, "rate@vsphere.local", VMS, 7, DISK, ready_timeout=120) as info:
        yield info


@dataclass
class Seen:
    """When this process first saw each state of one VMGuardBackup (epoch seconds)."""

    created: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    job: float = 0.0
    last: dict[str, Any] = field(default_factory=dict)


class Watcher:
    """One watch of the namespace's VMGuardBackups in a thread, stamping each phase (and
    the Job's name) the first time an event shows it."""

    def __init__(self, kube_api: Any, ns: str) -> None:
        self.api, self.ns = objects.custom(kube_api), ns
        self.seen: dict[str, Seen] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        listed = self.api.list_namespaced_custom_object(objects.G, objects.V, ns, PLURAL)
        self.version = listed["metadata"]["resourceVersion"]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            w = watch.Watch()
            try:
                for event in w.stream(
                    self.api.list_namespaced_custom_object,
                    objects.G,
                    objects.V,
                    self.ns,
                    PLURAL,
                    resource_version=self.version,
                    timeout_seconds=30,
                ):
                    now = time.time()
                    obj = event["object"]
                    if event["type"] == "ERROR":  # resourceVersion too old: start afresh
                        listed = self.api.list_namespaced_custom_object(
                            objects.G, objects.V, self.ns, PLURAL
                        )
                        self.version = listed["metadata"]["resourceVersion"]
                        break
                    self.version = obj["metadata"]["resourceVersion"]
                    self._stamp(obj, now)
                    if self.stopped.is_set():
                        w.stop()
                        break
            except Exception:  # a dropped connection: watch again from the last version
                time.sleep(0.2)

    def _stamp(self, obj: dict[str, Any], now: float) -> None:
        status = obj.get("status") or {}
        with self.lock:
            s = self.seen.setdefault(obj["metadata"]["name"], Seen())
            s.phases.setdefault(str(status.get("phase") or "Pending"), now)
            if status.get("jobName") and not s.job:
                s.job = now
            s.last = obj

    def phase(self, name: str) -> str:
        with self.lock:
            s = self.seen.get(name)
            return str(((s.last if s else {}).get("status") or {}).get("phase") or "")

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=40)


def _cpu(pid: int, children: bool) -> float:
    """CPU seconds of a process (with its reaped children's, ``children``) from /proc."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def _machine_busy() -> float:
    """CPU seconds the whole machine spent busy (every process, other work included)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


class Cpu:
    """CPU seconds of the processes a round runs on, by role. The proxies are the node
    agent's children (it waits for each pod's process, so their time, and their nbdkit's,
    lands in its ``cutime``); the agent's own work is counted apart."""

    def __init__(self, run_dir: Path, vcsim_pid: int) -> None:
        def pid(name: str) -> int:
            return int((run_dir / f"{name}.pid").read_text().split()[0])

        self.roles: dict[str, list[tuple[int, bool]]] = {
            "proxies": [(pid("node-agent"), True)],
            "apiserver + etcd": [(pid("kube-apiserver"), False), (pid("etcd"), False)],
            "MinIO": [(pid("minio"), False)],
            "simulator": [(vcsim_pid, False)],
            "node agent, scheduler, controller-manager": [
                (pid("kube-scheduler"), False),
                (pid("kube-controller-manager"), False),
            ],
        }
        self.agent = pid("node-agent")

    def sample(self, operator_pid: int) -> dict[str, float]:
        out = {role: sum(_cpu(p, c) for p, c in procs) for role, procs in self.roles.items()}
        own = _cpu(self.agent, False)
        out["proxies"] -= own
        out["node agent, scheduler, controller-manager"] += own
        out["operator"] = _cpu(operator_pid, True)
        out["machine"] = _machine_busy()
        return out


def _requests(kubectl: Path, kubeconfig: Path) -> dict[str, float]:
    """The apiserver's ``apiserver_request_total`` summed per ``VERB resource[/sub]``."""
    text = subprocess.run(
        [str(kubectl), "--kubeconfig", str(kubeconfig), "get", "--raw", "/metrics"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        inner = line[line.index("{") + 1 : line.rindex("}")]
        labels = {k: v.strip('"') for k, v in (p.split("=", 1) for p in inner.split(","))}
        if not labels.get("resource"):
            continue
        sub = f"/{labels['subresource']}" if labels.get("subresource") else ""
        key = f"{labels['verb']} {labels['resource']}{sub}"
        counts[key] = counts.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def _log_time(log: str, pattern: str) -> float:
    """Epoch seconds of the first proxy log line whose message matches ``pattern``."""
    for stamp, message in _LINE.findall(log):
        if re.search(pattern, message):
            return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    raise AssertionError(f"no proxy log line matches {pattern!r}:\n{log[-2000:]}")


def _fill(control: VSimControl, vm: VSimVM, seed: int) -> None:
    """An eighth of each disk written: half random, half compressible text."""
    rng = random.Random(seed)
    for disk in vm.disks:
        part = disk.capacity // 16
        control.write(vm.moref, disk.key, 0, rng.randbytes(part))
        line = f"vm {vm.moref} disk {disk.key} line ".encode()
        text = b"".join(line + str(n).encode() + b"\n" for n in range(part // 24 + 1))
        control.write(vm.moref, disk.key, part, text[:part])


def _change(control: VSimControl, vm: VSimVM, seed: int) -> int:
    """1 % of each disk changed: one random write at a random 64 KiB-aligned offset."""
    rng, written = random.Random(seed), 0
    for disk in vm.disks:
        size = disk.capacity // 100
        at = rng.randrange(0, (disk.capacity - size) // 65536) * 65536
        control.write(vm.moref, disk.key, at, rng.randbytes(size))
        written += size
    return written


@dataclass
class Row:
    """One round: its backups' splits and what the round as a whole took."""

    label: str
    slots: int
    count: int
    wall: float
    load: tuple[float, float]
    splits: list[dict[str, float]]
    modes: dict[str, int]
    read_mib: float
    cpu: dict[str, float]
    requests: dict[str, float]

    @property
    def per_hour(self) -> float:
        return self.count / self.wall * 3600

    def mean(self, part: str) -> float:
        return statistics.fmean(s[part] for s in self.splits)

    def median(self, part: str) -> float:
        return statistics.median(s[part] for s in self.splits)

    @property
    def slot_time(self) -> float:
        return statistics.fmean(sum(s[p] for p in PARTS[1:]) for s in self.splits)

    @property
    def idle(self) -> float:
        """Slot time left unused per backup: the round's slot-seconds minus the backups'
        (a slot freed waits for the next admission; the round's tail leaves slots idle)."""
        return (self.wall * self.slots - self.slot_time * self.count) / self.count


def _round(
    kube_api: Any,
    ns: str,
    watcher: Watcher,
    vms: list[VSimVM],
    label: str,
    slots: int,
    cpu: Cpu,
    operator_pid: int,
    metrics: tuple[Path, Path],
) -> Row:
    """Create one VMGuardBackup per VM at once and follow them until all have ended."""
    load_before = os.getloadavg()[0]
    cpu_before = cpu.sample(operator_pid)
    asked_before = _requests(*metrics)
    names = [f"{label}-{i:03d}" for i in range(len(vms))]
    first = time.time()
    for name, vm in zip(names, vms, strict=True):
        with watcher.lock:
            watcher.seen.setdefault(name, Seen()).created = time.time()
        objects.create(
            kube_api,
            ns,
            PLURAL,
            KIND,
            name,
            {
                "vm": {"moref": vm.moref, "instanceUuid": vm.instance_uuid},
                "policyRef": {"name": "rate"},
            },
            labels={"vmguard.io/policy": "rate", "vmguard.io/run": label},
        )
    deadline = first + ROUND_TIMEOUT
    while not all(watcher.phase(n) in BACKUP_TERMINAL for n in names):
        assert time.time() < deadline, f"round {label}: not every backup ended"
        time.sleep(0.5)  # a bench's sampling interval, not a test's synchronisation
    with watcher.lock:
        seen = {n: watcher.seen[n] for n in names}
    failed = {n: s.last["status"] for n, s in seen.items() if watcher.phase(n) != "Completed"}
    assert not failed, f"round {label}: {len(failed)} failed, e.g. {next(iter(failed.items()))}"
    wall = max(s.phases["Completed"] for s in seen.values()) - first
    load_after = os.getloadavg()[0]
    cpu_after = cpu.sample(operator_pid)
    used = {role: (cpu_after[role] - cpu_before[role]) / len(names) for role in cpu_after}
    asked = _requests(*metrics)
    asked = {k: (v - asked_before.get(k, 0.0)) / len(names) for k, v in asked.items()}
    core = client.CoreV1Api(kube_api)
    pods: dict[str, tuple[int, Any]] = {}  # each backup's pod of its last attempt
    for pod in core.list_namespaced_pod(ns).items:
        labels = pod.metadata.labels or {}
        owner, attempt = labels.get(LABEL_VMBACKUP), int(labels.get(LABEL_ATTEMPT) or 0)
        if owner in seen and attempt >= pods.get(owner, (0, None))[0]:
            pods[owner] = (attempt, pod)
    splits = []
    modes: dict[str, int] = {}
    read = 0
    for name, s in seen.items():
        log = core.read_namespaced_pod_log(pods[name][1].metadata.name, ns)
        started = _log_time(log, r"^backup \S+: snapshot ")
        committed = _log_time(log, r"^archive \S+ committed")
        p = s.phases
        splits.append(
            {
                "queue": p["Snapshotting"] - s.created,
                "snapshot": p["Transferring"] - p["Snapshotting"],
                "Job start": started - p["Transferring"],
                "transfer": committed - started,
                "finalize": p["Completed"] - committed,
            }
        )
        status = s.last["status"]
        modes[status["modeUsed"]] = modes.get(status["modeUsed"], 0) + 1
        read += int(status["totals"]["bytesRead"])
    load = (load_before, load_after)
    asked = {k: v for k, v in asked.items() if v >= 0.05}
    return Row(label, slots, len(names), wall, load, splits, modes, read / MiB, used, asked)


def _restart(operator: Any, start_operator: Any, env: dict[str, str]) -> Any:
    if operator is not None:
        operator.stop()
    operator = start_operator(extra_env=env)
    # /metrics answers once its startup handlers ran: the round starts after that.
    eventually(lambda: scrape(operator.metrics_port), timeout=180, what="operator up")
    return operator


def _concurrency(kube_api: Any, ns: str, slots: int) -> None:
    patch = {"spec": {"concurrency": {"total": slots, "perHost": slots, "perDatastore": slots}}}
    objects.custom(kube_api).patch_namespaced_custom_object(
        objects.G, objects.V, ns, POLICY.plural, "rate", patch
    )


def _report(rows: list[Row], disks: int) -> str:
    out = [
        "",
        f"{VMS} VMs, {disks} disks of {DISK // MiB} MiB (second disks half that), an eighth"
        " of each written; incrementals after 1 % of each disk changed (one write).",
        "",
        "| round | slots | backups | wall | backups/hour | slot time, mean | queue, median"
        " | snapshot | Job start | transfer | finalize | slot idle per backup | read"
        " | load (1 min) before → after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        parts = " | ".join(f"{r.mean(p):.2f} s" for p in PARTS[1:])
        modes = ", ".join(f"{n} {m}" for m, n in sorted(r.modes.items()))
        out.append(
            f"| {r.label} ({modes}) | {r.slots} | {r.count} | {r.wall:.0f} s | {r.per_hour:.0f}"
            f" | {r.slot_time:.2f} s | {r.median('queue'):.0f} s | {parts} | {r.idle:.2f} s"
            f" | {r.read_mib:.0f} MiB | {r.load[0]:.1f} → {r.load[1]:.1f} |"
        )
    out += ["", "Split means over each round's backups; per part also the median and max:", ""]
    for r in rows:
        spread = "; ".join(
            f"{p} {r.median(p):.2f} / {max(s[p] for s in r.splits):.2f}" for p in PARTS[1:]
        )
        out.append(f"- {r.label}: {spread}")
    roles = list(rows[0].cpu)
    out += [
        "",
        "CPU seconds per backup, by process (the machine's: every process, other work too):",
        "",
        "| round | " + " | ".join(roles) + " |",
        "|---|" + "---:|" * len(roles),
    ]
    for r in rows:
        out.append(f"| {r.label} | " + " | ".join(f"{r.cpu[k]:.2f}" for k in roles) + " |")
    out += [
        "",
        "apiserver requests per backup (every client: the operator, the proxies, the node"
        " agent, the scheduler and controller-manager, this bench's watch), the largest:",
        "",
    ]
    for r in rows:
        top = sorted(r.requests.items(), key=lambda kv: -kv[1])[:10]
        listed = ", ".join(f"{k} {v:.1f}" for k, v in top)
        out.append(f"- {r.label}: {sum(r.requests.values()):.1f} in all; {listed}")
    prod = PROD_VM_GIB * 1024 * CHANGE / PROD_MIBPS
    out += [
        "",
        f"One night: {NIGHT:,} VMs at 1 % change, an {WINDOW_H:.0f}-hour window.",
        "",
        "| from round | slots | hours at N slots, lab rate | lab slot time | slots for"
        f" {WINDOW_H:.0f} h, lab | slot time + {PROD_VM_GIB * CHANGE:.1f} GiB at"
        f" {PROD_MIBPS:.0f} MiB/s (assumed) | slots for {WINDOW_H:.0f} h, so |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.label.startswith("full"):
            continue
        hours = NIGHT / r.per_hour
        lab_slots = math.ceil(NIGHT * r.slot_time / (WINDOW_H * 3600))
        with_prod = r.slot_time - r.mean("transfer") + prod
        prod_slots = math.ceil(NIGHT * with_prod / (WINDOW_H * 3600))
        out.append(
            f"| {r.label} | {r.slots} | {hours:.1f} | {r.slot_time:.1f} s | {lab_slots}"
            f" | {with_prod:.1f} s | {prod_slots} |"
        )
    return "\n".join(out)


def test_backup_rate_at_n_slots(
    lab: Any,
    kubectl: Path,
    kube_api: Any,
    namespace: str,
    lab_repository: str,
    start_operator: Any,
    rate_vcenter: dict[str, Any],
) -> None:
    ns = namespace
    info = rate_vcenter
    creds = {"username": info["user"], "password": info["password"]}
    objects.secret(kube_api, ns, "rate-creds", creds)
    port = int(info["sdk_url"].split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    objects.create(
        kube_api,
        ns,
        VCENTER.plural,
        VCENTER.kind,
        "rate",
        {
            "host": "127.0.0.1",
            "port": port,
            "credentialsSecretRef": {"name": "rate-creds"},
            "tls": {"caBundle": Path(info["tls_cert"]).read_text()},
            "limits": OPEN_VCENTER,
        },
    )
    top = max(SLOTS)
    objects.create_policy(
        kube_api,
        ns,
        "rate",
        vcenter="rate",
        repository=lab_repository,
        selector={"names": ["rate-bench-selects-nothing"]},
        retention={"keepLast": 100},
        concurrency={"total": top, "perHost": top, "perDatastore": top},
    )
    control = VSimControl(info["control_url"])
    vms = sorted((v for v in control.vms() if not v.template), key=lambda v: v.moref)
    assert len(vms) == VMS
    disks = sum(len(v.disks) for v in vms)
    t = time.time()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda iv: _fill(control, iv[1], iv[0]), enumerate(vms)))
    print(f"\ncontent written in {time.time() - t:.0f} s ({disks} disks)", flush=True)
    env = {"VMGUARD_PROXY_LOCATOR": f"lab:{info['control_url']}"}
    cpu = Cpu(lab.paths.run, int(info["pid"]))
    metrics = (kubectl, lab.paths.kubeconfig)
    watcher = Watcher(kube_api, ns)
    rows = []
    try:
        operator = _restart(None, start_operator, env)
        rows.append(_round(kube_api, ns, watcher, vms, "full", top, cpu, operator.pid, metrics))
        print(_report(rows, disks), flush=True)
        for n, slots in enumerate(SLOTS):
            operator.stop()
            _concurrency(kube_api, ns, slots)
            with ThreadPoolExecutor(4) as pool:
                seeds = [1000 * (n + 1) + i for i in range(len(vms))]
                changed = sum(pool.map(lambda v, k: _change(control, v, k), vms, seeds))
            print(f"changed {changed / MiB:.0f} MiB over {disks} disks", flush=True)
            operator = _restart(operator, start_operator, env)
            rows.append(
                _round(
                    kube_api, ns, watcher, vms, f"incr{n + 1}", slots, cpu, operator.pid, metrics
                )
            )
            print(_report(rows, disks), flush=True)
    finally:
        watcher.stop()
    print(_report(rows, disks))
