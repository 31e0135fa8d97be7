"""``vmguard-lab up | down | status | env``: the local lab of real peers.

``up`` builds what is missing (once, cached), then starts, in order: etcd,
kube-apiserver, kube-controller-manager, kube-scheduler, the lab node agent, two
independent MinIOs (the second is where copies go) and the vSphere simulator — each on
127.0.0.1, on ports chosen at the first ``up`` and kept in ``<lab>/lab.json`` (mode
0600) so that later calls find the same lab. ``up`` is idempotent: a component already
running is left alone, a dead one is restarted. ``down`` stops exactly the processes
recorded in the lab's pid files.

A test that needs pods spread over several nodes adds node agents of its own
(:meth:`Lab.add_node`) and removes them when it ends (:meth:`Lab.remove_node`); ``down``
removes any still running, and ``up`` deletes the Node of an added agent that no longer
runs (a session that crashed), so the scheduler never binds a pod to a node nobody serves.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmguard_lab import build
from vmguard_lab.errors import LabError
from vmguard_lab.imaging import tools as image_tools
from vmguard_lab.kube import KUBERNETES_VERSION, LAB_NODE_LABEL, NODE_NAME, KubeControlPlane
from vmguard_lab.minio import ensure_bucket, start_minio
from vmguard_lab.paths import LabPaths
from vmguard_lab.pki import LabCA
from vmguard_lab.procs import Supervisor, free_port, wait_until

PORT_NAMES = (
    "etcd",
    "etcd-peer",
    "apiserver",
    "controller-manager",
    "scheduler",
    "minio",
    "minio-console",
    "minio2",
    "minio2-console",
    "vsphere-sdk",
    "vsphere-control",
    "kubelet",
)
# Start order; ``down`` stops in reverse.
PROCESSES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "node-agent",
    "minio",
    "minio2",
    "vsphere",
)
ADDED_NODE_AGENT = "node-agent-"
"""Prefix of the supervisor's name of a node agent :meth:`Lab.add_node` started."""
SECOND_MINIO = "minio2"
"""The second, independent MinIO: where the lab's copies (issue 17) go."""
DEFAULT_BUCKET = "vmguard"


GUEST_USERNAME = "vmguard-guest"
"""The account of the lab's VM guests (StartProgramInGuest; lab/vsphere/guest.go)."""


@dataclass
class LabState:
    """What ``lab.json`` holds: ports and the per-lab credentials."""

    data: dict[str, Any]

    @classmethod
    def load_or_create(cls, paths: LabPaths) -> LabState:
        if paths.state_file.exists():
            data = json.loads(paths.state_file.read_text())
            # The lab guest's account (labs made before it existed have none yet).
            data["vsphere"].setdefault("guest_username", GUEST_USERNAME)
            data["vsphere"].setdefault("guest_password", secrets.token_urlsafe(18))
            # The second MinIO (labs made before it existed have none yet).
            for name in ("minio2", "minio2-console"):
                data["ports"].setdefault(name, free_port())
            data.setdefault(SECOND_MINIO, _minio_credentials("lab2-"))
            return cls(data)
        data = {
            "ports": {name: free_port() for name in PORT_NAMES},
            "minio": _minio_credentials("lab-"),
            SECOND_MINIO: _minio_credentials("lab2-"),
            "vsphere": {
                "username": "lab@vsphere.local",
                "password": secrets.token_urlsafe(18),
                "guest_username": GUEST_USERNAME,
                "guest_password": secrets.token_urlsafe(18),
            },
        }
        return cls(data)

    def save(self, paths: LabPaths) -> None:
        tmp = paths.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True))
        tmp.chmod(0o600)
        os.replace(tmp, paths.state_file)

    @property
    def ports(self) -> dict[str, int]:
        return dict(self.data["ports"])


def _minio_credentials(prefix: str) -> dict[str, str]:
    return {"access_key": prefix + secrets.token_hex(6), "secret_key": secrets.token_urlsafe(24)}


def _say(msg: str) -> None:
    print(f"[lab] {msg}", file=sys.stderr, flush=True)


