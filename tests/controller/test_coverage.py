"""``vmguard status`` over a real sweep: the operator sweeps the vSphere simulator, writes
every VM into the VCenter's ``status.vmList``, and the command (a separate process, as a
user runs it) prints every simulator VM with the policy that list gives it, a VM created
with no policy as unprotected, and a VM backed up through a real proxy Job with its last
good backup.

Only the VCenter, VMGuardBackup and VMGuardRepository controllers run (the last creates the
repository), and every policy here is paused: the fail-safe makes no backups of the
shared lab's VMs, so the one backup is the test's own.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.controller import objects
from tests.controller.backup_helpers import TAKEN, create_backup, wait_done
from tests.controller.test_policies import GOLD, new_vm, tagged
from tests.vsphere.helpers import pick_vm, restored_afterwards

from vmguard.cli.coverage import unescape_name
from vmguard.cli.status import display_width
from vmguard.controller.kube.kubeapi import KubeAPI
from vmguard.controller.vcenter import sweeper
from vmguard_lab.procs import eventually

pytestmark = [pytest.mark.lab, pytest.mark.operator_controllers("vcenters,backups,repositories")]

POWER = {"poweredOn": "on", "poweredOff": "off", "suspended": "suspended"}


def status(lab: Any, ns: str, *args: str) -> str:
    env = dict(os.environ, KUBECONFIG=str(lab.paths.kubeconfig))
    argv = [sys.executable, "-m", "vmguard.cli", "status", "-n", ns, *args]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def vm_list(kube_api: Any, ns: str) -> dict[str, dict[str, Any]]:
    """instance UUID → entry of the VCenter's status.vmList (empty before a sweep)."""
    status_ = objects.get(kube_api, ns, "vcenters", "lab").get("status") or {}
    return {i["u"]: i for i in (status_.get("vmList") or {}).get("items", [])}


