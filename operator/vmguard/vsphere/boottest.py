"""The boot test's vSphere side: a restored temporary VM is checked to be isolated, powered
on, its VMware Tools heartbeat awaited, the user's check script run in its guest
(docs/verification.md, "Boot test").

Blocking (pyVmomi): the operator runs :func:`boot_and_check` in a thread. The VM was
restored by a VMGuardRestore (a new VM: fresh instance UUID, generated MAC addresses,
every NIC on the isolated network); destroying it is the caller's, through
:func:`vmguard.vsphere.adoption.destroy_marked`, so a VM we did not make is never touched.

Invariants: the VM is powered on only when every NIC is on the isolated network (checked
on the VM's live config, not on what was asked for), so a boot test never reaches the
source's networks; the guest password lives in :class:`~.guestops.GuestCredentials` and
appears in no message; every wait is bounded by the caller's deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyVmomi import vim

from vmguard.errors import PermanentError
from vmguard.vsphere import guestops
from vmguard.vsphere.inventory import find_vm
from vmguard.vsphere.restore import power
from vmguard.vsphere.session import VSphereSession

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
"""How often the heartbeat is looked at."""
OUTPUT_MAX = 4096


@dataclass(frozen=True)
class BootCheckPlan:
    """What to run once the guest answers: ``script`` handed to ``interpreter -c``."""

    credentials: guestops.GuestCredentials | None
    script: str = ""
    interpreter: str = "/bin/sh"


@dataclass
class BootOutcome:
    """What the boot did. ``heartbeat`` / ``checked``: monotonic seconds since
    :func:`boot_and_check` began, None when not reached."""

    powered_on: bool = False
    heartbeat: float | None = None
    checked: float | None = None
    exit_code: int | None = None
    passed: bool = False
    message: str = ""


class NotIsolated(PermanentError):
    """A NIC of the temporary VM is not on the isolated network: it is not powered on."""


def stray_nics(session: VSphereSession, vm_moref: str, network: str) -> list[str]:
    """The labels of the VM's NICs that are not on ``network`` (a standard network by its
    name, a distributed port group by the key of the port group of that name)."""

    def run(si: vim.ServiceInstance) -> list[str]:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.Network], True)
        try:
            keys = {
                str(n.key)
                for n in view.view
                if n.name == network and isinstance(n, vim.dvs.DistributedVirtualPortgroup)
            }
        finally:
            view.Destroy()
        vm: Any = find_vm(si, vm_moref)
        out = []
        for dev in vm.config.hardware.device:
            if not isinstance(dev, vim.vm.device.VirtualEthernetCard):
                continue
            b = dev.backing
            if isinstance(b, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo):
                ok = b.deviceName == network
            elif isinstance(b, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
                ok = str(b.port.portgroupKey) in keys
            else:
                ok = False
            if not ok:
                out.append(str(dev.deviceInfo.label if dev.deviceInfo else dev.key))
        return out

    return session.call(run)


def tools_answer(session: VSphereSession, vm_moref: str) -> bool:
    """Whether the guest's tools run and their heartbeat is green."""

    def run(si: vim.ServiceInstance) -> bool:
        vm: Any = find_vm(si, vm_moref)
        running = (vm.guest.toolsRunningStatus if vm.guest else "") == "guestToolsRunning"
        return bool(running and vm.guestHeartbeatStatus == "green")

    return session.call(run)


def boot_and_check(
    session: VSphereSession,
    vm_moref: str,
    isolated_network: str,
    plan: BootCheckPlan,
    timeout: float,
    *,
    poll: float = POLL_SECONDS,
    powered_on: Callable[[], None] = lambda: None,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> BootOutcome:
    """Check isolation, power on, await the heartbeat, run the script (see the module
    doc). ``powered_on`` is called once the VM is on (the caller records it). A VM whose
    tools do not answer within ``timeout``, or whose script fails, is a failed outcome;
    :class:`NotIsolated` is raised before any power-on."""
    began = monotonic()
    deadline = began + timeout
    out = BootOutcome()
    stray = stray_nics(session, vm_moref, isolated_network)
    if stray:
        raise NotIsolated(
            f"{', '.join(stray)} of the test VM not on the isolated network"
            f" {isolated_network!r}: it is not powered on"
        )
    power(session, vm_moref, True)
    out.powered_on = True
    powered_on()
    while not tools_answer(session, vm_moref):
        if monotonic() >= deadline:
            out.message = f"no VMware Tools heartbeat within {timeout:g} s of power-on"
            return out
        sleep(min(poll, max(0.0, deadline - monotonic())))
    out.heartbeat = monotonic() - began
    if not plan.script or plan.credentials is None:
        out.passed, out.checked = True, out.heartbeat
        out.message = f"heartbeat after {out.heartbeat:.1f} s; no check script"
        return out
    hook = guestops.Hook(
        name="boot-check",
        command=plan.interpreter,
        args=("-c", plan.script),
        timeout=max(1.0, deadline - monotonic()),
    )
    res = guestops.run_hook(session, vm_moref, hook, plan.credentials, "bootCheck", poll=poll)
    out.exit_code = res.exit_code
    out.checked = monotonic() - began
    out.passed = res.ok
    out.message = (
        f"heartbeat after {out.heartbeat:.1f} s; check script exited 0"
        if res.ok
        else f"heartbeat after {out.heartbeat:.1f} s; check script: {res.error}"
    )[:OUTPUT_MAX]
    return out


__all__ = [
    "BootCheckPlan",
    "BootOutcome",
    "NotIsolated",
    "boot_and_check",
    "stray_nics",
    "tools_answer",
]
