"""``vmguard status`` (and ``kubectl vmguard status``) against the lab apiserver.

No operator runs here: the test creates a VCenter, policies and VMGuardBackups in a fresh
namespace and writes their status through the status subresource, as the operator
would, so the coverage it expects is exactly what the objects say. The command runs as
a separate process with the lab's kubeconfig, as a user would run it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.controller import objects

pytestmark = pytest.mark.lab

NOW = dt.datetime.now(dt.UTC)
WEB = ("4211aaaa-0000-0000-0000-00000000000a", "vm-101", "web/01 ünïcode")
DB = ("4211bbbb-0000-0000-0000-00000000000b", "vm-102", "db-01")
NEW = ("4211cccc-0000-0000-0000-00000000000c", "vm-103", "new-vm")
LONELY = ("4211dddd-0000-0000-0000-00000000000d", "vm-104", "lonely%2f1")
LONELY_2 = ("4211eeee-0000-0000-0000-00000000000e", "vm-105", "lonely-2")


def ts(hours_ago: float) -> str:
    return (NOW - dt.timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def patch_status(kube_api: Any, ns: str, plural: str, name: str, status: dict[str, Any]) -> None:
    objects.custom(kube_api).patch_namespaced_custom_object_status(
        objects.G, objects.V, ns, plural, name, {"status": status}
    )


def make_backup(
    kube_api: Any, ns: str, name: str, vm: tuple[str, str, str], policy: str, status: dict[str, Any]
) -> None:
    uuid, moref, vm_name = vm
    objects.create(
        kube_api,
        ns,
        "vmguardbackups",
        "VMGuardBackup",
        name,
        {
            "vm": {"instanceUuid": uuid, "moref": moref, "name": vm_name},
            "policyRef": {"name": policy},
        },
        labels={"vmguard.io/policy": policy, "vmguard.io/vm": uuid, "vmguard.io/vcenter": "lab"},
        annotations={"vmguard.io/vm-name": vm_name},
    )
    vm_status = {"vm": {"instanceUuid": uuid, "moref": moref, "name": vm_name}, "vcenter": "lab"}
    patch_status(kube_api, ns, "vmguardbackups", name, {**vm_status, **status})


def listed(vm: tuple[str, str, str], policy: str | None) -> dict[str, Any]:
    uuid, moref, name = vm
    return {"n": name, "u": uuid, "m": moref, "s": "on", **({"p": policy} if policy else {})}


@pytest.fixture
def estate(kube_api: Any, namespace: str) -> str:
    """lab: 5 VMs — web (daily, backed up 2h ago), db (hourly with rpo 2h, last good
    backup 30h ago), new-vm (daily, only a failed backup), 2 unprotected."""
    ns = namespace
    objects.create(
        kube_api,
        ns,
        "vcenters",
        "VCenter",
        "lab",
        {"host": "vc.example.test", "credentialsSecretRef": {"name": "lab-creds"}},
    )
    items = [listed(WEB, "daily"), listed(DB, "hourly"), listed(NEW, "daily")]
    items += [listed(LONELY, None), listed(LONELY_2, None)]
    patch_status(
        kube_api,
        ns,
        "vcenters",
        "lab",
        {
            "reachable": True,
            "lastSweepTime": ts(0.05),
            "vms": {"discovered": 5, "protected": 3, "protectedByDefault": 0, "unprotected": 2},
            "vmList": {"total": 5, "listed": 5, "truncated": False, "items": items},
        },
    )
    objects.create_policy(kube_api, ns, "daily", selector={"names": ["web*", "new*"]})
    objects.create_policy(
        kube_api,
        ns,
        "hourly",
        selector={"names": ["db*"]},
        schedule={"cron": "0 * * * *"},
        rpo="2h",
    )
    patch_status(kube_api, ns, "vmprotectionpolicies", "daily", {"matchedVMs": 2})
    patch_status(kube_api, ns, "vmprotectionpolicies", "hourly", {"matchedVMs": 1})
    done = {"phase": "Completed"}
    make_backup(kube_api, ns, "web-old", WEB, "daily", {**done, "completionTime": ts(26)})
    make_backup(kube_api, ns, "web-new", WEB, "daily", {**done, "completionTime": ts(2)})
    make_backup(kube_api, ns, "db-good", DB, "hourly", {**done, "completionTime": ts(30)})
    make_backup(kube_api, ns, "db-bad", DB, "hourly", {"phase": "Failed", "completionTime": ts(1)})
    make_backup(kube_api, ns, "new-bad", NEW, "daily", {"phase": "Failed", "completionTime": ts(1)})
    return ns


def run(argv: list[str], lab: Any, path: str | None = None) -> str:
    env = dict(os.environ, KUBECONFIG=str(lab.paths.kubeconfig))
    if path:
        env["PATH"] = path
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def vmguard(*args: str) -> list[str]:
    return [sys.executable, "-m", "vmguard.cli", *args]


def test_status_lists_every_vm_with_its_policy_and_rpo_state(lab: Any, estate: str) -> None:
    doc = json.loads(run(vmguard("status", "-n", estate, "--json"), lab))
    rows = {r["vm"]: r for r in doc["vms"]}
    assert set(rows) == {WEB[2], DB[2], NEW[2], "lonely/1", "lonely-2"}
    assert {k: rows[WEB[2]][k] for k in ("policy", "rpoState", "lastGoodBackup", "vcenter")} == {
        "policy": "daily",
        "rpoState": "ok",
        "lastGoodBackup": "web-new",
        "vcenter": "lab",
    }
    assert rows[WEB[2]]["lastGoodBackupTime"] == ts(2)
    assert (rows[DB[2]]["policy"], rows[DB[2]]["rpoState"]) == ("hourly", "breached")
    assert rows[DB[2]]["lastGoodBackup"] == "db-good"  # the failed one is not good
    assert (rows[NEW[2]]["policy"], rows[NEW[2]]["rpoState"]) == ("daily", "never")
    assert rows[NEW[2]]["lastGoodBackupTime"] is None
    lonely = rows["lonely/1"]
    assert (lonely["policy"], lonely["rpoState"], lonely["inventoryName"]) == (
        None,
        "unprotected",
        "lonely%2f1",
    )
    assert doc["summary"]["unprotected"] == 2 and doc["summary"]["vms"] == 5
    assert doc["vcenters"][0]["lastSweepTime"] == ts(0.05)
    assert doc["notes"] == []


def test_table_through_kubectl_plugin(lab: Any, kubectl: Path, estate: str, tmp_path: Path) -> None:
    # kubectl runs an executable named kubectl-vmguard found on PATH; the installed
    # console script is one (pyproject.toml), this shim stands in for the venv's.
    plugin = tmp_path / "kubectl-vmguard"
    plugin.write_text(f'#!/bin/sh\nexec {sys.executable} -m vmguard.cli "$@"\n')
    plugin.chmod(0o755)
    path = f"{tmp_path}:{os.environ['PATH']}"
    text = run([str(kubectl), "vmguard", "status", "-n", estate, "-o", "wide"], lab, path)
    lines = text.splitlines()
    assert lines[0].split()[:6] == ["VM", "VCENTER", "POLICY", "LAST-GOOD-BACKUP", "AGE", "RPO"]
    by_vm = {line.split("   ")[0].strip(): line for line in lines[1:6]}
    assert set(by_vm) == {WEB[2], DB[2], NEW[2], "lonely/1", "lonely-2"}
    assert by_vm[DB[2]].split()[1:3] == ["lab", "hourly"] and " breached " in by_vm[DB[2]]
    assert " ok " in by_vm[WEB[2]] and "web-new" in by_vm[WEB[2]]
    assert " never " in by_vm[NEW[2]]
    assert "UNPROTECTED" in by_vm["lonely/1"] and " unprotected " in by_vm["lonely/1"]
    assert lines[6] == "5 VMs: 1 ok, 1 breached, 1 never backed up, 2 unprotected"
    # -A shows the namespace column and finds the same rows
    every = run(vmguard("status", "-A"), lab)
    assert every.splitlines()[0].split()[0] == "NAMESPACE"
    assert sum(1 for line in every.splitlines() if line.startswith(estate + " ")) == 5


def test_a_vm_whose_backup_runs_expired_is_read_from_its_protected_vm(
    lab: Any, kube_api: Any, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No VMGuardBackup is left (the runs expired); the ProtectedVMs say when each VM was
    last backed up. Read in pages: with a page of one object, every VM is still found."""
    from vmguard.cli import status
    from vmguard.cli.kube import Cluster
    from vmguard.controller.kube.points import protected_vm_name

    ns = namespace
    objects.create(
        kube_api,
        ns,
        "vcenters",
        "VCenter",
        "lab",
        {"host": "vc.example.test", "credentialsSecretRef": {"name": "lab-creds"}},
    )
    items = [listed(WEB, "daily"), listed(DB, "daily")]
    patch_status(
        kube_api,
        ns,
        "vcenters",
        "lab",
        {
            "reachable": True,
            "lastSweepTime": ts(0.05),
            "vmList": {"total": 2, "listed": 2, "truncated": False, "items": items},
        },
    )
    objects.create_policy(kube_api, ns, "daily", selector={"names": ["web*", "db*"]})
    for vm, hours in [(WEB, 3), (DB, 50)]:
        name = protected_vm_name("lab", vm[0])
        objects.create(kube_api, ns, "protectedvms", "ProtectedVM", name, {})
        point = {"archiveId": f"a-{vm[1]}", "repository": "repo", "time": ts(hours)}
        patch_status(
            kube_api,
            ns,
            "protectedvms",
            name,
            {
                "vm": {"instanceUuid": vm[0], "moref": vm[1], "name": vm[2]},
                "vcenter": "lab",
                "policy": "daily",
                "points": [point],
                "pointCount": 1,
                "lastGoodPoint": {"archiveId": point["archiveId"], "time": point["time"]},
            },
        )
    doc = json.loads(run(vmguard("status", "-n", ns, "--json"), lab))
    rows = {r["vm"]: r for r in doc["vms"]}
    assert {vm: (r["rpoState"], r["lastGoodBackup"]) for vm, r in rows.items()} == {
        WEB[2]: ("ok", "a-vm-101"),
        DB[2]: ("breached", "a-vm-102"),
    }
    assert rows[WEB[2]]["lastGoodBackupTime"] == ts(3)

    monkeypatch.setattr(status, "PAGE", 1)
    pages: list[str] = []
    cluster = Cluster(kube_api, ns, "lab")
    real_call = cluster.call

    def counting(what: str, request: Any) -> Any:
        pages.append(what)
        return real_call(what, request)

    monkeypatch.setattr(cluster, "call", counting)
    found = status.read_objects(cluster, ns)
    assert len(found["protectedvms"]) == 2
    assert pages.count("listing protectedvms") == 2  # one object a page
