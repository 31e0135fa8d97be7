"""The boot test of a verification through the operator (issue 18, acceptance 3).

A policy verifies each backup by booting it: the point is restored as a temporary VM
whose NICs are all on the isolated port group, powered on, its VMware Tools heartbeat
awaited (the lab's tools come up after power-on), the check script run in the lab guest;
its exit code decides. The script waits for a gate file the test creates, so the test
looks at the temporary VM while it exists: every NIC on the isolated port group, an
instance UUID and MAC addresses of its own. Afterwards no such VM is left, the result,
exit code and recovery time are on the backup and on the ProtectedVM's point.

The operator SIGKILLed while the script runs: the restarted operator resumes the boot
test, and after the next sweep no temporary VM is left.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.controller import objects
from tests.controller.backup_helpers import TINY_DISK, create_backup, data_vm, wait_done
from tests.controller.conftest import OperatorProcess
from tests.controller.test_verification import config_map

from vmguard.api import BOOT_VM_PREFIX
from vmguard_lab.procs import eventually

pytestmark = [
    pytest.mark.lab,
    pytest.mark.operator_controllers("backups,policies,repositories,restores,vcenters"),
]

ISOLATED = "DC0_DVPG0"
"""A distributed port group of the simulator's inventory; the lab VMs are on VM Network."""


def _script(gate: Path, code: int) -> str:
    return f"while [ ! -e {gate} ]; do sleep 0.1; done\necho checked\nexit {code}\n"


def _setup(
    kube_api: Any,
    ns: str,
    guest: dict[str, Any],
    gate: Path,
    code: int,
    network: str = ISOLATED,
    fsck: bool = False,
) -> None:
    objects.create_repository(kube_api, ns, "repo", guest["s3"], prefix="repo", chunkSize=1 << 20)
    config_map(kube_api, ns, "checks", {"check.sh": _script(gate, code)})
    objects.secret(
        kube_api,
        ns,
        "guest",
        {
            "username": guest["vsphere"]["guest_username"],
            "password": guest["vsphere"]["guest_password"],
        },
    )
    objects.create_policy(
        kube_api,
        ns,
        "booted",
        selector={"names": ["nothing-*"]},
        verification={
            "fsck": fsck,
            "boot": {
                "isolatedNetwork": network,
                "script": {"configMapRef": {"name": "checks"}, "key": "check.sh"},
                "guestCredentialsSecretRef": {"name": "guest"},
                "timeout": "2m",
            },
        },
    )


def _booting(kube_api: Any, ns: str, name: str) -> dict[str, Any]:
    def running() -> dict[str, Any] | None:
        obj = objects.get(kube_api, ns, "vmguardbackups", name)
        boot = obj.get("status", {}).get("verification", {}).get("boot", {})
        return boot if boot.get("phase") == "Booting" and boot.get("poweredOnTime") else None

    boot: dict[str, Any] = eventually(running, timeout=180, what=f"{name}'s boot test booting")
    return boot


def _script_started(vsim: Any, moref: str) -> Any:
    def started() -> dict[str, Any] | None:
        procs = [p for p in vsim.guest_processes(moref) if p.pid]
        return procs[-1] if procs else None

    proc: Any = eventually(started, timeout=120, what="the check script started")
    return proc


def _nics(vc: Any, moref: str) -> tuple[str, list[tuple[str, str]]]:
    """The VM's instance UUID and (MAC address, port group key or network name) per NIC."""
    from pyVmomi import vim

    from vmguard.vsphere.inventory import find_vm

    def read(si: Any) -> tuple[str, list[tuple[str, str]]]:
        vm = find_vm(si, moref)
        out = []
        for dev in vm.config.hardware.device:
            if isinstance(dev, vim.vm.device.VirtualEthernetCard):
                b = dev.backing
                where = getattr(getattr(b, "port", None), "portgroupKey", None) or getattr(
                    b, "deviceName", ""
                )
                out.append((str(dev.macAddress), str(where)))
        return str(vm.config.instanceUuid), out

    result: tuple[str, list[tuple[str, str]]] = vc.call(read)
    return result


def _portgroup_key(vc: Any, name: str) -> str:
    from pyVmomi import vim

    def read(si: Any) -> str:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.Network], True)
        try:
            return next(str(n.key) for n in view.view if n.name == name)
        finally:
            view.Destroy()

    key: str = vc.call(read)
    return key


def _boot_vms(vc: Any, namespace: str) -> list[str]:
    """The names of this namespace's boot test VMs (other tests' are not ours to judge)."""
    prefix = f"{BOOT_VM_PREFIX}{namespace}."

    from vmguard.vsphere.inventory import retrieve

    def read(si: Any) -> list[str]:
        from pyVmomi import vim

        found = retrieve(si, [vim.VirtualMachine], {vim.VirtualMachine: ["name"]})
        return sorted(str(p.get("name")) for _, p in found if str(p.get("name")).startswith(prefix))

    names: list[str] = vc.call(read)
    return names