# Programs the lab itself needs (the image factory's own are in imaging.tools.PACKAGES).
LAB_TOOLS = {
    "nbdkit": "nbdkit",
    "nbdcopy": "libnbd-bin",
    "qemu-img": "qemu-utils",
    "unshare": "util-linux",
    "zstd": "zstd",
    # `promtool check/test rules` over the chart's alert rules (tests/charts).
    "promtool": "prometheus",
}


def check_tools(paths: LabPaths) -> None:
    """Fail with the Debian packages to install when a tool the lab needs is missing."""
    wanted = {**LAB_TOOLS, **image_tools.PACKAGES}
    missing = sorted({pkg for tool, pkg in wanted.items() if image_tools.find(tool) is None})
    try:
        import nbd  # noqa: F401
    except ImportError:
        missing.append("python3-libnbd")
    if missing:
        raise LabError(
            "missing Debian packages: "
            + " ".join(missing)
            + " (`make deps` installs them, or apt-get install them)"
        )


class Lab:
    def __init__(self, paths: LabPaths | None = None) -> None:
        self.paths = paths or LabPaths.default()
        self.sup = Supervisor(self.paths.run, self.paths.logs)

    def state(self) -> LabState:
        if not self.paths.state_file.exists():
            raise LabError(f"no lab in {self.paths.lab}: run `vmguard-lab up`")
        return LabState(json.loads(self.paths.state_file.read_text()))

    def up(self, vms: int = 24, disk_capacity: int = 1 << 30) -> LabState:
        check_tools(self.paths)
        self.paths.ensure()
        bins = build.ensure_built(self.paths)
        state = LabState.load_or_create(self.paths)
        state.save(self.paths)
        ports = state.ports
        kube = KubeControlPlane(self.paths, self.sup, ports)
        _say(f"Kubernetes {KUBERNETES_VERSION} on {kube.server}")
        kube.start(bins)
        self._node_agent(kube, ports)
        self._forget_added_nodes()
        _say(f"MinIO on http://127.0.0.1:{ports['minio']}")
        start_minio(
            self.paths,
            self.sup,
            bins["minio"],
            ports["minio"],
            ports["minio-console"],
            state.data["minio"]["access_key"],
            state.data["minio"]["secret_key"],
        )
        state.data["minio"]["endpoint"] = f"127.0.0.1:{ports['minio']}"
        ensure_bucket(
            state.data["minio"]["endpoint"],
            state.data["minio"]["access_key"],
            state.data["minio"]["secret_key"],
            DEFAULT_BUCKET,
        )
        self._second_minio(bins, state)
        self._vsphere(bins, state, vms, disk_capacity)
        state.data["kubernetes"] = {
            "server": kube.server,
            "kubeconfig": str(self.paths.kubeconfig),
            "ca": str(kube.ca.cert_path),
            "node": NODE_NAME,
        }
        state.save(self.paths)
        return state

    def _second_minio(self, bins: dict[str, Path], state: LabState) -> None:
        """The copies' MinIO: the same binary, its own port, data and root credentials."""
        ports = state.ports
        creds = state.data[SECOND_MINIO]
        _say(f"second MinIO on http://127.0.0.1:{ports['minio2']}")
        start_minio(
            self.paths,
            self.sup,
            bins["minio"],
            ports["minio2"],
            ports["minio2-console"],
            creds["access_key"],
            creds["secret_key"],
            name=SECOND_MINIO,
        )
        creds["endpoint"] = f"127.0.0.1:{ports['minio2']}"
        ensure_bucket(creds["endpoint"], creds["access_key"], creds["secret_key"], DEFAULT_BUCKET)

    def _node_agent(self, kube: KubeControlPlane, ports: dict[str, int]) -> None:
        # The kubelet's log API (vmguard_lab.podlogs); a lab made before it has no port yet.
        kubelet_port = ports.setdefault("kubelet", free_port())
        self._start_node_agent(
            kube, NODE_NAME, "node-agent", "node", self.paths.lab / "node", kubelet_port
        )

    def _start_node_agent(
        self,
        kube: KubeControlPlane,
        node: str,
        process: str,
        who: str,
        state_dir: Path,
        kubelet_port: int,
    ) -> None:
        """Start the agent of Node ``node`` as the supervisor's ``process``, with the
        kubeconfig of ``who`` and its pods under ``state_dir``; wait until it is Ready."""
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
        env["VMGUARD_REPO"] = str(self.paths.repo)
        env["VMGUARD_LAB_DIR"] = str(self.paths.lab)
        serving = kube.ca.issue(f"{who}-kubelet", node, hosts=("127.0.0.1", node), server=True)
        proc = self.sup.start(
            process,
            [
                sys.executable,
                "-m",
                "vmguard_lab.nodeagent",
                f"--node-name={node}",
                f"--kubeconfig={kube.kubeconfig_for(who)}",
                f"--state-dir={state_dir}",
                f"--apiserver-port={kube.ports['apiserver']}",
                f"--kubelet-port={kubelet_port}",
                f"--tls-cert={serving.cert}",
                f"--tls-key={serving.key}",
                f"--client-ca={kube.ca.cert_path}",
                # Pods in container mode reach the simulator's disk images here.
                f"--share={self.paths.lab / 'vsphere'}",
            ],
            env=env,
        )
        from kubernetes import client

        core = client.CoreV1Api(self._kube_api())

        def node_ready() -> bool:
            conditions = core.read_node(node).status.conditions
            return any(c.type == "Ready" and c.status == "True" for c in conditions)

        wait_until(
            f"node agent {node}",
            node_ready,
            timeout=30,
            alive=proc.alive,
            diagnose=lambda: self.sup.log_tail(process),
        )

    def _kube_api(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(str(self.paths.kubeconfig))

    def add_node(self, node: str) -> Path:
        """Start one more node agent, registering Node ``node``, on a running lab: its
        own client certificate, kubelet port and state directory (returned: its pods'
        directories and logs are under ``pods/``), supervised as ``node-agent-<node>``.
        Returns once the Node is Ready; the scheduler then places pods on it like on the
        lab's own node."""
        if node == NODE_NAME:
            raise LabError(f"{node} is the lab's own node")
        kube = KubeControlPlane(self.paths, self.sup, self.state().ports)
        kube.node_kubeconfig(node)
        state_dir = self.paths.lab / "nodes" / node
        process = ADDED_NODE_AGENT + node
        self._start_node_agent(kube, node, process, f"node-{node}", state_dir, free_port())
        return state_dir

    def added_nodes(self) -> list[str]:
        """The Nodes whose agents :meth:`add_node` started and that still run."""
        return [
            t.name.removeprefix(ADDED_NODE_AGENT)
            for t in self.sup.all()
            if t.name.startswith(ADDED_NODE_AGENT)
        ]

    def remove_node(self, node: str) -> bool:
        """Stop the agent :meth:`add_node` started for ``node`` and delete its Node (the
        pod garbage collector then deletes the pods still bound to it; processes of pods
        still running there run on to their end). True if its agent was running."""
        from kubernetes import client
        from urllib3.exceptions import HTTPError

        stopped = self.sup.stop(ADDED_NODE_AGENT + node)
        try:
            client.CoreV1Api(self._kube_api()).delete_node(node)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
        except HTTPError:
            pass  # the apiserver is down: the next ``up`` deletes the Node
        return stopped

    def _forget_added_nodes(self) -> None:
        """Delete the Node of every added agent that no longer runs (a crashed session
        left it): no pod is to be bound to a node nobody serves."""
        from kubernetes import client

        core = client.CoreV1Api(self._kube_api())
        serving = {NODE_NAME, *self.added_nodes()}
        for node in core.list_node(label_selector=f"{LAB_NODE_LABEL}=true").items:
            if node.metadata.name not in serving:
                _say(f"deleting Node {node.metadata.name}: its node agent no longer runs")
                core.delete_node(node.metadata.name)
                self.sup.stop(ADDED_NODE_AGENT + node.metadata.name)  # its stale pid file

    def _vsphere(
        self, bins: dict[str, Path], state: LabState, vms: int, disk_capacity: int
    ) -> None:
        from vmguard_lab.vsim import vsim_command

        ports = state.ports
        vdir = self.paths.lab / "vsphere"
        vdir.mkdir(parents=True, exist_ok=True)
        ca = LabCA(self.paths.pki)
        serving = ca.issue("vsphere", "vcsim.lab", hosts=("127.0.0.1", "localhost"), server=True)
        env = dict(os.environ)
        env["VMGUARD_VCSIM_USERNAME"] = state.data["vsphere"]["username"]
        env["VMGUARD_VCSIM_PASSWORD"] = state.data["vsphere"]["password"]
        env["VMGUARD_VCSIM_GUEST_USERNAME"] = state.data["vsphere"]["guest_username"]
        env["VMGUARD_VCSIM_GUEST_PASSWORD"] = state.data["vsphere"]["guest_password"]
        ready = vdir / "ready.json"
        if self.sup.get("vsphere") is None:
            ready.unlink(missing_ok=True)
        argv = vsim_command(
            bins["vmguard-vcsim"],
            vdir,
            ports["vsphere-sdk"],
            ports["vsphere-control"],
            vms,
            1,
            disk_capacity,
            serving.cert,
            serving.key,
        )
        proc = self.sup.start("vsphere", argv, env=env)
        wait_until(
            "vSphere simulator",
            ready.exists,
            timeout=60,
            alive=proc.alive,
            diagnose=lambda: self.sup.log_tail("vsphere"),
        )
        info = json.loads(ready.read_text())
        state.data["vsphere"].update(
            {
                "sdk_url": info["sdk_url"],
                "control_url": info["control_url"],
                "rest_url": info.get("rest_url", ""),
                "ca": str(ca.cert_path),
            }
        )
        _say(f"vSphere simulator on {info['sdk_url']}")

    def down(self) -> list[str]:
        stopped = [ADDED_NODE_AGENT + n for n in self.added_nodes() if self.remove_node(n)]
        for name in reversed(PROCESSES):
            if self.sup.stop(name):
                stopped.append(name)
        for leftover in self.sup.all():
            self.sup.stop(leftover.name)
            stopped.append(leftover.name)
        return stopped

    def status(self) -> dict[str, bool]:
        return {name: self.sup.get(name) is not None for name in PROCESSES}

    def env(self, with_secrets: bool = False) -> dict[str, str]:
        st = self.state().data
        out = {
            "VMGUARD_LAB_DIR": str(self.paths.lab),
            "KUBECONFIG": str(self.paths.kubeconfig),
            "VMGUARD_LAB_MINIO_ENDPOINT": st["minio"].get("endpoint", ""),
            "VMGUARD_LAB_MINIO2_ENDPOINT": st.get(SECOND_MINIO, {}).get("endpoint", ""),
            "VMGUARD_LAB_VSPHERE_URL": st["vsphere"].get("sdk_url", ""),
            "VMGUARD_LAB_VSPHERE_CONTROL": st["vsphere"].get("control_url", ""),
            "VMGUARD_LAB_CA": st["kubernetes"]["ca"] if "kubernetes" in st else "",
            "PATH": f"{self.paths.bin}:{os.environ.get('PATH', '')}",
        }
        if with_secrets:
            out["VMGUARD_LAB_MINIO_ACCESS_KEY"] = st["minio"]["access_key"]
            out["VMGUARD_LAB_MINIO_SECRET_KEY"] = st["minio"]["secret_key"]
            if SECOND_MINIO in st:
                out["VMGUARD_LAB_MINIO2_ACCESS_KEY"] = st[SECOND_MINIO]["access_key"]
                out["VMGUARD_LAB_MINIO2_SECRET_KEY"] = st[SECOND_MINIO]["secret_key"]
            out["VMGUARD_LAB_VSPHERE_USERNAME"] = st["vsphere"]["username"]
            out["VMGUARD_LAB_VSPHERE_PASSWORD"] = st["vsphere"]["password"]
        return out
