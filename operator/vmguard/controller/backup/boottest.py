"""The boot test of a verification: the point restored as a temporary VM in an isolated
network, booted, checked by the user's script, destroyed (docs/verification.md, "Boot
test").

Run by the verification's task (:func:`.verification.step`) after the verification Job's
checks (or alone). Each stage is recorded in ``status.verification.boot.phase`` before
its work, and every stage may run twice, so an operator killed anywhere resumes it:

- (none): the policy's ``verification.boot`` is read; without ``isolatedNetwork`` the
  boot test ends as ``Error`` at once — it never falls back to the source network.
  Otherwise a VMGuardRestore (:func:`build_boot_restore`: ``vmb-<backup>-<run>``,
  owned by the backup, a new VM named ``vmguard-boot.<namespace>.<backup>.<run>`` with
  every NIC on the isolated network, not powered on) is created (AlreadyExists: adopted)
  → ``Restoring``. The restore path makes the VM (fresh instance UUID, generated MACs)
  and writes its disks through its proxy Job, in the vCenter's admission queue.
- ``Restoring``: the restore Completed → ``Booting`` with the VM; Failed or gone →
  ``Error`` (a failed restore destroys the VM it made) → ``Cleaning``.
- ``Booting``: :func:`vmguard.vsphere.boottest.boot_and_check` in a thread — isolation
  checked on the VM's live NICs, power-on, the Tools heartbeat, the script. Its outcome
  (result, exit code, message, recovery time) is recorded → ``Cleaning``. A restart in
  the middle runs it again: power-on is a no-op on a VM that is on.
- ``Cleaning``: the VM is destroyed (only if it carries the restore's marker), the
  restore deleted → ``Completed``.

The vCenter sweeper's orphan sweep (:mod:`vmguard.controller.vcenter.orphans`) destroys a
temporary VM whose verification is no longer running that boot test, so nothing is
left behind when the backup is deleted or its run ended without cleaning.

Recovery time: from ``boot.startTime`` (the restore's creation) to the script's success
(the heartbeat, without a script), on the controller's clock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from vmguard.api import (
    API_VERSION,
    BOOT_VM_PREFIX,
    LABEL_BOOT_TEST,
    RESTORE_VM_MARKER,
    RestorePhase,
    VerificationResult,
    format_time,
    parse_duration,
    parse_time,
)
from vmguard.api.kinds import BACKUP, RESTORE
from vmguard.controller.backup import steps
from vmguard.controller.kube.access import vcenter_endpoint
from vmguard.controller.kube.bodies import backup_status
from vmguard.controller.kube.verifications import verification_of
from vmguard.errors import ConfigError, PermanentError

log = logging.getLogger(__name__)

POLL = 2.0
"""Seconds between looks at the temporary VM's restore."""
DEFAULT_TIMEOUT = 600.0


def boot_spec(policy_spec: Mapping[str, Any]) -> Mapping[str, Any]:
    return (policy_spec.get("verification") or {}).get("boot") or {}


def vm_name(namespace: str, backup: str, run: int) -> str:
    """The temporary VM's name (see :data:`vmguard.api.BOOT_VM_PREFIX`)."""
    return f"{BOOT_VM_PREFIX}{namespace}.{backup}.{run}"


def restore_name(backup: str, run: int) -> str:
    return f"vmb-{backup}-{run}"[:253]


def build_boot_restore(
    backup: Mapping[str, Any], boot: Mapping[str, Any], run: int
) -> dict[str, Any]:
    """The VMGuardRestore of a boot test's temporary VM (pure)."""
    meta = backup["metadata"]
    new_vm: dict[str, Any] = {
        "name": vm_name(meta["namespace"], meta["name"], run),
        "isolatedNetwork": boot["isolatedNetwork"],
        "powerOn": False,
    }
    for key in ("folder", "resourcePool", "host", "datastore"):
        if boot.get(key):
            new_vm[key] = boot[key]
    return {
        "apiVersion": API_VERSION,
        "kind": RESTORE.kind,
        "metadata": {
            "name": restore_name(meta["name"], run),
            "namespace": meta["namespace"],
            "labels": {LABEL_BOOT_TEST: meta["name"]},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": BACKUP.kind,
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": {
            "source": {"backupRef": {"name": meta["name"]}},
            "target": {"newVM": new_vm},
        },
    }


async def _patch(ctx: Any, obj: Mapping[str, Any], boot: Mapping[str, Any]) -> None:
    meta = obj["metadata"]
    await ctx.api.patch_status(
        BACKUP.plural, meta["namespace"], meta["name"], {"verification": {"boot": dict(boot)}}
    )


