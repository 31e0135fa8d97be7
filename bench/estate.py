"""Admission at estate scale: what N pending backups cost the apiserver and the operator,
and how long one night's backups take to create (issue "Estate scale"; results in
docs/scale.md). Not part of the test run.

Needs a running lab of its own (``VMGUARD_LAB_DIR=… vmguard-lab up``); uses its etcd,
apiserver and kubectl only. Run it with the virtualenv of the tree it measures::

    .venv/bin/python bench/estate.py --pending 100,1000 [--tree /path/to/other/tree]

``--tree`` is the checkout whose operator and CRDs are measured (default: this one), so
the same script measures before and after; kinds and plurals are read from that tree's
``crds/``.

**Pending backups** (per N): N backups of one policy (concurrency limit ``total: 8``,
per host 4, per datastore 2, spread over 50 hosts and 100 datastores so that the total
binds) are written the way the apiserver stores them — JSON in etcd, as
``bench/points.py`` does — already resolved (``status.vm``, ``placement``, ``Pending``),
so no vCenter is needed to reach admission. The VCenter and the repository point at
closed ports on 127.0.0.1, so the backups admitted take the slots and keep them
(their snapshot step retries, an active phase): what is measured is admission itself,
with 8 slots taken and N-8 backups waiting. The operator (``vmguard operator
--controllers backups``) runs for ``--warmup`` seconds (it must have admitted 8), then
for ``--window`` seconds in which the bench reads the apiserver's own
``apiserver_request_total`` (before and after; a baseline window with no operator is
subtracted, so the lab's own controllers do not count), the operator's CPU and RSS
from /proc. Everything stops by itself.

**One night's backups**: ``--night N`` creates N backups of a policy the way the
policy scheduler's ``create_due`` does (that tree's code, in a subprocess of that
tree), into a namespace no operator watches, and prints the wall time.

**The estate as the operator keeps it** (``--estate N``, e.g. 5000): the lab's vSphere
simulator with N VMs (started here, as ``bench/discovery.py`` does) behind a VCenter,
a VMGuardRepository (at a closed port: see ``estate_objects``), one policy per VM name prefix
of the simulator and a default (fail-safe) policy; for every VM a ProtectedVM with
``--points`` daily points (written into etcd as ``bench/points.py`` writes objects,
built with the operator's own builders) and, for ``--runs`` of them (default: all),
last night's Completed VMGuardBackup run, within its TTL, all as a running operator
leaves them (RPO states written, runs created with the finalizer). Then ``vmguard
operator`` with every controller is started on it (``--starts`` times: a restart),
each printing: the time until it is steady (the vCenter swept, every policy's pass run on
that sweep, then CPU quiet for 10 s; two readings, see :data:`AFTER_SWEEP`), peak RSS
summed over its process tree, the apiserver requests until then by verb and resource,
and CPU and requests per minute
over ``--window`` seconds of steady running. ``--also-tree OTHER`` (repeatable) starts
that checkout's operator on the same estate after each start of ``--tree``: before and
after, interleaved, on one estate and one load (its ``.venv/bin/python`` runs it, so a
tree whose ``.venv/bin/python`` is a script can set the environment, e.g.
``MALLOC_ARENA_MAX``, or run ``bench/heapwrap.py`` for a heap profile).

Prints one JSON object per row, and the machine's load average beside it.
"""

from __future__ import annotations

import argparse
import base64
import calendar
import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import requests
import yaml

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "estate"
NIGHT_NAMESPACE = "estate-night"
HOSTS, DATASTORES, LIMIT = 50, 100, 8
ACTIVE = ("Snapshotting", "Transferring", "Finalizing")


def _lab() -> dict[str, Any]:
    lab_dir = Path(os.environ.get("VMGUARD_LAB_DIR", REPO / ".lab"))
    state = json.loads((lab_dir / "lab.json").read_text())
    state["dir"] = lab_dir
    return state


def _kubectl() -> str:
    cache = Path(os.environ.get("VMGUARD_CACHE_DIR", Path.home() / ".cache/vmguard"))
    return str(next(cache.glob("lab-v*/bin/kubectl")))


def kinds(tree: Path) -> dict[str, tuple[str, str]]:
    """Role → (kind, plural) from the tree's CRDs: ``backup``, ``policy``, ``vcenter``,
    ``repository`` (so the bench follows a rename of the kinds)."""
    out: dict[str, tuple[str, str]] = {}
    for path in sorted((tree / "crds").glob("*.vmguard.io.yaml")):
        names = yaml.safe_load(path.read_text())["spec"]["names"]
        kind, plural = names["kind"], names["plural"]
        if kind.endswith("Backup"):
            out["backup"] = (kind, plural)
        elif kind.endswith("Policy"):
            out["policy"] = (kind, plural)
        elif kind == "VCenter":
            out["vcenter"] = (kind, plural)
        elif kind.endswith("Repository"):
            out["repository"] = (kind, plural)
    return out


