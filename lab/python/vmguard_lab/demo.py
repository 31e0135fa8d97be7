"""``vmguard-lab demo`` (``make demo``): the product tour on the local lab.

Everything runs for real: the lab's kube-apiserver with vmguard's CRDs, the operator as a
process, proxy Jobs run by the lab's node agent, the vSphere simulator and MinIO. The
tour applies what a platform team would commit to Git — a VCenter, a VMGuardRepository
(encrypted), a fail-safe default policy and a tag-selected "gold" policy — then shows
the fail-safe backing up every VM, guest writes followed by incremental backups, a
restore to a new VM whose disks are checked against the backup, single files restored
from a block-level backup into S3, retention pruning old backups and GC freeing their
chunks, metrics and the coverage table, and ends with
``kubectl get vmguard``. Secret values come from the lab's state and are never printed.

The demo works in the namespace ``vmguard-demo`` (recreated on every run) and a bucket
of its own; the lab keeps running afterwards (``vmguard-lab down`` stops it).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from vmguard.api import GROUP, LABEL_POLICY, VERSION
from vmguard.api.kinds import BACKUP, POLICY, REPOSITORY, RESTORE, VCENTER
from vmguard_lab.lab import Lab
from vmguard_lab.procs import eventually, free_port

NAMESPACE = "vmguard-demo"
BUCKET = "vmguard-demo"
G, V = GROUP, VERSION
T = TypeVar("T")


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def wait(what: str, fn: Callable[[], T | None], timeout: float) -> T:
    try:
        return eventually(fn, timeout=timeout, what=what)
    except AssertionError as exc:
        raise SystemExit(f"demo: {exc}") from None


class Demo:
    def __init__(self, lab: Lab) -> None:
        from kubernetes import client, config

        self.lab = lab
        self.state = lab.state().data
        self.api = config.new_client_from_config(str(lab.paths.kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.env = dict(os.environ, KUBECONFIG=str(lab.paths.kubeconfig))
        self.operator: subprocess.Popen[bytes] | None = None

    # -- plumbing ------------------------------------------------------------------------
    def kubectl(self, *args: str, capture: bool = False, attempts: int = 1) -> str:
        """Run kubectl; a failure ends the demo with kubectl's own message. A read-only
        call may be given ``attempts``: the busy lab apiserver can refuse one briefly."""
        for attempt in range(1, attempts + 1):
            run = subprocess.run(
                [str(self.lab.paths.bin / "kubectl"), *args],
                env=self.env,
                stdout=subprocess.PIPE if capture else None,
                stderr=subprocess.PIPE,
                text=True,
            )
            if run.returncode == 0:
                return run.stdout if capture else ""
            if attempt < attempts:
                time.sleep(2)
        raise SystemExit(f"demo: kubectl {' '.join(args)}: {run.stderr.strip()}")

    def create(self, plural: str, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": f"{G}/{V}", "kind": kind, "metadata": {"name": name}, "spec": spec}
        obj: dict[str, Any] = self.custom.create_namespaced_custom_object(
            G, V, NAMESPACE, plural, body
        )
        return obj

    def items(self, plural: str) -> list[dict[str, Any]]:
        res = self.custom.list_namespaced_custom_object(G, V, NAMESPACE, plural)
        return list(res.get("items", []))

    def get(self, plural: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            G, V, NAMESPACE, plural, name
        )
        return obj

    def secret(self, name: str, data: dict[str, str]) -> None:
        self.core.create_namespaced_secret(
            NAMESPACE, {"metadata": {"name": name}, "stringData": data}
        )

    # -- steps ---------------------------------------------------------------------------
    def start_operator(self) -> None:
        log = self.lab.paths.logs / "demo-operator.log"
        self.metrics_port = free_port()
        env = dict(
            self.env,
            VMGUARD_PROXY_COMMAND=json.dumps([sys.executable, "-m", "vmguard.cli"]),
            VMGUARD_PROXY_LOCATOR=f"lab:{self.state['vsphere']['control_url']}",
        )
        with open(log, "ab") as out:
            self.operator = subprocess.Popen(
                [sys.executable, "-m", "vmguard.cli", "operator", "--namespace", NAMESPACE,
                 "--metrics-port", str(self.metrics_port), "--metrics-address", "127.0.0.1"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        print(f"    operator pid {self.operator.pid}, log {log}")

    def stop_operator(self) -> None:
        if self.operator is not None and self.operator.poll() is None:
            self.operator.terminate()
            try:
                self.operator.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                self.operator.wait()

    def fresh_namespace(self) -> None:
        from kubernetes import client

        try:
            self.core.delete_namespace(NAMESPACE)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
        else:
            print(f"    removing the previous run's namespace {NAMESPACE}")

            def gone() -> bool:
                try:
                    self.core.read_namespace(NAMESPACE)
                except client.ApiException as exc:
                    return exc.status == 404
                return False

            wait("the old namespace to go", gone, timeout=180)
        self.core.create_namespace({"metadata": {"name": NAMESPACE}})

    def fresh_bucket(self) -> None:
        from minio import Minio
        from minio.deleteobjects import DeleteObject

        m = self.state["minio"]
        s3 = Minio(m["endpoint"], m["access_key"], m["secret_key"], secure=False)
        if s3.bucket_exists(BUCKET):
            doomed = (DeleteObject(o.object_name) for o in s3.list_objects(BUCKET, recursive=True))
            for error in s3.remove_objects(BUCKET, doomed):
                raise SystemExit(f"demo: cannot empty bucket {BUCKET}: {error}")
        else:
            s3.make_bucket(BUCKET)

    def apply_what_git_holds(self) -> None:
        from vmguard.store import MasterKey

        vs, m = self.state["vsphere"], self.state["minio"]
        port = int(vs["sdk_url"].split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        creds = {"username": vs["username"], "password": vs["password"]}
        self.secret("vcenter-credentials", creds)
        s3 = {"accessKeyID": m["access_key"], "secretAccessKey": m["secret_key"]}
        self.secret("minio-credentials", s3)
        self.secret("repository-key", {"key": MasterKey.generate().secret.decode()})
        self.create(VCENTER.plural, VCENTER.kind, "lab", {
            "host": "127.0.0.1", "port": port,
            "credentialsSecretRef": {"name": "vcenter-credentials"},
            "tls": {"caBundle": Path(vs["ca"]).read_text()},
            "sweepInterval": "30s",
        })  # fmt: skip
        self.create(REPOSITORY.plural, REPOSITORY.kind, "minio", {
            "s3": {"endpoint": m["endpoint"], "bucket": BUCKET, "prefix": "repository",
                   "insecure": True},
            "credentialsSecretRef": {"name": "minio-credentials"},
            "encryption": {"keySecretRef": {"name": "repository-key"}},
            "gc": {"schedule": "* * * * *", "gracePeriod": "1m"},
            "verify": {"schedule": "* * * * *"},
        })  # fmt: skip
        common = {"vcenterRef": {"name": "lab"}, "repositoryRef": {"name": "minio"}}
        self.create(POLICY.plural, POLICY.kind, "fail-safe", {
            **common, "default": True,
            "schedule": {"cron": "0 1 * * *", "timeZone": "Europe/Berlin"},
            "retention": {"keepDaily": 7},
        })  # fmt: skip
        self.create(POLICY.plural, POLICY.kind, "gold", {
            **common, "priority": 100,
            "selector": {"tags": [{"category": "backup-tier", "name": "gold"}]},
            "schedule": {"cron": "* * * * *"},
            "retention": {"keepLast": 2},
        })  # fmt: skip
        print("    VCenter lab, VMGuardRepository minio (encrypted), policies fail-safe + gold")

    def swept(self) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            vc = self.get(VCENTER.plural, "lab")
            return vc if (vc.get("status") or {}).get("lastSweepTime") else None

        vc = wait("the first sweep", done, timeout=120)
        counts = vc["status"]["vms"]
        print(
            f"    {counts['discovered']} VMs: {counts['protected']} protected "
            f"({counts['protectedByDefault']} by the fail-safe), "
            f"{counts['unprotected']} unprotected"
        )
        return vc

    def backups_settle(self, want: Callable[[list[dict[str, Any]]], bool], timeout: float) -> None:
        last = ""

        def settled() -> bool:
            nonlocal last
            items = self.items(BACKUP.plural)
            phases = Counter((b.get("status") or {}).get("phase", "Pending") for b in items)
            line = ", ".join(f"{n} {p}" for p, n in sorted(phases.items()))
            if line != last:
                print(f"    VMGuardBackups: {line}", flush=True)
                last = line
            return want(items)

        wait("backups", settled, timeout=timeout)

    def first_backups(self, discovered: int) -> None:
        def all_done(items: list[dict[str, Any]]) -> bool:
            done = {
                (b["spec"].get("vm") or {}).get("moref")
                for b in items
                if (b.get("status") or {}).get("phase") == "Completed"
            }
            failed = [b for b in items if (b.get("status") or {}).get("phase") == "Failed"]
            if failed:
                err = failed[0]["status"].get("error") or {}
                raise SystemExit(f"demo: {failed[0]['metadata']['name']} failed: {err}")
            return len(done) >= discovered

        self.backups_settle(all_done, timeout=900)

    def incremental(self) -> tuple[str, dict[str, Any]]:
        from vmguard_lab.vsim import VSimControl

        vsim = VSimControl(self.state["vsphere"]["control_url"])
        gold = self.get(POLICY.plural, "gold")
        mine = [
            b for b in self.items(BACKUP.plural)
            if b["metadata"]["labels"].get(LABEL_POLICY) == "gold"
            and (b.get("status") or {}).get("phase") == "Completed"
        ]  # fmt: skip
        moref = mine[0]["status"]["vm"]["moref"]
        self.files_vm = next(
            b["status"]["vm"]["moref"] for b in mine if b["status"]["vm"]["moref"] != moref
        )
        self.put_filesystem(vsim, self.files_vm)
        vm = vsim.vm(moref)
        disk = vm.disks[0]
        self.writes = (moref, disk.key, (1 << 20, 200 << 20, disk.capacity - (64 << 10)))
        self.guest_writes(vsim)
        written = time.time()
        print(f"    guest writes: 3 x 64 KiB into {vm.name} ({moref}); gold runs every minute")
        print(f"    gold matches {gold['status'].get('matchedVMs')} VMs")

        def next_incremental() -> dict[str, Any] | None:
            for b in self.items(BACKUP.plural):
                st = b.get("status") or {}
                taken = (st.get("snapshot") or {}).get("createTime", "")
                if (st.get("vm") or {}).get("moref") != moref or st.get("phase") != "Completed":
                    continue
                # The first backup whose snapshot was taken after the writes.
                if taken and _epoch(taken) > written:
                    return b
            return None

        backup = wait("the next gold backup of the written VM", next_incremental, timeout=240)
        st = backup["status"]
        totals = st.get("totals") or {}
        print(
            f"    {backup['metadata']['name']}: {st['modeUsed']}, read "
            f"{totals.get('bytesRead', 0) / 2**20:.1f} MiB of a "
            f"{totals.get('capacityBytes', 0) / 2**20:.0f} MiB disk, uploaded "
            f"{totals.get('bytesUploaded', 0) / 2**20:.2f} MiB"
        )
        return moref, backup

    def guest_writes(self, vsim: Any) -> None:
        """New random bytes at the same three places of the written VM's first disk."""
        moref, key, offsets = self.writes
        for offset in offsets:
            vsim.write(moref, key, offset, os.urandom(64 << 10))

    def restore(self, moref: str, backup: dict[str, Any]) -> None:
        from vmguard_lab.vsim import VSimControl

        vsim = VSimControl(self.state["vsphere"]["control_url"])
        source = vsim.vm(moref)
        name = f"{source.name}-restored-{int(time.time())}"
        self.create(RESTORE.plural, RESTORE.kind, "restore-1", {
            "source": {"backupRef": {"name": backup["metadata"]["name"]}},
            "target": {"newVM": {"name": name, "powerOn": True}},
        })  # fmt: skip

        def done() -> dict[str, Any] | None:
            st = self.get(RESTORE.plural, "restore-1").get("status") or {}
            if st.get("phase") == "Failed":
                raise SystemExit(f"demo: the restore failed: {st.get('error')}")
            return st if st.get("phase") == "Completed" else None

        st = wait("the restore", done, timeout=300)
        new = st["result"]["vm"]["moref"]

        def digest(path: str) -> str:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
            return h.hexdigest()

        same = all(
            digest(a.path) == digest(b.path)
            for a, b in zip(source.disks, vsim.vm(new).disks, strict=True)
        )
        print(f"    new VM {name!r} = {new}; disks bit-identical to the backup: {same}")
        if not same:
            raise SystemExit("demo: the restored disks differ from the backed-up ones")

    def put_filesystem(self, vsim: Any, moref: str) -> None:
        """A GPT disk with an ext4 file system of known content behind ``moref``'s first
        disk, as if its guest had written it (the next backup reads it in full: a new
        disk image breaks the CBT chain)."""
        from vmguard_lab.images import DiskImageFactory, gpt_ext4

        factory = DiskImageFactory(self.lab.paths.cache / "images")
        self.image = factory.build(gpt_ext4(), 7, self.lab.paths.lab / "demo-ext4.img")
        vsim.put_image(moref, vsim.vm(moref).disks[0].key, str(self.image.path))
        self.files_at = time.time()
        files = [e for e in self.image.partition(2).manifest.values() if e.type == "file"]
        print(f"    and an ext4 file system with {len(files)} files onto {moref}'s first disk")

    def file_restore(self) -> None:
        """Back the file system up (the next gold run), then restore every file of its
        second partition into an S3 prefix and compare each with the image's source."""
        from minio import Minio

        def backed_up() -> dict[str, Any] | None:
            for b in self.items(BACKUP.plural):
                st = b.get("status") or {}
                taken = (st.get("snapshot") or {}).get("createTime", "")
                if (st.get("vm") or {}).get("moref") != self.files_vm:
                    continue
                if st.get("phase") == "Completed" and taken and _epoch(taken) > self.files_at:
                    return b
            return None

        backup = wait("a gold backup of the new file system", backed_up, timeout=240)
        disk = {"key": backup["status"]["disks"][0]["key"]}
        reason = backup["status"].get("modeReason", "")
        print(f"    {backup['metadata']['name']}: {backup['status']['modeUsed']} {reason}".rstrip())
        self.create(RESTORE.plural, RESTORE.kind, "files-1", {
            "source": {"backupRef": {"name": backup["metadata"]["name"]}},
            "target": {"files": {
                "disk": disk, "partition": 2, "paths": ["/**"],
                "to": {"s3": {"prefix": "restored-files"}},
            }},
        })  # fmt: skip

        def done() -> dict[str, Any] | None:
            st = self.get(RESTORE.plural, "files-1").get("status") or {}
            if st.get("phase") == "Failed":
                raise SystemExit(f"demo: the file restore failed: {st.get('error')}")
            return st if st.get("phase") == "Completed" else None

        st = wait("the file restore", done, timeout=300)
        m = self.state["minio"]
        s3 = Minio(m["endpoint"], m["access_key"], m["secret_key"], secure=False)
        expected = {
            path: entry
            for path, entry in self.image.partition(2).manifest.items()
            if entry.type == "file"
        }
        same = 0
        for path, entry in expected.items():
            got = s3.get_object(BUCKET, "restored-files/p2/" + path.lstrip("/"))
            try:
                body = got.read()
            finally:
                got.close()
                got.release_conn()
            same += hashlib.sha256(body).hexdigest() == entry.sha256
        print(
            f"    {st['result']['filesRestored']} entries restored into "
            f"s3://{BUCKET}/restored-files/p2/; {same} of {len(expected)} files equal the source"
        )
        if same != len(expected):
            raise SystemExit("demo: restored files differ from the file system's")

    def retention(self) -> None:
        """Gold keeps each VM's last 2 backups: older ones lose their VMGuardBackup and their
        archive; the next GC deletes the chunks no remaining archive references.

        Most chunks are shared (the first full backups, and the VM restored from the
        first writes, whose own backup holds them), so the written VM is written twice
        more at the same places: once two gold runs hold the third bytes, the backups
        that alone held the second ones are pruned, and a GC frees those chunks."""
        from vmguard_lab.vsim import VSimControl

        vsim = VSimControl(self.state["vsphere"]["control_url"])
        moref = self.writes[0]

        def gold_backups() -> list[tuple[float, str]]:
            """(snapshot time, name) of the written VM's completed gold backups."""
            done = []
            for b in self.items(BACKUP.plural):
                st = b.get("status") or {}
                taken = (st.get("snapshot") or {}).get("createTime")
                if (
                    (st.get("vm") or {}).get("moref") == moref
                    and st.get("phase") == "Completed"
                    and b["metadata"]["labels"].get(LABEL_POLICY) == "gold"
                    and taken
                ):
                    done.append((_epoch(taken), b["metadata"]["name"]))
            return done

        self.guest_writes(vsim)
        second = time.time()
        print(f"    guest writes again at the same 3 places of {moref}")
        wait(
            "a gold backup of the second writes",
            lambda: any(t > second for t, _ in gold_backups()),
            timeout=240,
        )
        self.guest_writes(vsim)
        third = time.time()
        print("    ... and once more, after a gold backup took the second writes")

        def second_pruned() -> bool:
            kept = gold_backups()
            return len(kept) >= 2 and all(t > third for t, _ in kept)

        wait("the backups holding the second writes to be pruned", second_pruned, 360)
        st = (self.get(POLICY.plural, "gold").get("status") or {}).get("retention") or {}
        events = self.core.list_namespaced_event(NAMESPACE, field_selector="reason=Pruned").items
        lines = sorted(e.message for e in events if e.message.startswith("Pruned vm"))
        for line in lines[:3]:
            print(f"    event: {line}")
        print(f"    ... {len(lines)} backups pruned so far, last at {st.get('lastPruneTime')}")
        since = time.time()

        def collected() -> dict[str, Any] | None:
            repo = self.get(REPOSITORY.plural, "minio").get("status") or {}
            gc = repo.get("lastGC") or {}
            fresh = gc.get("time") and _epoch(gc["time"]) > since
            return repo if fresh and gc.get("chunksDeleted", 0) > 0 else None

        repo = wait("a scheduled GC that frees the second writes' chunks", collected, timeout=240)
        gc, verify = repo["lastGC"], repo.get("lastVerify") or {}
        print(
            f"    GC at {gc['time']}: {gc.get('chunksDeleted', 0)} chunks deleted, "
            f"{gc.get('bytesFreed', 0) / 2**20:.1f} MiB freed"
        )
        print(
            f"    repository: {repo.get('archives')} archives, "
            f"{repo.get('storedBytes', 0) / 2**20:.1f} MiB stored, dedup "
            f"{repo.get('dedupRatio', 0):.1f}x; last verify {verify.get('time')}: "
            f"{verify.get('errors', 0)} errors in {verify.get('chunksChecked', 0)} chunks"
        )

    def coverage(self) -> None:
        argv = [sys.executable, "-m", "vmguard.cli", "status", "--namespace", NAMESPACE]
        print(subprocess.run(argv, env=self.env, check=True, capture_output=True, text=True).stdout)

    def metrics_excerpt(self) -> None:
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as rsp:
            text = rsp.read().decode()
        wanted = (
            "vmguard_vms_discovered",
            "vmguard_vms_unprotected",
            "vmguard_backups_total",
            "vmguard_repository_stored_bytes",
            "vmguard_repository_dedup_ratio",
        )
        for line in text.splitlines():
            if line.startswith(wanted):
                print(f"    {line}")


