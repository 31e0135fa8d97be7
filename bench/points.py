"""Restore points at estate scale: what N VMGuardBackup objects cost etcd, the apiserver,
kubectl and the operator (issue "Estate scale", item 3; results in docs/scale.md).

Needs a running lab (``vmguard lab up``); uses its etcd, apiserver and kubectl only.

How the objects get there: writing 150,000 objects through the apiserver (create, then
the status subresource) takes most of an hour on a 2-core machine, so this benchmark
writes them the way the apiserver stores them — JSON under
``/registry/vmguard.io/vmguardbackups/<namespace>/<name>`` in etcd, in transactions of 128
puts — and lets the apiserver's watch cache pick them up from etcd, as it does for any
write. Each object is shaped like a completed VMGuardBackup of a two-disk VM as the catalog
sync and the operator write it (labels, kopf's diff-base annotation, managedFields,
spec, a full status with two conditions), so its stored size is that of a real one.

Then, per step of N (e.g. 15,000 / 50,000 / 150,000), it prints: etcd's database size,
the apiserver's RSS, ``kubectl get vmguardbackups`` (all, paginated as kubectl does) and
``-l vmguard.io/vm=…`` (one VM) wall times, and — with ``--operator`` — today's operator
(kopf, VMGuardBackup controller only) started against the namespace: its peak RSS, the time
until it has handled every object (its CPU goes quiet) and the LIST/WATCH requests it
made, read from the apiserver's own ``/metrics``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "points"
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
    "uuid": "6000C29a-1b2c-3d4e-5f60-718293a4b5c6",
    "backing": "[datastore1] app-0001/app-0001.vmdk",
    "changeId": "52 1f 3c 4d 5e 6f 70 81-92 a3 b4 c5 d6 e7 f8 09/1234",
}


def _lab() -> dict[str, Any]:
    lab_dir = Path(os.environ.get("VMGUARD_LAB_DIR", REPO / ".lab"))
    state = json.loads((lab_dir / "lab.json").read_text())
    state["dir"] = lab_dir
    return state


def point(vm: int, n: int, day0: float) -> tuple[str, dict[str, Any]]:
    """One completed VMGuardBackup: VM ``vm``'s ``n``-th daily point."""
    vm_uuid = str(uuid.UUID(int=vm + 1))
    name = f"app-{vm:05d}-{n:03d}"
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(day0 + n * 86400 + vm))
    done = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(day0 + n * 86400 + vm + 95))
    archive = f"{vm:016x}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(day0 + n * 86400))}-abcdefgh"
    labels = {
        "vmguard.io/policy": "gold",
        "vmguard.io/vm": vm_uuid,
        "vmguard.io/run": f"gold-{n:03d}",
        "vmguard.io/trigger": "schedule",
        "vmguard.io/vcenter": "vc1",
        "vmguard.io/repository": "main",
    }
    spec = {
        "vm": {"name": f"app-{vm:05d}", "instanceUuid": vm_uuid, "moref": f"vm-{vm + 100}"},
        "vcenterRef": {"name": "vc1"},
        "repositoryRef": {"name": "main"},
        "policyRef": {"name": "gold"},
        "mode": "auto",
    }
    condition = {
        "type": "Ready",
        "status": "True",
        "reason": "Completed",
        "message": f"archive {archive} committed",
        "lastTransitionTime": done,
        "observedGeneration": 1,
    }
    status = {
        "phase": "Completed",
        "archiveId": archive,
        "vm": spec["vm"],
        "vcenter": "vc1",
        "repository": "main",
        "modeUsed": "incremental",
        "modeReason": "changed blocks since the previous point (CBT)",
        "disks": [dict(DISK), dict(DISK, key=2001, label="Hard disk 2")],
        "totals": {k: 2 * DISK[k] for k in ("capacityBytes", "bytesRead", "bytesUploaded")},
        "startTime": started,
        "completionTime": done,
        "durationSeconds": 95.0,
        "snapshot": {"name": f"vmguard-{vm_uuid}", "moref": f"snapshot-{vm}-{n}"},
        "job": f"vmguard-backup-{name}",
        "transport": "nbd",
        "conditions": [condition, dict(condition, type="HooksRan", reason="NoHooks")],
        "observedGeneration": 1,
    }
    managed = [
        {
            "manager": "kopf",
            "operation": "Update",
            "apiVersion": "vmguard.io/v1alpha1",
            "time": done,
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:status": {"f:phase": {}, "f:archiveId": {}, "f:disks": {}}},
            "subresource": "status",
        }
    ]
    obj = {
        "apiVersion": "vmguard.io/v1alpha1",
        "kind": "VMGuardBackup",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "uid": str(uuid.uuid4()),
            "generation": 1,
            "creationTimestamp": started,
            "labels": labels,
            # As kopf leaves a handled object: its marker and its diff-base (the essence
            # it compares the next event with; ours includes status.phase, watched by
            # a field handler), serialised the way kopf does.
            "annotations": {
                "vmguard.io/kopf-managed": "yes",
                "vmguard.io/last-handled-configuration": json.dumps(
                    {
                        "spec": spec,
                        "metadata": {"labels": labels},
                        "status": {"phase": "Completed"},
                    },
                    sort_keys=True,
                    separators=(",", ":"),
                )
                + "\n",
            },
            "managedFields": managed,
        },
        "spec": spec,
        "status": status,
    }
    return name, obj


