"""Fixtures for controller tests: a fresh namespace, the operator as a real process, and
the lab's vCenter, repository and policies as custom objects in that namespace.

The operator runs as ``python -m vmguard.cli operator`` against the lab apiserver, so a
test can SIGKILL it and start it again. Its proxy Jobs run through the lab's node agent
(pods are local processes): ``VMGUARD_PROXY_COMMAND`` makes them start this checkout's
``vmguard`` and ``VMGUARD_PROXY_LOCATOR=lab:<control url>`` makes them find disks
through the simulator instead of VDDK (the lab's distribution registers that locator).

A fault test that must park the operator at a backup or restore step or slow the proxies
down asks ``start_operator`` for ``stall=``, ``stall_restore=`` or ``proxy_throttle=``:
the operator, or every proxy it starts, then runs through the lab's entry module
(:mod:`vmguard_lab.run`), which hands those hooks to the product's injection points
(:class:`vmguard.hooks.Hooks`).

A test that waits for scheduled runs or sweeps asks for ``speedup=N`` (or marks itself
``operator_speedup(N)``): the operator then runs through the same module with
``--speedup N``, so its cron minutes last 60/N seconds and its sweep interval 1/N of the
VCenter's (``vmguard.controller.kube.timing``; docs/lab.md, "Lab time"). Scheduled instants,
run labels and backup names are then on the schedule line: :func:`on_line` and
:func:`off_line` translate.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.controller import objects

from vmguard.api.kinds import KINDS
from vmguard.controller.kube.timing import Timing
from vmguard_lab.procs import free_port


def on_line(at: Any, speedup: float) -> Any:
    """The real instant ``at`` on the schedule line of an operator sped up ``speedup``x."""
    return Timing(speedup=speedup).on_line(at)


def off_line(at: Any, speedup: float) -> Any:
    """The real instant of the schedule line's instant ``at`` (speed-up ``speedup``)."""
    return Timing(speedup=speedup).off_line(at)


@pytest.fixture
def namespace(kube_api: Any, vmguard_crds: None) -> Iterator[str]:
    """A fresh namespace. When the test ends (its operators stopped: they were started
    after it), every vmguard object left in it is offered to :mod:`tests.captures`."""
    name = f"t-{secrets.token_hex(4)}"
    client.CoreV1Api(kube_api).create_namespace({"metadata": {"name": name}})
    yield name
    for kind in KINDS:
        # A test that removed the CRDs: nothing of that kind to capture.
        with contextlib.suppress(client.ApiException):
            objects.items(kube_api, name, kind.plural)


class OperatorProcess:
    """One ``vmguard operator`` process; its output goes to ``log``."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv, self.env, self.log = argv, env, log
        self.metrics_port = 0  # where its /metrics listens on 127.0.0.1 (set by start_operator)
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no finalizer, no cleanup — what a crash or an OOM kill looks like."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 20.0) -> None:
        if not self.alive():
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def lab_run(*options: str) -> list[str]:
    """``vmguard`` with the lab's test hooks (:mod:`vmguard_lab.run`) as an argv prefix."""
    return [sys.executable, "-m", "vmguard_lab.run", *options]


LAB_BACKUP_POLL = "0.5"
"""How often a lab operator looks at a backup's proxy Job (``VMGUARD_BACKUP_POLL``; 2 s
by default): the lab's Jobs are local processes that end within seconds, and every
backup in the suite would otherwise wait a second or two past its Job's end."""


def operator_env(lab: Any, lab_state: dict[str, Any]) -> dict[str, str]:
    return dict(
        os.environ,
        KUBECONFIG=str(lab.paths.kubeconfig),
        VMGUARD_PROXY_COMMAND=json.dumps([sys.executable, "-m", "vmguard.cli"]),
        VMGUARD_PROXY_LOCATOR=f"lab:{lab_state['vsphere']['control_url']}",
        VMGUARD_BACKUP_POLL=LAB_BACKUP_POLL,
    )