class Kube:
    def __init__(self, lab: dict[str, Any]) -> None:
        self.env = dict(os.environ, KUBECONFIG=str(lab["dir"] / "kubeconfig"))
        self.kubectl = _kubectl()
        self.etcd = f"http://127.0.0.1:{lab['ports']['etcd']}"

    def run(self, *argv: str, stdin: str | None = None, check: bool = True) -> str:
        done = subprocess.run(
            [self.kubectl, *argv], env=self.env, input=stdin, capture_output=True, text=True
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(argv[:3])}: {done.stderr.strip()[:300]}")
        return done.stdout

    def apply(self, objs: list[dict[str, Any]]) -> None:
        self.run("apply", "-f", "-", stdin=yaml.safe_dump_all(objs))

    def requests_by(self) -> dict[str, float]:
        """apiserver_request_total summed per ``VERB resource``."""
        counts: dict[str, float] = {}
        for line in self.run("get", "--raw", "/metrics").splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels = dict(
                part.split("=", 1)
                for part in line[line.index("{") + 1 : line.rindex("}")].split(",")
            )
            resource = labels.get("resource", '""').strip('"')
            sub = labels.get("subresource", '""').strip('"')
            if not resource:
                continue
            key = f"{labels['verb'].strip(chr(34))} {resource}{'/' + sub if sub else ''}"
            counts[key] = counts.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        return counts

    def etcd_delete_namespace(self, namespace: str) -> None:
        """Delete every vmguard.io object of ``namespace`` straight from etcd, whatever
        its kind (a run of an older tree may have left objects of kinds since renamed)."""
        root = b"/registry/vmguard.io/"
        end = root[:-1] + bytes([root[-1] + 1])
        body = {
            "key": base64.b64encode(root).decode(),
            "range_end": base64.b64encode(end).decode(),
            "keys_only": True,
        }
        got = requests.post(f"{self.etcd}/v3/kv/range", json=body, timeout=600).json()
        for kv in got.get("kvs", []):
            key = base64.b64decode(kv["key"])
            if key.split(b"/")[4:5] == [namespace.encode()]:
                one = {"key": kv["key"]}
                requests.post(f"{self.etcd}/v3/kv/deleterange", json=one, timeout=60)

    def etcd_put(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        session = requests.Session()
        for i in range(0, len(items), 128):
            ops = [
                {
                    "requestPut": {
                        "key": base64.b64encode(k.encode()).decode(),
                        "value": base64.b64encode(json.dumps(v).encode()).decode(),
                    }
                }
                for k, v in items[i : i + 128]
            ]
            session.post(f"{self.etcd}/v3/kv/txn", json={"success": ops}, timeout=60)

    def count(self, plural: str, namespace: str) -> int:
        out = self.run("get", plural, "-n", namespace, "-o", "name", check=False)
        return len(out.splitlines())

    def phases(self, plural: str, namespace: str) -> dict[str, int]:
        out = self.run(
            "get", plural, "-n", namespace, "-o", "jsonpath={.items[*].status.phase}", check=False
        )
        got: dict[str, int] = {}
        for phase in out.split():
            got[phase] = got.get(phase, 0) + 1
        return got


def setup(kube: Kube, k: dict[str, tuple[str, str]], namespace: str) -> str:
    """The namespace, Secrets, a VCenter and a repository at closed ports, and a policy
    with a total limit of 8; returns the policy's uid."""
    from vmguard_lab.procs import free_port

    kube.run("create", "namespace", namespace, check=False)
    group = "vmguard.io/v1alpha1"
    dead = free_port()  # nothing listens there: the admitted backups hold their slots
    objs = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds", "namespace": namespace},
            "stringData": {
                "username": "bench",
                "password": uuid.uuid4().hex,
                "accessKeyID": "bench",
                "secretAccessKey": uuid.uuid4().hex,
            },
        },
        {
            "apiVersion": group,
            "kind": k["vcenter"][0],
            "metadata": {"name": "vc1", "namespace": namespace},
            "spec": {
                "host": "127.0.0.1",
                "port": dead,
                "credentialsSecretRef": {"name": "creds"},
                "tls": {"insecureSkipVerify": True},
            },
        },
        {
            "apiVersion": group,
            "kind": k["repository"][0],
            "metadata": {"name": "main", "namespace": namespace},
            "spec": {
                "s3": {"endpoint": f"127.0.0.1:{dead}", "bucket": "bench", "insecure": True},
                "credentialsSecretRef": {"name": "creds"},
            },
        },
        {
            "apiVersion": group,
            "kind": k["policy"][0],
            "metadata": {"name": "gold", "namespace": namespace},
            "spec": {
                "vcenterRef": {"name": "vc1"},
                "repositoryRef": {"name": "main"},
                "selector": {"names": ["app-*"]},
                "schedule": {"cron": "0 1 * * *"},
                "retention": {"keepDaily": 30},
                "concurrency": {"perDatastore": 2, "perHost": 4, "total": LIMIT},
            },
        },
    ]
    kube.apply(objs)
    out = kube.run("get", k["policy"][1], "gold", "-n", namespace, "-o", "jsonpath={.metadata.uid}")
    return out.strip()