def reset(etcd: str) -> None:
    """Delete every object of the namespace straight from etcd."""
    prefix = f"/registry/vmguard.io/vmguardbackups/{NAMESPACE}/".encode()
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    body = {"key": base64.b64encode(prefix).decode(), "range_end": base64.b64encode(end).decode()}
    requests.post(f"{etcd}/v3/kv/deleterange", json=body, timeout=600).raise_for_status()


def fill(etcd: str, start: int, stop: int, per_vm: int, day0: float) -> int:
    """Write points ``start``..``stop`` (VM-major) into etcd; returns bytes written."""
    total = 0
    ops: list[dict[str, Any]] = []
    session = requests.Session()

    def flush() -> None:
        if ops:
            r = session.post(f"{etcd}/v3/kv/txn", json={"success": ops}, timeout=60)
            r.raise_for_status()
            ops.clear()

    for i in range(start, stop):
        name, obj = point(i // per_vm, i % per_vm, day0)
        value = json.dumps(obj, separators=(",", ":")).encode()
        total += len(value)
        key = f"/registry/vmguard.io/vmguardbackups/{NAMESPACE}/{name}".encode()
        ops.append(
            {
                "requestPut": {
                    "key": base64.b64encode(key).decode(),
                    "value": base64.b64encode(value).decode(),
                }
            }
        )
        if len(ops) == 128:
            flush()
    flush()
    return total


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed(argv: list[str], env: dict[str, str], tries: int = 3) -> tuple[float, str]:
    """Wall time of a command; a failed try (a LIST whose continue token expired under
    load) is retried and its time not counted."""
    for attempt in range(tries):
        t0 = time.monotonic()
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        if done.returncode == 0:
            return time.monotonic() - t0, done.stdout
        print(
            f"# {' '.join(argv[1:4])} failed ({attempt + 1}/{tries}): {done.stderr.strip()[:200]}",
            file=sys.stderr,
        )
    raise RuntimeError(f"{argv} failed {tries} times")


def _apiserver_requests(lab: dict[str, Any], env: dict[str, str]) -> dict[str, float]:
    """apiserver_request_total for vmguardbackups by verb, from the apiserver's /metrics."""
    _, text = _timed([_kubectl(lab), "get", "--raw", "/metrics"], env)
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{") and 'resource="vmguardbackups"' in line:
            verb = line.split('verb="', 1)[1].split('"', 1)[0]
            counts[verb] = counts.get(verb, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def _kubectl(lab: dict[str, Any]) -> str:
    cache = Path(os.environ.get("VMGUARD_CACHE_DIR", Path.home() / ".cache/vmguard"))
    return str(next(cache.glob("lab-v*/bin/kubectl")))


def measure_operator(lab: dict[str, Any], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Today's operator, VMGuardBackup controller only, against the namespace: until its CPU
    stays quiet for 10 s (every object handled) or ``timeout``."""
    before = _apiserver_requests(lab, env)
    log = open(lab["dir"] / "logs" / "points-operator.log", "w")  # noqa: SIM115
    argv = [sys.executable, "-m", "vmguard.cli", "operator", "--namespace", NAMESPACE]
    argv += ["--metrics-port", "-1", "--controllers", "backups"]
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    quiet_since, last_cpu, steady = None, 0.0, None
    peak = 0
    try:
        while time.monotonic() - t0 < timeout and proc.poll() is None:
            time.sleep(1.0)
            peak = max(peak, _rss_kib(proc.pid))
            cpu = _cpu_seconds(proc.pid)
            if cpu - last_cpu < 0.05:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= 10:
                    steady = quiet_since - t0
                    break
            else:
                quiet_since = None
            last_cpu = cpu
        hwm = _hwm_kib(proc.pid) if proc.poll() is None else peak
        cpu = _cpu_seconds(proc.pid) if proc.poll() is None else last_cpu
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    after = _apiserver_requests(lab, env)
    return {
        "steady_s": steady,
        "peak_rss_mib": max(peak, hwm) / 1024,
        "cpu_s": cpu,
        "exit": proc.returncode,
        "requests": {v: after.get(v, 0) - before.get(v, 0) for v in after},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", default="15000,50000,150000", help="object counts to reach")
    ap.add_argument("--per-vm", type=int, default=30, help="points per VM (5,000 VMs x 30)")
    ap.add_argument("--operator", action="store_true", help="also start today's operator")
    ap.add_argument("--operator-timeout", type=float, default=600.0)
    ap.add_argument(
        "--operator-max", type=int, default=50000, help="start the operator up to this many"
    )
    args = ap.parse_args()
    lab = _lab()
    env = dict(os.environ, KUBECONFIG=str(lab["dir"] / "kubeconfig"))
    kubectl = _kubectl(lab)
    etcd = f"http://127.0.0.1:{lab['ports']['etcd']}"
    api_pid = int((lab["dir"] / "run" / "kube-apiserver.pid").read_text().split()[0])
    subprocess.run(
        [kubectl, "apply", "-f", str(REPO / "crds")], env=env, check=True, capture_output=True
    )
    subprocess.run([kubectl, "create", "namespace", NAMESPACE], env=env, capture_output=True)
    reset(etcd)
    day0 = time.time() - args.per_vm * 86400
    done = 0
    rows = []
    for step in (int(s) for s in args.steps.split(",")):
        t0 = time.monotonic()
        stored = fill(etcd, done, step, args.per_vm, day0)
        fill_s = time.monotonic() - t0
        per_object = stored / max(step - done, 1)
        done = step
        # The watch cache has every object once a LIST served from it counts them all;
        # until it has caught up with etcd, LISTs fail with "Too large resource version".
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            try:
                _, out = _timed(
                    [
                        kubectl,
                        "get",
                        "vmguardbackups",
                        "-n",
                        NAMESPACE,
                        "--no-headers",
                        "-o",
                        "name",
                    ],
                    env,
                    tries=1,
                )
            except RuntimeError:
                time.sleep(5)
                continue
            if len(out.splitlines()) >= step:
                break
            time.sleep(5)
        caught_up_s = time.monotonic() - t0 - fill_s
        status = requests.post(f"{etcd}/v3/maintenance/status", json={}, timeout=30).json()
        get_all, out = _timed(
            [kubectl, "get", "vmguardbackups", "-n", NAMESPACE, "--no-headers"], env
        )
        one_vm = str(uuid.UUID(int=1))
        get_one, _ = _timed(
            [
                kubectl,
                "get",
                "vmguardbackups",
                "-n",
                NAMESPACE,
                "--no-headers",
                "-l",
                f"vmguard.io/vm={one_vm}",
            ],
            env,
        )
        row: dict[str, Any] = {
            "objects": step,
            "bytes_per_object": round(per_object),
            "fill_s": round(fill_s, 1),
            "watch_cache_caught_up_s": round(caught_up_s, 1),
            "etcd_db_mib": round(int(status.get("dbSize", 0)) / 2**20, 1),
            "apiserver_rss_mib": round(_rss_kib(api_pid) / 1024),
            "kubectl_get_all_s": round(get_all, 2),
            "kubectl_get_one_vm_s": round(get_one, 2),
        }
        if args.operator and step <= args.operator_max:
            row["operator"] = measure_operator(lab, env, args.operator_timeout)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