@pytest.fixture
def start_operator(
    lab: Any,
    lab_state: dict[str, Any],
    namespace: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., OperatorProcess]]:
    """``start_operator(*extra_args)`` starts one more operator watching ``namespace``
    (``extra_env={...}`` adds variables, e.g. the VMGuardBackup controller's retry settings;
    ``stall="snapshotted"`` parks it at that backup step (``stall_restore="finalizing"``
    at that restore step), ``fail_once="finalizing"`` makes that step raise once,
    ``record_requests=path`` appends each request it makes through the Kubernetes client
    library to ``path`` (``METHOD URL`` lines),
    ``proxy_throttle=N`` makes its proxies read at most N bytes/s, ``speedup=N`` runs its
    schedules and sweeps N times faster (default: the test's ``operator_speedup`` mark):
    all through the lab's entry module, :func:`lab_run`).

    Every process started is stopped at the end of the test; all of them write to
    ``tmp_path/operator.log`` (so a restarted operator's output follows the first's)
    unless ``log="<name>"`` gives one its own file in ``tmp_path``.
    """
    started: list[OperatorProcess] = []

    def start(
        *extra: str,
        env: dict[str, str] | None = None,
        extra_env: dict[str, str] | None = None,
        log: str = "operator.log",
        stall: str = "",
        fail_once: str = "",
        stall_restore: str = "",
        proxy_throttle: int = 0,
        speedup: float | None = None,
        record_requests: Path | None = None,
    ) -> OperatorProcess:
        # /metrics on a free loopback port (operators of parallel tests must not share
        # the default 8080); an explicit --metrics-port in ``extra`` wins (argparse keeps
        # the last one).
        port = str(free_port())
        if "--metrics-port" in extra:
            port = extra[extra.index("--metrics-port") + 1]
        if speedup is None:
            marked = request.node.get_closest_marker("operator_speedup")
            speedup = float(marked.args[0]) if marked is not None else 1.0
        options = ["--stall", stall] if stall else []
        options += ["--fail-once", fail_once] if fail_once else []
        options += ["--stall-restore", stall_restore] if stall_restore else []
        options += ["--speedup", str(speedup)] if speedup != 1.0 else []
        options += ["--record-requests", str(record_requests)] if record_requests else []
        entry = lab_run(*options) if options else [sys.executable, "-m", "vmguard.cli"]
        argv = [*entry, "operator", "--namespace", namespace]
        argv += ["--metrics-port", port, "--metrics-address", "127.0.0.1"]
        # Tests whose default policy would back up the whole lab run without the backup
        # controller: the lab's VMs are shared, and a hundred real backups abandoned at
        # the end of a test would leave snapshots and CBT changes for the next one.
        marker = request.node.get_closest_marker("operator_controllers")
        if marker is not None:
            argv += ["--controllers", marker.args[0]]
        full_env = {**(env or operator_env(lab, lab_state)), **(extra_env or {})}
        if proxy_throttle:
            proxy = lab_run("--throttle", str(proxy_throttle))
            full_env["VMGUARD_PROXY_COMMAND"] = json.dumps(proxy)
        proc = OperatorProcess([*argv, *extra], full_env, tmp_path / log)
        proc.metrics_port = int(port)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def operator_log(start_operator: Callable[..., OperatorProcess]) -> Path:
    """One operator running for the whole test; the path of its log."""
    return start_operator().log


@pytest.fixture
def lab_vcenter(kube_api: Any, lab_state: dict[str, Any], namespace: str) -> str:
    """A VCenter ``lab`` for the simulator, trusted by its CA, with its real password."""
    objects.create_vcenter(kube_api, lab_state, namespace, "lab")
    return "lab"


@pytest.fixture
def lab_repository(kube_api: Any, namespace: str, s3_bucket: dict[str, Any]) -> str:
    """A VMGuardRepository ``repo`` over a fresh bucket of the lab's MinIO."""
    objects.create_repository(kube_api, namespace, "repo", s3_bucket)
    return "repo"
