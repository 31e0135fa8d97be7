"""The boot test's vSphere side: a restored temporary VM is checked to be isolated, powered
on, its VMware Tools heartbeat awaited, the user's check script run in its guest,
its output read back (docs/verification.md, "Boot test").

Blocking (pyVmomi): the operator runs :func:`boot_and_check` in a thread. The VM was
restored by a VMGuardRestore (a new VM: fresh instance UUID, generated MAC addresses,
every NIC on the isolated network); destroying it is the caller's, through
:func:`vmguard.vsphere.adoption.destroy_marked`, so a VM we did not make is never touched.

Invariants: the VM is powered on only when every NIC is on the isolated network (checked
on the VM's live config, not on what was asked for), so a boot test never reaches the
source's networks; the guest password lives in :class:`~.guestops.GuestCredentials` and
appears in no message; every wait is bounded by the caller's deadline. The script runs as
``/bin/sh -c 'exec INTERPRETER -c SCRIPT >OUT 2>&1'`` (a POSIX guest), its output file in
``/tmp`` under a random name, read back through InitiateFileTransferFromGuest and deleted.
"""

from __future__ import annotations

import logging
import ssl
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pyVmomi import vim, vmodl

from vmguard.errors import PermanentError
from vmguard.vsphere import guestops
from vmguard.vsphere.inventory import find_vm
from vmguard.vsphere.restore import power
from vmguard.vsphere.session import VSphereSession

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
"""How often the heartbeat is looked at."""
OUTPUT_MAX = 4096
"""The tail of the check's output that is kept (bytes)."""
OUTPUT_READ = 1 << 20
"""At most this much of the output file is downloaded."""
OUTPUT_DIR = "/tmp"
SHELL = "/bin/sh"
_WRAPPER = 'exec "$0" -c "$1" >"$2" 2>&1'
"""Runs the interpreter on the script with its output in a file (POSIX guests)."""


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
    output: str = ""
    """The tail of the script's standard output and error."""


class NotIsolated(PermanentError):
    """A NIC of the temporary VM is not on the isolated network: it is not powered on."""


def stray_nics(session: VSphereSession, vm_moref: str, network: str) -> list[str]:
    """The labels of the VM's NICs that are not on ``network`` (a standard network by its
    name, a distributed port group by the key of the port group of that name)."""

    def run(si: vim.ServiceInstance) -> list[str]:
        content: Any = si.RetrieveContent()
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
    outfile = f"{OUTPUT_DIR}/vmguard-boot-check-{uuid.uuid4().hex}.out"
    hook = guestops.Hook(
        name="boot-check",
        command=SHELL,
        # sh -c WRAPPER INTERPRETER SCRIPT OUTFILE: $0, $1, $2 inside the wrapper.
        args=("-c", _WRAPPER, plan.interpreter, plan.script, outfile),
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
    out.output = fetch_output(session, vm_moref, plan.credentials, outfile)
    return out


def _tls(session: VSphereSession) -> ssl.SSLContext:
    """Trust for a guest file URL (served by the VM's ESXi host): the vCenter's CA bundle,
    else the system's; no check when the vCenter is reached insecurely."""
    ep = session.endpoint
    if ep.insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=ep.ca_file)


def fetch_output(
    session: VSphereSession,
    vm_moref: str,
    creds: guestops.GuestCredentials,
    path: str,
) -> str:
    """The tail (:data:`OUTPUT_MAX` bytes) of the guest file ``path`` as text, then the
    file is deleted; what went wrong instead, in brackets, when it cannot be read (the
    output is informative: the exit code decides)."""
    auth = vim.vm.guest.NamePasswordAuthentication(
        username=creds.username, password=creds.password, interactiveSession=False
    )

    def files(si: vim.ServiceInstance) -> Any:
        gom: Any = si.RetrieveContent().guestOperationsManager
        if gom is None or gom.fileManager is None:
            raise ValueError("this vCenter offers no guest file operations")
        return gom.fileManager

    def initiate(si: vim.ServiceInstance) -> tuple[str, str]:
        vm: Any = find_vm(si, vm_moref)
        info = files(si).InitiateFileTransferFromGuest(vm, auth, path)
        return str(info.url), str(vm.runtime.host.name if vm.runtime.host else "")

    def delete(si: vim.ServiceInstance) -> None:
        files(si).DeleteFileInGuest(vim.VirtualMachine(vm_moref, si._stub), auth, path)

    try:
        url, host = session.call(initiate)
        parts = urlsplit(url)
        if parts.hostname == "*":  # ESXi's form: the VM's host serves it
            url = urlunsplit(parts._replace(netloc=parts.netloc.replace("*", host, 1)))
        with urllib.request.urlopen(url, timeout=60, context=_tls(session)) as resp:
            data = resp.read(OUTPUT_READ)
    except (vmodl.MethodFault, OSError, ValueError) as exc:
        return f"[output not read: {type(exc).__name__}]"
    try:
        session.call(delete)
    except vmodl.MethodFault as exc:
        log.warning("%s: the check's output file stays in the guest: %s", vm_moref, exc)
    return data[-OUTPUT_MAX:].decode("utf-8", "replace")


__all__ = [
    "BootCheckPlan",
    "BootOutcome",
    "NotIsolated",
    "boot_and_check",
    "stray_nics",
    "tools_answer",
]