def _verified(kube_api: Any, ns: str, name: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        obj = objects.get(kube_api, ns, "vmguardbackups", name)
        v = obj.get("status", {}).get("verification", {})
        return obj if v.get("phase") == "Completed" else None

    obj: dict[str, Any] = eventually(ended, timeout=180, what=f"{name} verified")
    return obj


def _restore_gone(kube_api: Any, ns: str) -> None:
    """The temporary VM's VMGuardRestore is deleted before the boot test says Completed,
    but it carries kopf's finalizer (the restore's daemon): it is gone only once the
    operator has seen the deletion and removed that, a moment after. Wait for it."""
    eventually(
        lambda: objects.items(kube_api, ns, "vmguardrestores") == [],
        timeout=30,
        what="the temporary VM's restore gone",
    )


@pytest.mark.parametrize("code", [0, 3], ids=["script-passes", "script-fails"])
def test_a_boot_test_runs_the_point_isolated_and_removes_its_vm(
    code: int,
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    lab_state: dict[str, Any],
    s3_bucket: dict[str, Any],
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    gate = tmp_path / "go"
    _setup(kube_api, namespace, {**lab_state, "s3": s3_bucket}, gate, code)
    start_operator()
    key = _portgroup_key(vc, ISOLATED)
    with data_vm(vc, vsim, image_factory, tmp_path, spec=TINY_DISK) as vm:
        create_backup(kube_api, namespace, "b1", {"moref": vm.moref}, policyRef={"name": "booted"})
        assert wait_done(kube_api, namespace, "b1")["status"]["phase"] == "Completed"
        boot = _booting(kube_api, namespace, "b1")
        moref = boot["vm"]["moref"]
        proc = _script_started(vsim, moref)
        # sh -c WRAPPER INTERPRETER SCRIPT OUTFILE: the script through the interpreter,
        # its output into a file read back afterwards.
        assert proc.program == "/bin/sh" and proc.args[0] == "-c" and len(proc.args) == 5
        assert proc.args[2] == "/bin/sh" and str(gate) in proc.args[3]
        # The temporary VM while it exists: every NIC on the isolated port group, its own
        # instance UUID and MAC addresses.
        source_uuid, source_nics = _nics(vc, vm.moref)
        uuid, nics = _nics(vc, moref)
        assert nics and all(where == key for _, where in nics), nics
        assert uuid != source_uuid
        assert not {mac for mac, _ in nics} & {mac for mac, _ in source_nics}
        gate.touch()
        obj = _verified(kube_api, namespace, "b1")
    v = obj["status"]["verification"]
    boot = v["boot"]
    assert boot["exitCode"] == code and boot["phase"] == "Completed", boot
    assert boot["output"] == "checked\n"  # read back from the guest
    # The heartbeat was awaited: seen after power-on, before the script's verdict.
    assert boot["startTime"] <= boot["poweredOnTime"] <= boot["heartbeatTime"]
    if code == 0:
        assert v["result"] == boot["result"] == "Passed", v
        assert boot["recoveryTimeSeconds"] > 0
        cond = objects.condition(obj, "Verified")
        assert cond["status"] == "True" and "recovery time" in cond["message"]
    else:
        assert v["result"] == boot["result"] == "Failed", v
        assert v["findings"][0]["check"] == "boot" and "exit code 3" in v["findings"][0]["message"]
        assert "recoveryTimeSeconds" not in boot
    assert _boot_vms(vc, namespace) == []
    _restore_gone(kube_api, namespace)
    [pvm] = objects.items(kube_api, namespace, "protectedvms")
    point = next(p for p in pvm["status"]["points"] if p["backup"] == "b1")
    assert point["verification"]["boot"]["result"] == boot["result"]
    assert point["verification"]["boot"]["exitCode"] == code


def test_a_boot_test_runs_where_the_file_system_check_may_not(
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    lab_state: dict[str, Any],
    s3_bucket: dict[str, Any],
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    """This namespace is not labelled for privileged proxies, so the file-system check
    (a privileged pod) is refused before any Job; the boot test needs no privilege and
    still runs: its result is recorded, and the verification is Error for the check
    that did not run."""
    gate = tmp_path / "go"
    gate.touch()
    _setup(kube_api, namespace, {**lab_state, "s3": s3_bucket}, gate, 0, fsck=True)
    start_operator()
    with data_vm(vc, vsim, image_factory, tmp_path, spec=TINY_DISK) as vm:
        create_backup(kube_api, namespace, "b1", {"moref": vm.moref}, policyRef={"name": "booted"})
        assert wait_done(kube_api, namespace, "b1")["status"]["phase"] == "Completed"
        obj = _verified(kube_api, namespace, "b1")
    v = obj["status"]["verification"]
    assert v.get("boot", {}).get("result") == "Passed", v
    assert v["boot"]["recoveryTimeSeconds"] > 0
    assert v["result"] == "Error", v
    [fsck] = [f for f in v["findings"] if f["check"] == "fsck"]
    assert "not run" in fsck["message"] and "privileged" in fsck["message"], fsck
    assert _boot_vms(vc, namespace) == []


@pytest.mark.operator_speedup(20)
@pytest.mark.parametrize("then", ["restarted", "backup-deleted"])
def test_an_operator_killed_mid_boot_test_leaves_no_vm_behind(
    then: str,
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    lab_state: dict[str, Any],
    s3_bucket: dict[str, Any],
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    """``restarted``: the restarted operator resumes the boot test (the script runs again)
    and destroys the VM. ``backup-deleted``: the backup is deleted while the operator is
    gone, so no verification is left to resume: the vCenter sweep destroys the VM."""
    gate = tmp_path / "go"
    _setup(kube_api, namespace, {**lab_state, "s3": s3_bucket}, gate, 0)
    first = start_operator()
    with data_vm(vc, vsim, image_factory, tmp_path, spec=TINY_DISK) as vm:
        create_backup(kube_api, namespace, "b1", {"moref": vm.moref}, policyRef={"name": "booted"})
        assert wait_done(kube_api, namespace, "b1")["status"]["phase"] == "Completed"
        boot = _booting(kube_api, namespace, "b1")
        moref, name = boot["vm"]["moref"], boot["vm"]["name"]
        _script_started(vsim, moref)
        first.kill()
        assert _boot_vms(vc, namespace) == [name], (
            "the temporary VM exists while the operator is gone"
        )
        gate.touch()
        if then == "backup-deleted":
            objects.custom(kube_api).delete_namespaced_custom_object(
                objects.G, objects.V, namespace, "vmguardbackups", "b1"
            )
        second = start_operator()
        if then == "restarted":
            obj = _verified(kube_api, namespace, "b1")
            boot = obj["status"]["verification"]["boot"]
            assert boot["result"] == "Passed" and boot["exitCode"] == 0, boot
        eventually(lambda: _boot_vms(vc, namespace) == [], timeout=90, what="no boot test VM left")
    if then == "backup-deleted":
        # The sweep logs the VMs it destroyed once all of them are (and their restores
        # deleted): the line follows the VM's disappearance from the vCenter.
        eventually(
            lambda: f"boot test VM {name}: its test is over; destroyed" in second.log.read_text(),
            timeout=30,
            what="the sweep's line about the VM it destroyed",
        )
    eventually(
        lambda: objects.items(kube_api, namespace, "vmguardrestores") == [],
        timeout=60,
        what="the temporary VM's restore gone",
    )


@pytest.mark.operator_speedup(20)
def test_a_boot_test_whose_check_script_is_missing_is_the_policys_condition(
    kube_api: Any,
    namespace: str,
    lab_vcenter: str,
    lab_repository: str,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    boot = {
        "isolatedNetwork": ISOLATED,
        "script": {"configMapRef": {"name": "checks"}, "key": "check.sh"},
        "guestCredentialsSecretRef": {"name": "guest"},
    }
    objects.create_policy(
        kube_api,
        namespace,
        "gold",
        selector={"names": ["nothing-*"]},
        # fsck off: in this unlabelled namespace it would be refused (Pod Security) and
        # that reason would hide the script's
        verification={"fsck": False, "boot": boot},
    )
    start_operator()

    def ready(status: str) -> dict[str, Any] | None:
        obj = objects.get(kube_api, namespace, "vmprotectionpolicies", "gold")
        found = objects.condition(obj, "VerificationReady")
        return found if found.get("status") == status else None

    refused = eventually(lambda: ready("False"), timeout=60, what="VerificationReady=False")
    assert refused["reason"] == "BootScriptNotFound"
    assert "ConfigMap checks has no key 'check.sh'" in refused["message"], refused
    config_map(kube_api, namespace, "checks", {"check.sh": "exit 0\n"})
    fixed = eventually(lambda: ready("True"), timeout=60, what="VerificationReady=True")
    assert f"boot in {ISOLATED}" in fixed["message"], fixed


def test_a_boot_test_in_a_network_the_vcenter_lacks_ends_as_error_having_made_nothing(
    kube_api: Any,
    vc: Any,
    vsim: Any,
    image_factory: Any,
    namespace: str,
    lab_vcenter: str,
    lab_state: dict[str, Any],
    s3_bucket: dict[str, Any],
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    _setup(kube_api, namespace, {**lab_state, "s3": s3_bucket}, tmp_path / "go", 0, "no-such-pg")
    start_operator()
    with data_vm(vc, vsim, image_factory, tmp_path, spec=TINY_DISK) as vm:
        create_backup(kube_api, namespace, "b1", {"moref": vm.moref}, policyRef={"name": "booted"})
        assert wait_done(kube_api, namespace, "b1")["status"]["phase"] == "Completed"
        obj = _verified(kube_api, namespace, "b1")
    v = obj["status"]["verification"]
    assert v["result"] == v["boot"]["result"] == "Error", v
    assert "no network named 'no-such-pg'" in v["boot"]["message"], v["boot"]
    assert objects.condition(obj, "Verified")["status"] == "Unknown"
    assert _boot_vms(vc, namespace) == []
    _restore_gone(kube_api, namespace)
