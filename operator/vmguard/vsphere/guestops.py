"""Guest hooks: programs run inside the VM's guest through VMware Tools around the snapshot.

A policy's ``spec.hooks`` lists ``preSnapshot`` and ``postSnapshot`` commands (a database
flush, say). :func:`run_hook` runs one through the GuestProcessManager: StartProgramInGuest
with the guest account's NamePasswordAuthentication, then ListProcessesInGuest until the
program has an end time or its timeout has passed — then TerminateProcessInGuest, and
the hook counts as failed. :func:`run_hooks` runs a list in order and honours each
hook's ``onError``: ``fail`` stops the list and raises :class:`HookFailed` (message:
the hook's name and exit code or why it did not run), ``continue`` records a warning and
goes on. Every hook that ran yields a :class:`HookResult` (name, exit code, seconds,
warning) for the VMGuardBackup status.

Invariants: the guest password lives in :class:`GuestCredentials` where ``repr`` cannot
show it, and no log line, exception message or result carries it (pyVmomi faults carry
no request arguments; our messages name the user at most).
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pyVmomi import vim, vmodl

from vmguard.errors import PermanentError
from vmguard.vsphere.session import VSphereSession

log = logging.getLogger(__name__)
T = TypeVar("T")

Phase = Literal["preSnapshot", "postSnapshot", "bootCheck"]

POLL_SECONDS = 0.5
"""How often ListProcessesInGuest is asked whether a hook has ended."""


@dataclass(frozen=True)
class GuestCredentials:
    """The guest OS account hooks run as."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Hook:
    """One command of ``spec.hooks.preSnapshot`` / ``postSnapshot``."""

    name: str
    command: str
    args: tuple[str, ...] = ()
    timeout: float = 300.0
    on_error: Literal["fail", "continue"] = "fail"


@dataclass(frozen=True)
class HookPlan:
    """The hooks of one backup and the account they run as."""

    credentials: GuestCredentials
    pre: tuple[Hook, ...] = ()
    post: tuple[Hook, ...] = ()


@dataclass(frozen=True)
class HookResult:
    """What one hook did: ``exit_code`` None when it never started or was terminated."""

    name: str
    phase: Phase
    exit_code: int | None
    seconds: float
    timed_out: bool = False
    error: str = ""
    """Why the hook failed (empty when it exited 0)."""
    warning: str = ""
    """Set when the hook failed with onError=continue."""

    @property
    def ok(self) -> bool:
        return not self.error


class HookFailed(PermanentError):
    """A hook with onError=fail failed; ``results`` are the hooks that ran, this one last."""

    def __init__(self, result: HookResult, results: Sequence[HookResult]) -> None:
        super().__init__(f"{result.phase} hook {result.name!r} failed: {result.error}")
        self.result = result
        self.results = tuple(results)


class GuestLoginError(PermanentError):
    """The guest refused the hooks' credentials (InvalidGuestLogin)."""


def _fault_text(exc: vmodl.MethodFault) -> str:
    msg = getattr(exc, "msg", "")
    return type(exc).__name__ + (f": {msg}" if msg else "")


def _auth(creds: GuestCredentials) -> vim.vm.guest.NamePasswordAuthentication:
    return vim.vm.guest.NamePasswordAuthentication(
        username=creds.username, password=creds.password, interactiveSession=False
    )


def run_hook(
    session: VSphereSession,
    vm_moref: str,
    hook: Hook,
    creds: GuestCredentials,
    phase: Phase,
    *,
    poll: float = POLL_SECONDS,
) -> HookResult:
    """Run one hook in the guest and wait for it (see the module docstring).

    A refused login raises :class:`GuestLoginError`; any other fault, a non-zero exit and
    a timeout are returned as a failed result.
    """
    began = time.monotonic()

    def failed(error: str, exit_code: int | None = None, timed_out: bool = False) -> HookResult:
        return HookResult(
            hook.name, phase, exit_code, time.monotonic() - began, timed_out, error=error
        )

    def in_guest(fn: Callable[[Any, vim.VirtualMachine], T]) -> T:
        def call(si: vim.ServiceInstance) -> T:
            gom = si.RetrieveContent().guestOperationsManager
            if gom is None:
                raise PermanentError("this vCenter offers no guest operations (hooks)")
            pm = gom.processManager
            return fn(pm, vim.VirtualMachine(vm_moref, si._stub))

        return session.call(call)

    spec = vim.vm.guest.ProcessManager.ProgramSpec(
        programPath=hook.command, arguments=shlex.join(hook.args)
    )
    try:
        pid = int(in_guest(lambda pm, vm: pm.StartProgramInGuest(vm, _auth(creds), spec)))
    except vim.fault.InvalidGuestLogin:
        raise GuestLoginError(
            f"{phase} hook {hook.name!r}: the guest of {vm_moref} refused the login of "
            f"{creds.username!r} (InvalidGuestLogin); check the policy's "
            "hooks.guestCredentialsSecretRef"
        ) from None
    except vmodl.MethodFault as exc:
        return failed(f"could not start {hook.command}: {_fault_text(exc)}")
    log.info("%s: %s hook %r started in the guest (pid %d)", vm_moref, phase, hook.name, pid)

    deadline = began + hook.timeout
    while True:
        try:
            procs = in_guest(lambda pm, vm: list(pm.ListProcessesInGuest(vm, _auth(creds), [pid])))
        except vmodl.MethodFault as exc:
            return failed(f"lost track of pid {pid}: {_fault_text(exc)}")
        info = next((p for p in procs if p.pid == pid), None)
        if info is None:
            return failed(f"pid {pid} is not in the guest's process list")
        if info.endTime is not None:
            code = int(info.exitCode or 0)  # optional in the WSDL: absent means 0
            if code != 0:
                return failed(f"exit code {code}", exit_code=code)
            return HookResult(hook.name, phase, 0, time.monotonic() - began)
        if time.monotonic() >= deadline:
            break
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))

    try:
        in_guest(lambda pm, vm: pm.TerminateProcessInGuest(vm, _auth(creds), pid))
        how = "terminated"
    except vmodl.MethodFault as exc:
        how = f"could not be terminated ({_fault_text(exc)})"
    log.warning("%s: %s hook %r timed out; %s", vm_moref, phase, hook.name, how)
    return failed(f"timed out after {hook.timeout:g} s and was {how}", timed_out=True)


def run_hooks(
    session: VSphereSession,
    vm_moref: str,
    hooks: Sequence[Hook],
    creds: GuestCredentials,
    phase: Phase,
    *,
    poll: float = POLL_SECONDS,
) -> list[HookResult]:
    """Run ``hooks`` in order; raise :class:`HookFailed` at the first onError=fail failure."""
    results: list[HookResult] = []
    for hook in hooks:
        res = run_hook(session, vm_moref, hook, creds, phase, poll=poll)
        if res.ok:
            log.info("%s: %s hook %r exited 0 (%.1f s)", vm_moref, phase, hook.name, res.seconds)
        elif hook.on_error == "continue":
            res = HookResult(
                res.name,
                res.phase,
                res.exit_code,
                res.seconds,
                res.timed_out,
                error=res.error,
                warning=f"{phase} hook {hook.name!r} failed ({res.error}); continued",
            )
            log.warning("%s: %s", vm_moref, res.warning)
        else:
            results.append(res)
            raise HookFailed(res, results)
        results.append(res)
    return results