def creates_with_finalizer(tree: Path) -> bool:
    """Whether that tree's policies create backups with the operator's finalizer in
    place (then the pending backups are written so, as its create path makes them)."""
    builders = tree / "operator/vmguard/controller/policy/builders.py"
    return builders.exists() and '"finalizers": [FINALIZER]' in builders.read_text()


def pending_backup(
    kind: str, i: int, policy_uid: str, now: str, finalizer: bool = False
) -> tuple[str, dict[str, Any]]:
    vm_uuid = str(uuid.UUID(int=i + 1))
    name = f"gold-{i:05d}"
    vm = {"name": f"app-{i:05d}", "instanceUuid": vm_uuid, "moref": f"vm-{i + 100}"}
    labels = {
        "vmguard.io/policy": "gold",
        "vmguard.io/vcenter": "vc1",
        "vmguard.io/vm": vm_uuid,
        "vmguard.io/trigger": "schedule",
        "vmguard.io/run": "20261206T0100Z",
    }
    return name, {
        "apiVersion": "vmguard.io/v1alpha1",
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "uid": str(uuid.uuid4()),
            "generation": 1,
            "creationTimestamp": now,
            "labels": labels,
            **({"finalizers": ["vmguard.io/finalizer"]} if finalizer else {}),
        },
        "spec": {"vm": vm, "policyRef": {"name": "gold"}, "mode": "auto"},
        "status": {
            "phase": "Pending",
            "startTime": now,
            "vm": vm,
            "vcenter": "vc1",
            "repository": "main",
            "placement": {
                "host": f"host-{i % HOSTS}",
                "datastores": [f"datastore-{i % DATASTORES}"],
            },
        },
    }


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def measure_pending(
    kube: Kube, tree: Path, n: int, warmup: float, window: float, lab_dir: Path
) -> dict[str, Any]:
    k = kinds(tree)
    kind, plural = k["backup"]
    kube.run("apply", "--server-side", "--force-conflicts", "-f", str(tree / "crds"))
    prefix = f"/registry/vmguard.io/{plural}/{NAMESPACE}/"
    kube.etcd_delete_namespace(NAMESPACE)
    policy_uid = setup(kube, k, NAMESPACE)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    fin = creates_with_finalizer(tree)
    items = [pending_backup(kind, i, policy_uid, now, fin) for i in range(n)]
    kube.etcd_put([(prefix + name, obj) for name, obj in items])
    deadline = time.monotonic() + 600
    while kube.count(plural, NAMESPACE) < n and time.monotonic() < deadline:
        time.sleep(2)  # the watch cache catches up with etcd
    # Baseline: what the lab's own controllers ask for without our operator.
    b0, t0 = kube.requests_by(), time.monotonic()
    time.sleep(min(window, 30.0))
    base = _delta(kube.requests_by(), b0)
    base_s = time.monotonic() - t0
    env = dict(kube.env, PYTHONPATH=str(tree / "operator"))
    argv = [str(tree / ".venv/bin/python"), "-m", "vmguard.cli", "operator"]
    argv += ["--namespace", NAMESPACE, "--metrics-port", "-1", "--controllers", "backups"]
    log = open(lab_dir / "logs" / f"estate-operator-{n}.log", "w")  # noqa: SIM115
    rs = kube.requests_by()
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tree)
    started = time.monotonic()
    try:
        admitted_after = None
        while time.monotonic() - started < warmup * 4:
            time.sleep(5)
            if proc.poll() is not None:
                raise RuntimeError(f"operator exited {proc.returncode}; see {log.name}")
            active = sum(kube.phases(plural, NAMESPACE).get(p, 0) for p in ACTIVE)
            if active >= min(LIMIT, n) and admitted_after is None:
                admitted_after = time.monotonic() - started
            if admitted_after is not None and time.monotonic() - started >= warmup:
                break
        r0, c0, w0 = kube.requests_by(), _proc_cpu(proc.pid), time.monotonic()
        warm = _delta(r0, rs)
        warm_s = w0 - started
        peak = 0
        while time.monotonic() - w0 < window:
            time.sleep(5)
            peak = max(peak, _proc_kib(proc.pid, "VmRSS"))
        r1, c1, w1 = kube.requests_by(), _proc_cpu(proc.pid), time.monotonic()
        rss_end = _proc_kib(proc.pid, "VmRSS")
        phases = kube.phases(plural, NAMESPACE)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    minutes = (w1 - w0) / 60
    caused = {
        key: round(v / minutes - base.get(key, 0.0) / (base_s / 60), 1)
        for key, v in _delta(r1, r0).items()
    }
    caused = {key: v for key, v in sorted(caused.items(), key=lambda kv: -kv[1]) if v >= 0.5}
    total = sum(caused.values())
    # From the operator's start to the window: the one-time cost of taking N over.
    startup = sum(v - base.get(k, 0.0) * warm_s / base_s for k, v in warm.items())
    kube.etcd_delete_namespace(NAMESPACE)
    return {
        "pending": n,
        "tree": str(tree),
        "created_with_finalizer": fin,
        "admitted_8_after_s": None if admitted_after is None else round(admitted_after),
        "phases_at_end": phases,
        "requests_per_min": round(total),
        "requests_per_min_per_pending": round(total / max(n - LIMIT, 1), 2),
        "startup_requests": round(startup),
        "startup_requests_per_backup": round(startup / n, 2),
        "startup_by": {k: round(v) for k, v in sorted(warm.items(), key=lambda kv: -kv[1])[:8]},
        "by_verb_resource_per_min": caused,
        "operator_cpu_cores": round((c1 - c0) / (w1 - w0), 2),
        "operator_rss_mib": round(rss_end / 1024),
        "operator_peak_rss_mib": round(peak / 1024),
        "window_s": round(w1 - w0),
        "load": os.getloadavg(),
    }


