"""Discovery in chunks of listed VMs, against a simulator of the test's own (the lab's
small shared inventory must not lose VMs): the records one ContainerView pass gives, and
a VM destroyed between the listing and its chunk's retrieval is simply absent."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from pyVim.task import WaitForTask
from pyVmomi import vim
from tests.controller.own_vcsim import own_vcsim

from vmguard.vsphere import prefetch
from vmguard.vsphere.inventory import (
    VM_PROPERTIES,
    InventoryTree,
    custom_field_names,
    discover,
    find_vm,
    moid,
    record_from_properties,
    retrieve,
)
from vmguard.vsphere.records import VMRecord
from vmguard.vsphere.session import Endpoint, connect, disconnect

pytestmark = pytest.mark.lab

VMS = 23  # with the template, 24: five chunks of 5, the last one short
CHUNK = 5


@pytest.fixture
def si(tmp_path: Path) -> Iterator[vim.ServiceInstance]:
    with own_vcsim(tmp_path, "chunks@vsphere.local", VMS, 2, 1 << 20) as info:
        ep = Endpoint(info["sdk_url"], info["user"], info["password"], ca_file=info["tls_cert"])
        si = connect(ep)
        try:
            yield si
        finally:
            disconnect(si)


def _one_pass(si: vim.ServiceInstance) -> list[VMRecord]:
    """The records of a single paged ContainerView pass (how discovery read VMs before)."""
    tree, fields = InventoryTree(si), custom_field_names(si)
    found = retrieve(si, [vim.VirtualMachine], {vim.VirtualMachine: VM_PROPERTIES})
    records = [record_from_properties(moid(obj), p, tree, fields) for obj, p in found]
    return sorted(records, key=lambda vm: (vm.name, vm.moref))


def _destroy(si: vim.ServiceInstance, moref: str) -> None:
    vm = find_vm(si, moref)
    if vm.runtime.powerState == vim.VirtualMachinePowerState.poweredOn:
        WaitForTask(vm.PowerOffVM_Task())
    WaitForTask(vm.Destroy_Task())


@pytest.fixture(params=["split calls", "pyVmomi's own calls"])
def split(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both ways of reading a chunk: the split call (prefetch.py), and pyVmomi's own call,
    which a pyVmomi release the split was not read against gets."""
    if request.param == "pyVmomi's own calls":
        monkeypatch.setattr(prefetch, "PYVMOMI_VERSIONS", ("0.0.",))
    return request.param == "split calls"


def test_chunks_give_the_records_of_one_pass(si: vim.ServiceInstance, split: bool) -> None:
    want = _one_pass(si)
    assert len(want) == VMS + 1
    pc = si.RetrieveContent().propertyCollector
    assert prefetch.supported(pc) is split
    assert discover(si, chunk=CHUNK, in_flight=3) == want


def test_a_vm_destroyed_after_the_listing_is_absent(si: vim.ServiceInstance, split: bool) -> None:
    before = discover(si, chunk=CHUNK)
    gone: list[str] = []

    def destroy_some(listed: Sequence[str]) -> None:
        # Two VMs of the second chunk (the chunk is retried twice) and one of the last.
        assert len(listed) == VMS + 1
        gone.extend([listed[6], listed[8], listed[-1]])
        for moref in gone:
            _destroy(si, moref)

    after = discover(si, chunk=CHUNK, listed=destroy_some)
    assert len(gone) == 3 and len(after) == VMS + 1 - 3
    assert after == [r for r in before if r.moref not in gone]
    assert after == _one_pass(si)
