"""The lab node agent: a stand-in kubelet that runs pods as local processes or, when a
pod asks for it, as containers.

Lab only. The agent registers one Node, keeps its Lease and Ready condition fresh, and
runs every pod the scheduler binds to it, in one of two modes:

- process mode (the default, fast, most of the suite): each container's ``command`` +
  ``args`` run as a process on this machine (the image is recorded, not pulled:
  programs come from the lab's virtualenv on ``PATH``), in a private mount namespace
  where the pod's volumes appear at their ``mountPath``;
- container mode, for a pod annotated ``lab.vmguard.io/runtime: container``
  (:mod:`vmguard_lab.containers`): each container runs from its image with podman and
  runc, under the pod's security context, with the same volumes and environment; what
  the runtime reports of it (``podman inspect``, without the environment) is kept as
  ``<container name>.inspect.json`` in the pod's directory.

In both modes:

- environment as a kubelet builds it, including Secret/ConfigMap key references and
  the in-cluster variables, so clients authenticate with the pod's own projected
  service-account token and RBAC is really exercised;
- init containers run in order first; ``restartPolicy`` is honoured with backoff;
- pod phase, container states and exit codes are reported in pod status;
- a pod being deleted gets SIGTERM, then SIGKILL after its grace period, and its
  deletion is then confirmed (grace period 0), as a kubelet does;
- with ``--kubelet-port``, containers' logs are served to the apiserver
  (:mod:`vmguard_lab.podlogs`), so ``kubectl logs`` and ``vmguard backup logs`` work.

The agent talks to the apiserver as ``system:node:<name>``, so the Node authorizer
and NodeRestriction admission decide what it may read and write.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config, watch

from vmguard_lab import podlogs
from vmguard_lab.containers import (
    ContainerRuntime,
    adapt_volumes,
    wants_containers,
)
from vmguard_lab.kube import LAB_NODE_LABEL
from vmguard_lab.podfiles import PodFiles, PodMaterializer

log = logging.getLogger("vmguard_lab.nodeagent")

HEARTBEAT_SECONDS = 10
VOLUME_SETUP_SECONDS = 60
T = TypeVar("T")


def _api_message(exc: client.ApiException) -> str:
    """The apiserver's message, without the response headers the client adds."""
    try:
        return str(json.loads(exc.body)["message"])
    except (TypeError, ValueError, KeyError):
        return f"{exc.status} {exc.reason}"