NIGHT_WORKER = r"""
import asyncio, datetime as dt, json, logging, sys, time, uuid
from kubernetes import client
from vmguard.vsphere.records import VMRecord
try:  # the controller split one package per kind over a shared kube layer
    from vmguard.controller.kube.kubeapi import KubeAPI, load_config
    from vmguard.controller.kube.sweeps import LatestSweeps
    from vmguard.controller.policy.runs import PendingBackup, PolicyRunner
except ImportError:
    from vmguard.controller.kubeapi import KubeAPI, load_config
    from vmguard.controller.policy_runs import PendingBackup, PolicyRunner
    from vmguard.controller.sweeps import LatestSweeps

async def main(n, namespace, plural, at_once):
    if at_once:
        try:
            from vmguard.controller.policy import runs
            runs.CREATES_AT_ONCE = at_once
        except ImportError:
            pass
    load_config()
    api = KubeAPI()
    policy = client.CustomObjectsApi().get_namespaced_custom_object(
        "vmguard.io", "v1alpha1", namespace, plural, "gold")
    runner = PolicyRunner(api, policy, LatestSweeps(), asyncio.Event(), False,
                          logging.getLogger("night"))
    run = dt.datetime(2026, 12, 6, 1, 0, tzinfo=dt.UTC)
    runner.pending = [
        PendingBackup(run, run, VMRecord(f"vm-{i + 100}", f"app-{i:05d}",
                                         str(uuid.UUID(int=i + 1))))
        for i in range(n)
    ]
    t0 = time.monotonic()
    await runner.create_due(policy, run)
    print(json.dumps({"created_s": round(time.monotonic() - t0, 1), "left": len(runner.pending)}))

asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""


def measure_night(kube: Kube, tree: Path, n: int, at_once: int = 0) -> dict[str, Any]:
    k = kinds(tree)
    plural = k["backup"][1]
    kube.run("apply", "--server-side", "--force-conflicts", "-f", str(tree / "crds"))
    kube.etcd_delete_namespace(NIGHT_NAMESPACE)
    setup(kube, k, NIGHT_NAMESPACE)
    env = dict(kube.env, PYTHONPATH=str(tree / "operator"))
    argv = [str(tree / ".venv/bin/python"), "-c", NIGHT_WORKER]
    argv += [str(n), NIGHT_NAMESPACE, k["policy"][1], str(at_once)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=tree)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    row = json.loads(done.stdout.strip().splitlines()[-1])
    count = kube.count(plural, NIGHT_NAMESPACE)
    kube.etcd_delete_namespace(NIGHT_NAMESPACE)
    return {
        "night": n,
        "tree": str(tree),
        "creates_at_once": at_once or "the tree's",
        **row,
        "objects": count,
        "load": os.getloadavg(),
    }


# -- The estate the operator keeps: 5,000 VMs, their ProtectedVMs, last night's runs ----

ESTATE_NAMESPACE = "estate-big"
PREFIXES = ("web", "db", "dev-a", "sandbox", "test", "infra")
"""The simulator's VM name prefixes (lab/vsphere/inventory.go): one policy each, and a
default (fail-safe) policy for the rest."""
DISK = {
    "capacityBytes": 68719476736,
    "mode": "incremental",
    "bytesRead": 734003200,
    "bytesChanged": 734003200,
    "bytesUploaded": 201326592,
    "chunksNew": 48,
    "chunksReused": 16336,
    "key": 2000,
    "label": "Hard disk 1",
}


def start_vcsim(vms: int, workdir: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any], str]:
    """The lab's simulator with ``vms`` VMs on free loopback ports (as bench/discovery.py);
    returns the process, its ready.json and the password."""
    from vmguard_lab import build
    from vmguard_lab.paths import LabPaths
    from vmguard_lab.procs import free_port
    from vmguard_lab.vsim import PASSWORD_ENV, USERNAME_ENV, vsim_command

    binary = build.ensure_built(LabPaths.default(), only=("vsphere",))["vmguard-vcsim"]
    password = uuid.uuid4().hex
    env = dict(os.environ, **{USERNAME_ENV: "bench@vsphere.local", PASSWORD_ENV: password})
    argv = vsim_command(binary, workdir, free_port(), free_port(), vms, 1, 1 << 30)
    log = open(workdir / "vcsim.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    ready = workdir / "ready.json"
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError((workdir / "vcsim.log").read_text()[-2000:])
        time.sleep(0.5)
    return proc, json.loads(ready.read_text()), password


def completed_run_status(
    run_obj: dict[str, Any], archive: str, at: dt.datetime, done: dt.datetime
) -> dict[str, Any]:
    """The status a running operator leaves on a Completed two-disk run (:data:`DISK`),
    its point recorded (``PointRecorded=True``: the start's fold passes over it)."""
    from vmguard.api import format_time
    from vmguard.controller.kube import points

    pvm = points.protected_vm_name("vc1", str(run_obj["spec"]["vm"].get("instanceUuid") or ""))

    return {
        "phase": "Completed",
        "archiveId": archive,
        "vm": run_obj["spec"]["vm"],
        "vcenter": "vc1",
        "repository": "main",
        "modeUsed": "incremental",
        "disks": [dict(DISK), dict(DISK, key=2001, label="Hard disk 2")],
        "totals": {k: 2 * int(DISK[k]) for k in ("capacityBytes", "bytesUploaded")},
        "startTime": format_time(at),
        "completionTime": format_time(done),
        "snapshot": {"createTime": format_time(at)},
        "transport": "nbd",
        "conditions": [
            {
                "type": t,
                "status": s,
                "reason": reason,
                "message": message,
                "lastTransitionTime": format_time(done),
                "observedGeneration": 1,
            }
            for t, s, reason, message in (
                (points.POINT_RECORDED, "True", points.RECORDED, f"in ProtectedVM {pvm}"),
                ("Ready", "True", "Completed", f"archive {archive} committed"),
                ("Reconciling", "False", "Completed", f"archive {archive} committed"),
            )
        ],
        "observedGeneration": 1,
    }


def estate_policy_of(vm_name: str) -> str:
    from fnmatch import fnmatchcase

    return next((p for p in PREFIXES if fnmatchcase(vm_name, f"{p}-*")), "fail-safe")


def estate_policies(ns: str, hour: int, *, keep_daily: int) -> list[dict[str, Any]]:
    """One policy per VM name prefix of the simulator (:data:`PREFIXES`) and the default
    policy, each backing up at ``hour`` and keeping ``keep_daily`` daily points."""
    schedule = {"cron": f"0 {hour} * * *"}
    retention = {"keepDaily": keep_daily}
    common = {"vcenterRef": {"name": "vc1"}, "repositoryRef": {"name": "main"}}
    policies: list[dict[str, Any]] = [
        {
            "apiVersion": "vmguard.io/v1alpha1",
            "kind": "VMProtectionPolicy",
            "metadata": {"name": p, "namespace": ns},
            "spec": {
                **common,
                "selector": {"names": [f"{p}-*"]},
                "priority": 10,
                "schedule": schedule,
                "retention": retention,
            },
        }
        for p in PREFIXES
    ]
    policies.append(
        {
            "apiVersion": "vmguard.io/v1alpha1",
            "kind": "VMProtectionPolicy",
            "metadata": {"name": "fail-safe", "namespace": ns},
            "spec": {**common, "default": True, "schedule": schedule, "retention": retention},
        }
    )
    return policies


def estate_objects(
    kube: Kube, info: dict[str, Any], password: str, lab: dict[str, Any], hour: int
) -> list[dict[str, Any]]:
    """Secrets, the VCenter (the simulator), the repository and the policies, applied
    through the apiserver; returns the policies. The repository is at a closed port: its
    150,000 archives are not written (catalog sync of an empty bucket would flag every
    run's archive as missing, which a real estate never does), so catalog sync lists
    the namespace's runs and ProtectedVMs and then fails to reach the bucket, each pass."""
    from vmguard_lab.procs import free_port

    ns = ESTATE_NAMESPACE
    minio = lab["minio"]
    endpoint = f"127.0.0.1:{free_port()}"
    bucket = "estate"
    port = int(info["sdk_url"].split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    group = "vmguard.io/v1alpha1"
    policies = estate_policies(ns, hour, keep_daily=35)
    kube.run("create", "namespace", ns, check=False)
    kube.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "vc-creds", "namespace": ns},
                "stringData": {"username": "bench@vsphere.local", "password": password},
            },
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "s3", "namespace": ns},
                "stringData": {
                    "accessKeyID": minio["access_key"],
                    "secretAccessKey": minio["secret_key"],
                },
            },
            {
                "apiVersion": group,
                "kind": "VCenter",
                "metadata": {"name": "vc1", "namespace": ns},
                "spec": {
                    "host": "127.0.0.1",
                    "port": port,
                    "credentialsSecretRef": {"name": "vc-creds"},
                    "tls": {"caBundle": Path(info["tls_cert"]).read_text()},
                },
            },
            {
                "apiVersion": group,
                "kind": "VMGuardRepository",
                "metadata": {"name": "main", "namespace": ns},
                "spec": {
                    "s3": {"endpoint": endpoint, "bucket": bucket, "insecure": True},
                    "credentialsSecretRef": {"name": "s3"},
                },
            },
            *policies,
        ]
    )
    out = []
    for p in policies:
        name = p["metadata"]["name"]
        got = kube.run("get", "vmprotectionpolicies", name, "-n", ns, "-o", "json")
        out.append(json.loads(got))
    return out


