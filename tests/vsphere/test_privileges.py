"""vmguard's vCenter role: the role script against the lab's simulator, and every call of
vmguard's processes in this test session covered by the role's privilege table.

govmomi's simulator enforces no privilege, so the check is by table:
``deploy/vsphere/privileges.txt`` names the privileges each call needs, the simulator
logs every distinct call with its User-Agent (``DIR/calls.jsonl``, lab/vsphere/calls.go),
and the operator, the proxies and the CLI send ``vmguard/<version> (<component>)``
(``vmguard.vsphere.session.user_agent``). The call-log test runs after every other test of
the session (marker ``after_all``; in a distributed run, on the last worker, over every
worker's lab: tests/distribute.py) and reads what the backups, restores, hooks, hot-adds
and tag sweeps of those tests called; it also checks that each feature was among them, so
a session that ran none of them cannot pass it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import VmomiSupport, vim

REPO = Path(__file__).resolve().parents[2]
TABLE = REPO / "deploy" / "vsphere" / "privileges.txt"
SCRIPT = REPO / "deploy" / "vsphere" / "create-role.sh"
SYSTEM = {"System.Anonymous", "System.View", "System.Read"}
"""What vCenter (and the simulator) adds to every role."""


@dataclass(frozen=True)
class Row:
    api: str
    object: str
    call: str
    privileges: frozenset[str]
    features: frozenset[str]


def table() -> list[Row]:
    rows = []
    for n, line in enumerate(TABLE.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cols = line.split()
        assert len(cols) == 5, f"privileges.txt:{n}: 5 columns expected: {line!r}"
        api, obj, call, privs, features = cols
        assert api in {"soap", "rest", "http", "vddk"}, f"privileges.txt:{n}: api {api!r}"
        rows.append(
            Row(
                api,
                obj,
                call,
                frozenset(p for p in privs.split(",") if p != "-"),
                frozenset(features.split(",")),
            )
        )
    return rows


def role_privileges() -> set[str]:
    return set().union(*(r.privileges for r in table()))


def _method_info(type_name: str, method: str) -> Any:
    """pyVmomi's description of a vim method (with the privId the API reference names)."""
    cls = VmomiSupport.GetWsdlType("urn:vim25", type_name)
    for klass in cls.__mro__:
        for info in getattr(klass, "_methodInfo", {}).values():
            if info.wsdlName == method:
                return info
    return None


@pytest.mark.unit
def test_the_table_names_real_methods_with_the_privilege_the_api_reference_gives() -> None:
    wrong = []
    for row in table():
        if row.api != "soap" or row.object == "*":
            continue
        method = row.call.split(":", 1)[0]
        info = _method_info(row.object, method)
        if info is None:
            wrong.append(f"{row.object}.{method}: no such method in the vSphere API")
        elif info.privId and info.privId not in row.privileges:
            wrong.append(f"{row.object}.{method}: the API reference names {info.privId}")
    assert not wrong, "\n".join(wrong)
    # ReconfigVM_Task's privileges depend on its spec; every part named must be a ConfigSpec field.
    fields = {p.name for p in vim.vm.ConfigSpec._GetPropertyList()}
    for row in table():
        if row.call.startswith("ReconfigVM_Task:"):
            assert row.call.split(":")[1] in fields, row.call


@pytest.mark.unit
def test_install_md_names_every_privilege_of_the_role() -> None:
    doc = (REPO / "docs" / "install.md").read_text()
    assert not sorted(p for p in role_privileges() if f"`{p}`" not in doc)


def _govc_env(lab: Any, lab_state: dict[str, Any]) -> dict[str, str]:
    vs = lab_state["vsphere"]
    return {
        **os.environ,
        "GOVC": str(lab.paths.bin / "govc"),
        "GOVC_URL": vs["sdk_url"],
        "GOVC_USERNAME": vs["username"],
        "GOVC_PASSWORD": vs["password"],
        "GOVC_TLS_CA_CERTS": vs["ca"],
    }


def _role(si: Any, name: str) -> Any:
    roles = [r for r in si.content.authorizationManager.roleList if r.name == name]
    return roles[0] if roles else None


