"""The boot test's vSphere side (vsphere/boottest.py) against the lab simulator, whose
guests' VMware Tools come up after power-on (lab/vsphere/tools.go):

- a VM with a NIC off the isolated network is refused before power-on (NotIsolated) and
  stays off: a boot test never reaches the source's network;
- the heartbeat is awaited after power-on; a guest whose tools never come up (the lab's
  ``toolsDown`` fault) is a failed outcome naming the missing heartbeat, within the
  timeout, not an endless wait.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.vsphere.helpers import pick_vm, restored_afterwards

from vmguard.vsphere.adoption import power_state
from vmguard.vsphere.boottest import BootCheckPlan, NotIsolated, boot_and_check, stray_nics
from vmguard.vsphere.restore import power
from vmguard_lab.vsim import VSimControl, VSimVM

pytestmark = pytest.mark.lab

TAKEN: set[str] = set()
SOURCE = "VM Network"
"""The lab VMs' network: here it plays the isolated one."""
ELSEWHERE = "DC0_DVPG0"


@pytest.fixture
def off_vm(vc: Any, vsim: VSimControl, tmp_path: Path) -> Iterator[VSimVM]:
    """A lab VM, powered off for the test (powered on again afterwards)."""
    vm = pick_vm(vsim, TAKEN)
    with restored_afterwards(vc, vsim, vm, tmp_path):
        power(vc, vm.moref, False)
        yield vm
        power(vc, vm.moref, False)


def test_a_vm_with_a_nic_off_the_isolated_network_is_never_powered_on(
    vc: Any, off_vm: VSimVM
) -> None:
    assert stray_nics(vc, off_vm.moref, SOURCE) == []
    with pytest.raises(NotIsolated, match=f"not on the isolated network '{ELSEWHERE}'"):
        boot_and_check(vc, off_vm.moref, ELSEWHERE, BootCheckPlan(None), 30)
    assert power_state(vc, off_vm.moref) == "poweredOff"


def test_the_heartbeat_is_awaited_and_its_absence_fails_within_the_timeout(
    vc: Any, vsim: VSimControl, off_vm: VSimVM
) -> None:
    up = boot_and_check(vc, off_vm.moref, SOURCE, BootCheckPlan(None), 30, poll=0.05)
    assert up.powered_on and up.passed and up.heartbeat is not None, up
    power(vc, off_vm.moref, False)
    vsim.set_faults(off_vm.moref, tools_down=True)
    down = boot_and_check(vc, off_vm.moref, SOURCE, BootCheckPlan(None), 2, poll=0.05)
    assert down.powered_on and not down.passed and down.heartbeat is None, down
    assert down.message == "no VMware Tools heartbeat within 2 s of power-on"