def estate_items(
    records: list[Any], policies: list[dict[str, Any]], per_vm: int, runs: int, hour: int
) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """(etcd key, object) of every VM's ProtectedVM with ``per_vm`` daily points, the
    newest at today's (or yesterday's) ``hour``; and, for the first ``runs`` VMs, that
    newest point's Completed VMGuardBackup run, not yet expired. Built with the
    operator's own builders, so names, labels and the status shape are the operator's."""
    import datetime as dt

    from vmguard.api import format_time
    from vmguard.controller.kube import points
    from vmguard.controller.kube.schedule import parse
    from vmguard.controller.policy.builders import build_vmbackup

    ns = ESTATE_NAMESPACE
    by_name = {p["metadata"]["name"]: p for p in policies}
    objective = parse(f"0 {hour} * * *").default_rpo()
    now = dt.datetime.now(dt.UTC)
    newest = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    if newest > now:
        newest -= dt.timedelta(days=1)
    items: list[tuple[str, dict[str, Any]]] = []
    stored = 0
    for i, vm in enumerate(records):
        policy = by_name[estate_policy_of(vm.name)]
        key = points.ProtectedVMKey(ns, "vc1", vm.instance_uuid)
        tag = vm.instance_uuid.replace("-", "")[:16]
        pts = []
        run_obj = None
        for n in range(per_vm):
            at = newest - dt.timedelta(days=n)
            archive = f"{tag}-{at:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
            pt: dict[str, Any] = {
                "archiveId": archive,
                "repository": "main",
                "time": format_time(at),
                "mode": "full" if n == per_vm - 1 else "incremental",
                "bytes": 201326592,
                "policy": policy["metadata"]["name"],
            }
            if n == 0 and i < runs:
                run_obj = build_vmbackup(policy, vm, at, "schedule")
                pt["backup"] = run_obj["metadata"]["name"]
                done = at + dt.timedelta(seconds=95)
                run_obj["metadata"].update(
                    uid=str(uuid.uuid4()), generation=1, creationTimestamp=format_time(at)
                )
                run_obj["status"] = completed_run_status(run_obj, archive, at, done)
            pts.append(pt)
        obj = points.build_protected_vm(key, vm.name)
        obj["metadata"].update(
            uid=str(uuid.uuid4()), generation=1, creationTimestamp=pts[-1]["time"]
        )
        status = {
            "vm": {"instanceUuid": vm.instance_uuid, "moref": vm.moref, "name": vm.name},
            "vcenter": "vc1",
            "points": points.newest_first(pts),  # type: ignore[arg-type]
        }
        # The RPO state a running operator has written (policy/runs.py, write_rpo): the
        # schedule's default objective, from the newest completion.
        last = newest + dt.timedelta(seconds=95 if run_obj is not None else 0)
        rpo = points.rpo_of(last, objective, now)
        status["rpo"] = rpo
        status["conditions"] = points.rpo_condition([], rpo, 1)
        obj["status"] = points.derived(status, 1)  # type: ignore[arg-type]
        items.append((f"/registry/vmguard.io/protectedvms/{ns}/{key.name}", obj))
        stored += len(json.dumps(obj))
        if run_obj is not None:
            name = run_obj["metadata"]["name"]
            items.append((f"/registry/vmguard.io/vmguardbackups/{ns}/{name}", run_obj))
    return items, stored