def test_status_lists_every_swept_vm_with_policy_and_last_good_backup(
    lab: Any,
    lab_state: dict[str, Any],
    kube_api: Any,
    vc: Any,
    vsim: Any,
    vsphere_si: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    operator_log: Path,
    tmp_path: Path,
) -> None:
    ns = namespace
    gold = tagged(lab_state, vsim, "backup-tier:gold")
    lab_vm = pick_vm(vsim, TAKEN)
    lonely = f"lonely-{secrets.token_hex(3)}"
    try:
        with new_vm(vsphere_si, lonely) as made, restored_afterwards(vc, vsim, lab_vm, tmp_path):
            lonely_uuid = made.config.instanceUuid.lower()
            picked_uuid = lab_vm.instance_uuid.lower()
            # Policies after the VM exists: creating them wakes the sweeper.
            objects.create_policy(kube_api, ns, "gold", selector=GOLD, paused=True)
            objects.create_policy(
                kube_api, ns, "picked", selector={"names": [lab_vm.name]}, priority=10, paused=True
            )
            create_backup(kube_api, ns, "adhoc", {"moref": lab_vm.moref})

            def swept() -> dict[str, dict[str, Any]] | None:
                listed = vm_list(kube_api, ns)
                ready = lonely_uuid in listed and listed.get(picked_uuid, {}).get("p") == "picked"
                return listed if ready else None

            listed = eventually(swept, timeout=90, what="a sweep listing the new VM")
            done = wait_done(kube_api, ns, "adhoc")["status"]
            assert done["phase"] == "Completed", done

            # The VCenter's list is the simulator's inventory, with each VM's policy.
            vms = {v.instance_uuid.lower(): v for v in vsim.vms() if not v.template}
            assert set(listed) == set(vms)
            vc_status = objects.get(kube_api, ns, "vcenters", "lab")["status"]
            assert vc_status["vmList"]["total"] == len(vms) == vc_status["vms"]["discovered"]
            assert vc_status["vmList"]["truncated"] is False
            for uuid, v in vms.items():
                want = "picked" if uuid == picked_uuid else ("gold" if uuid in gold else None)
                assert listed[uuid].get("p") == want, v.name
                assert (listed[uuid]["n"], listed[uuid]["m"]) == (v.name, v.moref)
                assert listed[uuid]["s"] == POWER[v.power_state]

            # The command prints every one of them, with the policy the list gives.
            doc = json.loads(status(lab, ns, "--json"))
            rows = {r["instanceUuid"]: r for r in doc["vms"]}
            assert set(rows) == set(vms)
            for uuid, row in rows.items():
                assert row["policy"] == listed[uuid].get("p")
                assert row["inventoryName"] == vms[uuid].name
                assert row["vm"] == unescape_name(vms[uuid].name)
            assert (rows[lonely_uuid]["policy"], rows[lonely_uuid]["rpoState"]) == (
                None,
                "unprotected",
            )
            picked = rows[picked_uuid]
            assert (picked["lastGoodBackup"], picked["rpoState"]) == ("adhoc", "ok")
            assert picked["lastGoodBackupTime"] == done["completionTime"]
            assert all(
                r["rpoState"] == "never" for u, r in rows.items() if u in gold and u != picked_uuid
            )
            unprotected = len(vms) - len(set(gold) | {picked_uuid})
            assert doc["summary"]["unprotected"] == unprotected == vc_status["vms"]["unprotected"]

            # The table: vSphere's escapes undone, wide names keep the columns aligned.
            table = status(lab, ns).splitlines()
            head, body = table[0], table[1 : 1 + len(vms)]
            assert table[1 + len(vms)].startswith(f"{len(vms)} VMs: 1 ok, ")
            column = display_width(head[: head.index("VCENTER")])
            for line in body:
                cells = line.split("   ")
                assert display_width(cells[0]) <= column and line.count(" lab ") >= 1
                start = display_width(line[: line.index("   lab   ") + 3])
                assert start == column, line
            names = {line[: line.index("   lab   ")].rstrip() for line in body}
            slashed = [v.name for v in vms.values() if "%2f" in v.name]
            wide = [v.name for v in vms.values() if display_width(v.name) > len(v.name)]
            assert slashed and wide, "the lab has a slash-laden and a CJK-named VM"
            assert {unescape_name(n) for n in slashed + wide} <= names
            assert not any("%2f" in n for n in names)

            # A paused default policy catches every VM no other policy selects.
            objects.create_policy(kube_api, ns, "fail-safe", default=True, paused=True)
            eventually(
                lambda: vm_list(kube_api, ns).get(lonely_uuid, {}).get("d"),
                timeout=60,
                what="the default policy in the list",
            )
            doc = json.loads(status(lab, ns, "--json"))
            row = next(r for r in doc["vms"] if r["instanceUuid"] == lonely_uuid)
            assert (row["policy"], row["byDefault"], row["rpoState"]) == (
                "fail-safe",
                True,
                "never",
            )
            assert doc["summary"]["byDefault"] == unprotected and doc["summary"]["unprotected"] == 0
            assert "fail-safe (default)" in status(lab, ns)
    finally:
        TAKEN.discard(lab_vm.moref)
    assert "Traceback" not in operator_log.read_text()


def test_a_sweep_resends_the_vm_list_only_when_it_changed(
    kube_api: Any, lab_state: dict[str, Any], namespace: str, lab_vcenter: str
) -> None:
    """Two sweeps of the simulator (the controller's own function, no operator): the
    second, seeing the first's list in the stored status, leaves ``vmList`` out of its
    patch; a new policy changes the assignments and the list goes out again."""
    api = KubeAPI(kube_api)
    body = objects.get(kube_api, namespace, "vcenters", "lab")
    first = asyncio.run(sweeper.sweep(api, body, 30.0))
    assert first.status["reachable"] is True
    sent = first.status["vmList"]
    assert sent["listed"] == sent["total"] == first.status["vms"]["discovered"] > 0
    assert all("p" not in item for item in sent["items"])  # no policy yet

    body = {**body, "status": json.loads(json.dumps(first.status))}  # as the apiserver stores it
    again = asyncio.run(sweeper.sweep(api, body, 30.0))
    assert again.status["reachable"] is True and "vmList" not in again.status

    objects.create_policy(kube_api, namespace, "gold", selector=GOLD)
    changed = asyncio.run(sweeper.sweep(api, body, 30.0))
    assert any(item.get("p") == "gold" for item in changed.status["vmList"]["items"])