@contextlib.contextmanager
def scripted_role(
    lab: Any, lab_state: dict[str, Any], si: Any, name: str, principal: str
) -> Iterator[Any]:
    """The role ``name`` as deploy/vsphere/create-role.sh leaves it, granted to ``principal``
    on the root folder; role and permission are removed afterwards."""
    auth, root = si.content.authorizationManager, si.content.rootFolder
    try:
        run = subprocess.run(
            ["sh", str(SCRIPT), "-n", name, "-p", principal],
            env=_govc_env(lab, lab_state),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        yield _role(si, name)
    finally:
        for p in auth.RetrieveEntityPermissions(root, False):
            if p.principal == principal:
                auth.RemoveEntityPermission(root, principal, p.group)
        role = _role(si, name)
        if role is not None:
            auth.RemoveAuthorizationRole(role.roleId, False)


@pytest.mark.lab
def test_the_role_script_makes_a_role_with_exactly_the_tables_privileges(
    lab: Any, lab_state: dict[str, Any], vsphere_si: Any
) -> None:
    auth = vsphere_si.content.authorizationManager
    name, principal = "vmguard-role-test", "svc-vmguard-test@vsphere.local"
    # A role of that name with a privilege too many and most missing: the script sets it
    # to exactly the table (what a rerun after an upgrade must do).
    if _role(vsphere_si, name) is None:
        auth.AddAuthorizationRole(name, ["VirtualMachine.Interact.Reset"])
    with scripted_role(lab, lab_state, vsphere_si, name, principal) as role:
        assert set(role.privilege) == role_privileges() | SYSTEM
        granted = [
            p
            for p in auth.RetrieveEntityPermissions(vsphere_si.content.rootFolder, False)
            if p.principal == principal
        ]
        assert [(p.roleId, p.propagate, p.group) for p in granted] == [(role.roleId, True, False)]
        # govc, the script's own tool, lists exactly the same privileges.
        env = _govc_env(lab, lab_state)
        listed = subprocess.run(
            [env["GOVC"], "role.ls", name], env=env, capture_output=True, text=True, check=True
        )
        assert set(listed.stdout.split()) == role_privileges() | SYSTEM


# What each feature calls at least once; all must be in the session's log, or it did not run.
HALLMARKS: dict[str, list[tuple[str, str, str]]] = {
    "discovery": [("soap", "ViewManager", "CreateContainerView")],
    "tags": [
        (
            "rest",
            "/rest/com/vmware/cis/tagging/tag-association?~action=list-attached-objects-on-tags",
            "POST",
        )
    ],
    "backup": [
        ("soap", "VirtualMachine", "CreateSnapshot_Task"),
        ("soap", "VirtualMachine", "QueryChangedDiskAreas"),
        ("soap", "VirtualMachineSnapshot", "RemoveSnapshot_Task"),
        ("soap", "VirtualMachine", "ReconfigVM_Task:changeTrackingEnabled"),
    ],
    "hooks": [("soap", "GuestProcessManager", "StartProgramInGuest")],
    "boot-test": [("soap", "GuestFileManager", "InitiateFileTransferFromGuest")],
    "hotadd": [
        ("soap", "SearchIndex", "FindByUuid"),
        ("soap", "VirtualMachine", "ReconfigVM_Task:deviceChange:add"),
        ("soap", "VirtualMachine", "ReconfigVM_Task:deviceChange:remove"),
    ],
    "restore-new-vm": [("soap", "Folder", "CreateVM_Task")],
    "restore-in-place": [
        ("soap", "VirtualMachine", "PowerOffVM_Task"),
        ("soap", "VirtualMachine", "ReconfigVM_Task:extraConfig"),
    ],
    "restore-disk": [("soap", "VirtualMachine", "ReconfigVM_Task:deviceChange:add/create")],
}
WHERE = (
    "tests/controller/test_restores.py, test_backup_hooks.py, test_policies.py, "
    "test_boot_test.py and "
    "tests/vm/test_vm_cli.py (hot-add) exercise them"
)


PRODUCT_AGENT = re.compile(r"vmguard/\S+ \((operator|proxy|cli)\)$")
"""The User-Agent of vmguard's processes (``vmguard.vsphere.session.user_agent``); the
tests' own sessions (fixture ``vc``) send plain ``vmguard/<version>``."""


def vmguard_calls(log: Path) -> set[tuple[str, str, str]]:
    """(api, object, call) of every call the operator, a proxy or the CLI made; a
    ReconfigVM_Task once per part of its spec."""
    calls = set()
    for line in log.read_text().splitlines():
        c = json.loads(line)
        if not PRODUCT_AGENT.match(c["agent"]):
            continue  # the simulator's own setup, govc, the tests' own sessions
        if c["api"] == "soap" and c["method"] == "ReconfigVM_Task":
            for part in (c.get("spec") or "").split(","):
                calls.add(("soap", c["object"], f"ReconfigVM_Task:{part}"))
        else:
            calls.add((c["api"], c["object"], c["method"]))
    return calls


@pytest.mark.lab
@pytest.mark.after_all
def test_every_call_vmguard_made_in_this_session_is_covered_by_the_role(
    lab: Any, lab_state: dict[str, Any], vsphere_si: Any, session_labs: list[Path]
) -> None:
    # Every lab of the session: a distributed run's workers each have one.
    calls = set().union(*(vmguard_calls(d / "vsphere" / "calls.jsonl") for d in session_labs))
    rows = {(r.api, r.object, r.call): r for r in table()}
    missing = sorted(
        f"{api} {obj} {call}"
        for api, obj, call in calls
        if (api, obj, call) not in rows and (api, "*", call) not in rows
    )
    assert not missing, "calls missing from deploy/vsphere/privileges.txt:\n" + "\n".join(missing)
    principal = "svc-vmguard-calls@vsphere.local"
    with scripted_role(lab, lab_state, vsphere_si, "vmguard-calls-test", principal) as role:
        uncovered = sorted(
            f"{' '.join(key)}: {', '.join(sorted(need - set(role.privilege)))}"
            for key in calls
            if not (need := (rows.get(key) or rows[(key[0], "*", key[2])]).privileges)
            <= set(role.privilege)
        )
    assert not uncovered, "calls the role does not allow:\n" + "\n".join(uncovered)
    not_run = {
        feature: [c for c in hallmarks if c not in calls]
        for feature, hallmarks in HALLMARKS.items()
        if not set(hallmarks) <= calls
    }
    assert not not_run, f"features that made none of their calls this session ({WHERE}): {not_run}"