def _tree_pids(root: int) -> list[int]:
    """``root`` and every process below it (what "every vmguard process" sums over)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _tree_usage(root: int) -> tuple[float, int]:
    """(CPU seconds, RSS KiB) summed over ``root``'s process tree."""
    cpu, rss = 0.0, 0
    for pid in _tree_pids(root):
        try:
            cpu += _proc_cpu(pid)
            rss += _proc_kib(pid, "VmRSS")
        except OSError:
            continue
    return cpu, rss


def _swept_since(kube: Kube, since: float) -> bool:
    out = kube.run(
        "get", "vcenters", "vc1", "-n", ESTATE_NAMESPACE, "-o",
        "jsonpath={.status.lastSweepTime}", check=False,
    )  # fmt: skip
    if not out.strip():
        return False
    at = calendar.timegm(time.strptime(out.strip()[:19], "%Y-%m-%dT%H:%M:%S"))
    return at >= since - 1


AFTER_SWEEP = 35.0
"""The first rule's guard: seconds after the first sweep before the operator may count as
steady, from when a policy's pass came every 30 s whatever the sweep (its RPO states
then written). A sweep now wakes every policy's pass at once (policy/runs.py, ``sleep``)
and the first pass after a start waits for it, so the passes on the sweep are the CPU
that follows it; the guard only moves the reading past the next quiet gap when a 30-s
refresh or a heap trim (each ≈ 0.1 s of CPU) falls between the end of the work and
sweep + 35 s. Both readings are printed (``steady_after_s``, ``work_done_s``)."""