async def step(ctx: Any, obj: dict[str, Any]) -> float | None:
    """One stage of the boot test (see the module doc). Seconds until the next step; None
    when ``boot.phase`` is Completed (the caller then finishes the verification)."""
    v = verification_of(backup_status(obj))
    run = int(v.get("run") or 1)
    boot: dict[str, Any] = dict(v.get("boot") or {})
    phase = boot.get("phase")
    if phase == "Completed":
        return None
    now = ctx.timing.now()
    if not phase:
        return await _begin(ctx, obj, run, now)
    if phase == "Restoring":
        return await _restoring(ctx, obj, boot, now)
    if phase == "Booting":
        return await _booting(ctx, obj, boot, now)
    return await _clean(ctx, obj, boot)


async def _end(
    ctx: Any, obj: Mapping[str, Any], boot: dict[str, Any], result: str, message: str
) -> float:
    """Record the outcome and go on to Cleaning."""
    started = parse_time(boot.get("startTime"))
    boot.update(phase="Cleaning", result=result, message=message[:4096])
    if started is not None:
        boot["durationSeconds"] = round((ctx.timing.now() - started).total_seconds(), 1)
    log.info("%s/%s: boot test: %s: %s", obj["metadata"]["namespace"], obj["metadata"]["name"],
             result, message)  # fmt: skip
    await _patch(ctx, obj, boot)
    return 0.0


async def _begin(ctx: Any, obj: dict[str, Any], run: int, now: dt.datetime) -> float:
    meta = obj["metadata"]
    boot: dict[str, Any] = {"startTime": format_time(now)}
    try:
        refs = await steps.resolve_refs(ctx.api, meta["namespace"], obj.get("spec") or {})
    except steps.MissingRef as exc:
        return await _end(ctx, obj, boot, VerificationResult.ERROR, str(exc))
    spec = boot_spec(refs.policy_spec)
    if not spec.get("isolatedNetwork"):
        return await _end(
            ctx,
            obj,
            boot,
            VerificationResult.ERROR,
            "the policy's verification.boot names no isolatedNetwork: a boot test never "
            "uses the source network, so none ran",
        )
    restore = build_boot_restore(obj, spec, run)
    created = await ctx.api.create_object(RESTORE.plural, meta["namespace"], restore)
    log.info("%s/%s: boot test: VMGuardRestore %s %s", meta["namespace"], meta["name"],
             restore["metadata"]["name"], "created" if created else "adopted")  # fmt: skip
    boot.update(phase="Restoring", restoreName=restore["metadata"]["name"])
    await _patch(ctx, obj, boot)
    return float(ctx.timing.interval(POLL))


async def _restoring(
    ctx: Any, obj: dict[str, Any], boot: dict[str, Any], now: dt.datetime
) -> float:
    ns = obj["metadata"]["namespace"]
    restore = await ctx.api.get_object(RESTORE.plural, ns, str(boot["restoreName"]))
    if restore is None:
        return await _end(ctx, obj, boot, VerificationResult.ERROR, "its restore is gone")
    status = restore.get("status") or {}
    phase = status.get("phase")
    if phase == RestorePhase.FAILED:
        error = status.get("error") or {}
        why = error.get("message") or error.get("reason") or "failed"
        return await _end(
            ctx, obj, boot, VerificationResult.ERROR, f"the temporary VM's restore failed: {why}"
        )
    if phase != RestorePhase.COMPLETED:
        return float(ctx.timing.interval(POLL))
    vm = (status.get("result") or {}).get("vm") or {}
    boot.update(phase="Booting", vm={k: vm[k] for k in ("moref", "name") if vm.get(k)})
    await _patch(ctx, obj, boot)
    return 0.0