def run() -> int:
    lab = Lab()
    say("lab up: kube-apiserver + node agent, vSphere simulator, MinIO")
    lab.up()
    demo = Demo(lab)
    say("vmguard's CRDs")
    crds = lab.paths.repo / "crds"
    demo.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
    demo.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(crds))
    say(f"the operator, watching namespace {NAMESPACE}")
    demo.start_operator()
    try:
        demo.fresh_namespace()
        demo.fresh_bucket()
        say("what a platform team commits to Git")
        demo.apply_what_git_holds()
        say("the first sweep: every VM gets exactly one policy")
        vc = demo.swept()
        say("the fail-safe and the gold schedule back up every VM (proxy Jobs)")
        demo.first_backups(vc["status"]["vms"]["discovered"])
        say("guest writes, then the next gold run is incremental (CBT)")
        moref, backup = demo.incremental()
        say("restore that backup as a new VM")
        demo.restore(moref, backup)
        say("restore single files from a block-level backup")
        demo.file_restore()
        say("retention: gold keeps 2 backups per VM; GC frees what only pruned ones held")
        demo.retention()
        say("metrics (excerpt)")
        demo.metrics_excerpt()
        say(f"vmguard status -n {NAMESPACE} (also: kubectl vmguard status)")
        demo.coverage()
        say(f"kubectl get vmguard -n {NAMESPACE}")
        print(demo.kubectl("get", "vmguard", "-n", NAMESPACE, capture=True, attempts=3))
    finally:
        demo.stop_operator()
    print(f"The lab keeps running (KUBECONFIG={lab.paths.kubeconfig}); `make lab-down` stops it.")
    return 0