def _first_kopf_line(log: Path, wall0: float) -> float | None:
    """Seconds from the operator's start to its first line logged by kopf (kopf runs:
    what precedes it is imports, the CRD check and the migrations), from the log's
    timestamps (``%(asctime)s``: local time, milliseconds)."""
    for line in log.read_text(errors="replace").splitlines():
        parts = line.split(" ", 4)
        if len(parts) < 4 or not parts[3].startswith("kopf"):
            continue
        try:
            at = time.mktime(time.strptime(f"{parts[0]} {parts[1][:8]}", "%Y-%m-%d %H:%M:%S"))
        except ValueError:
            continue
        return round(at + int(parts[1][9:12] or 0) / 1000 - wall0, 1)
    return None


def run_estate_operator(
    kube: Kube, tree: Path, lab_dir: Path, label: str, timeout: float, window: float
) -> dict[str, Any]:
    """``vmguard operator`` with every controller over the estate's namespace: the time
    until it is steady (the vCenter swept since it started, every policy's pass run on
    that sweep, then its CPU quiet for 10 s: the start of that quiet time is reported;
    ``work_done_s`` is the start of the first such quiet time after the sweep landed, and
    ``steady_after_s`` the first one that lasts past sweep + :data:`AFTER_SWEEP`), peak RSS
    summed over its processes, the apiserver requests until then, and then a ``window``
    of steady running (requests/min, CPU)."""
    env = dict(kube.env, PYTHONPATH=str(tree / "operator"))
    # A profiling wrapper (e.g. one that runs vmguard.cli.main under tracemalloc) may
    # stand in for ``-m vmguard.cli``; it gets the same arguments.
    wrapper = os.environ.get("ESTATE_OPERATOR_WRAPPER")
    argv = [str(tree / ".venv/bin/python"), *([wrapper] if wrapper else ["-m", "vmguard.cli"])]
    argv += ["operator", "--namespace", ESTATE_NAMESPACE, "--metrics-port", "-1"]
    log_name = f"estate-big-{label}-{tree.name}.log"
    log = open(lab_dir / "logs" / log_name, "w")  # noqa: SIM115
    r0 = kube.requests_by()
    wall0 = time.time()
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tree)
    t0 = time.monotonic()
    peak, swept_s, steady_s, quiet_since, last_cpu = 0, None, None, None, 0.0
    done_s = None
    try:
        while time.monotonic() - t0 < timeout:
            time.sleep(1.0)
            if proc.poll() is not None:
                raise RuntimeError(f"operator exited {proc.returncode}; see {log.name}")
            cpu, rss = _tree_usage(proc.pid)
            peak = max(peak, rss)
            if swept_s is None and _swept_since(kube, wall0):
                swept_s = time.monotonic() - t0
            if cpu - last_cpu < 0.05:
                quiet_since = quiet_since or time.monotonic()
                quiet = time.monotonic() - quiet_since >= 10
                if done_s is None and swept_s is not None and quiet:
                    # The work on the sweep is done: quiet for 10 s since it landed.
                    done_s = max(quiet_since - t0, swept_s)
                settled = swept_s is not None and time.monotonic() - t0 >= swept_s + AFTER_SWEEP
                if settled and quiet:
                    steady_s = quiet_since - t0
                    break
            else:
                quiet_since = None
            last_cpu = cpu
        r1 = kube.requests_by()
        c1, w1 = _tree_usage(proc.pid)[0], time.monotonic()
        while time.monotonic() - w1 < window:
            time.sleep(2.0)
            peak = max(peak, _tree_usage(proc.pid)[1])
        r2 = kube.requests_by()
        (c2, rss_end), w2 = _tree_usage(proc.pid), time.monotonic()
        hwm = sum(_proc_kib(pid, "VmHWM") for pid in _tree_pids(proc.pid))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    start = {k: round(v) for k, v in sorted(_delta(r1, r0).items(), key=lambda kv: -kv[1])}
    kopf_s = _first_kopf_line(lab_dir / "logs" / log_name, wall0)
    minutes = (w2 - w1) / 60
    steady = {k: round(v / minutes, 1) for k, v in _delta(r2, r1).items() if v / minutes >= 0.5}
    return {
        "start": label,
        "first_kopf_log_s": kopf_s,
        "swept_after_s": None if swept_s is None else round(swept_s),
        "steady_after_s": None if steady_s is None else round(steady_s),
        "work_done_s": None if done_s is None else round(done_s),
        "peak_rss_mib": round(max(peak, hwm) / 1024),
        "rss_after_window_mib": round(rss_end / 1024),
        "cpu_s_until_steady": round(c1, 1),
        "requests_until_steady": sum(start.values()),
        # ProtectedVMs' always: reads of them are what a start should not pay for.
        "requests_until_steady_by": {
            k: v for k, v in start.items() if v >= 5 or "protectedvms" in k
        },
        "steady_cpu_cores": round((c2 - c1) / (w2 - w1), 3),
        "steady_requests_per_min": round(sum(steady.values())),
        "steady_requests_per_min_by": dict(sorted(steady.items(), key=lambda kv: -kv[1])),
        "load": os.getloadavg(),
    }


