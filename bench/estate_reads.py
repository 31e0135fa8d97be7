"""150,000 restore points from the user's and the operator's side: ``vmguard status``,
``kubectl get``, one policy's retention pass and one catalog sync pass (issue "Estate
scale", scope item 5; results in docs/scale.md). Not part of the test run.

Needs a running lab of its own (``VMGUARD_LAB_DIR=… vmguard-lab up``): its etcd,
apiserver, kubectl and MinIO. Run it with this tree's virtualenv::

    .venv/bin/python bench/estate_reads.py --vms 5000 --points 30 [--archives] \
        [--reads] [--retention web] [--catalog] [--prune web]

**The estate** (namespace ``estate-reads``): ``--vms`` VMs (synthetic records, no
simulator: nothing here talks to vSphere), spread over six name prefixes with one policy
each (``web``, ``db``, … as ``bench/estate.py``) and a default (fail-safe) policy for the
quarter of them no prefix matches; per VM a ProtectedVM with ``--points`` daily points and
last night's Completed VMGuardBackup run (within its TTL), written into etcd the way
``bench/estate.py`` writes them (its ``Kube.etcd_put``) and built with the operator's own
builders (``points.build_protected_vm``, ``builders.build_vmbackup``). Archive ids are
real ones (``names.new_archive_id`` of the VM's repository identity). The VCenter is at
a closed port; its status (``status.vmList`` and the counts a sweep writes) is built by
the sweeper's own functions (``summarise``, ``build_vm_list``) and written through the
status subresource, as a sweep would leave it. The repository is a real one in the lab's
MinIO (created with ``access.create_repository``, encrypted).

**--archives**: one manifest per point (``--vms`` times ``--points``) written into the
repository's bucket: a real ``ArchiveManifest`` (two disks, CBT state, stats, origin
labels, a 1.5 KB config blob), sealed by the repository (``encode_manifest``) and PUT
under its manifest name, ``--put-threads`` at a time. The disks' indexes and chunks are
not written: catalog sync reads no manifest of an archive an object names, and retention
reads only the manifest (``retire_archive``).

**--reads**: ``vmguard status -n estate-reads`` (table and ``-o json``), ``kubectl get
protectedvms`` and ``kubectl get vmguardbackups`` (table), each ``--repeat`` times: wall
time and the client's peak RSS (``ru_maxrss`` of the child).

**--retention POLICY**: in a fresh process (this tree's code), what the policy's
scheduler does for retention on each pass: ``PolicyRunner.history_objects`` (the
policy's runs, the namespace's ProtectedVMs, a stand-in per point) and then
``Retention.apply`` over them. With ``keepDaily: 35`` over 30 points nothing is due: the
cost of every pass. **--prune POLICY** does the same with the policy's ``keepDaily``
lowered to ``--points - 1`` in the worker's copy of the policy (the stored policy is not
changed): one point per VM falls out, its archive is retired in MinIO and the point taken
out of its ProtectedVM — what a night's pruning costs. Run it after ``--catalog``: it
changes the estate.

**--catalog**: in a fresh process, one ``catalog.sync`` pass of the repository.

For each worker: wall time per step, peak RSS of the process, apiserver requests by verb
and resource (its own ``apiserver_request_total``, minus the lab's baseline rate over the
same time) and MinIO requests by API (its ``minio_s3_requests_total``). Every row prints
the load average.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contextlib

from estate import PREFIXES, Kube, _delta, _lab, completed_run_status, estate_policies

REPO = Path(__file__).resolve().parent.parent
NS = "estate-reads"
BUCKET = "estate-reads"
MASTER_KEY = "estate bench master key, not a secret"
KEEP_DAILY = 35
GROUP = "vmguard.io/v1alpha1"


# -- The estate -----------------------------------------------------------------------


def records(n: int) -> list[Any]:
    """``n`` VMs: six name prefixes and, for every fourth, a name no policy selects."""
    from vmguard.vsphere.records import VMRecord

    names = (*PREFIXES, "app", "app")
    out = []
    for i in range(n):
        prefix = names[i % len(names)]
        out.append(
            VMRecord(
                moref=f"vm-{i + 100}",
                name=f"{prefix}-{i:05d}",
                instance_uuid=str(uuid.uuid4()),
                power_state="poweredOn",
                folder_path=f"/dc1/vm/{prefix}",
                host=f"host-{i % 50}",
                datastores=(f"datastore-{i % 100}",),
            )
        )
    return out


def s3_spec(lab: dict[str, Any]) -> dict[str, Any]:
    return {"endpoint": lab["minio"]["endpoint"], "bucket": BUCKET, "insecure": True}


def setup(kube: Kube, lab: dict[str, Any], hour: int) -> list[dict[str, Any]]:
    """Namespace, Secrets, VCenter (closed port), repository (MinIO, created), policies;
    returns the policies as stored."""
    from minio import Minio

    from vmguard.controller.kube.access import create_repository
    from vmguard.errors import RepositoryExistsError
    from vmguard_lab.procs import free_port

    m = lab["minio"]
    s3 = Minio(m["endpoint"], access_key=m["access_key"], secret_key=m["secret_key"], secure=False)
    if not s3.bucket_exists(BUCKET):
        s3.make_bucket(BUCKET)
    repo_spec = {
        "s3": s3_spec(lab),
        "credentialsSecretRef": {"name": "s3"},
        "encryption": {"keySecretRef": {"name": "repo-key"}},
    }
    creds = {"VMGUARD_S3_ACCESS_KEY": m["access_key"], "VMGUARD_S3_SECRET_KEY": m["secret_key"]}
    with contextlib.suppress(RepositoryExistsError):
        create_repository(repo_spec, creds, MASTER_KEY.encode())
    policies = estate_policies(NS, hour, keep_daily=KEEP_DAILY)
    kube.run("create", "namespace", NS, check=False)
    kube.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "vc-creds", "namespace": NS},
                "stringData": {"username": "bench@vsphere.local", "password": uuid.uuid4().hex},
            },
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "s3", "namespace": NS},
                "stringData": {
                    "accessKeyID": m["access_key"],
                    "secretAccessKey": m["secret_key"],
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "repo-key", "namespace": NS},
                "stringData": {"key": MASTER_KEY},
            },
            {
                "apiVersion": GROUP,
                "kind": "VCenter",
                "metadata": {"name": "vc1", "namespace": NS},
                "spec": {
                    "host": "127.0.0.1",
                    "port": free_port(),
                    "credentialsSecretRef": {"name": "vc-creds"},
                    "tls": {"insecureSkipVerify": True},
                },
            },
            {
                "apiVersion": GROUP,
                "kind": "VMGuardRepository",
                "metadata": {"name": "main", "namespace": NS},
                "spec": repo_spec,
            },
            *policies,
        ]
    )
    out = []
    for p in policies:
        got = kube.run("get", "vmprotectionpolicies", p["metadata"]["name"], "-n", NS, "-o", "json")
        out.append(json.loads(got))
    return out


def sweep_status(vms: list[Any], policies: list[dict[str, Any]]) -> dict[str, Any]:
    """The VCenter status a sweep of ``vms`` writes (the sweeper's own functions)."""
    from vmguard.api import format_time
    from vmguard.controller.vcenter.sweeper import summarise
    from vmguard.controller.vcenter.vmlist import build_vm_list

    result, _matched = summarise("vc1", vms, policies)
    unprotected = sum(1 for a in result.assignments if a.policy is None)
    by_default = sum(1 for a in result.assignments if a.reason == "Default")
    now = dt.datetime.now(dt.UTC)
    return {
        "reachable": True,
        "version": "8.0.3",
        "vms": {
            "discovered": len(vms),
            "protected": len(vms) - unprotected,
            "protectedByDefault": by_default,
            "unprotected": unprotected,
            "consolidationNeeded": 0,
        },
        "lastSweepTime": format_time(now),
        "lastSweepDurationSeconds": 8,
        "nextSweepTime": format_time(now + dt.timedelta(minutes=15)),
        "vmList": build_vm_list(result.assignments),
    }


CONFIG_BLOB = json.dumps({"hardware": {"cpus": 2, "memoryMB": 4096}, "pad": "x" * 1400}).encode()


def estate(
    vms: list[Any], policies: list[dict[str, Any]], per_vm: int, hour: int
) -> tuple[list[tuple[str, dict[str, Any]]], list[Any], int]:
    """(etcd key, object) of every ProtectedVM and last night's run; the manifests of all
    points; the ProtectedVMs' JSON bytes. Built with the operator's builders."""
    from vmguard.api import format_time
    from vmguard.controller.kube import points
    from vmguard.controller.kube.schedule import parse
    from vmguard.controller.policy.builders import build_vmbackup
    from vmguard.controller.vcenter.sweeper import summarise
    from vmguard.store import names
    from vmguard.store.archive import (
        ArchiveManifest,
        CbtState,
        DiskRecord,
        TransferStats,
        VmIdentity,
    )
    from vmguard.store.lineage import (
        BACKUP_UID_LABEL,
        ORIGIN_NAMESPACE,
        ORIGIN_POLICY,
        ORIGIN_VMBACKUP,
    )

    result, _ = summarise("vc1", vms, policies)
    policy_of = {a.vm.instance_uuid: a.policy for a in result.assignments}
    by_name = {p["metadata"]["name"]: p for p in policies}
    objective = parse(f"0 {hour} * * *").default_rpo()
    now = dt.datetime.now(dt.UTC)
    newest = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    if newest > now:
        newest -= dt.timedelta(days=1)
    stats = TransferStats(
        logical_bytes=64 << 30,
        bytes_read=700 << 20,
        bytes_changed=700 << 20,
        bytes_stored=192 << 20,
        chunks_new=48,
        chunks_reused=16336,
        compressibility=0.27,
    )
    items: list[tuple[str, dict[str, Any]]] = []
    manifests: list[Any] = []
    stored = 0
    for vm in vms:
        policy = by_name[policy_of[vm.instance_uuid] or "fail-safe"]
        pname = policy["metadata"]["name"]
        ident = VmIdentity(
            f"vc1:{vm.instance_uuid}", vm.name, vm.instance_uuid, "", vm.moref, "vc1"
        )
        key = points.ProtectedVMKey(NS, "vc1", vm.instance_uuid)
        pts: list[dict[str, Any]] = []
        run_obj = None
        parent = None
        for n in reversed(range(per_vm)):  # oldest first: each names its parent
            at = newest - dt.timedelta(days=n)
            archive = names.new_archive_id(ident.id, at)
            done = at + dt.timedelta(seconds=95)
            mode = "full" if n == per_vm - 1 else "incremental"
            backup_uid = str(uuid.uuid4())
            labels = {
                BACKUP_UID_LABEL: backup_uid,
                "quiesced": "false",
                "transport": "nbd",
                ORIGIN_NAMESPACE: NS,
                ORIGIN_POLICY: pname,
            }
            pt: dict[str, Any] = {
                "archiveId": archive,
                "repository": "main",
                "time": format_time(at),
                "mode": mode,
                "bytes": 201326592,
                "policy": pname,
            }
            if n == 0:
                run_obj = build_vmbackup(policy, vm, at, "schedule")
                run_obj["metadata"].update(
                    uid=backup_uid, generation=1, creationTimestamp=format_time(at)
                )
                labels[ORIGIN_VMBACKUP] = run_obj["metadata"]["name"]
                pt["backup"] = run_obj["metadata"]["name"]
                run_obj["status"] = completed_run_status(run_obj, archive, at, done)
            disks = tuple(
                DiskRecord(
                    key=str(2000 + d),
                    label=f"Hard disk {d + 1}",
                    length=64 << 30,
                    index=names.index_name(archive, d),
                    index_hash="0" * 64,
                    cbt=CbtState(
                        f"6000C29{d}-{vm.instance_uuid[:8]}",
                        f"[datastore-1] {vm.name}/{vm.name}_{d}.vmdk",
                        64 << 30,
                        f"52 7c 1e {n:02d}/{d + 1}",
                    ),
                    stats=stats,
                )
                for d in range(2)
            )
            manifests.append(
                ArchiveManifest(
                    archive_id=archive,
                    vm=ident,
                    disks=disks,
                    started=at,
                    finished=done,
                    parent=parent,
                    mode=mode,  # type: ignore[arg-type]
                    mode_reason="" if parent is None else f"incremental from {parent}",
                    config_format="vmguard-vm-config-v1",
                    config_blob=CONFIG_BLOB,
                    carried_checked=True,
                    labels=labels,
                    stats=stats + stats,
                )
            )
            parent = archive
            pts.append(pt)
        obj = points.build_protected_vm(key, vm.name)
        obj["metadata"].update(
            uid=str(uuid.uuid4()), generation=1, creationTimestamp=pts[0]["time"]
        )
        status: dict[str, Any] = {
            "vm": {"instanceUuid": vm.instance_uuid, "moref": vm.moref, "name": vm.name},
            "vcenter": "vc1",
            "points": points.newest_first(pts),  # type: ignore[arg-type]
        }
        rpo = points.rpo_of(newest + dt.timedelta(seconds=95), objective, now)
        status["rpo"] = rpo
        status["conditions"] = points.rpo_condition([], rpo, 1)
        obj["status"] = points.derived(status, 1)  # type: ignore[arg-type]
        items.append((f"/registry/vmguard.io/protectedvms/{NS}/{key.name}", obj))
        stored += len(json.dumps(obj))
        if run_obj is not None:
            name = run_obj["metadata"]["name"]
            items.append((f"/registry/vmguard.io/vmguardbackups/{NS}/{name}", run_obj))
    return items, manifests, stored


def open_store(lab: dict[str, Any]) -> Any:
    from vmguard.controller.kube.access import open_repository_blocking

    m = lab["minio"]
    creds = {"VMGUARD_S3_ACCESS_KEY": m["access_key"], "VMGUARD_S3_SECRET_KEY": m["secret_key"]}
    spec = {"s3": s3_spec(lab)}
    return open_repository_blocking(spec, creds, MASTER_KEY.encode())


def write_manifests(lab: dict[str, Any], manifests: list[Any], threads: int) -> dict[str, Any]:
    """PUT every manifest, ``threads`` at a time; returns timing."""
    from vmguard.store import names

    repo = open_store(lab)
    sizes = [0]

    def put(m: Any) -> None:
        blob = repo.encode_manifest(m)
        repo.backend.put(names.manifest_name(m.archive_id), blob)
        sizes.append(len(blob))

    t0 = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        for done, _ in enumerate(pool.map(put, manifests), 1):
            if done % 10000 == 0:
                rate = done / (time.monotonic() - t0)
                print(f"# {done} manifests, {rate:.0f}/s, load {os.getloadavg()}", flush=True)
    took = time.monotonic() - t0
    return {
        "manifests_written": len(manifests),
        "put_threads": threads,
        "write_s": round(took),
        "puts_per_s": round(len(manifests) / took),
        "manifest_bytes_avg": round(sum(sizes) / max(len(manifests), 1)),
        "load": os.getloadavg(),
    }


# -- Measuring ------------------------------------------------------------------------


class MinioMetrics:
    """The lab MinIO's own request counters (``/minio/v2/metrics/cluster``, with the
    bearer token MinIO's Prometheus support takes: a JWT signed with the root secret)."""

    def __init__(self, lab: dict[str, Any]) -> None:
        import jwt

        m = lab["minio"]
        claims = {"exp": int(time.time()) + 86400, "sub": m["access_key"], "iss": "prometheus"}
        token = jwt.encode(claims, m["secret_key"], algorithm="HS512")
        self.url = f"http://{m['endpoint']}/minio/v2/metrics/cluster"
        self.headers = {"Authorization": f"Bearer {token}"}

    def requests_by(self) -> dict[str, float]:
        text = requests.get(self.url, headers=self.headers, timeout=60).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("minio_s3_requests_total{"):
                api = line.split('api="', 1)[1].split('"', 1)[0]
                out[api] = out.get(api, 0.0) + float(line.rsplit(" ", 1)[1])
        return out


def baseline(kube: Kube, seconds: float) -> dict[str, float]:
    """Requests per second by verb and resource that the lab makes by itself."""
    r0 = kube.requests_by()
    time.sleep(seconds)
    return {k: v / seconds for k, v in _delta(kube.requests_by(), r0).items()}


def timed_client(argv: list[str], env: dict[str, str]) -> tuple[float, int, int]:
    """(wall seconds, peak RSS MiB, stdout bytes) of one client run, in a fresh Python
    that only waits for it (so ``ru_maxrss`` of its children is this client's)."""
    code = (
        "import json,resource,subprocess,sys,time\n"
        "t=time.monotonic();p=subprocess.run(sys.argv[1:],capture_output=True)\n"
        "w=time.monotonic()-t\n"
        "if p.returncode: sys.exit(p.stderr.decode()[-500:])\n"
        "print(json.dumps([w,resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
        "len(p.stdout)]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"{argv[:3]}: {done.stderr[-500:]}")
    wall, kib, size = json.loads(done.stdout)
    return wall, round(kib / 1024), size


def measure_reads(kube: Kube, repeat: int) -> list[dict[str, Any]]:
    vmguard = str(REPO / ".venv/bin/vmguard")
    clients = {
        "vmguard status": [vmguard, "status", "-n", NS],
        "vmguard status -o json": [vmguard, "status", "-n", NS, "-o", "json"],
        "kubectl get protectedvms": [kube.kubectl, "get", "protectedvms", "-n", NS],
        "kubectl get vmguardbackups": [kube.kubectl, "get", "vmguardbackups", "-n", NS],
    }
    rows = []
    for what, argv in clients.items():
        for i in range(repeat):
            wall, rss, size = timed_client(argv, kube.env)
            row = {
                "client": what,
                "run": i + 1,
                "wall_s": round(wall, 2),
                "peak_rss_mib": rss,
                "output_bytes": size,
                "load": os.getloadavg(),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


WORKER = r"""
import asyncio, datetime as dt, json, logging, sys, time
sys.path.insert(0, sys.argv[3])
from vmguard.controller.kube.kubeapi import KubeAPI, load_config

async def retention(api, ns, name, keep_daily):
    from kubernetes import client
    from vmguard.controller.kube.sweeps import LatestSweeps
    from vmguard.controller.policy.runs import PolicyRunner
    policy = client.CustomObjectsApi().get_namespaced_custom_object(
        "vmguard.io", "v1alpha1", ns, "vmprotectionpolicies", name)
    if keep_daily:
        policy["spec"]["retention"] = {"keepDaily": keep_daily}
    runner = PolicyRunner(api, policy, LatestSweeps(), asyncio.Event(), False,
                          logging.getLogger("bench"))
    events = []
    t0 = time.monotonic()
    runs, expired = await runner.history_objects(ns, name)
    t1 = time.monotonic()
    pruned = await runner.retention.apply(
        api, policy, runs, lambda r, m, w: events.append(r), dt.datetime.now(dt.UTC),
        expired=expired)
    t2 = time.monotonic()
    return {"policy": name, "history_entries": len(runs) + len(expired),
            "runs": len(runs),
            "kept": runner.retention.kept, "pruned": len(pruned),
            "problem": runner.retention.problem, "events": len(events),
            "history_s": round(t1 - t0, 2), "retention_apply_s": round(t2 - t1, 2)}

def list_only(ns, lab_dir, bucket, key):
    # The catalog pass's S3 listing alone (``Repository.list_archives``), timed apart.
    from vmguard.controller.kube.access import open_repository_blocking
    m = json.loads(open(lab_dir + "/lab.json").read())["minio"]
    creds = {"VMGUARD_S3_ACCESS_KEY": m["access_key"], "VMGUARD_S3_SECRET_KEY": m["secret_key"]}
    spec = {"s3": {"endpoint": m["endpoint"], "bucket": bucket, "insecure": True}}
    t0 = time.monotonic()
    repo = open_repository_blocking(spec, creds, key.encode())
    t1 = time.monotonic()
    refs = repo.list_archives()
    return {"archives_listed": len(refs), "open_s": round(t1 - t0, 2),
            "list_archives_s": round(time.monotonic() - t1, 2)}

async def catalog(api, ns):
    from kubernetes import client
    from vmguard.controller.repository.catalog import sync
    repo = client.CustomObjectsApi().get_namespaced_custom_object(
        "vmguard.io", "v1alpha1", ns, "vmguardrepositories", "main")
    t0 = time.monotonic()
    report = await sync(api, repo, lambda o, r, m, w: None)
    return {"catalog_pass_s": round(time.monotonic() - t0, 2),
            **{k: len(v) for k, v in vars(report).items()}}

async def main():
    load_config()
    api = KubeAPI()
    what = sys.argv[1]
    if what == "catalog":
        row = await catalog(api, sys.argv[2])
    elif what == "list":
        row = list_only(sys.argv[2], *sys.argv[4:7])
    else:
        _, name, keep = what.split(":")
        row = await retention(api, sys.argv[2], name, int(keep))
    # VmHWM, not ru_maxrss: Linux keeps in ru_maxrss the peak of the mm before exec,
    # i.e. of the bench's own process this one was forked from.
    hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    row["worker_peak_rss_mib"] = round(int(hwm.split()[1]) / 1024)
    print(json.dumps(row))

asyncio.run(main())
"""


def measure_worker(
    kube: Kube, minio: MinioMetrics, base: dict[str, float], what: str
) -> dict[str, Any]:
    """One worker run (``catalog`` or ``retention:POLICY:KEEP``) with the requests it
    caused at the apiserver (minus the lab's baseline) and at MinIO."""
    argv = [str(REPO / ".venv/bin/python"), "-c", WORKER, what, NS, str(REPO / "operator")]
    argv += [str(_lab()["dir"]), BUCKET, MASTER_KEY]
    r0, m0, t0 = kube.requests_by(), minio.requests_by(), time.monotonic()
    done = subprocess.run(argv, env=kube.env, capture_output=True, text=True, cwd=REPO)
    took = time.monotonic() - t0
    r1, m1 = kube.requests_by(), minio.requests_by()
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    row = json.loads(done.stdout.strip().splitlines()[-1])
    caused = {k: round(v - base.get(k, 0.0) * took) for k, v in _delta(r1, r0).items()}
    caused = {k: v for k, v in sorted(caused.items(), key=lambda kv: -kv[1]) if v > 0}
    s3 = {k: round(v) for k, v in sorted(_delta(m1, m0).items(), key=lambda kv: -kv[1])}
    s3.pop("metrics", None)
    return {
        "worker": what,
        **row,
        "process_wall_s": round(took, 1),
        "apiserver_requests": sum(caused.values()),
        "apiserver_by": caused,
        "minio_requests": sum(s3.values()),
        "minio_by": s3,
        "load": os.getloadavg(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vms", type=int, default=5000)
    ap.add_argument("--points", type=int, default=30, help="daily points per VM")
    ap.add_argument("--reuse", action="store_true", help="measure the estate already written")
    ap.add_argument("--archives", action="store_true", help="write every point's manifest")
    ap.add_argument("--put-threads", type=int, default=16)
    ap.add_argument("--reads", action="store_true", help="time the user-facing reads")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--retention", action="append", default=[], help="policy: a pass")
    ap.add_argument("--catalog", action="store_true", help="one catalog sync pass")
    ap.add_argument("--prune", action="append", default=[], help="policy: a pruning pass")
    args = ap.parse_args()
    lab = _lab()
    kube = Kube(lab)
    print(f"# load {os.getloadavg()}", flush=True)
    if not args.reuse:
        kube.run("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        kube.etcd_delete_namespace(NS)
        hour = (time.gmtime().tm_hour - 14) % 24  # last night's run: within its TTL
        policies = setup(kube, lab, hour)
        vms = records(args.vms)
        items, manifests, stored = estate(vms, policies, args.points, hour)
        t0 = time.monotonic()
        kube.etcd_put(items)
        pvms = sum(1 for k, _ in items if "/protectedvms/" in k)
        while (
            kube.count("protectedvms", NS) < pvms
            or kube.count("vmguardbackups", NS) < len(items) - pvms
        ):
            time.sleep(2)  # the watch cache catches up with etcd
        patch_file = lab["dir"] / "estate-reads-vcenter-status.json"
        patch_file.write_text(json.dumps({"status": sweep_status(vms, policies)}))
        kube.run(
            "patch", "vcenters", "vc1", "-n", NS, "--subresource=status", "--type=merge",
            "--patch-file", str(patch_file),
        )  # fmt: skip
        status = requests.post(f"{kube.etcd}/v3/maintenance/status", json={}, timeout=30)
        row = {
            "vms": len(vms),
            "protectedvms": pvms,
            "points": pvms * args.points,
            "runs": len(items) - pvms,
            "protectedvm_json_bytes_avg": round(stored / max(pvms, 1)),
            "written_and_cached_s": round(time.monotonic() - t0),
            "etcd_db_mib": round(int(status.json().get("dbSize", 0)) / 2**20),
            "load": os.getloadavg(),
        }
        print(json.dumps(row), flush=True)
        if args.archives:
            print(json.dumps(write_manifests(lab, manifests, args.put_threads)), flush=True)
        del items, manifests
    if args.reads:
        measure_reads(kube, args.repeat)
    if args.retention or args.catalog or args.prune:
        minio = MinioMetrics(lab)
        base = baseline(kube, 30.0)
        for name in args.retention:
            row = measure_worker(kube, minio, base, f"retention:{name}:0")
            print(json.dumps(row), flush=True)
        if args.catalog:
            print(json.dumps(measure_worker(kube, minio, base, "catalog")), flush=True)
            print(json.dumps(measure_worker(kube, minio, base, "list")), flush=True)
        for name in args.prune:
            row = measure_worker(kube, minio, base, f"retention:{name}:{args.points - 1}")
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
