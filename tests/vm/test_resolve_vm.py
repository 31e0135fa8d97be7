"""Resolving a backup's VM costs the same at 10 VMs as at 60 (issue "Estate scale": a
full discovery per backup is thousands of property-collector calls a night at 5,000).

Two simulators of their own (10 and 60 VMs, 1 MiB disks: the lab's shared one is left
alone). The SOAP calls the client makes are counted by a wrapper around pyVmomi's
``SoapStubAdapter.InvokeMethod`` that only observes (method name, and how many
VirtualMachine objects each property-collector answer carried); the simulator's own call
log (calls.jsonl) records each distinct call once, so it cannot count. The ids a
policy's backup carries (moref and instance UUID) are resolved; so is each id alone.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from pyVmomi import SoapAdapter, vim

from vmguard.errors import VMNotFoundError
from vmguard.vm.cycle import resolve_vm
from vmguard.vsphere.session import Endpoint, VSphereSession
from vmguard_lab import build
from vmguard_lab.paths import LabPaths
from vmguard_lab.procs import eventually, free_port
from vmguard_lab.vsim import PASSWORD_ENV, USERNAME_ENV, VSimControl, vsim_command

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def simulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, dict[str, Any]]]:
    """A simulator of 10 VMs and one of 60: endpoint, CA, credentials and control URL."""
    binary = build.ensure_built(LabPaths.default(), only=("vsphere",))["vmguard-vcsim"]
    user, password = "resolve@vsphere.local", secrets.token_urlsafe(12)
    env = dict(os.environ, **{USERNAME_ENV: user, PASSWORD_ENV: password})
    procs, out = [], {}
    try:
        for vms in (10, 60):
            state = tmp_path_factory.mktemp(f"vcsim{vms}")
            argv = vsim_command(binary, state, free_port(), free_port(), vms, 5, 1 << 20)
            with open(state / "vcsim.log", "wb") as log:
                procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
            out[vms] = state
        for vms, state in list(out.items()):
            ready = state / "ready.json"
            eventually(lambda r=ready: r.exists() or None, timeout=60, what="the simulator")
            info = json.loads(ready.read_text())
            info.update(user=user, password=password)
            out[vms] = info
        yield out
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


class CallCounter:
    """SOAP calls the client made, and VirtualMachine objects the answers carried."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.vm_objects = 0

    def observe(self, name: str, result: Any) -> None:
        self.calls[name] += 1
        objects = getattr(result, "objects", None)
        if objects is None and isinstance(result, list):
            objects = result  # RetrieveContents answers a list of ObjectContent
        for oc in objects or ():
            if isinstance(getattr(oc, "obj", None), vim.VirtualMachine):
                self.vm_objects += 1


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> CallCounter:
    seen = CallCounter()
    invoke = SoapAdapter.SoapStubAdapter.InvokeMethod

    def counting(self: Any, mo: Any, info: Any, args: Any, *rest: Any) -> Any:
        result = invoke(self, mo, info, args, *rest)
        seen.observe(info.wsdlName, result)
        return result

    monkeypatch.setattr(SoapAdapter.SoapStubAdapter, "InvokeMethod", counting)
    return seen


def _resolve(
    info: dict[str, Any], counter: CallCounter, **ids: str
) -> tuple[str, Counter[str], int]:
    session = VSphereSession(
        Endpoint(info["sdk_url"], info["user"], info["password"], ca_file=info["tls_cert"])
    )
    try:
        session.call(lambda si: si.CurrentTime())  # logged in before counting
        counter.calls.clear()
        counter.vm_objects = 0
        record = resolve_vm(session, **ids)
        return record.moref, Counter(counter.calls), counter.vm_objects
    finally:
        session.close()


def test_resolving_by_moref_and_uuid_costs_the_same_at_10_and_60_vms(
    simulators: dict[int, dict[str, Any]], counter: CallCounter
) -> None:
    cost = {}
    for size, info in simulators.items():
        vm = [v for v in VSimControl(info["control_url"]).vms() if not v.template][-1]
        both = {"moref": vm.moref, "instance_uuid": vm.instance_uuid}
        for ids in (both, {"moref": vm.moref}, {"instance_uuid": vm.instance_uuid}):
            moref, calls, vms = _resolve(info, counter, **ids)
            assert moref == vm.moref
            # Only the VM asked for is read, however many there are.
            assert vms == 1, (size, ids, vms, calls)
            cost[(size, tuple(ids))] = calls
        with pytest.raises(VMNotFoundError, match="disagree"):
            other = next(v for v in VSimControl(info["control_url"]).vms() if not v.template)
            _resolve(info, counter, moref=vm.moref, instance_uuid=other.instance_uuid)
    for ids in (("moref", "instance_uuid"), ("moref",), ("instance_uuid",)):
        assert cost[(10, ids)] == cost[(60, ids)], (ids, cost[(10, ids)], cost[(60, ids)])
    assert "FindByUuid" in cost[(10, ("instance_uuid",))]