async def _booting(ctx: Any, obj: dict[str, Any], boot: dict[str, Any], now: dt.datetime) -> float:
    from vmguard.vsphere import boottest as vboot
    from vmguard.vsphere.session import VSphereSession

    meta = obj["metadata"]
    moref = str((boot.get("vm") or {}).get("moref") or "")
    try:
        refs = await steps.resolve_refs(ctx.api, meta["namespace"], obj.get("spec") or {})
        spec = boot_spec(refs.policy_spec)
        if not spec.get("isolatedNetwork"):
            raise ConfigError("the policy's verification.boot names no isolatedNetwork")
        ep = await vcenter_endpoint(ctx.api, refs.vcenter)
        plan = await _plan(ctx, meta["namespace"], spec)
        timeout = parse_duration(spec.get("timeout"), DEFAULT_TIMEOUT)
    except (steps.MissingRef, ConfigError) as exc:
        return await _end(ctx, obj, boot, VerificationResult.ERROR, str(exc))
    if not moref:
        return await _end(ctx, obj, boot, VerificationResult.ERROR, "its restore made no VM")
    began = ctx.timing.now()
    loop = asyncio.get_running_loop()

    def powered_on() -> None:
        boot["poweredOnTime"] = format_time(ctx.timing.now())
        asyncio.run_coroutine_threadsafe(_patch(ctx, obj, boot), loop).result(timeout=30)

    def run() -> vboot.BootOutcome:
        session = VSphereSession(ep)
        try:
            return vboot.boot_and_check(
                session,
                moref,
                str(spec["isolatedNetwork"]),
                plan,
                timeout,
                powered_on=powered_on,
                monotonic=ctx.timing.monotonic,  # the controller's clock, as everywhere
            )
        finally:
            session.close()

    try:
        outcome = await asyncio.to_thread(run)
    except PermanentError as exc:  # not isolated, the guest refused the login, power-on
        # refused: no verdict on the point; a retryable fault propagates and is retried
        return await _end(ctx, obj, boot, VerificationResult.ERROR, str(exc))
    started = parse_time(boot.get("startTime")) or began
    if outcome.heartbeat is not None:
        boot["heartbeatTime"] = format_time(began + dt.timedelta(seconds=outcome.heartbeat))
    if outcome.exit_code is not None:
        boot["exitCode"] = outcome.exit_code
    if outcome.output:
        boot["output"] = outcome.output
    if outcome.passed and outcome.checked is not None:
        done = began + dt.timedelta(seconds=outcome.checked)
        boot["recoveryTimeSeconds"] = round((done - started).total_seconds(), 1)
    result = VerificationResult.PASSED if outcome.passed else VerificationResult.FAILED
    return await _end(ctx, obj, boot, result, outcome.message)


async def _plan(ctx: Any, namespace: str, spec: Mapping[str, Any]) -> Any:
    """The script and the guest account (read from their ConfigMap and Secret)."""
    from vmguard.vsphere.boottest import BootCheckPlan
    from vmguard.vsphere.guestops import GuestCredentials

    script = spec.get("script") or {}
    if not script:
        return BootCheckPlan(None)
    cm = (script.get("configMapRef") or {}).get("name", "")
    data = await ctx.api.config_map_data(namespace, cm)
    if data is None or script.get("key") not in data:
        raise ConfigError(f"the check script ConfigMap {cm} has no key {script.get('key')!r}")
    ref = spec.get("guestCredentialsSecretRef") or {}
    keys = await ctx.api.secret_keys(
        namespace,
        ref.get("name", ""),
        {
            "username": ref.get("usernameKey", "username"),
            "password": ref.get("passwordKey", "password"),
        },
    )
    return BootCheckPlan(
        GuestCredentials(keys["username"], keys["password"]),
        data[script["key"]],
        script.get("interpreter") or "/bin/sh",
    )


async def _clean(ctx: Any, obj: dict[str, Any], boot: dict[str, Any]) -> float | None:
    from vmguard.vsphere.adoption import destroy_marked
    from vmguard.vsphere.session import VSphereSession

    meta = obj["metadata"]
    ns = meta["namespace"]
    restore_obj = None
    if boot.get("restoreName"):
        restore_obj = await ctx.api.get_object(RESTORE.plural, ns, str(boot["restoreName"]))
    moref = str((boot.get("vm") or {}).get("moref") or "")
    if restore_obj is not None and not moref:
        moref = str(
            (((restore_obj.get("status") or {}).get("result") or {}).get("vm") or {}).get("moref")
            or ""
        )
    if moref and restore_obj is not None:
        refs = await steps.resolve_refs(ctx.api, ns, obj.get("spec") or {})
        ep = await vcenter_endpoint(ctx.api, refs.vcenter)
        uid = str(restore_obj["metadata"]["uid"])

        def destroy() -> bool:
            session = VSphereSession(ep)
            try:
                return destroy_marked(session, moref, RESTORE_VM_MARKER, uid)
            except LookupError:
                return False
            finally:
                session.close()

        if await asyncio.to_thread(destroy):
            log.info("%s/%s: boot test: temporary VM %s destroyed", ns, meta["name"], moref)
    if restore_obj is not None:
        await ctx.api.delete_object(RESTORE.plural, ns, str(boot["restoreName"]))
    boot["phase"] = "Completed"
    await _patch(ctx, obj, boot)
    return None


__all__ = [
    "boot_spec",
    "build_boot_restore",
    "restore_name",
    "step",
    "vm_name",
]