def measure_estate(
    kube: Kube,
    tree: Path,
    lab: dict[str, Any],
    vms: int,
    per_vm: int,
    runs: int,
    window: float,
    starts: tuple[str, ...] = ("restart",),
    others: tuple[Path, ...] = (),
    steady_timeout: float = 900.0,
) -> list[dict[str, Any]]:
    """The estate as a running operator keeps it (points, RPO states, runs with their
    finalizer), then the operator started on it once per ``starts`` entry: a restart.
    With ``others`` (``--also-tree``), each start is made by ``tree`` and then by each
    of them in turn, on the same estate: before and after, interleaved."""
    import tempfile

    from vmguard.vsphere.inventory import discover
    from vmguard.vsphere.session import Endpoint, connect, disconnect

    kube.run("apply", "--server-side", "--force-conflicts", "-f", str(tree / "crds"))
    kube.etcd_delete_namespace(ESTATE_NAMESPACE)
    # Today's scheduled run was 14 h ago: no catch-up at start (more than half the
    # interval since), and last night's runs are within their 24 h TTL.
    hour = (time.gmtime().tm_hour - 14) % 24
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vmguard-estate-vcsim-") as tmp:
        sim, info, password = start_vcsim(vms, Path(tmp))
        try:
            ep = Endpoint(
                info["sdk_url"], "bench@vsphere.local", password, ca_file=info["tls_cert"]
            )
            si = connect(ep)
            records = [r for r in discover(si, {}) if not r.template]
            disconnect(si)
            policies = estate_objects(kube, info, password, lab, hour)
            items, stored = estate_items(records, policies, per_vm, runs, hour)
            t0 = time.monotonic()
            kube.etcd_put(items)
            pvms = sum(1 for k, _ in items if "/protectedvms/" in k)
            while kube.count("protectedvms", ESTATE_NAMESPACE) < pvms:
                time.sleep(2)  # the watch cache catches up with etcd
            status = requests.post(f"{kube.etcd}/v3/maintenance/status", json={}, timeout=30)
            t1 = time.monotonic()
            kube.run("get", "protectedvms", "-n", ESTATE_NAMESPACE, "--no-headers")
            get_s = time.monotonic() - t1
            rows.append(
                {
                    "estate": ESTATE_NAMESPACE,
                    "vms": len(records),
                    "protectedvms": pvms,
                    "points": pvms * per_vm,
                    "runs": len(items) - pvms,
                    "protectedvm_json_bytes_avg": round(stored / max(pvms, 1)),
                    "written_and_cached_s": round(t1 - t0),
                    "etcd_db_mib": round(int(status.json().get("dbSize", 0)) / 2**20),
                    "kubectl_get_protectedvms_s": round(get_s, 1),
                    "load": os.getloadavg(),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            for label in starts:
                for which in (tree, *others):
                    row = run_estate_operator(
                        kube, which, lab["dir"], label, steady_timeout, window
                    )
                    rows.append({"tree": str(which), "commit": _commit(which), **row})
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            sim.terminate()
            sim.wait(timeout=30)
    return rows


def _commit(tree: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", type=Path, default=REPO, help="checkout measured (its .venv)")
    ap.add_argument("--pending", default="100,1000", help="pending backup counts, comma-separated")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds before the window")
    ap.add_argument("--window", type=float, default=120.0, help="seconds measured")
    ap.add_argument("--night", type=int, default=0, help="create one night of N backups")
    ap.add_argument(
        "--night-at-once", default="", help="creates in flight to try, e.g. 1,4 (the tree's)"
    )
    ap.add_argument("--estate", type=int, default=0, help="an estate of N VMs (0: none)")
    ap.add_argument("--points", type=int, default=30, help="points per VM of --estate")
    ap.add_argument("--runs", type=int, default=-1, help="finished runs kept (default: N)")
    ap.add_argument("--keep", action="store_true", help="leave --estate's objects in place")
    ap.add_argument("--starts", type=int, default=1, help="operator starts on --estate")
    ap.add_argument(
        "--steady-timeout",
        type=float,
        default=900.0,
        help="seconds an operator start on --estate may take to be steady",
    )
    ap.add_argument(
        "--also-tree",
        type=Path,
        action="append",
        default=[],
        help="another checkout whose operator starts on --estate after each start of --tree",
    )
    args = ap.parse_args()
    lab = _lab()
    kube = Kube(lab)
    tree = args.tree.resolve()
    commit = _commit(tree)
    print(f"# tree {tree} at {commit}; load {os.getloadavg()}", flush=True)
    if args.estate:
        runs = args.estate if args.runs < 0 else args.runs
        starts = tuple(f"restart-{i + 1}" for i in range(args.starts))
        others = tuple(t.resolve() for t in args.also_tree)
        measure_estate(
            kube, tree, lab, args.estate, args.points, runs, args.window, starts, others,
            args.steady_timeout,
        )  # fmt: skip
        if not args.keep:
            kube.etcd_delete_namespace(ESTATE_NAMESPACE)
    if args.night:
        for at_once in [int(x) for x in args.night_at_once.split(",") if x] or [0]:
            print(json.dumps(measure_night(kube, tree, args.night, at_once)), flush=True)
    for n in (int(s) for s in args.pending.split(",") if s):
        row = measure_pending(kube, tree, n, args.warmup, args.window, lab["dir"])
        print(json.dumps({"commit": commit, **row}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
