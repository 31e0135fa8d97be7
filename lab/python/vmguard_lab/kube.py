"""The lab's Kubernetes control plane: etcd, kube-apiserver, controller-manager, scheduler.

All four are the real programs, built from the published Go modules (see ``build.py``),
listening on 127.0.0.1. RBAC and the Node authorizer are on, and every component
authenticates with its own client certificate, so permissions are exercised as in a
real cluster. etcd speaks plain HTTP on loopback: it is reachable only from this
machine and holds nothing but lab objects.

The kube-apiserver's ``kubernetes`` Service endpoint reconciler is off because the
apiserver advertises a loopback address; pods find the apiserver through the
standard ``KUBERNETES_SERVICE_HOST``/``PORT`` variables the node agent sets instead.
"""

from __future__ import annotations

import ssl
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from vmguard_lab.paths import LabPaths
from vmguard_lab.pki import KeyPair, LabCA
from vmguard_lab.procs import Supervisor, port_open, wait_until

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.8"
SERVICE_CIDR = "10.0.0.0/24"
NODE_NAME = "vmguard-lab-node"
LAB_NODE_LABEL = "vmguard.io/lab-node"
"""The label (value ``true``) every lab node agent gives its Node."""


def write_kubeconfig(path: Path, server: str, ca: Path, client: KeyPair, user: str) -> None:
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "vmguard-lab", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate": str(client.cert), "client-key": str(client.key)},
            }
        ],
        "contexts": [{"name": "vmguard-lab", "context": {"cluster": "vmguard-lab", "user": user}}],
        "current-context": "vmguard-lab",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


class KubeControlPlane:
    def __init__(self, paths: LabPaths, sup: Supervisor, ports: dict[str, int]) -> None:
        self.paths = paths
        self.sup = sup
        self.ports = ports
        self.ca = LabCA(paths.pki)
        self.dir = paths.lab / "kube"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    def kubeconfig_for(self, who: str) -> Path:
        return self.dir / f"{who}.kubeconfig"

    def node_kubeconfig(self, node: str) -> Path:
        """The kubeconfig of one more node agent: a client certificate of its own
        (``system:node:<node>`` in ``system:nodes``), as a kubelet has, so the Node
        authorizer and NodeRestriction hold it to its Node and its pods."""
        who = f"node-{node}"
        pair = self.ca.issue(who, f"system:node:{node}", ("system:nodes",))
        write_kubeconfig(self.kubeconfig_for(who), self.server, self.ca.cert_path, pair, who)
        return self.kubeconfig_for(who)

    def _credentials(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        clients = {
            "admin": ("vmguard-lab-admin", ("system:masters",)),
            "controller-manager": ("system:kube-controller-manager", ()),
            "scheduler": ("system:kube-scheduler", ()),
            "node": (f"system:node:{NODE_NAME}", ("system:nodes",)),
            "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", ("system:masters",)),
        }
        for who, (cn, orgs) in clients.items():
            pair = self.ca.issue(who, cn, orgs)
            write_kubeconfig(self.kubeconfig_for(who), self.server, self.ca.cert_path, pair, who)
        admin = self.kubeconfig_for("admin")
        self.paths.kubeconfig.write_bytes(admin.read_bytes())
        self.paths.kubeconfig.chmod(0o600)

    def start(self, bins: dict[str, Path]) -> None:
        self._credentials()
        self._etcd(bins["etcd"])
        self._apiserver(bins["kube-apiserver"])
        self._controller_manager(bins["kube-controller-manager"])
        self._scheduler(bins["kube-scheduler"])

    def _etcd(self, binary: Path) -> None:
        client, peer = self.ports["etcd"], self.ports["etcd-peer"]
        data = self.paths.lab / "etcd"
        proc = self.sup.start(
            "etcd",
            [
                str(binary),
                "--name=lab",
                f"--data-dir={data}",
                f"--listen-client-urls=http://127.0.0.1:{client}",
                f"--advertise-client-urls=http://127.0.0.1:{client}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=lab=http://127.0.0.1:{peer}",
                "--listen-metrics-urls=",
                "--quota-backend-bytes=4294967296",
                "--log-level=warn",
            ],
        )
        wait_until(
            "etcd",
            lambda: _http_ok(f"http://127.0.0.1:{client}/health"),
            timeout=30,
            alive=proc.alive,
            diagnose=lambda: self.sup.log_tail("etcd"),
        )

    def _apiserver(self, binary: Path) -> None:
        port = self.ports["apiserver"]
        serving = self.ca.issue(
            "apiserver",
            "kube-apiserver",
            hosts=(
                "127.0.0.1",
                "localhost",
                "10.0.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            server=True,
        )
        sa = self.ca.service_account_keys()
        kubelet_client = self.ca.issue(
            "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)
        )
        proc = self.sup.start(
            "kube-apiserver",
            [
                str(binary),
                f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={self.ca.cert_path}",
                f"--kubelet-client-certificate={kubelet_client.cert}",
                f"--kubelet-client-key={kubelet_client.key}",
                # The node agent serves container logs on 127.0.0.1 (vmguard_lab.podlogs):
                # reach it by address, and check its certificate against the lab CA.
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-certificate-authority={self.ca.cert_path}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={sa.cert}",
                f"--service-account-signing-key-file={sa.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        wait_until(
            "kube-apiserver",
            lambda: _http_ok(f"{self.server}/readyz", self.ca.cert_path, self._admin_pair()),
            timeout=90,
            alive=proc.alive,
            diagnose=lambda: self.sup.log_tail("kube-apiserver"),
        )

    def _admin_pair(self) -> KeyPair:
        return KeyPair(self.paths.pki / "admin.crt", self.paths.pki / "admin.key")

    def _controller_manager(self, binary: Path) -> None:
        sa = self.ca.service_account_keys()
        kubeconfig = self.kubeconfig_for("controller-manager")
        proc = self.sup.start(
            "kube-controller-manager",
            [
                str(binary),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.ports['controller-manager']}",
                f"--service-account-private-key-file={sa.key}",
                f"--root-ca-file={self.ca.cert_path}",
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--v=1",
            ],
        )
        wait_until(
            "kube-controller-manager",
            lambda: port_open(self.ports["controller-manager"]),
            timeout=60,
            alive=proc.alive,
            diagnose=lambda: self.sup.log_tail("kube-controller-manager"),
        )

    def _scheduler(self, binary: Path) -> None:
        kubeconfig = self.kubeconfig_for("scheduler")
        proc = self.sup.start(
            "kube-scheduler",
            [
                str(binary),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.ports['scheduler']}",
                "--leader-elect=false",
                "--v=1",
            ],
        )
        wait_until(
            "kube-scheduler",
            lambda: port_open(self.ports["scheduler"]),
            timeout=60,
            alive=proc.alive,
            diagnose=lambda: self.sup.log_tail("kube-scheduler"),
        )

    def stop(self) -> None:
        for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            self.sup.stop(name)


def _http_ok(url: str, ca: Path | None = None, client: KeyPair | None = None) -> bool:
    context = None
    if url.startswith("https"):
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
        if client:
            context.load_cert_chain(str(client.cert), str(client.key))
    with urllib.request.urlopen(url, timeout=2, context=context) as resp:
        return bool(resp.status == 200)