# A kubelet's image pull back-off: 10 s, doubling, at most 5 min (the lab's first is
# shorter, so a test sees ImagePullBackOff within seconds as well as ErrImagePull).
IMAGE_BACKOFF_SECONDS = 2.0
IMAGE_BACKOFF_MAX_SECONDS = 300.0


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodRunner(threading.Thread):
    """Runs one pod to completion (or until it is deleted)."""

    def __init__(self, agent: NodeAgent, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.agent = agent
        self.pod = pod
        self.uid: str = meta["uid"]
        self.stopping = threading.Event()
        self.proc: subprocess.Popen[bytes] | None = None
        self.files: PodFiles | None = None
        self.statuses: dict[str, dict[str, Any]] = {}
        self.init_statuses: dict[str, dict[str, Any]] = {}
        self.containerized = wants_containers(pod)
        self.running: dict[str, str] = {}  # container name in the pod -> podman's name

    # -- status ---------------------------------------------------------------------------
    def _patch(self, phase: str, reason: str = "", message: str = "") -> None:
        spec = self.pod["spec"]
        ready = phase == "Running"
        initialized = phase != "Pending" or not spec.get("initContainers")
        cond = [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": str(initialized)},
            {"type": "ContainersReady", "status": str(ready)},
            {"type": "Ready", "status": str(ready)},
        ]
        for c in cond:
            c["lastTransitionTime"] = _now()
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": cond,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.pod.get("status", {}).get("startTime") or _now(),
            "containerStatuses": list(self.statuses.values()),
        }
        if self.init_statuses:
            status["initContainerStatuses"] = list(self.init_statuses.values())
        if reason:
            status["reason"] = reason
            status["message"] = message
        self.pod.setdefault("status", {})["startTime"] = status["startTime"]
        meta = self.pod["metadata"]
        try:
            self.agent.core.patch_namespaced_pod_status(
                meta["name"], meta["namespace"], {"status": status}
            )
        except client.ApiException as exc:
            if exc.status != 404:
                log.warning("status of %s/%s: %s", meta["namespace"], meta["name"], exc.reason)

    def _container_status(
        self, c: dict[str, Any], state: dict[str, Any], restarts: int
    ) -> dict[str, Any]:
        return {
            "name": c["name"],
            "image": c.get("image", ""),
            "imageID": "",
            "containerID": (
                f"podman://{self.running[c['name']]}"
                if c["name"] in self.running
                else f"vmguard-lab://{self.uid[:8]}-{c['name']}"
            ),
            "ready": "running" in state,
            "started": "running" in state,
            "restartCount": restarts,
            "state": state,
        }

    # -- processes ------------------------------------------------------------------------
    def _spawn_container(self, c: dict[str, Any]) -> subprocess.Popen[bytes]:
        assert self.files is not None
        runtime = self.agent.runtime
        env = self._retrying(
            "environment", lambda: self.agent.materializer.env(self.pod, c, {"LANG": "C.UTF-8"})
        )
        mounts = self.agent.materializer.mounts(self.files, c)
        name = runtime.create(self.pod, c, env, mounts)
        self.running[c["name"]] = name
        logf = open(self.files.root / f"{c['name']}.log", "ab")  # noqa: SIM115
        with logf:
            return runtime.start(name, logf)

    def _container_done(self, c: dict[str, Any]) -> None:
        """Keep what the runtime reported of the container, then remove it."""
        name = self.running.get(c["name"])
        if name is None or self.files is None:
            return
        report = self.agent.runtime.inspect(name)
        path = self.files.root / f"{name}.inspect.json"
        path.write_text(json.dumps(report, indent=2))
        self.agent.runtime.remove(name)

    def _spawn(self, c: dict[str, Any]) -> subprocess.Popen[bytes]:
        assert self.files is not None
        if self.containerized:
            return self._spawn_container(c)
        argv = list(c.get("command") or []) + list(c.get("args") or [])
        if not argv:
            raise ValueError(f"container {c['name']!r} has no command: the lab cannot run images")
        env = self._retrying(
            "environment", lambda: self.agent.materializer.env(self.pod, c, self.agent.base_env)
        )
        mounts = self.agent.materializer.mounts(self.files, c)
        spec_path = self.files.root / f"{c['name']}.run.json"
        spec = {
            "argv": argv,
            "env": env,
            "cwd": c.get("workingDir") or str(self.files.root),
            "mounts": [m.__dict__ for m in mounts],
        }
        spec_path.write_text(json.dumps(spec))
        spec_path.chmod(0o600)
        logf = open(self.files.root / f"{c['name']}.log", "ab")  # noqa: SIM115
        with logf:
            return subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    sys.executable,
                    "-m",
                    "vmguard_lab.podrun",
                    str(spec_path),
                ],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _pulled(self, c: dict[str, Any], statuses: dict[str, dict[str, Any]]) -> bool:
        """A kubelet pulls a container's image before it creates it; the lab pulls
        nothing, so an image missing from the node's store is what a failed pull is on a
        kubelet: waiting ``ErrImagePull``, then ``ImagePullBackOff``, tried again with a
        doubling back-off until the image is there (True) or the pod goes (False)."""
        image, backoff, reason = c.get("image", ""), IMAGE_BACKOFF_SECONDS, "ErrImagePull"
        while not self.agent.runtime.image_present(image):
            message = (
                f'Back-off pulling image "{image}"'
                if reason == "ImagePullBackOff"
                else f'Failed to pull image "{image}": not found in the node\'s image store'
            )
            waiting = {"waiting": {"reason": reason, "message": message}}
            statuses[c["name"]] = self._container_status(c, waiting, 0)
            self._patch("Pending")
            if self.stopping.wait(backoff):
                return False
            reason, backoff = "ImagePullBackOff", min(backoff * 2, IMAGE_BACKOFF_MAX_SECONDS)
        return True

    def _run_container(
        self, c: dict[str, Any], statuses: dict[str, dict[str, Any]], policy: str
    ) -> int:
        if self.containerized and not self._pulled(c, statuses):
            return 128  # deleted while its image was missing: it never ran
        restarts = 0
        while True:
            started = _now()
            try:
                self.proc = self._spawn(c)
            except Exception as exc:
                statuses[c["name"]] = self._container_status(
                    c,
                    {
                        "terminated": {
                            "exitCode": 128,
                            "reason": "StartError",
                            "message": str(exc),
                            "startedAt": started,
                            "finishedAt": _now(),
                        }
                    },
                    restarts,
                )
                return 128
            statuses[c["name"]] = self._container_status(
                c, {"running": {"startedAt": started}}, restarts
            )
            self._patch("Running" if statuses is self.statuses else "Pending")
            code = self.proc.wait()
            code = 128 - code if code < 0 else code  # killed by signal N -> 128+N
            if self.containerized:
                self._container_done(c)
            reason = "Completed" if code == 0 else "Error"
            statuses[c["name"]] = self._container_status(
                c,
                {
                    "terminated": {
                        "exitCode": code,
                        "reason": reason,
                        "startedAt": started,
                        "finishedAt": _now(),
                    }
                },
                restarts,
            )
            again = policy == "Always" or (policy == "OnFailure" and code != 0)
            if self.stopping.is_set() or not again:
                return code
            restarts += 1
            self._patch("Running")
            if self.stopping.wait(min(2**restarts, 30)):
                return code

    def _retrying(self, what: str, fn: Callable[[], T]) -> T:
        """Retry reads the Node authorizer may refuse for a moment, as a kubelet does.

        The authorizer learns that a pod references a Secret from its own watch, so right
        after binding a read can be refused (403), or the Secret may not exist yet (404).
        """
        delay, deadline = 0.2, time.monotonic() + VOLUME_SETUP_SECONDS
        while True:
            try:
                return fn()
            except client.ApiException as exc:
                if exc.status not in (403, 404) or time.monotonic() > deadline:
                    raise
                log.info("%s of %s: %s; retrying", what, self.name, _api_message(exc))
                if self.stopping.wait(delay):
                    raise
                delay = min(delay * 2, 2.0)

    def run(self) -> None:
        spec = self.pod["spec"]
        policy = spec.get("restartPolicy", "Always")
        try:
            self.files = self._retrying(
                "volume setup", lambda: self.agent.materializer.prepare(self.pod)
            )
        except Exception as exc:  # reported in pod status, never raised
            message = _api_message(exc) if isinstance(exc, client.ApiException) else str(exc)
            log.warning("cannot prepare %s: %s", self.name, message)
            self._patch("Failed", "VolumeSetupFailed", message)
            return
        if self.containerized:
            adapt_volumes(self.pod, self.files)
        self._patch("Pending")
        for c in spec.get("initContainers") or []:
            code = self._run_container(
                c, self.init_statuses, "OnFailure" if policy != "Never" else "Never"
            )
            if code != 0 or self.stopping.is_set():
                self._patch("Failed", "InitContainerFailed", f"{c['name']} exited {code}")
                return
        codes: dict[str, int] = {}
        threads = []
        for c in spec["containers"]:
            t = threading.Thread(
                target=lambda c=c: codes.__setitem__(
                    c["name"], self._run_container(c, self.statuses, policy)
                ),
                daemon=True,
            )
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        if self.stopping.is_set():
            return
        self._patch("Succeeded" if all(v == 0 for v in codes.values()) else "Failed")

    def stop(self, grace: float) -> None:
        self.stopping.set()
        if self.containerized:
            for name in list(self.running.values()):
                self.agent.runtime.stop(name, grace)
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class NodeAgent:
    def __init__(
        self,
        node_name: str,
        kubeconfig: Path,
        state_dir: Path,
        port: int,
        kubelet_port: int = 0,
        shares: list[Path] | None = None,
    ) -> None:
        self.kubelet_port = kubelet_port
        config.load_kube_config(str(kubeconfig))
        self.api = client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.coord = client.CoordinationV1Api(self.api)
        self.node = node_name
        self.state_dir = state_dir
        self.materializer = PodMaterializer(self.core, port, state_dir / "pods")
        self.runners: dict[str, PodRunner] = {}
        self.runtime = ContainerRuntime(list(shares or []))
        self.base_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": "/root",
        }
        for var in ("VMGUARD_REPO", "VMGUARD_LAB_DIR", "VMGUARD_CACHE_DIR", "PYTHONPATH"):
            if var in os.environ:
                self.base_env[var] = os.environ[var]

    # -- node object and heartbeats ------------------------------------------------------
    def _node_status(self) -> dict[str, Any]:
        resources = {
            "cpu": str(os.cpu_count() or 2),
            "memory": "16Gi",
            "pods": "110",
            "ephemeral-storage": "50Gi",
        }
        now = _now()
        conditions = [
            {
                "type": t,
                "status": s,
                "reason": r,
                "message": "vmguard lab node agent",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }
            for t, s, r in (
                ("Ready", "True", "KubeletReady"),
                ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                ("PIDPressure", "False", "KubeletHasSufficientPID"),
            )
        ]
        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.node},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": os.uname().release,
                "osImage": "vmguard lab",
                "containerRuntimeVersion": "vmguard-lab://1",
                "kubeletVersion": "v1.36.3",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def register(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {
                    "kubernetes.io/hostname": self.node,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    LAB_NODE_LABEL: "true",
                },
            },
        }
        try:
            self.core.create_node(body)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
        self.core.patch_node_status(self.node, {"status": self._node_status()})

    def heartbeat(self) -> None:
        while True:
            try:
                self._renew_lease()
                self.core.patch_node_status(self.node, {"status": self._node_status()})
                for runner in list(self.runners.values()):
                    if runner.files and runner.is_alive():
                        self.materializer.refresh_tokens(runner.pod, runner.files)
            except Exception as exc:
                log.warning("heartbeat: %s", exc)
            time.sleep(HEARTBEAT_SECONDS)

    def _renew_lease(self) -> None:
        now = dt.datetime.now(dt.UTC)
        spec = {
            "holderIdentity": self.node,
            "leaseDurationSeconds": 40,
            "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        try:
            self.coord.patch_namespaced_lease(self.node, "kube-node-lease", {"spec": spec})
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            node = self.core.read_node(self.node)
            body = {
                "metadata": {
                    "name": self.node,
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "Node",
                            "name": self.node,
                            "uid": node.metadata.uid,
                        }
                    ],
                },
                "spec": spec,
            }
            self.coord.create_namespaced_lease("kube-node-lease", body)

    # -- pods -----------------------------------------------------------------------------
    def _handle(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        runner = self.runners.get(uid)
        phase = pod.get("status", {}).get("phase", "Pending")
        if kind == "DELETED":
            if runner:
                threading.Thread(target=runner.stop, args=(0.0,), daemon=True).start()
                self.runners.pop(uid, None)
            return
        if meta.get("deletionTimestamp"):
            grace = float(meta.get("deletionGracePeriodSeconds") or 0)
            threading.Thread(
                target=self._terminate, args=(runner, meta, grace), daemon=True
            ).start()
            return
        if runner is None and phase in ("Pending", "Running") and uid not in self.runners:
            if phase == "Running":
                # Started by an earlier agent whose processes are gone: report it failed.
                PodRunner(self, pod)._patch(
                    "Failed", "NodeAgentRestarted", "the lab node agent restarted while the pod ran"
                )
                self.runners[uid] = PodRunner(self, pod)  # remember: never start it again
                return
            runner = PodRunner(self, pod)
            self.runners[uid] = runner
            runner.start()

    def _terminate(self, runner: PodRunner | None, meta: dict[str, Any], grace: float) -> None:
        if runner:
            runner.stop(grace)
        try:
            self.core.delete_namespaced_pod(
                meta["name"],
                meta["namespace"],
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0,
                    preconditions=client.V1Preconditions(uid=meta["uid"]),
                ),
            )
        except client.ApiException as exc:
            if exc.status not in (404, 409):
                log.warning(
                    "confirming deletion of %s/%s: %s", meta["namespace"], meta["name"], exc
                )
        self.runners.pop(meta["uid"], None)

    def watch_pods(self) -> None:
        selector = f"spec.nodeName={self.node}"
        while True:
            try:
                listed = self.core.list_pod_for_all_namespaces(field_selector=selector)
                for pod in listed.items:
                    self._handle("ADDED", self.api.sanitize_for_serialization(pod))
                w = watch.Watch()
                for ev in w.stream(
                    self.core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=listed.metadata.resource_version,
                    timeout_seconds=300,
                ):
                    self._handle(ev["type"], self.api.sanitize_for_serialization(ev["object"]))
            except Exception as exc:
                log.warning("pod watch: %s; relisting", exc)
                time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vmguard-lab-node-agent")
    parser.add_argument("--node-name", required=True)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--apiserver-port", type=int, required=True)
    parser.add_argument("--kubelet-port", type=int, default=0, help="serve container logs")
    parser.add_argument("--tls-cert", type=Path, help="serving certificate (--kubelet-port)")
    parser.add_argument("--tls-key", type=Path, help="its key")
    parser.add_argument("--client-ca", type=Path, help="CA of the apiserver's client cert")
    parser.add_argument(
        "--share",
        type=Path,
        action="append",
        default=[],
        help="a directory mounted at the same path into every container (container mode)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args.state_dir.mkdir(parents=True, exist_ok=True)
    agent = NodeAgent(
        args.node_name,
        args.kubeconfig,
        args.state_dir,
        args.apiserver_port,
        args.kubelet_port,
        args.share,
    )
    if args.kubelet_port:
        podlogs.serve(
            args.kubelet_port, args.state_dir / "pods", args.tls_cert, args.tls_key, args.client_ca
        )
    agent.register()
    threading.Thread(target=agent.heartbeat, daemon=True).start()
    log.info("node %s registered; running pods", args.node_name)
    agent.watch_pods()
    return 0


if __name__ == "__main__":
    sys.exit(main())
