"""The cluster verbs as a user runs them against the lab: ``kubectl vmguard`` choosing
its cluster with ``--context``/``--kubeconfig`` as kubectl does, and ``backup create
--wait`` / ``backup describe`` / ``backup logs`` around a real backup made by the
operator (a process) and its proxy Job (run by the lab's node agent).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from tests.cli.test_status import DB, estate
from tests.controller import objects
from tests.controller.backup_helpers import data_vm, disk_hashes, open_repo, restored_hashes
from tests.controller.conftest import OperatorProcess, lab_repository, lab_vcenter, start_operator

from vmguard_lab.procs import free_port

pytestmark = pytest.mark.lab

__all__ = ["estate", "lab_repository", "lab_vcenter", "start_operator"]  # fixtures


def run(
    argv: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def vmguard(*args: str) -> list[str]:
    return [sys.executable, "-m", "vmguard.cli", *args]


def two_contexts(lab_kubeconfig: Path, target: Path, namespace: str) -> int:
    """A kubeconfig with context ``lab`` (the lab's apiserver, namespace ``namespace``)
    and ``dead`` (a port nothing listens on), ``dead`` current. Returns the dead port."""
    conf = yaml.safe_load(lab_kubeconfig.read_text())
    cluster, user = conf["clusters"][0], conf["users"][0]
    dead_port = free_port()
    dead = {**cluster["cluster"], "server": f"https://127.0.0.1:{dead_port}"}
    conf["clusters"] = [cluster, {"name": "dead", "cluster": dead}]
    conf["contexts"] = [
        {
            "name": "lab",
            "context": {"cluster": cluster["name"], "user": user["name"], "namespace": namespace},
        },
        {"name": "dead", "context": {"cluster": "dead", "user": user["name"]}},
    ]
    conf["current-context"] = "dead"
    target.write_text(yaml.safe_dump(conf))
    return dead_port


def test_kubectl_vmguard_context_selects_the_cluster(
    lab: Any, kubectl: Path, estate: str, tmp_path: Path
) -> None:
    two = tmp_path / "two.yaml"
    dead_port = two_contexts(lab.paths.kubeconfig, two, estate)
    plugin = tmp_path / "bin" / "kubectl-vmguard"  # what the installed console script is
    plugin.parent.mkdir()
    plugin.write_text(f'#!/bin/sh\nexec {sys.executable} -m vmguard.cli "$@"\n')
    plugin.chmod(0o755)
    env = dict(os.environ, KUBECONFIG=str(two), PATH=f"{plugin.parent}:{os.environ['PATH']}")

    # --context lab: the lab's apiserver, and that context's namespace (no -n given).
    good = run([str(kubectl), "vmguard", "--context", "lab", "status", "-o", "json"], env)
    assert good.returncode == 0, good.stderr
    assert DB[2] in {row["vm"] for row in json.loads(good.stdout)["vms"]}
    # No --context: the current one, the dead port, named in a failure (exit 1).
    dead = run([str(kubectl), "vmguard", "status"], env)
    assert dead.returncode == 1, dead.stderr
    assert f"127.0.0.1:{dead_port}" in dead.stderr and "Traceback" not in dead.stderr
    # --context dead after the command, too.
    late = run([str(kubectl), "vmguard", "status", "--context", "dead"], env)
    assert late.returncode == 1 and f"127.0.0.1:{dead_port}" in late.stderr, late.stderr
    # --kubeconfig wins over $KUBECONFIG; -n over the context's namespace.
    elsewhere = dict(env, KUBECONFIG=str(tmp_path / "missing.yaml"))
    given = run(
        vmguard(
            "--kubeconfig", str(two), "--context", "lab", "-n", "default", "status", "-o", "yaml"
        ),
        elsewhere,
    )
    assert given.returncode == 0, given.stderr
    assert DB[2] not in {row["vm"] for row in yaml.safe_load(given.stdout)["vms"]}


def test_backup_create_wait_then_describe_and_logs(
    lab: Any,
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    s3_bucket: dict[str, Any],
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    start_operator()
    env = dict(os.environ, KUBECONFIG=str(lab.paths.kubeconfig))
    cluster = ("-n", namespace)
    with data_vm(vc, vsim, image_factory, tmp_path) as vm:
        at_backup = disk_hashes(vsim, vm.moref)
        created = run(
            vmguard(
                "backup", "create", vm.name, "--vcenter", lab_vcenter,
                "--repository", lab_repository, "--name", "adhoc", "--wait", *cluster,
            ),
            env,
            timeout=400,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        assert created.stdout.startswith("adhoc: Completed"), created.stdout
        assert "vmguardbackup adhoc: Transferring" in created.stderr, created.stderr
        obj = objects.get(kube_api, namespace, "vmguardbackups", "adhoc")
        archive = obj["status"]["archiveId"]
        assert f"archive  {archive}" in created.stdout
        assert restored_hashes(open_repo(s3_bucket), archive, tmp_path) == at_backup

    # The backup controller posts no event on success; one as kopf posts them (the
    # catalog's, a retention's) shows that describe lists the object's events.
    client.CoreV1Api(kube_api).create_namespaced_event(
        namespace,
        {
            "metadata": {"generateName": "adhoc."},
            "involvedObject": {
                "apiVersion": obj["apiVersion"], "kind": "VMGuardBackup", "name": "adhoc",
                "namespace": namespace, "uid": obj["metadata"]["uid"],
            },
            "reason": "Checked", "message": "seen by the test", "type": "Normal",
            "source": {"component": "test"},
        },
    )  # fmt: skip
    described = run(vmguard("backup", "describe", "adhoc", *cluster), env)
    assert described.returncode == 0, described.stderr
    text = described.stdout
    assert "Phase:         Completed" in text and f"Archive:       {archive}" in text
    conditions = text.split("Conditions:\n", 1)[1].split("Events:", 1)[0]
    ready = next(line for line in conditions.splitlines() if line.split()[0] == "Ready")
    assert ready.split()[1:3] == ["True", "Completed"], conditions
    events = text.split("Events:\n", 1)[1].split("Proxy log", 1)[0]
    assert events.split() == ["Normal", "Checked", "seen", "by", "the", "test"], events
    log = text.split("Proxy log (pod ", 1)[1]
    assert "not available" not in log, log
    assert archive in log, log  # the proxy logged the archive it committed

    logs = run(vmguard("backup", "logs", "adhoc", *cluster), env)
    assert logs.returncode == 0 and archive in logs.stdout, logs.stderr
    listed = run(vmguard("backup", "get", *cluster, "-o", "yaml"), env)
    assert [i["metadata"]["name"] for i in yaml.safe_load(listed.stdout)["items"]] == ["adhoc"]


def test_restore_create_builds_what_the_api_admits(lab: Any, kube_api: Any, namespace: str) -> None:
    """Each kind of target from flags, created in the lab apiserver (its schema and CEL
    rules admit them; no operator runs, so they stay Pending); a missing confirmation or
    two targets are usage errors before anything is sent."""
    env = dict(os.environ, KUBECONFIG=str(lab.paths.kubeconfig))
    base = ("restore", "create", "--backup", "nightly", "-n", namespace, "-o", "json")
    cases = {
        "as-new": (
            ["--new-vm", "web/01 ü", "--datastore", "ds1", "--network-map", "a=b", "--power-on"],
            {"newVM": {"name": "web/01 ü", "powerOn": True, "datastore": "ds1",
                       "networkMap": [{"from": "a", "to": "b"}]}},
        ),
        "over": (["--in-place", "--confirm"], {"inPlace": {"confirm": True}}),
        "disk": (
            ["--disk", "2000", "--attach-to", "vm-42"],
            {"disks": [{"source": {"key": 2000}, "attachTo": {"vm": {"moref": "vm-42"}}}]},
        ),
        "files": (
            ["--files", "/etc/**", "--to-s3", "out/etc", "--files-disk", "Hard disk 1"],
            {"files": {"paths": ["/etc/**"], "to": {"s3": {"prefix": "out/etc"}},
                       "disk": {"label": "Hard disk 1"}}},
        ),
    }  # fmt: skip
    for name, (flags, target) in cases.items():
        done = run(vmguard(*base, "--name", name, *flags), env)
        assert done.returncode == 0, (name, done.stderr)
        assert json.loads(done.stdout)["spec"]["target"] == target
        stored = objects.get(kube_api, namespace, "vmguardrestores", name)
        assert stored["spec"]["source"] == {"backupRef": {"name": "nightly"}}
        assert stored["spec"]["target"] == target
    for flags in (["--in-place"], ["--new-vm", "x", "--in-place", "--confirm"], []):
        refused = run(vmguard(*base, "--name", "refused", *flags), env)
        assert refused.returncode == 2, (flags, refused.stderr)
    # A ProtectedVM's point as the source, by archive id or by time.
    point = ("restore", "create", "--protected-vm", "lab-0123", "-n", namespace, "-o", "json")
    new_vm = ("--new-vm", "x")
    for name, flags, source in [
        ("by-id", ["--archive", "a1"], {"protectedVM": "lab-0123", "archiveId": "a1"}),
        (
            "by-time",
            ["--at", "2026-01-31T02:00:00+01:00"],
            {"protectedVM": "lab-0123", "at": "2026-01-31T01:00:00Z"},
        ),
    ]:
        done = run(vmguard(*point, "--name", name, *flags, *new_vm), env)
        assert done.returncode == 0, (name, done.stderr)
        assert objects.get(kube_api, namespace, "vmguardrestores", name)["spec"]["source"] == source
    for flags in (
        [],  # neither --archive nor --at
        ["--archive", "a1", "--at", "2026-01-01T00:00:00Z"],
        ["--at", "yesterday"],
        ["--backup", "nightly", "--archive", "a1"],
    ):
        refused = run(vmguard(*point, "--name", "refused", *flags, *new_vm), env)
        assert refused.returncode == 2, (flags, refused.stderr)
    made = objects.items(kube_api, namespace, "vmguardrestores")
    assert [o["metadata"]["name"] for o in made] == [
        "as-new", "by-id", "by-time", "disk", "files", "over",
    ]  # fmt: skip
